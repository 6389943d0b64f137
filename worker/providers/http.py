"""One JSON-over-HTTP client for the REST providers (Okta, SCIM, later Graph).

It turns every failure into TransientError (worth retrying, with the server's
wait hint) or PermanentError (a human must act), and it never puts a credential
into an error message: messages carry the method, the path and the provider's
own error summary only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from worker.errors import PermanentError, ProviderError, TransientError
from worker.metrics import Metrics
from worker.ratelimit import UNHINTED_PAUSE, RateLimiter

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class HttpResult:
    status: int
    body: Any
    headers: Mapping[str, str]


def retry_after_seconds(headers: Any, now: float, *, throttled: bool = True) -> float | None:
    """The wait a server asked for: Retry-After (seconds or HTTP date) or, on a 429,
    Okta's X-Rate-Limit-Reset (epoch seconds; when sent twice, the smallest counts).

    Okta sends X-Rate-Limit-Reset on every answer; on anything but a 429 it says when
    the budget window ends, not that we must wait for it."""
    hints: list[float] = []
    getall = getattr(headers, "getall", None)
    for value in getall("Retry-After", []) if getall else []:
        try:
            hints.append(float(value))
        except ValueError:
            try:
                hints.append(parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                continue
    resets: list[float] = []
    for value in getall("X-Rate-Limit-Reset", []) if getall and throttled else []:
        try:
            resets.append(float(value))
        except ValueError:
            continue
    if resets:
        hints.append(min(resets) - now)
    if not hints:
        return None
    return max(0.0, min(hints))


def provider_session() -> aiohttp.ClientSession:
    """The HTTP session provider calls go through. aiohttp sends an idempotent request
    (DELETE, PUT) a second time, blind, when the connection drops before the answer
    (RFC 9112 9.3.1): Okta's DELETE of a user's sessions would go out twice with nothing
    in the evidence, and a PUT without the read the ledger makes before every attempt.
    Retrying is the ledger's (worker/ledger.py, worker/retry.py)."""
    session = aiohttp.ClientSession()
    session._retry_connection = False  # no public switch (aiohttp 3.10 to 3.14)
    return session


class JsonHttpClient:
    """A small JSON client bound to one base URL and one Authorization header."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        authorization: str,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.limiter = limiter or RateLimiter(provider)
        #: counts every request sent, its failures and throttles, under `provider`
        self.metrics = metrics
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._authorization = authorization
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:  # never show the credential
        return f"JsonHttpClient(provider={self.provider!r}, base_url={self.base_url!r})"

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        bucket: RateLimiter | None = None,
    ) -> HttpResult:
        """`bucket`: the limiter of the endpoint group the call counts in (Okta's
        per-endpoint budgets), besides the provider's own (its cap on calls in flight)."""
        url = self.base_url + path
        all_headers = {
            "Authorization": self._authorization,
            "Accept": "application/json",
            **(headers or {}),
        }
        if body is not None:
            all_headers["Content-Type"] = content_type
        where = f"{method} {path}"
        budget = bucket or self.limiter
        try:
            async with contextlib.AsyncExitStack() as places:
                # the bucket's place first: a call waiting for its window's budget
                # holds none of the places in flight
                if bucket is not None:
                    await places.enter_async_context(bucket.slot())
                await places.enter_async_context(self.limiter.slot())
                if self.metrics is not None:
                    self.metrics.provider_call(self.provider)
                return await self._send(method, url, where, body, params, all_headers, budget)
        except ProviderError as exc:
            if self.metrics is not None:
                self.metrics.provider_failed(self.provider, exc)
            if not isinstance(exc, TransientError):
                raise
            if exc.retry_after is not None:
                budget.pause(exc.retry_after)  # every case waits, not only this one
            elif exc.status == 429:
                budget.pause(UNHINTED_PAUSE)
            raise

    async def _send(
        self,
        method: str,
        url: str,
        where: str,
        body: Any,
        params: Mapping[str, str] | None,
        all_headers: dict[str, str],
        budget: RateLimiter,
    ) -> HttpResult:
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                params=params,
                headers=all_headers,
                timeout=self._timeout,
            ) as response:
                raw = await response.read()
                decoded = _decode(raw)
                if response.status < 400:
                    self._observe_budget(response.headers, budget)
                    return HttpResult(
                        status=response.status, body=decoded, headers=response.headers
                    )
                summary = _error_summary(decoded) or response.reason or ""
                message = f"{where} answered {response.status} {summary}".rstrip()
                if response.status in TRANSIENT_STATUSES:
                    hint = retry_after_seconds(
                        response.headers, time.time(), throttled=response.status == 429
                    )
                    raise TransientError(
                        self.provider,
                        message,
                        retry_after=hint,
                        status=response.status,
                        code=_error_code(decoded),
                    )
                raise PermanentError(
                    self.provider, message, status=response.status, code=_error_code(decoded)
                )
        except TimeoutError:
            raise TransientError(self.provider, f"{where} timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientError(self.provider, f"{where} failed: {type(exc).__name__}") from None

    def _observe_budget(self, headers: Any, budget: RateLimiter) -> None:
        """Okta's X-Rate-Limit-Remaining/-Reset: pause before the budget is spent."""
        remaining = headers.getall("X-Rate-Limit-Remaining", [])
        resets = headers.getall("X-Rate-Limit-Reset", [])
        if not remaining or not resets:
            return
        try:
            left = min(int(v) for v in remaining)
            reset_in = min(float(v) for v in resets) - time.time()
        except ValueError:
            return
        if budget.budget(left, reset_in) and self.metrics is not None:
            self.metrics.provider_throttled(self.provider)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]


def _error_code(body: Any) -> str | None:
    """The provider's machine-readable reason: Google's errors[0].reason, Graph's
    error.code, Okta's errorCode, SCIM's scimType."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        errors = error.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            reason = errors[0].get("reason")
            if isinstance(reason, str):
                return reason
        if isinstance(error.get("code"), str):
            return str(error["code"])
    for key in ("errorCode", "scimType"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return None


def _error_summary(body: Any) -> str:
    """The provider's own words: Okta errorSummary, SCIM detail, Graph error.message."""
    if not isinstance(body, dict):
        return ""
    for key in ("errorSummary", "detail", "message", "Message"):
        if isinstance(body.get(key), str):
            return f"({body[key]})"
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"({error['message']})"
    return ""
