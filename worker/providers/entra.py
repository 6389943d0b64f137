"""Microsoft Entra ID through Microsoft Graph v1.0 (app-only, client credentials).

The app authenticates with a client secret or, preferably, a certificate: an RS256
client assertion whose header names the certificate by its thumbprints. The access
token is cached and fetched anew five minutes before it expires.

"Deactivated" is `accountEnabled: false`, read back with `$select` (Graph leaves
accountEnabled out of a user unless asked for it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from worker import actions
from worker.clock import Clock, SystemClock
from worker.config import EntraConfig, Secret
from worker.errors import ConfigError, PermanentError
from worker.metrics import Metrics
from worker.providers.base import IdpUser, PlannedCall
from worker.providers.http import HttpResult
from worker.providers.oauth import (
    CLIENT_ASSERTION_TYPE,
    BearerJsonClient,
    IssuedToken,
    TokenCache,
    certificate_matches_key,
    client_assertion,
    load_certificate,
    load_rsa_private_key,
    request_token,
)
from worker.ratelimit import RateLimiter

SELECT = "id,userPrincipalName,accountEnabled"


def graph_scope(graph_url: str) -> str:
    """`https://graph.microsoft.com/v1.0` -> `https://graph.microsoft.com/.default`:
    the client-credentials scope is the resource (the origin) with `/.default`."""
    parts = urlsplit(graph_url)
    if not parts.scheme or not parts.netloc:
        raise ConfigError(f"idp.entra.graph_url: not an absolute URL: {graph_url!r}")
    return f"{parts.scheme}://{parts.netloc}/.default"


def user_path(key: str) -> str:
    """The path of one user by id or userPrincipalName. A UPN that starts with `$` must be
    written `/users('$...')` (Graph reads `/users/$x` as an OData segment); `#` (guest
    UPNs: `..#EXT#@..`) and `+` must be percent-encoded."""
    if key.startswith("$"):
        return "/users('" + quote(key.replace("'", "''"), safe="@$'") + "')"
    return "/users/" + quote(key, safe="@")


class Entra:
    name = "entra"

    def __init__(
        self,
        config: EntraConfig,
        session: aiohttp.ClientSession,
        limiter: RateLimiter | None = None,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.graph_url = config.graph_url.rstrip("/")
        self.token_url = (
            f"{config.login_url.rstrip('/')}/{quote(config.tenant_id, safe='')}/oauth2/v2.0/token"
        )
        self.scope = graph_scope(self.graph_url)
        self.client_id = config.client_id
        self._clock: Clock = clock or SystemClock()
        self._session = session
        self._timeout = config.timeout_seconds
        self._secret: Secret | None = None
        if config.client_secret is not None:
            self._secret = config.client_secret.resolve("idp.entra.client_secret")
            self._certificate = None
            self._key = None
        else:
            assert config.certificate_key is not None and config.certificate is not None
            self._key = load_rsa_private_key(
                config.certificate_key.resolve("idp.entra.certificate_key").reveal(),
                "idp.entra.certificate_key",
            )
            self._certificate = load_certificate(
                config.certificate.resolve("idp.entra.certificate").reveal(),
                "idp.entra.certificate",
            )
            if not certificate_matches_key(self._certificate, self._key):
                raise ConfigError(
                    "idp.entra.certificate: its public key does not belong to "
                    "idp.entra.certificate_key"
                )
        self.tokens = TokenCache(self._fetch_token, clock=self._clock)
        self._graph = BearerJsonClient(
            provider="entra",
            base_url=self.graph_url,
            tokens=self.tokens,
            session=session,
            timeout=config.timeout_seconds,
            limiter=limiter,
            metrics=metrics,
        )

    def __repr__(self) -> str:
        return f"Entra(graph_url={self.graph_url!r}, client_id={self.client_id!r})"

    async def _fetch_token(self) -> IssuedToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "scope": self.scope,
        }
        if self._secret is not None:
            form["client_secret"] = self._secret.reveal()
        else:
            assert self._key is not None and self._certificate is not None
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = client_assertion(
                client_id=self.client_id,
                audience=self.token_url,
                key=self._key,
                certificate=self._certificate,
                now=self._clock.now(),
            )
        return await request_token(
            self._session,
            provider="entra",
            url=self.token_url,
            form=form,
            timeout_seconds=self._timeout,
        )

    async def find_user(self, subject: str) -> IdpUser:
        return await self._get(subject, looking_for=f"userPrincipalName {subject!r}")

    async def get_user(self, user_id: str) -> IdpUser:
        return await self._get(user_id, looking_for=f"id {user_id!r}")

    async def _get(self, key: str, *, looking_for: str) -> IdpUser:
        body = (await self._call("GET", key, "", looking_for, params={"$select": SELECT})).body
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise PermanentError("entra", f"GET user {looking_for}: not a Graph user object")
        if "accountEnabled" not in body:
            raise PermanentError(
                "entra", f"GET user {looking_for}: Graph did not return accountEnabled"
            )
        enabled = body["accountEnabled"]
        shown = "null" if enabled is None else str(enabled).lower()
        return IdpUser(
            id=body["id"],
            login=str(body.get("userPrincipalName") or key),
            status=f"accountEnabled={shown}",
            # only an explicit false is a disabled account
            deactivated=enabled is False,
        )

    async def deactivate_user(self, user_id: str) -> None:
        # Graph answers 204 to disabling a disabled account: idempotent as it is.
        await self._call("PATCH", user_id, "", f"id {user_id!r}", body={"accountEnabled": False})

    async def revoke_sessions(self, user_id: str) -> None:
        # 200 {"value": true}; any 2xx is success (revocation takes effect within minutes)
        await self._call("POST", user_id, "/revokeSignInSessions", f"id {user_id!r}")

    async def _call(
        self,
        method: str,
        key: str,
        suffix: str,
        looking_for: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> HttpResult:
        try:
            return await self._graph.request(
                method, user_path(key) + suffix, body=body, params=params
            )
        except PermanentError as exc:
            if exc.status == 404:
                raise PermanentError(
                    "entra", f"no Entra user with {looking_for}", status=404, code=exc.code
                ) from None
            raise

    def plan(self, action: str, subject: str) -> list[PlannedCall]:
        users = f"{self.graph_url}/users"
        token = PlannedCall(
            method="POST",
            target=f"{self.token_url} (client credentials; only when no cached token)",
            mutates=False,
        )
        if action == actions.RESOLVE.name:
            return [
                token,
                PlannedCall(
                    method="GET", target=f"{users}/{subject}?$select={SELECT}", mutates=False
                ),
            ]
        if action == actions.DEACTIVATE_USER.name:
            return [
                token,
                PlannedCall(method="GET", target=f"{users}/{{id}}?$select={SELECT}", mutates=False),
                PlannedCall(
                    method="PATCH", target=f"{users}/{{id}} {{accountEnabled: false}}", mutates=True
                ),
                PlannedCall(
                    method="GET",
                    target=f"{users}/{{id}}?$select={SELECT} (until accountEnabled=false)",
                    mutates=False,
                ),
            ]
        if action == actions.REVOKE_SESSIONS.name:
            return [
                token,
                PlannedCall(
                    method="POST", target=f"{users}/{{id}}/revokeSignInSessions", mutates=True
                ),
                PlannedCall(
                    method="GET",
                    target=f"{users}/{{id}}?$select={SELECT} (still accountEnabled=false)",
                    mutates=False,
                ),
            ]
        return []
