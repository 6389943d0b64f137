"""OAuth 2.0 for the REST identity providers (Entra ID, Google Workspace).

- `request_token` posts one form to a token endpoint and classifies the answer like
  JsonHttpClient does (429/5xx/timeouts: TransientError with the server's hint; other
  4xx: PermanentError with the OAuth `error` and the first line of its description).
- `TokenCache` keeps one access token and fetches a new one before the old expires
  (five minutes before, or half its lifetime when that is shorter), one fetch at a time.
- `BearerJsonClient` is JsonHttpClient with the cached token as `Authorization: Bearer`;
  when the API says 401 it drops the token and tries once more with a fresh one.
- `client_assertion` and `sign_rs256` build RS256 JWTs with PyJWT.

Credentials never reach a message: the form is never shown, tokens and keys are
held in `Secret`s (registered with the log redactor), and messages are redacted.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from worker.clock import Clock
from worker.config import Secret
from worker.errors import ConfigError, PermanentError, TransientError
from worker.logging import redact
from worker.metrics import Metrics
from worker.providers.http import (
    TRANSIENT_STATUSES,
    HttpResult,
    JsonHttpClient,
    retry_after_seconds,
)
from worker.ratelimit import RateLimiter

#: RFC 7523: a JWT authenticating the client (Entra's certificate credential)
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 7523: a JWT as the grant itself (Google's service-account flow)
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: refresh this long before expiry (at most half the token's lifetime)
REFRESH_BEFORE_SECONDS = 300.0
#: when a token answer has no expires_in: assume a short life rather than a long one
DEFAULT_EXPIRES_IN = 300.0
_MAX_DESCRIPTION = 300


@dataclass(frozen=True, kw_only=True)
class IssuedToken:
    access_token: Secret
    expires_in: float


TokenFetcher = Callable[[], Awaitable[IssuedToken]]


@dataclass(frozen=True, kw_only=True)
class _Held:
    token: Secret
    refresh_at: datetime
    expires_at: datetime


class TokenCache:
    """One access token, fetched when first needed and again shortly before it expires."""

    def __init__(
        self,
        fetch: TokenFetcher,
        *,
        clock: Clock,
        refresh_before: float = REFRESH_BEFORE_SECONDS,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._refresh_before = refresh_before
        self._held: _Held | None = None
        self._lock = asyncio.Lock()
        #: how many tokens were fetched, for metrics and tests
        self.fetches = 0

    def __repr__(self) -> str:
        return f"TokenCache(fetches={self.fetches})"

    def _fresh(self) -> Secret | None:
        held = self._held
        if held is not None and self._clock.now() < held.refresh_at:
            return held.token
        return None

    async def token(self) -> Secret:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            # another caller may have fetched one while this one waited for the lock
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            asked_at = self._clock.now()  # the lifetime counts from before the request
            issued = await self._fetch()
            self.fetches += 1
            lifetime = max(0.0, issued.expires_in)
            margin = min(self._refresh_before, lifetime / 2)
            self._held = _Held(
                token=issued.access_token,
                refresh_at=asked_at + timedelta(seconds=lifetime - margin),
                expires_at=asked_at + timedelta(seconds=lifetime),
            )
            return issued.access_token

    def invalidate(self, token: Secret) -> None:
        """The API refused `token`: fetch anew next time (unless it was replaced already)."""
        if self._held is not None and self._held.token is token:
            self._held = None


async def request_token(
    session: aiohttp.ClientSession,
    *,
    provider: str,
    url: str,
    form: Mapping[str, str],
    timeout_seconds: float,
) -> IssuedToken:
    """POST `form` to the token endpoint `url`; the access token, or a classified error."""
    where = f"token request POST {url}"
    try:
        async with session.post(
            url,
            data=dict(form),
            headers={"Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        ) as response:
            status = response.status
            headers = response.headers
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = None
    except TimeoutError:
        raise TransientError(provider, f"{where} timed out") from None
    except aiohttp.ClientError as exc:
        raise TransientError(provider, f"{where} failed: {type(exc).__name__}") from None

    if status >= 400:
        error, summary = _oauth_error(body)
        message = redact(f"{where} answered {status} {summary}".rstrip())
        if status in TRANSIENT_STATUSES:
            hint = retry_after_seconds(headers, time.time(), throttled=status == 429)
            raise TransientError(provider, message, retry_after=hint, status=status, code=error)
        raise PermanentError(provider, message, status=status, code=error)

    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise PermanentError(provider, f"{where} answered {status} without an access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise PermanentError(provider, f"{where} issued a {token_type!r} token, not a Bearer")
    try:
        expires_in = float(body.get("expires_in", DEFAULT_EXPIRES_IN))
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    return IssuedToken(access_token=Secret(token), expires_in=expires_in)


def _oauth_error(body: Any) -> tuple[str | None, str]:
    """RFC 6749 5.2: `error` and `error_description` (its first line: Entra appends trace
    ids and timestamps on further lines)."""
    if not isinstance(body, dict):
        return None, ""
    error = body.get("error")
    code = error if isinstance(error, str) else None
    description = body.get("error_description")
    first = description.strip().splitlines()[0] if isinstance(description, str) else ""
    if len(first) > _MAX_DESCRIPTION:
        first = first[:_MAX_DESCRIPTION] + "..."
    if code and first:
        return code, f"({code}: {first})"
    if code or first:
        return code, f"({code or first})"
    return None, ""


class BearerJsonClient:
    """JsonHttpClient with `Authorization: Bearer <cached token>`."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        tokens: TokenCache,
        session: aiohttp.ClientSession,
        timeout: float,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self._tokens = tokens
        self._session = session
        self._timeout = timeout
        # one limiter for every request, whichever token it carries
        self.limiter = limiter or RateLimiter(provider)

    def __repr__(self) -> str:
        return f"BearerJsonClient(provider={self.provider!r}, base_url={self.base_url!r})"

    def _client(self, token: Secret) -> JsonHttpClient:
        return JsonHttpClient(
            provider=self.provider,
            base_url=self.base_url,
            authorization=f"Bearer {token.reveal()}",
            session=self._session,
            timeout=self._timeout,
            limiter=self.limiter,
            metrics=self.metrics,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpResult:
        token = await self._tokens.token()
        try:
            return await self._client(token).request(method, path, body=body, params=params)
        except PermanentError as exc:
            if exc.status != 401:
                raise
        # The token was revoked, or its clock and ours disagree: one fresh token, one
        # more try. A request answered 401 was not carried out, so sending it again is safe.
        self._tokens.invalidate(token)
        token = await self._tokens.token()
        return await self._client(token).request(method, path, body=body, params=params)


# -- keys, certificates and JWTs --------------------------------------------------------


def load_rsa_private_key(pem: str, where: str) -> rsa.RSAPrivateKey:
    """A PEM RSA private key (unencrypted), or a ConfigError that does not quote it."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{where}: not an unencrypted PEM private key (the value is not shown)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{where}: must be an RSA private key (RS256), not {_kind(key)}")
    return key


def load_certificate(pem: str, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ConfigError(f"{where}: not a PEM X.509 certificate") from None


def _kind(key: object) -> str:
    return type(key).__name__.lstrip("_")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def certificate_thumbprints(certificate: x509.Certificate) -> dict[str, str]:
    """The JWT headers naming a certificate: base64url SHA-256 (`x5t#S256`, preferred by
    Microsoft) and SHA-1 (`x5t`, what older registrations are looked up by) of its DER."""
    return {
        "x5t#S256": _b64url(certificate.fingerprint(hashes.SHA256())),
        "x5t": _b64url(certificate.fingerprint(hashes.SHA1())),  # noqa: S303 - a name, not a MAC
    }


def certificate_matches_key(certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> bool:
    public = certificate.public_key()
    return (
        isinstance(public, rsa.RSAPublicKey)
        and public.public_numbers() == key.public_key().public_numbers()
    )


def sign_rs256(
    claims: Mapping[str, Any],
    key: rsa.RSAPrivateKey,
    *,
    headers: Mapping[str, Any] | None = None,
) -> str:
    return jwt.encode(dict(claims), key, algorithm="RS256", headers=dict(headers or {}))


def client_assertion(
    *,
    client_id: str,
    audience: str,
    key: rsa.RSAPrivateKey,
    certificate: x509.Certificate,
    now: datetime,
    lifetime: float = 600.0,
) -> str:
    """RFC 7523 client authentication, as Entra ID wants it: iss = sub = the client id,
    aud = the token endpoint, a fresh jti, valid for at most ten minutes."""
    issued = int(now.timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(min(lifetime, 600.0)),
    }
    return sign_rs256(claims, key, headers={"typ": "JWT", **certificate_thumbprints(certificate)})
