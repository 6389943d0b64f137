"""An emulator of Google Workspace: the OAuth token endpoint (JWT grant) and the Admin SDK
Directory API v1's users (get, update, signOut).

The token endpoint really verifies the service account's JWT: the RS256 signature
against the registered public key (PyJWT), iss, aud, the one-hour limit on iat/exp,
the scope, and domain-wide delegation (sub must be a user of the domain, and the
scope must be delegated). It issues short-lived bearer tokens; the Directory API
answers 401 UNAUTHENTICATED to anything else, and 403 to a token whose subject is
not an admin. Throttles are 403 userRateLimitExceeded / quotaExceeded or 429
rateLimitExceeded, as Google sends them, without a wait hint. Only mutations actually
applied are audited.

One server answers both hosts: the token endpoint at `/token` and the Directory API
under `/admin/directory/v1`.
"""

from __future__ import annotations

import contextvars
import json
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from worker.clock import Clock
from worker.sandbox.common import AuditLog, FaultPlan, Handler, SandboxUserAdmin, wire_time

SERVICE = "google"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
USER_SCOPE = "https://www.googleapis.com/auth/admin.directory.user"
#: RFC 7523 section 2.1: the JWT is the grant (Google's "OAuth 2.0 for server to server
#: applications"); written here, never taken from the adapter
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
READONLY_SCOPE = "https://www.googleapis.com/auth/admin.directory.user.readonly"
API_PREFIX = "/admin/directory/v1/"
CLOCK_SKEW = timedelta(minutes=5)
MAX_ASSERTION_LIFETIME = 3600
#: the 403/429 a throttle is answered with, by reason
THROTTLES: dict[str, tuple[int, str, str]] = {
    "userRateLimitExceeded": (403, "PERMISSION_DENIED", "User Rate Limit Exceeded"),
    "quotaExceeded": (
        403,
        "PERMISSION_DENIED",
        "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' "
        "of service 'admin.googleapis.com'.",
    ),
    "rateLimitExceeded": (429, "RESOURCE_EXHAUSTED", "Rate Limit Exceeded"),
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ENDPOINT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "google_endpoint", default="google.other"
)


def make_service_account_key(
    token_uri: str = GOOGLE_TOKEN_URI,
    *,
    client_email: str = "offboard@offboard-sandbox.iam.gserviceaccount.com",
    project_id: str = "offboard-sandbox",
) -> str:
    """A fresh service account JSON key file (its content), as the Cloud console hands out."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": client_email,
            "client_id": str(100000000000000000000 + secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                f"https://www.googleapis.com/robot/v1/metadata/x509/{client_email}"
            ),
            "universe_domain": "googleapis.com",
        },
        indent=2,
    )


@dataclass(frozen=True, kw_only=True)
class ServiceAccount:
    """What Google holds of a service account: its email and public key(s)."""

    client_email: str
    public_keys: dict[str, rsa.RSAPublicKey]  # by private_key_id

    @classmethod
    def from_key_file(cls, content: str) -> ServiceAccount:
        """The public half of a JSON key file (the private key is not kept)."""
        data = json.loads(content)
        private = serialization.load_pem_private_key(data["private_key"].encode(), None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("a service account key is RSA")
        return cls(
            client_email=data["client_email"],
            public_keys={data.get("private_key_id", ""): private.public_key()},
        )


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def google_error(
    status: int, message: str, reason: str, *, domain: str = "global", **extra: str
) -> web.Response:
    """Google's JSON error: {"error": {"code", "message", "errors": [...], "status"}}."""
    detail = {"message": message, "domain": domain, "reason": reason, **extra}
    return _json(
        status,
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [detail],
                "status": _STATUS_NAMES.get(status, "UNKNOWN"),
            }
        },
    )


def oauth_error(status: int, error: str, description: str) -> web.Response:
    return _json(status, {"error": error, "error_description": description})


def endpoint_name(request: web.Request) -> str:
    """The endpoint a request is for, as the fault plan names it."""
    path, method = request.path, request.method
    if path == "/token" and method == "POST":
        return "google.token"
    if path.startswith(API_PREFIX + "users/"):
        if path.endswith("/signOut"):
            return "google.sign_out" if method == "POST" else "google.other"
        return {"GET": "google.get_user", "PUT": "google.suspend"}.get(method, "google.other")
    return "google.other"


