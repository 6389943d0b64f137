"""The sandbox: emulators of Okta, Entra ID, Google Workspace and Identity Center on
loopback, sharing one audit log and one fault plan. It serves `offboard demo`, the
tests and the benchmarks."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.clock import Clock, SystemClock
from worker.sandbox.common import AuditLog, FaultPlan, Served, serve_on_loopback
from worker.sandbox.entra import EntraEmulator
from worker.sandbox.google import API_PREFIX as GOOGLE_API_PREFIX
from worker.sandbox.google import (
    GOOGLE_TOKEN_URI,
    GoogleWorkspaceEmulator,
    ServiceAccount,
    make_service_account_key,
)
from worker.sandbox.identity_center import IdentityCenterEmulator
from worker.sandbox.okta import OktaEmulator

IdpName = Literal["okta", "entra", "google"]
ENTRA_TENANT = "7d0c0ffe-0000-4000-8000-00000000c0de"
ENTRA_CLIENT = "0ff80a2d-0000-4000-8000-0000000000a1"
GOOGLE_ADMIN = "offboard-admin@example.com"


@dataclass(frozen=True, kw_only=True)
class SandboxCredentials:
    okta_token: str = field(default_factory=lambda: "00" + secrets.token_urlsafe(30))
    entra_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    google_key: str = field(default_factory=lambda: make_service_account_key(GOOGLE_TOKEN_URI))
    scim_token: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    aws_access_key_id: str = "AKIASANDBOX0000001"
    aws_secret_access_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))


@dataclass(frozen=True, kw_only=True)
class SeededUser:
    login: str
    okta_id: str
    ic_user_id: str
    portal_sessions: tuple[str, ...]
    #: the Identity Center group the person is in (world changes may assign to it)
    ic_group_id: str = ""
    #: application name -> ARN, for the applications asked for
    applications: dict[str, str] = field(default_factory=dict)


class Sandbox:
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        credentials: SandboxCredentials | None = None,
        seed: int = 0,
        idp: IdpName = "okta",
    ) -> None:
        #: the identity provider seeded users live in and the config points at
        self.idp: IdpName = idp
        self.clock = clock or SystemClock()
        self.credentials = credentials or SandboxCredentials()
        self.audit = AuditLog(self.clock)
        self.faults = FaultPlan(seed)
        self.okta = OktaEmulator(
            audit=self.audit,
            faults=self.faults,
            clock=self.clock,
            api_token=self.credentials.okta_token,
        )
        self.identity_center = IdentityCenterEmulator(
            audit=self.audit,
            faults=self.faults,
            clock=self.clock,
            scim_token=self.credentials.scim_token,
            access_key_id=self.credentials.aws_access_key_id,
        )
        self.entra = EntraEmulator(
            audit=self.audit,
            faults=self.faults,
            clock=self.clock,
            tenant_id=ENTRA_TENANT,
            client_id=ENTRA_CLIENT,
            client_secret=self.credentials.entra_client_secret,
        )
        self.google = GoogleWorkspaceEmulator(
            audit=self.audit,
            faults=self.faults,
            clock=self.clock,
            service_account=ServiceAccount.from_key_file(self.credentials.google_key),
        )
        self.google.add_user(GOOGLE_ADMIN, admin=True)
        self._served: list[Served] = []
        self.okta_url = ""
        self.identity_center_url = ""
        self.entra_url = ""
        self.google_url = ""

    async def start(
        self,
        *,
        okta_port: int = 0,
        identity_center_port: int = 0,
        entra_port: int = 0,
        google_port: int = 0,
    ) -> Sandbox:
        okta = await serve_on_loopback(self.okta.app(), okta_port)
        ic = await serve_on_loopback(self.identity_center.app(), identity_center_port)
        entra = await serve_on_loopback(self.entra.app(), entra_port)
        google = await serve_on_loopback(self.google.app(), google_port)
        self._served = [okta, ic, entra, google]
        self.okta_url = okta.url
        self.identity_center_url = ic.url
        self.entra_url = entra.url
        self.google_url = google.url
        return self

    async def stop(self) -> None:
        for served in self._served:
            await served.close()
        self._served = []

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def seed_leaver(
        self,
        login: str,
        *,
        okta_sessions: int = 2,
        portal_sessions: int = 2,
        applications: Sequence[tuple[str, bool]] = (),
    ) -> SeededUser:
        """A person as they stand on their last day: active everywhere, signed in,
        with AWS access directly and through a group; and, when asked, applications
        `(name, user background sessions enabled)` assigned to that group."""
        first = login.partition("@")[0]
        if self.idp == "entra":
            idp_id = self.entra.add_user(
                login, display_name=first.capitalize(), sessions=okta_sessions
            )
        elif self.idp == "google":
            idp_id = self.google.add_user(
                login, given_name=first.capitalize(), family_name="Leaver", sessions=okta_sessions
            )
        else:
            idp_id = self.okta.add_user(
                login, first_name=first.capitalize(), last_name="Leaver", sessions=okta_sessions
            )
        ic = self.identity_center
        user_id = ic.add_user(login, display_name=first.capitalize(), email=login)
        admin = ic.add_permission_set("AdministratorAccess", session_duration="PT12H")
        readonly = ic.add_permission_set("ReadOnly", session_duration="PT4H")
        group = ic.add_group(f"engineering-{first}")
        ic.add_membership(group, user_id)
        ic.add_account_assignment(
            account_id="111122223333",
            permission_set_arn=admin,
            principal_type="USER",
            principal_id=user_id,
        )
        ic.add_account_assignment(
            account_id="444455556666",
            permission_set_arn=readonly,
            principal_type="GROUP",
            principal_id=group,
        )
        apps = {
            name: ic.add_application(name, background_sessions=background)
            for name, background in applications
        }
        for arn in apps.values():
            ic.assign_application(arn, principal_type="GROUP", principal_id=group)
        sessions = tuple(ic.open_portal_session(user_id) for _ in range(portal_sessions))
        return SeededUser(
            login=login,
            okta_id=idp_id,
            ic_user_id=user_id,
            portal_sessions=sessions,
            ic_group_id=group,
            applications=apps,
        )

    def config_data(
        self, *, sqlite_path: str, env_prefix: str = "OFFBOARD_SANDBOX_"
    ) -> dict[str, Any]:
        """Configuration for a worker pointed at this sandbox; secrets by env reference."""
        return {
            "store": {"sqlite": sqlite_path},
            "idp": self._idp_config(env_prefix),
            "identity_center": {
                "region": "us-east-1",
                "identity_store_id": self.identity_center.identity_store_id,
                "instance_arn": self.identity_center.instance_arn,
                "identity_source": "scim",
                "endpoint_url": self.identity_center_url,
                "scim": {
                    "url": f"{self.identity_center_url}/scim/v2",
                    "token": {"env": f"{env_prefix}SCIM_TOKEN"},
                },
                "credentials": {
                    "access_key_id": {"env": f"{env_prefix}AWS_ACCESS_KEY_ID"},
                    "secret_access_key": {"env": f"{env_prefix}AWS_SECRET_ACCESS_KEY"},
                },
            },
        }

    def _idp_config(self, env_prefix: str) -> dict[str, Any]:
        if self.idp == "entra":
            return {
                "entra": {
                    "tenant_id": ENTRA_TENANT,
                    "client_id": ENTRA_CLIENT,
                    "client_secret": {"env": f"{env_prefix}ENTRA_CLIENT_SECRET"},
                    "login_url": self.entra_url,
                    "graph_url": f"{self.entra_url}/v1.0",
                }
            }
        if self.idp == "google":
            return {
                "google": {
                    "service_account": {"env": f"{env_prefix}GOOGLE_KEY"},
                    "delegated_admin": GOOGLE_ADMIN,
                    "directory_url": f"{self.google_url}{GOOGLE_API_PREFIX.rstrip('/')}",
                    "token_url": f"{self.google_url}/token",
                }
            }
        return {"okta": {"org_url": self.okta_url, "token": {"env": f"{env_prefix}OKTA_TOKEN"}}}

    def environment(self, env_prefix: str = "OFFBOARD_SANDBOX_") -> dict[str, str]:
        return {
            f"{env_prefix}OKTA_TOKEN": self.credentials.okta_token,
            f"{env_prefix}ENTRA_CLIENT_SECRET": self.credentials.entra_client_secret,
            f"{env_prefix}GOOGLE_KEY": self.credentials.google_key,
            f"{env_prefix}SCIM_TOKEN": self.credentials.scim_token,
            f"{env_prefix}AWS_ACCESS_KEY_ID": self.credentials.aws_access_key_id,
            f"{env_prefix}AWS_SECRET_ACCESS_KEY": self.credentials.aws_secret_access_key,
        }
