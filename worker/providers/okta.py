"""Okta Management API over aiohttp (SSWS token)."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from worker import actions
from worker.config import OktaConfig
from worker.errors import PermanentError, TransientError
from worker.metrics import Metrics
from worker.providers.base import IdpUser, PlannedCall
from worker.providers.http import JsonHttpClient
from worker.ratelimit import Limits, RateLimiter


def okta_bucket(method: str, path: str) -> str:
    """The endpoint group of Okta's rate limits a request counts in (the keys of
    `worker.config.OKTA_BUCKETS`)."""
    parts = path.split("?")[0].strip("/").split("/")
    if parts[:3] != ["api", "v1", "users"]:
        return "logs" if parts[:3] == ["api", "v1", "logs"] else "other"
    if len(parts) == 3:
        return "users"
    if len(parts) == 4:
        return "user-read" if method == "GET" else "user-write"
    if parts[4] == "lifecycle":
        return "user-write"
    return "other"


class Okta:
    name = "okta"

    def __init__(
        self,
        config: OktaConfig,
        session: aiohttp.ClientSession,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
        buckets: Limits | None = None,
    ) -> None:
        #: the limiters of Okta's per-endpoint budgets ("okta:<bucket>"); `limiter`
        #: holds the org's cap on calls in flight
        self._buckets = buckets
        self.org_url = config.org_url.rstrip("/")
        self._http = JsonHttpClient(
            provider="okta",
            base_url=self.org_url,
            authorization=f"SSWS {config.token.resolve_token('idp.okta.token').reveal()}",
            session=session,
            timeout=config.timeout_seconds,
            limiter=limiter,
            metrics=metrics,
        )

    async def find_user(self, subject: str) -> IdpUser:
        # Okta accepts the login in place of the id on GET /users/{id}.
        return await self._get(subject, looking_for=f"login {subject!r}")

    async def get_user(self, user_id: str) -> IdpUser:
        return await self._get(user_id, looking_for=f"id {user_id!r}")

    async def _get(self, key: str, *, looking_for: str) -> IdpUser:
        try:
            path = f"/api/v1/users/{quote(key, safe='@')}"
            result = await self._http.request("GET", path, bucket=self._bucket("GET", path))
        except PermanentError as exc:
            if exc.status == 404:
                raise PermanentError(
                    "okta", f"no Okta user with {looking_for}", status=404
                ) from None
            raise
        body = result.body
        if not isinstance(body, dict) or "id" not in body or "status" not in body:
            raise PermanentError("okta", f"GET user {looking_for}: not an Okta user object")
        status = str(body["status"])
        transitioning = body.get("transitioningToStatus")
        shown = f"{status} -> {transitioning}" if transitioning else status
        return IdpUser(
            id=str(body["id"]),
            login=str((body.get("profile") or {}).get("login", key)),
            status=shown,
            # an async deactivation in flight is not yet a deactivation
            deactivated=status == "DEPROVISIONED" and not transitioning,
        )

    async def deactivate_user(self, user_id: str) -> None:
        try:
            path = f"/api/v1/users/{quote(user_id)}/lifecycle/deactivate"
            await self._http.request(
                "POST", path, params={"sendEmail": "false"}, bucket=self._bucket("POST", path)
            )
        except PermanentError:
            # Okta refuses to deactivate a DEPROVISIONED user: that is the goal reached.
            user = await self.get_user(user_id)
            if user.deactivated:
                return
            if "-> DEPROVISIONED" in user.status:
                # someone else's asynchronous deactivation is under way: wait for it
                raise TransientError(
                    "okta", f"a deactivation of {user_id} is under way ({user.status})"
                ) from None
            raise

    async def revoke_sessions(self, user_id: str) -> None:
        path = f"/api/v1/users/{quote(user_id)}/sessions"
        await self._http.request(
            "DELETE", path, params={"oauthTokens": "true"}, bucket=self._bucket("DELETE", path)
        )

    def _bucket(self, method: str, path: str) -> RateLimiter | None:
        return None if self._buckets is None else self._buckets[f"okta:{okta_bucket(method, path)}"]

    def plan(self, action: str, subject: str) -> list[PlannedCall]:
        user = f"{self.org_url}/api/v1/users"
        if action == actions.RESOLVE.name:
            return [PlannedCall(method="GET", target=f"{user}/{subject}", mutates=False)]
        if action == actions.DEACTIVATE_USER.name:
            return [
                PlannedCall(method="GET", target=f"{user}/{{id}}", mutates=False),
                PlannedCall(
                    method="POST",
                    target=f"{user}/{{id}}/lifecycle/deactivate?sendEmail=false",
                    mutates=True,
                ),
                PlannedCall(
                    method="GET", target=f"{user}/{{id}} (until DEPROVISIONED)", mutates=False
                ),
            ]
        if action == actions.REVOKE_SESSIONS.name:
            return [
                PlannedCall(
                    method="DELETE", target=f"{user}/{{id}}/sessions?oauthTokens=true", mutates=True
                ),
                PlannedCall(
                    method="GET", target=f"{user}/{{id}} (still DEPROVISIONED)", mutates=False
                ),
            ]
        return []