def _unauthenticated() -> web.Response:
    return google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "authError",
        location="Authorization",
        locationType="header",
    )


def _not_authorized() -> web.Response:
    return google_error(403, "Not Authorized to access this resource/api", "forbidden")


def _not_found() -> web.Response:
    return google_error(404, "Resource Not Found: userKey", "notFound")


@dataclass(kw_only=True)
class _User:
    id: str
    primary_email: str
    given_name: str
    family_name: str
    suspended: bool
    admin: bool
    sessions: int
    created: datetime


@dataclass(frozen=True, kw_only=True)
class _Token:
    subject: str | None
    scopes: frozenset[str]
    expires_at: datetime


class GoogleWorkspaceEmulator(SandboxUserAdmin):
    def __init__(
        self,
        *,
        audit: AuditLog,
        faults: FaultPlan,
        clock: Clock,
        service_account: ServiceAccount,
        delegated_scopes: Iterable[str] = (USER_SCOPE,),
        token_lifetime: float = 3599.0,
        throttle_reason: str = "userRateLimitExceeded",
        customer_id: str = "C01abcd23",
    ) -> None:
        self.audit = audit
        self.faults = faults
        self.clock = clock
        self.service_account = service_account
        #: the scopes the domain's admin delegated to the service account's client
        self.delegated_scopes: set[str] = set(delegated_scopes)
        self.token_lifetime = token_lifetime
        if throttle_reason not in THROTTLES:
            raise ValueError(f"throttle_reason is one of {sorted(THROTTLES)}")
        #: how an injected throttle is spelled: 403 userRateLimitExceeded / quotaExceeded,
        #: or 429 rateLimitExceeded
        self.throttle_reason = throttle_reason
        self.customer_id = customer_id
        #: the header and claims of every assertion accepted, for tests to inspect
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._tokens: dict[str, _Token] = {}
        self._users: dict[str, _User] = {}

    # -- the sandbox's own handles on the state ------------------------------------------

    def add_user(
        self,
        primary_email: str,
        *,
        given_name: str = "",
        family_name: str = "",
        suspended: bool = False,
        admin: bool = False,
        sessions: int = 2,
    ) -> str:
        if self._find(primary_email) is not None:
            raise ValueError(f"a Google user {primary_email!r} exists already")
        if sessions < 0:
            raise ValueError("sessions must not be negative")
        user = _User(
            # Directory user ids are 21 decimal digits
            id=str(100000000000000000000 + secrets.randbelow(9 * 10**20)),
            primary_email=primary_email,
            given_name=given_name or primary_email.partition("@")[0],
            family_name=family_name,
            suspended=suspended,
            admin=admin,
            sessions=sessions,
            created=self.clock.now(),
        )
        self._users[user.id] = user
        return user.id

    def user_status(self, user_key: str) -> str:
        """ "active" or "suspended"."""
        return "suspended" if self._get(user_key).suspended else "active"

    def live_sessions(self, user_key: str) -> int:
        return self._get(user_key).sessions

    def reactivate(self, user_key: str) -> None:
        """A human unsuspends the user behind the worker's back (the watchdog must see it)."""
        user = self._get(user_key)
        previous = user.suspended
        user.suspended = False
        self.audit.record(SERVICE, "google.unsuspend", user.id, previous_suspended=previous)

    def revoke_tokens(self) -> None:
        """Forget every issued access token: the API answers them 401."""
        self._tokens.clear()

    def _find(self, key: str) -> _User | None:
        user = self._users.get(key)
        if user is not None:
            return user
        key = key.lower()
        return next((u for u in self._users.values() if u.primary_email.lower() == key), None)

    def _get(self, key: str) -> _User:
        user = self._find(key)
        if user is None:
            raise KeyError(f"no Google user {key!r}")
        return user

    # -- the application -----------------------------------------------------------------

    def app(self) -> web.Application:
        faults: Middleware = self.faults.middleware(
            service=SERVICE,
            audit=self.audit,
            namer=endpoint_name,
            throttle=self._throttle_response,
            error=self._error_response,
        )
        app = web.Application(middlewares=[self._edge, faults, self._authenticate])
        app.router.add_post("/token", self._token)
        user = API_PREFIX + "users/{userKey}"
        app.router.add_get(user, self._get_user)
        app.router.add_put(user, self._update_user)
        app.router.add_post(user + "/signOut", self._sign_out)
        app.router.add_post("/_sandbox/google/users", self._sandbox_add_user)
        app.router.add_get("/_sandbox/google/users/{key}", self.sandbox_get_user)
        app.router.add_post("/_sandbox/google/users/{key}/unsuspend", self.sandbox_reactivate)
        return app

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        _ENDPOINT.set(endpoint_name(request))
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return google_error(404, "Not Found", "notFound")
        except web.HTTPMethodNotAllowed:
            return google_error(405, "Method Not Allowed", "httpMethodNotAllowed")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = self._tokens.get(value) if scheme.lower() == "bearer" else None
        if token is None or self.clock.now() >= token.expires_at:
            return _unauthenticated()
        needed = {USER_SCOPE} if request.method != "GET" else {USER_SCOPE, READONLY_SCOPE}
        if not token.scopes & needed:
            return google_error(
                403, "Request had insufficient authentication scopes.", "insufficientPermissions"
            )
        subject = self._find(token.subject) if token.subject else None
        if subject is None or not subject.admin or subject.suspended:
            # the service account itself, or a user who is no admin
            return _not_authorized()
        return await handler(request)

    def _throttle_response(self, retry_after: float) -> web.Response:
        # Google sends no Retry-After: the client backs off exponentially
        del retry_after
        if _ENDPOINT.get() == "google.token":
            return oauth_error(429, "rate_limit_exceeded", "Rate limit exceeded.")
        status, _, message = THROTTLES[self.throttle_reason]
        return google_error(status, message, self.throttle_reason, domain="usageLimits")

    def _error_response(self, status: int) -> web.Response:
        if _ENDPOINT.get() == "google.token":
            if status >= 500:
                return oauth_error(status, "internal_failure", "Backend Error")
            return oauth_error(status, "invalid_grant", "Invalid JWT Signature.")
        if status == 429:
            return google_error(
                429, "Rate Limit Exceeded", "rateLimitExceeded", domain="usageLimits"
            )
        if status >= 500:
            return google_error(status, "Backend Error", "backendError")
        if status == 401:
            return _unauthenticated()
        if status == 403:
            return _not_authorized()
        if status == 404:
            return _not_found()
        return google_error(status, "Invalid Input", "invalid")

    # -- the token endpoint --------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant_type = form.get("grant_type")
        if not grant_type:
            return oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != JWT_BEARER_GRANT:
            return oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion")
        if not assertion:
            return oauth_error(400, "invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return oauth_error(400, "invalid_grant", "Invalid JWT: not a JWT.")
        account = self.service_account
        if unverified.get("iss") != account.client_email:
            return oauth_error(400, "invalid_grant", "Invalid grant: account not found")
        kid = header.get("kid")
        if kid is not None:
            keys = [account.public_keys[kid]] if kid in account.public_keys else []
        else:
            keys = list(account.public_keys.values())
        claims = self._verified(assertion, keys)
        if claims is None:
            return oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        audiences = (GOOGLE_TOKEN_URI, str(request.url.with_query(None)))
        if claims.get("aud") not in audiences:
            return oauth_error(
                400,
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_URI}",
            )
        if not self._in_time(claims):
            return oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        if not scopes:
            return oauth_error(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        subject = claims.get("sub")
        if subject is not None:
            if not isinstance(subject, str) or self._find(subject) is None:
                return oauth_error(400, "invalid_grant", "Invalid email or User ID")
            if not scopes <= self.delegated_scopes:
                return oauth_error(
                    401,
                    "unauthorized_client",
                    "Client is unauthorized to retrieve access tokens using this method, or "
                    "client not authorized for any of the scopes requested.",
                )
        self.assertions.append((header, claims))
        token = "ya29." + secrets.token_urlsafe(60)
        self._tokens[token] = _Token(
            subject=subject,
            scopes=scopes,
            expires_at=self.clock.now() + timedelta(seconds=self.token_lifetime),
        )
        return _json(
            200,
            {"access_token": token, "expires_in": int(self.token_lifetime), "token_type": "Bearer"},
        )

    @staticmethod
    def _verified(assertion: str, keys: list[rsa.RSAPublicKey]) -> dict[str, Any] | None:
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    assertion,
                    key,
                    algorithms=["RS256"],
                    options={
                        # aud and the times are checked by the caller, on the sandbox's clock
                        "verify_aud": False,
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                        "require": ["iss", "aud", "iat", "exp"],
                    },
                )
            except jwt.PyJWTError:
                continue
            return claims
        return None

    def _in_time(self, claims: dict[str, Any]) -> bool:
        try:
            issued = datetime.fromtimestamp(float(claims["iat"]), UTC)
            expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        except (TypeError, ValueError, OverflowError):
            return False
        now = self.clock.now()
        lifetime = (expires - issued).total_seconds()
        return (
            0 < lifetime <= MAX_ASSERTION_LIFETIME
            and issued - CLOCK_SKEW <= now <= expires + CLOCK_SKEW
        )

    # -- Directory API ---------------------------------------------------------------------

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self._find(request.match_info["userKey"])
        if user is None:
            return _not_found()
        return _json(200, self._user_json(user))

    async def _update_user(self, request: web.Request) -> web.Response:
        user = self._find(request.match_info["userKey"])
        if user is None:
            return _not_found()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received.", "parseError")
        for name, value in body.items():
            if name != "suspended" or not isinstance(value, bool):
                return google_error(400, f"Invalid Input: {name}", "invalid")
        suspended = body.get("suspended")
        if isinstance(suspended, bool) and suspended != user.suspended:
            user.suspended = suspended
            action = "google.suspend" if suspended else "google.unsuspend"
            self.audit.record(SERVICE, action, user.id, previous_suspended=not suspended)
        return _json(200, self._user_json(user))

    async def _sign_out(self, request: web.Request) -> web.Response:
        user = self._find(request.match_info["userKey"])
        if user is None:
            return _not_found()
        ended, user.sessions = user.sessions, 0
        self.audit.record(SERVICE, "google.sign_out", user.id, ended=ended)
        return web.Response(status=204)

    def _user_json(self, user: _User) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "admin#directory#user",
            "id": user.id,
            "etag": f'"{uuid.uuid5(uuid.NAMESPACE_URL, f"{user.id}/{user.suspended}")}"',
            "primaryEmail": user.primary_email,
            "name": {
                "givenName": user.given_name,
                "familyName": user.family_name,
                "fullName": f"{user.given_name} {user.family_name}".strip(),
            },
            "isAdmin": user.admin,
            "isDelegatedAdmin": False,
            "lastLoginTime": wire_time(user.created),
            "creationTime": wire_time(user.created),
            "agreedToTerms": True,
            "suspended": user.suspended,
            "archived": False,
            "changePasswordAtNextLogin": False,
            "ipWhitelisted": False,
            "emails": [{"address": user.primary_email, "primary": True}],
            "customerId": self.customer_id,
            "orgUnitPath": "/",
            "isMailboxSetup": True,
            "isEnrolledIn2Sv": False,
            "isEnforcedIn2Sv": False,
            "includeInGlobalAddressList": True,
        }
        if user.suspended:
            body["suspensionReason"] = "ADMIN"
        return body

    # -- sandbox administration (not Google; no auth) ------------------------------------

    async def _sandbox_add_user(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            user_id = self.add_user(
                str(data["primary_email"]),
                given_name=str(data.get("given_name", "")),
                family_name=str(data.get("family_name", "")),
                suspended=bool(data.get("suspended", False)),
                admin=bool(data.get("admin", False)),
                sessions=int(data.get("sessions", 2)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json(400, {"error": f"bad user: {exc}"})
        return _json(200, {"id": user_id})

    @staticmethod
    def _sandbox_view(user: _User) -> dict[str, Any]:
        return {
            "id": user.id,
            "primary_email": user.primary_email,
            "suspended": user.suspended,
            "sessions": user.sessions,
        }
