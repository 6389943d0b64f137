"""Google Workspace through the Admin SDK Directory API v1.

A service account with domain-wide delegation acts as one admin: an RS256 JWT
(iss = the service account, sub = the admin, the directory.user scope, aud = the
key file's token_uri) is exchanged for an access token, cached and fetched anew
five minutes before it expires.

"Deactivated" is `suspended: true`. Google throttles with 403 (reasons
userRateLimitExceeded, quotaExceeded) as well as 429 (rateLimitExceeded), without a
wait hint: those 403s are transient, every other 403 is permanent.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp

from worker import actions
from worker.clock import Clock, SystemClock
from worker.config import GoogleConfig, Secret, url_problem
from worker.errors import ConfigError, PermanentError, TransientError
from worker.metrics import Metrics
from worker.providers.base import IdpUser, PlannedCall
from worker.providers.http import HttpResult
from worker.providers.oauth import (
    JWT_BEARER_GRANT,
    BearerJsonClient,
    IssuedToken,
    TokenCache,
    load_rsa_private_key,
    request_token,
    sign_rs256,
)
from worker.ratelimit import RateLimiter

SCOPE = "https://www.googleapis.com/auth/admin.directory.user"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
#: Google allows an assertion to live one hour at most
ASSERTION_LIFETIME = 3600
#: the `reason`s of Google's errors that mean "slow down"
RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "quotaExceeded", "rateLimitExceeded"})
# What those errors say in `error.message`, for as long as the HTTP client hands over
# only the message (see `rate_limit_reason`).
_RATE_LIMIT_WORDS = re.compile(r"rate limit exceeded|quota exceeded", re.IGNORECASE)


def rate_limit_reason(error: PermanentError) -> str | None:
    """Why a 403 is a throttle, or None when it is a real refusal.

    The error's `code` carries Google's `errors[0].reason` when the HTTP client fills it
    in; until then the provider's message is all there is, and Google words the
    throttles recognisably ("User Rate Limit Exceeded", "Quota exceeded for quota
    metric ...")."""
    if error.status != 403:
        return None
    if error.code is not None:
        return error.code if error.code in RATE_LIMIT_REASONS else None
    match = _RATE_LIMIT_WORDS.search(str(error))
    return match.group(0) if match else None


class ServiceAccountKey:
    """The parts of a service account's JSON key file the token flow needs."""

    def __init__(self, content: Secret, where: str) -> None:
        problem = f"{where}: not a service account JSON key file (the content is not shown)"
        try:
            data: Any = json.loads(content.reveal())
        except ValueError:
            raise ConfigError(problem) from None
        if not isinstance(data, dict) or data.get("type") != "service_account":
            raise ConfigError(problem)
        fields = {}
        for name in ("client_email", "private_key", "token_uri"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: the key file has no {name}")
            fields[name] = value
        self.client_email = fields["client_email"]
        if (unusable := url_problem(fields["token_uri"])) is not None:
            raise ConfigError(f"{where}: the key file's token_uri: {unusable} (not shown)")
        self.token_uri = fields["token_uri"]
        key_id = data.get("private_key_id")
        self.key_id = key_id if isinstance(key_id, str) and key_id else None
        # the PEM inside the JSON, unescaped: registered with the redactor on its own
        self._pem = Secret(fields["private_key"])
        self.private_key = load_rsa_private_key(self._pem.reveal(), f"{where} private_key")

    def __repr__(self) -> str:
        return f"ServiceAccountKey(client_email={self.client_email!r})"


class GoogleWorkspace:
    name = "google"

    def __init__(
        self,
        config: GoogleConfig,
        session: aiohttp.ClientSession,
        limiter: RateLimiter | None = None,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory_url = config.directory_url.rstrip("/")
        self.delegated_admin = config.delegated_admin
        self._key = ServiceAccountKey(
            config.service_account.resolve("idp.google.service_account"),
            "idp.google.service_account",
        )
        #: where the assertion is posted; its `aud` stays the key file's token_uri
        self.token_url = config.token_url or self._key.token_uri
        self._clock: Clock = clock or SystemClock()
        self._session = session
        self._timeout = config.timeout_seconds
        self.tokens = TokenCache(self._fetch_token, clock=self._clock)
        self._directory = BearerJsonClient(
            provider="google",
            base_url=self.directory_url,
            tokens=self.tokens,
            session=session,
            timeout=config.timeout_seconds,
            limiter=limiter,
            metrics=metrics,
        )

    def __repr__(self) -> str:
        return (
            f"GoogleWorkspace(directory_url={self.directory_url!r}, "
            f"service_account={self._key.client_email!r}, admin={self.delegated_admin!r})"
        )

    def assertion(self) -> str:
        """The signed JWT grant: the service account acting as the delegated admin."""
        issued = int(self._clock.now().timestamp())
        claims = {
            "iss": self._key.client_email,
            "sub": self.delegated_admin,
            "scope": SCOPE,
            "aud": self._key.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        headers = {"typ": "JWT"}
        if self._key.key_id:
            headers["kid"] = self._key.key_id
        return sign_rs256(claims, self._key.private_key, headers=headers)

    async def _fetch_token(self) -> IssuedToken:
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()}
        return await request_token(
            self._session,
            provider="google",
            url=self.token_url,
            form=form,
            timeout_seconds=self._timeout,
        )

    async def find_user(self, subject: str) -> IdpUser:
        return await self._get(subject, looking_for=f"primary email {subject!r}")

    async def get_user(self, user_id: str) -> IdpUser:
        return await self._get(user_id, looking_for=f"id {user_id!r}")

    async def _get(self, key: str, *, looking_for: str) -> IdpUser:
        body = (await self._call("GET", key, "", looking_for)).body
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("id"), str)
            or not isinstance(body.get("suspended"), bool)
        ):
            raise PermanentError("google", f"GET user {looking_for}: not a Directory user")
        suspended: bool = body["suspended"]
        status = f"suspended={str(suspended).lower()}"
        reason = body.get("suspensionReason")
        if suspended and isinstance(reason, str) and reason:
            status += f" ({reason})"
        return IdpUser(
            id=body["id"],
            login=str(body.get("primaryEmail") or key),
            status=status,
            deactivated=suspended,
        )

    async def deactivate_user(self, user_id: str) -> None:
        # suspending a suspended user is accepted (200): idempotent as it is
        await self._call("PUT", user_id, "", f"id {user_id!r}", body={"suspended": True})

    async def revoke_sessions(self, user_id: str) -> None:
        await self._call("POST", user_id, "/signOut", f"id {user_id!r}")

    async def _call(
        self, method: str, key: str, suffix: str, looking_for: str, *, body: Any = None
    ) -> HttpResult:
        path = "/users/" + quote(key, safe="@") + suffix
        try:
            return await self._directory.request(method, path, body=body)
        except PermanentError as exc:
            if exc.status == 404:
                raise PermanentError(
                    "google", f"no Google user with {looking_for}", status=404, code=exc.code
                ) from None
            reason = rate_limit_reason(exc)
            if reason is None:
                raise
            # Google gives no wait: the retry policy's exponential backoff applies
            message = str(exc).removeprefix(f"{exc.provider}: ")
            raise TransientError("google", message, status=403, code=exc.code) from None

    def plan(self, action: str, subject: str) -> list[PlannedCall]:
        users = f"{self.directory_url}/users"
        token = PlannedCall(
            method="POST",
            target=(
                f"{self.token_url} (JWT grant as {self.delegated_admin}; only when no cached token)"
            ),
            mutates=False,
        )
        if action == actions.RESOLVE.name:
            return [token, PlannedCall(method="GET", target=f"{users}/{subject}", mutates=False)]
        if action == actions.DEACTIVATE_USER.name:
            return [
                token,
                PlannedCall(method="GET", target=f"{users}/{{id}}", mutates=False),
                PlannedCall(
                    method="PUT", target=f"{users}/{{id}} {{suspended: true}}", mutates=True
                ),
                PlannedCall(
                    method="GET", target=f"{users}/{{id}} (until suspended=true)", mutates=False
                ),
            ]
        if action == actions.REVOKE_SESSIONS.name:
            return [
                token,
                PlannedCall(method="POST", target=f"{users}/{{id}}/signOut", mutates=True),
                PlannedCall(
                    method="GET", target=f"{users}/{{id}} (still suspended=true)", mutates=False
                ),
            ]
        return []
