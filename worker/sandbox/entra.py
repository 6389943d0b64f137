"""An emulator of Microsoft Entra ID: the v2.0 token endpoint and Graph v1.0 users.

The token endpoint really checks the client's credential: a client secret, or an RS256
client assertion whose signature is verified (PyJWT) against the public key of a
certificate registered on the app, found by the `x5t#S256` or `x5t` thumbprint in the
assertion's header; aud, iss, sub, time range and jti are checked too. It issues
short-lived opaque bearer tokens, and Graph answers 401 InvalidAuthenticationToken
to anything else. Graph errors have Graph's shape; token errors have the AADSTS
shape. Only mutations actually applied are audited.

One server answers both hosts: the token endpoint at `/{tenant}/oauth2/v2.0/token`
(login_url = the server's URL) and Graph under `/v1.0` (graph_url = URL + `/v1.0`).
"""

from __future__ import annotations

import base64
import contextvars
import hmac
import json
import math
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from worker.clock import Clock
from worker.sandbox.common import AuditLog, FaultPlan, Handler, SandboxUserAdmin, wire_time

SERVICE = "entra"
GRAPH_RESOURCE = "https://graph.microsoft.com"
LOGIN_HOST = "https://login.microsoftonline.com"
#: RFC 7523 section 2.2, as Microsoft's "certificate credentials" page requires it in
#: `client_assertion_type`; written here, never taken from the adapter
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Graph application permissions that allow each operation
READ_ROLES = frozenset(
    {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
DISABLE_ROLES = frozenset(
    {"User.EnableDisableAccount.All", "User.ReadWrite.All", "Directory.ReadWrite.All"}
)
REVOKE_ROLES = frozenset(
    {"User.RevokeSessions.All", "User.ReadWrite.All", "Directory.ReadWrite.All"}
)
#: the properties Graph returns for a user when no $select is given (not accountEnabled)
DEFAULT_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
CLOCK_SKEW = timedelta(minutes=5)  # what Entra tolerates in an assertion's times

# The endpoint the current request is for, so that the throttle and error responders
# (which the fault middleware calls with a status only) answer in the right shape.
_ENDPOINT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "entra_endpoint", default="entra.other"
)


def make_certificate(common_name: str = "offboard-sandbox", *, days: int = 365) -> tuple[str, str]:
    """A fresh RSA key and a self-signed certificate for it: (PEM key, PEM certificate)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM).decode()


def thumbprints(certificate: x509.Certificate) -> list[str]:
    """What a client assertion's header may name the certificate by (RFC 7515 4.1.7-4.1.8,
    Microsoft's certificate credentials): the base64url SHA-256 of its DER (`x5t#S256`)
    and the base64url SHA-1 of its DER (`x5t`, older registrations)."""
    return [
        base64.urlsafe_b64encode(certificate.fingerprint(digest)).rstrip(b"=").decode()
        for digest in (hashes.SHA256(), hashes.SHA1())  # noqa: S303 - a name, not a MAC
    ]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def _graph_date() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def graph_error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """Graph's error object: {"error": {"code", "message", "innerError"}}."""
    inner = {
        "date": _graph_date(),
        "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4()),
    }
    return _json(
        status, {"error": {"code": code, "message": message, "innerError": inner}}, headers
    )


def aadsts_error(
    status: int,
    error: str,
    code: int,
    description: str,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The identity platform's OAuth error: `AADSTSnnnn: ...` and trace lines."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return _json(
        status,
        {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
                f"Correlation ID: {correlation}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{LOGIN_HOST}/error?code={code}",
        },
        headers,
    )


def endpoint_name(request: web.Request) -> str:
    """The endpoint a request is for, as the fault plan names it."""
    path = request.path
    if request.method == "POST" and path.endswith("/oauth2/v2.0/token"):
        return "entra.token"
    if path.startswith("/v1.0/users"):
        if request.method == "POST" and path.endswith("/revokeSignInSessions"):
            return "entra.revoke_sessions"
        # PATCH /users/{id} is Graph's general update; the worker only ever disables
        return {"GET": "entra.get_user", "PATCH": "entra.disable"}.get(
            request.method, "entra.other"
        )
    return "entra.other"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


@dataclass(kw_only=True)
class _User:
    id: str
    upn: str
    display_name: str
    account_enabled: bool
    sessions: int
    on_premises_sync: bool


@dataclass(frozen=True, kw_only=True)
class _Token:
    client_id: str
    expires_at: datetime


class EntraEmulator(SandboxUserAdmin):
    def __init__(
        self,
        *,
        audit: AuditLog,
        faults: FaultPlan,
        clock: Clock,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        certificates: Iterable[str] = (),
        token_lifetime: float = 3599.0,
        roles: Iterable[str] = ("User.ReadWrite.All",),
    ) -> None:
        self.audit = audit
        self.faults = faults
        self.clock = clock
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        #: seconds an issued access token is valid (Entra: about an hour)
        self.token_lifetime = token_lifetime
        #: the app's Graph application permissions; change them to provoke 403s
        self.roles: set[str] = set(roles)
        #: the header and claims of every assertion accepted, for tests to inspect
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._keys_by_thumbprint: dict[str, rsa.RSAPublicKey] = {}
        for pem in certificates:
            self.add_certificate(pem)
        self._tokens: dict[str, _Token] = {}
        self._used_jti: set[str] = set()
        self._users: dict[str, _User] = {}

    # -- the sandbox's own handles on the state ------------------------------------------

    def add_certificate(self, certificate_pem: str) -> None:
        """Register a certificate (its public key) as a credential of the app."""
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        public = certificate.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("the sandbox takes RSA certificates only")
        for thumbprint in thumbprints(certificate):
            self._keys_by_thumbprint[thumbprint] = public

    def revoke_tokens(self) -> None:
        """Forget every issued access token (as if revoked): Graph answers them 401."""
        self._tokens.clear()

    def add_user(
        self,
        upn: str,
        *,
        display_name: str = "",
        account_enabled: bool = True,
        sessions: int = 2,
        on_premises_sync: bool = False,
    ) -> str:
        if self._find(upn) is not None:
            raise ValueError(f"an Entra user with userPrincipalName {upn!r} exists already")
        if sessions < 0:
            raise ValueError("sessions must not be negative")
        user = _User(
            id=str(uuid.uuid4()),
            upn=upn,
            display_name=display_name or upn.partition("@")[0],
            account_enabled=account_enabled,
            sessions=sessions,
            on_premises_sync=on_premises_sync,
        )
        self._users[user.id] = user
        return user.id

    def user_status(self, user_id_or_upn: str) -> str:
        """ "enabled" or "disabled"."""
        return "enabled" if self._get(user_id_or_upn).account_enabled else "disabled"

    def live_sessions(self, user_id_or_upn: str) -> int:
        return self._get(user_id_or_upn).sessions

    def reactivate(self, user_id_or_upn: str) -> None:
        """A human re-enables the account behind the worker's back (the watchdog must see it)."""
        user = self._get(user_id_or_upn)
        previous = user.account_enabled
        user.account_enabled = True
        self.audit.record(SERVICE, "entra.enable", user.id, previous_account_enabled=previous)

    def _find(self, key: str) -> _User | None:
        key = key.lower()
        for user in self._users.values():
            if user.id == key or user.upn.lower() == key:
                return user
        return None

    def _get(self, key: str) -> _User:
        user = self._find(key)
        if user is None:
            raise KeyError(f"no Entra user {key!r}")
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
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        # by id or userPrincipalName; a UPN starting with "$" only as /users('$...')
        for user in ("/v1.0/users/{key}", "/v1.0/users('{quoted}')"):
            app.router.add_get(user, self._get_user)
            app.router.add_patch(user, self._update_user)
            app.router.add_post(f"{user}/revokeSignInSessions", self._revoke)
        app.router.add_post("/_sandbox/entra/users", self._sandbox_add_user)
        app.router.add_get("/_sandbox/entra/users/{key}", self.sandbox_get_user)
        app.router.add_post("/_sandbox/entra/users/{key}/enable", self.sandbox_reactivate)
        return app

    @web.middleware
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Names the endpoint for the responders, and answers routing failures as Graph."""
        _ENDPOINT.set(endpoint_name(request))
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return graph_error(
                400, "BadRequest", f"Resource not found for the segment '{request.path}'."
            )
        except web.HTTPMethodNotAllowed:
            return graph_error(
                405, "Request_BadRequest", "Specified HTTP method is not allowed for the request."
            )

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1.0/"):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        issued = self._tokens.get(token)
        if issued is None:
            return graph_error(
                401,
                "InvalidAuthenticationToken",
                "IDX14100: JWT is not well formed, there are no dots (.).",
            )
        if self.clock.now() >= issued.expires_at:
            return graph_error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        return await handler(request)

    def _throttle_response(self, retry_after: float) -> web.Response:
        if _ENDPOINT.get() == "entra.token":
            return aadsts_error(
                429,
                "temporarily_unavailable",
                90055,
                "TenantThrottlingError - There are too many incoming requests.",
                headers=_retry_after(retry_after),
            )
        response = graph_error(
            429, "TooManyRequests", "Please retry again later.", headers=_retry_after(retry_after)
        )
        return response

    def _error_response(self, status: int) -> web.Response:
        if status == 429:
            return self._throttle_response(1.0)
        if _ENDPOINT.get() == "entra.token":
            if status >= 500:
                return aadsts_error(
                    status,
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred. Please try again.",
                )
            if status == 401:
                return aadsts_error(
                    401, "invalid_client", 7000215, "Invalid client secret provided."
                )
            return aadsts_error(status, "invalid_request", 900144, "The request is not valid.")
        if status >= 500:
            code, message = {
                503: ("serviceNotAvailable", "Service unavailable."),
                504: ("gatewayTimeout", "The gateway did not receive a response in time."),
            }.get(status, ("generalException", "General exception while processing."))
            return graph_error(status, code, message)
        if status == 401:
            return graph_error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        if status == 403:
            return _forbidden()
        if status == 404:
            return graph_error(
                404,
                "Request_ResourceNotFound",
                "Resource does not exist or one of its "
                "queried reference-property objects are not present.",
            )
        return graph_error(status, "BadRequest", "The request is not valid.")

    # -- the token endpoint --------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant != self.tenant_id:
            return aadsts_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
            )
        if request.content_type != "application/x-www-form-urlencoded":
            return _missing("grant_type")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant_type = form.get("grant_type")
        if not grant_type:
            return _missing("grant_type")
        if grant_type != "client_credentials":
            return aadsts_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        client_id = form.get("client_id")
        if not client_id:
            return _missing("client_id")
        if client_id != self.client_id:
            return aadsts_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'.",
            )
        refused = self._check_scope(form.get("scope"), request) or await self._check_credential(
            form, request
        )
        if refused is not None:
            return refused
        token = secrets.token_urlsafe(48)
        self._tokens[token] = _Token(
            client_id=client_id,
            expires_at=self.clock.now() + timedelta(seconds=self.token_lifetime),
        )
        lifetime = int(self.token_lifetime)
        return _json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            },
        )

    def _check_scope(self, scope: str | None, request: web.Request) -> web.Response | None:
        if not scope:
            return _missing("scope")
        if not scope.endswith("/.default") or " " in scope:
            return aadsts_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        resource = scope.removesuffix("/.default")
        if resource not in (GRAPH_RESOURCE, str(request.url.origin())):
            return aadsts_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{self.tenant_id}.",
            )
        return None

    async def _check_credential(
        self, form: dict[str, str], request: web.Request
    ) -> web.Response | None:
        secret, assertion = form.get("client_secret"), form.get("client_assertion")
        if secret is not None and assertion is not None:
            return aadsts_error(
                400,
                "invalid_request",
                90014,
                "The request must contain only one client credential.",
            )
        if secret is not None:
            registered = (self.client_secret or "").encode()
            if not registered or not hmac.compare_digest(secret.encode(), registered):
                return aadsts_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the "
                    "request is the client secret value, not the client secret ID, for a "
                    f"secret added to app '{self.client_id}'.",
                )
            return None
        if assertion is not None:
            return self._check_assertion(form, assertion, request)
        return aadsts_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' "
            "or 'client_secret'.",
        )

    def _check_assertion(
        self, form: dict[str, str], assertion: str, request: web.Request
    ) -> web.Response | None:
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return aadsts_error(
                400,
                "invalid_request",
                90014,
                "The required field 'client_assertion_type' is missing or not "
                f"'{CLIENT_ASSERTION_TYPE}'.",
            )
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return _malformed("The client assertion is not a JWT.")
        thumbprint = header.get("x5t#S256") or header.get("x5t")
        key = self._keys_by_thumbprint.get(thumbprint) if isinstance(thumbprint, str) else None
        if key is None:
            return aadsts_error(
                401,
                "invalid_client",
                700027,
                "The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - The key was not found., Thumbprint of "
                f"key used by client: '{thumbprint}']",
            )
        endpoint = str(request.url.with_query(None))
        audiences = [endpoint, f"{LOGIN_HOST}/{self.tenant_id}/oauth2/v2.0/token"]
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=["RS256", "PS256"],
                audience=audiences,
                options={
                    # the times are checked below, against the sandbox's clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["aud", "exp", "iss", "sub", "jti"],
                },
            )
        except jwt.InvalidSignatureError:
            return aadsts_error(
                401, "invalid_client", 700027, "Client assertion failed signature validation."
            )
        except jwt.InvalidAudienceError:
            return _malformed(f"The audience of the client assertion is not '{endpoint}'.")
        except jwt.PyJWTError as exc:
            return _malformed(f"The client assertion is not valid: {exc}.")
        if claims["iss"] != self.client_id or claims["sub"] != self.client_id:
            return aadsts_error(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        now = self.clock.now()
        try:
            expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
            starts = datetime.fromtimestamp(float(claims.get("nbf", claims["exp"])), UTC)
        except (TypeError, ValueError, OverflowError):
            return _malformed("The client assertion's times are not numbers.")
        if expires + CLOCK_SKEW < now or starts - CLOCK_SKEW > now:
            return aadsts_error(
                401,
                "invalid_client",
                700024,
                f"Client assertion is not within its valid time range. Current time: "
                f"{wire_time(now)}, assertion valid from {wire_time(starts)}, expiry time of "
                f"assertion {wire_time(expires)}.",
            )
        jti = str(claims["jti"])
        if jti in self._used_jti:
            return _malformed("The client assertion's jti was used before.")
        self._used_jti.add(jti)
        self.assertions.append((header, claims))
        return None

    # -- Graph endpoints -----------------------------------------------------------------

    def _lookup(self, request: web.Request) -> tuple[str, _User | None]:
        if "quoted" in request.match_info:
            key = request.match_info["quoted"].replace("''", "'")
        else:
            key = request.match_info["key"]
        return key, self._find(key)

    def _allowed(self, roles: frozenset[str]) -> bool:
        return bool(self.roles & roles)

    async def _get_user(self, request: web.Request) -> web.Response:
        key, user = self._lookup(request)
        if key.startswith("$") and "quoted" not in request.match_info:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{key}'.")
        if not self._allowed(READ_ROLES):
            return _forbidden()
        if user is None:
            return _not_found(key)
        select = request.query.get("$select")
        names = [n.strip() for n in select.split(",")] if select else list(DEFAULT_PROPERTIES)
        full = self._user_json(user)
        unknown = [n for n in names if n not in full]
        if unknown:
            return graph_error(
                400,
                "BadRequest",
                f"Parsing OData Select and Expand failed: Could not find a property named "
                f"'{unknown[0]}' on type 'microsoft.graph.user'.",
            )
        origin = str(request.url.origin())
        context = f"users({','.join(names)})/$entity" if select else "users/$entity"
        body = {"@odata.context": f"{origin}/v1.0/$metadata#{context}"}
        body.update({n: full[n] for n in names})
        return _json(200, body)

    async def _update_user(self, request: web.Request) -> web.Response:
        key, user = self._lookup(request)
        if user is None:
            return _not_found(key)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return graph_error(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set "
                "and payload is of valid JSON format.",
            )
        for name, value in body.items():
            if name != "accountEnabled":
                return graph_error(400, "Request_BadRequest", f"Invalid property '{name}'.")
            if not isinstance(value, bool):
                return graph_error(
                    400,
                    "BadRequest",
                    f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'.",
                )
        if "accountEnabled" not in body:
            return web.Response(status=204)
        if not self._allowed(DISABLE_ROLES):
            return _forbidden()
        if user.on_premises_sync:
            return graph_error(
                400,
                "Request_BadRequest",
                "Unable to update the specified properties for on-premises mastered Directory "
                "Sync objects or objects currently undergoing migration.",
            )
        enabled: bool = body["accountEnabled"]
        if enabled != user.account_enabled:
            user.account_enabled = enabled
            action = "entra.enable" if enabled else "entra.disable"
            self.audit.record(SERVICE, action, user.id, previous_account_enabled=not enabled)
        # Graph answers 204 whether or not anything changed
        return web.Response(status=204)

    async def _revoke(self, request: web.Request) -> web.Response:
        key, user = self._lookup(request)
        if user is None:
            return _not_found(key)
        if not self._allowed(REVOKE_ROLES):
            return _forbidden()
        ended, user.sessions = user.sessions, 0
        self.audit.record(SERVICE, "entra.revoke_sessions", user.id, ended=ended)
        origin = str(request.url.origin())
        return _json(200, {"@odata.context": f"{origin}/v1.0/$metadata#Edm.Boolean", "value": True})

    @staticmethod
    def _user_json(user: _User) -> dict[str, Any]:
        given, _, surname = user.display_name.partition(" ")
        return {
            "id": user.id,
            "userPrincipalName": user.upn,
            "displayName": user.display_name,
            "givenName": given or None,
            "surname": surname or None,
            "mail": user.upn,
            "businessPhones": [],
            "jobTitle": None,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "accountEnabled": user.account_enabled,
            "onPremisesSyncEnabled": True if user.on_premises_sync else None,
        }

    # -- sandbox administration (not Graph; no auth) -------------------------------------

    async def _sandbox_add_user(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            user_id = self.add_user(
                str(data["upn"]),
                display_name=str(data.get("display_name", "")),
                account_enabled=bool(data.get("account_enabled", True)),
                sessions=int(data.get("sessions", 2)),
                on_premises_sync=bool(data.get("on_premises_sync", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json(400, {"error": f"bad user: {exc}"})
        return _json(200, {"id": user_id})

    @staticmethod
    def _sandbox_view(user: _User) -> dict[str, Any]:
        return {
            "id": user.id,
            "upn": user.upn,
            "account_enabled": user.account_enabled,
            "sessions": user.sessions,
        }


def _missing(parameter: str) -> web.Response:
    return aadsts_error(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{parameter}'.",
    )


def _malformed(detail: str) -> web.Response:
    return aadsts_error(
        401, "invalid_client", 50027, f"JWT token is invalid or malformed. {detail}"
    )


def _forbidden() -> web.Response:
    return graph_error(
        403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
    )


def _not_found(key: str) -> web.Response:
    return graph_error(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects "
        "are not present.",
    )
