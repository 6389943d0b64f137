"""A mechanistic model of AWS IAM Identity Center sessions after a user is cut off.

Nothing here computes when access lapses. The model holds session objects (sign-in
sessions with a cached validation, application sessions refreshed off them, role sessions
with an expiry, the CLI's own token cache) and answers, at one moment, whether one of them
can be used or a new one obtained. `SimulatedLeaver` steps a clock and tries everything at
every step; the last step at which something worked is the truth that a predicted "all
access lapsed" time must not undercut.

The facts come from AWS's "Authentication sessions" page and the session-management blog
post (see `AwsSessionFacts`). What the world looks like at a moment (is the user enabled,
which assignments reach them, is a deny provisioned) is asked of a `Directory`; `Timeline`
is the in-memory one, fed by hand or by the Identity Center emulator.

Everything is synchronous and deterministic: session ids are counters, and the phase of a
cached validation is whatever time the caller gives.
"""

from __future__ import annotations

import bisect
import copy
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from worker.sandbox.common import wire_time

__all__ = [
    "Access",
    "AccessKind",
    "ApplicationSession",
    "AwsSessionFacts",
    "BackgroundSession",
    "CliCredentialCache",
    "Directory",
    "Entitlement",
    "LeaverReport",
    "RoleSession",
    "SessionModel",
    "SignInSession",
    "SimulatedLeaver",
    "Timeline",
    "denial_in_policy",
    "parse_session_duration",
]

HOUR = timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
class AwsSessionFacts:
    """The documented durations; change them only to explore "what if AWS said otherwise"."""

    #: A sign-in session re-checks the directory (user enabled, session not deleted) only
    #: when its cached validation is older than this ("cached for one hour").
    signin_validation_cache: timedelta = HOUR
    #: An application session lives this long after it was issued or last refreshed;
    #: each refresh needs the sign-in session it came from to be valid.
    app_session_lifetime: timedelta = HOUR
    #: The CLI's token is re-checked against the directory only when its cached validation
    #: is older than this ("up to an hour for the CLI to terminate").
    cli_credential_cache: timedelta = HOUR
    #: After a ProvisionPermissionSet that adds a deny succeeds, it bites this much later.
    deny_propagation: timedelta = timedelta(minutes=5)
    #: After an assignment or group membership is removed, new role sessions through it are
    #: still granted for this long.
    assignment_propagation: timedelta = timedelta(minutes=5)
    #: The access-portal (sign-in) session duration, 15 min to 90 days; AWS's default is 8 h.
    portal_session_duration: timedelta = timedelta(hours=8)
    #: A permission set's SessionDuration when none is known (AWS's default, PT1H).
    default_role_session_duration: timedelta = HOUR
    #: A user background session lives this long from its start, whatever happens to the
    #: sign-in session it came from (instance setting, 15 min to 90 days; AWS's default 7 d).
    background_session_duration: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        for name in (
            "signin_validation_cache",
            "app_session_lifetime",
            "cli_credential_cache",
            "portal_session_duration",
            "default_role_session_duration",
            "background_session_duration",
        ):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        for name in ("deny_propagation", "assignment_propagation"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class Entitlement:
    """One permission set in one account that the user can start a role session for."""

    permission_set_arn: str
    account_id: str
    session_duration: timedelta

    @property
    def target(self) -> str:
        return f"{self.account_id}/{self.permission_set_arn}"


class Directory(Protocol):
    """The state of the world the sessions are checked against, at any moment."""

    @property
    def facts(self) -> AwsSessionFacts: ...

    def user_enabled(self, user_id: str, at: datetime) -> bool:
        """Whether the user is enabled in Identity Center at `at`."""
        ...

    def idp_allows_sign_in(self, user_id: str, at: datetime) -> bool:
        """Whether the identity provider still authenticates the user at `at`."""
        ...

    def sign_in_sessions_deleted_at(self, user_id: str, issued_at: datetime) -> datetime | None:
        """When a sign-in session issued at `issued_at` was deleted, if ever.

        A deletion ends every session issued up to it, so the answer never comes earlier
        for a later `issued_at`.
        """
        ...

    def entitlements(self, user_id: str, at: datetime) -> frozenset[Entitlement]:
        """What a new role session can be started for at `at` (removal propagation included)."""
        ...

    def applications(self, user_id: str, at: datetime) -> frozenset[str]:
        """The applications a new application session can be started for at `at`."""
        ...

    def background_sessions_enabled(self, application_id: str, at: datetime) -> bool:
        """Whether the application lets a user start a background session at `at`."""
        ...

    def role_use_denied(
        self, user_id: str, permission_set_arn: str, account_id: str, at: datetime
    ) -> bool:
        """Whether a provisioned deny refuses the user's use of that role at `at`."""
        ...


# ---------------------------------------------------------------- session objects


@dataclass(kw_only=True)
class SignInSession:
    """An access-portal session (browser or CLI login)."""

    session_id: str
    user_id: str
    issued_at: datetime
    expires_at: datetime
    #: The last time the directory was asked whether this session may go on.
    last_validated_at: datetime
    #: When the session was deleted in the console, once the model has seen it.
    deleted_at: datetime | None = None
    #: When a re-validation refused it or it expired; it never comes back.
    ended_at: datetime | None = None


@dataclass(kw_only=True)
class ApplicationSession:
    session_id: str
    user_id: str
    application_id: str
    #: The sign-in session it was obtained from and is refreshed off.
    issued_from: str
    issued_at: datetime
    last_refreshed_at: datetime
    lifetime: timedelta
    ended_at: datetime | None = None

    @property
    def valid_until(self) -> datetime:
        return self.last_refreshed_at + self.lifetime


@dataclass(kw_only=True)
class BackgroundSession:
    """A user background session (an AWS managed application with trusted identity
    propagation running a job on the user's behalf)."""

    session_id: str
    user_id: str
    application_id: str
    #: The sign-in session it was started from; it does not depend on it afterwards.
    issued_from: str
    started_at: datetime
    expires_at: datetime


@dataclass(kw_only=True)
class RoleSession:
    """IAM role credentials in one account, from the portal (console) or the CLI."""

    session_id: str
    user_id: str
    permission_set_arn: str
    account_id: str
    issued_at: datetime
    expires_at: datetime
    via: str

    @property
    def target(self) -> str:
        return f"{self.account_id}/{self.permission_set_arn}"


@dataclass(kw_only=True)
class CliCredentialCache:
    """The CLI's SSO token for one sign-in session, and its own cached validation of it.

    The CLI fetches role credentials with the token; the token is re-checked against the
    directory itself (not through the browser's cached validation) once its cache is stale.
    """

    sign_in_session_id: str
    user_id: str
    validated_at: datetime
    ended_at: datetime | None = None


# ---------------------------------------------------------------- the model


class SessionModel:
    """Every session of every user, and the rules for using or obtaining one at a moment.

    Callers move forward in time: a session is only ever asked about moments at or after
    the last one it was asked about.
    """

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._sign_ins: dict[str, SignInSession] = {}
        self._by_user: dict[str, list[SignInSession]] = {}
        self._clis: dict[str, CliCredentialCache] = {}
        self._applications: list[ApplicationSession] = []
        self._background: list[BackgroundSession] = []
        self._roles: list[RoleSession] = []
        self._counter = 0

    @property
    def facts(self) -> AwsSessionFacts:
        return self.directory.facts

    def fork(self) -> SessionModel:
        """An independent copy of the sessions over the same directory, for a what-if run."""
        twin = SessionModel(self.directory)
        twin._sign_ins = copy.deepcopy(self._sign_ins)
        twin._by_user = {
            user: [twin._sign_ins[s.session_id] for s in sessions]
            for user, sessions in self._by_user.items()
        }
        twin._clis = copy.deepcopy(self._clis)
        twin._applications = copy.deepcopy(self._applications)
        twin._background = copy.deepcopy(self._background)
        twin._roles = copy.deepcopy(self._roles)
        twin._counter = self._counter
        return twin

    def _new_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}-{self._counter}"

    # ------------------------------------------------------------ sign-in sessions

    def add_sign_in_session(
        self,
        user_id: str,
        *,
        issued_at: datetime,
        validated_at: datetime | None = None,
        expires_at: datetime | None = None,
        session_id: str | None = None,
    ) -> SignInSession:
        """Seed an existing session; `validated_at` sets the phase of its cached validation."""
        session = SignInSession(
            session_id=session_id or self._new_id("signin"),
            user_id=user_id,
            issued_at=issued_at,
            expires_at=expires_at or issued_at + self.facts.portal_session_duration,
            last_validated_at=validated_at or issued_at,
        )
        if session.session_id in self._sign_ins:
            raise ValueError(f"sign-in session {session.session_id!r} exists")
        if not issued_at <= session.last_validated_at < session.expires_at:
            raise ValueError("a session is validated between its issue and its expiry")
        self._sign_ins[session.session_id] = session
        self._by_user.setdefault(user_id, []).append(session)
        return session

    def sign_in(self, user_id: str, at: datetime) -> SignInSession | None:
        """Authenticate anew: needs the IdP to let the user in and Identity Center to agree."""
        if not (
            self.directory.idp_allows_sign_in(user_id, at)
            and self.directory.user_enabled(user_id, at)
        ):
            return None
        return self.add_sign_in_session(user_id, issued_at=at)

    def sign_in_sessions(self, user_id: str) -> list[SignInSession]:
        return list(self._by_user.get(user_id, ()))

    def sign_in_session(self, session_id: str) -> SignInSession:
        return self._sign_ins[session_id]

    def _deleted_by(self, session: SignInSession, at: datetime) -> bool:
        deleted = self.directory.sign_in_sessions_deleted_at(session.user_id, session.issued_at)
        if deleted is not None and deleted <= at:
            session.deleted_at = deleted
            return True
        return False

    def _directory_accepts(self, session: SignInSession, at: datetime) -> bool:
        """The uncached check: the user is enabled and the session was not deleted."""
        return self.directory.user_enabled(session.user_id, at) and not self._deleted_by(
            session, at
        )

    def check_sign_in(self, session: SignInSession, at: datetime) -> bool:
        """Whether the session is valid at `at`; re-validates only when the cache is stale."""
        if session.ended_at is not None:
            return False
        if at >= session.expires_at:
            session.ended_at = session.expires_at
            return False
        if at - session.last_validated_at <= self.facts.signin_validation_cache:
            return True
        if self._directory_accepts(session, at):
            session.last_validated_at = at
            return True
        session.ended_at = at
        return False

    # ------------------------------------------------------------ the CLI

    def attach_cli(
        self, session: SignInSession, *, validated_at: datetime | None = None
    ) -> CliCredentialCache:
        """The CLI logged in with `session`; its token was last validated at `validated_at`."""
        existing = self._clis.get(session.session_id)
        if existing is not None:
            return existing
        cli = CliCredentialCache(
            sign_in_session_id=session.session_id,
            user_id=session.user_id,
            validated_at=validated_at or session.last_validated_at,
        )
        self._clis[session.session_id] = cli
        return cli

    def cli_of(self, session: SignInSession) -> CliCredentialCache | None:
        return self._clis.get(session.session_id)

    def check_cli(self, cli: CliCredentialCache, at: datetime) -> bool:
        """Whether the CLI's token still fetches credentials at `at`."""
        if cli.ended_at is not None:
            return False
        session = self._sign_ins[cli.sign_in_session_id]
        if at >= session.expires_at:
            cli.ended_at = session.expires_at
            return False
        if at - cli.validated_at <= self.facts.cli_credential_cache:
            return True
        if self._directory_accepts(session, at):
            cli.validated_at = at
            return True
        cli.ended_at = at
        return False

    # ------------------------------------------------------------ application sessions

    def start_application_session(
        self, session: SignInSession, application_id: str, at: datetime
    ) -> ApplicationSession | None:
        if application_id not in self.directory.applications(session.user_id, at):
            return None
        if not self.check_sign_in(session, at):
            return None
        app = ApplicationSession(
            session_id=self._new_id("app"),
            user_id=session.user_id,
            application_id=application_id,
            issued_from=session.session_id,
            issued_at=at,
            last_refreshed_at=at,
            lifetime=self.facts.app_session_lifetime,
        )
        self._applications.append(app)
        return app

    def refresh_application_session(self, app: ApplicationSession, at: datetime) -> bool:
        """Extend the session off its sign-in session; a failed refresh ends it once stale."""
        if app.ended_at is not None:
            return False
        if self.check_sign_in(self._sign_ins[app.issued_from], at):
            app.last_refreshed_at = at
            return True
        if at >= app.valid_until:
            app.ended_at = app.valid_until
        return False

    def use_application_session(self, app: ApplicationSession, at: datetime) -> bool:
        """Use the application: off the session's lifetime, or re-verified once it is stale."""
        if app.ended_at is not None:
            return False
        if at < app.valid_until:
            return True
        return self.refresh_application_session(app, at)

    def application_sessions(self, user_id: str) -> list[ApplicationSession]:
        return [a for a in self._applications if a.user_id == user_id]

    # ------------------------------------------------------------ user background sessions

    def start_background_session(
        self, session: SignInSession, application_id: str, at: datetime
    ) -> BackgroundSession | None:
        """Start a job that outlives the sign-in: needs what an application session needs,
        and the application's background sessions ENABLED at `at`."""
        directory = self.directory
        if application_id not in directory.applications(session.user_id, at):
            return None
        if not directory.background_sessions_enabled(application_id, at):
            return None
        if not self.check_sign_in(session, at):
            return None
        background = BackgroundSession(
            session_id=self._new_id("background"),
            user_id=session.user_id,
            application_id=application_id,
            issued_from=session.session_id,
            started_at=at,
            expires_at=at + self.facts.background_session_duration,
        )
        self._background.append(background)
        return background

    def use_background_session(self, background: BackgroundSession, at: datetime) -> bool:
        """It survives sign-out and the sign-in session's expiry (documented). Whether a
        disable or a later DISABLED setting ends it is not documented: the conservative
        reading is that nothing but its own duration does."""
        return at < background.expires_at

    def background_sessions(self, user_id: str) -> list[BackgroundSession]:
        return [b for b in self._background if b.user_id == user_id]

    # ------------------------------------------------------------ role sessions

    def _new_role_session(
        self, user_id: str, entitlement: Entitlement, at: datetime, via: str
    ) -> RoleSession | None:
        if entitlement not in self.directory.entitlements(user_id, at):
            return None
        role = RoleSession(
            session_id=self._new_id("role"),
            user_id=user_id,
            permission_set_arn=entitlement.permission_set_arn,
            account_id=entitlement.account_id,
            issued_at=at,
            expires_at=at + entitlement.session_duration,
            via=via,
        )
        self._roles.append(role)
        return role

    def start_role_session(
        self, session: SignInSession, entitlement: Entitlement, at: datetime
    ) -> RoleSession | None:
        """Federate from the portal: needs a valid sign-in session and a live assignment.

        A provisioned deny does not stop this: it refuses every use of the session instead.
        """
        if not self.check_sign_in(session, at):
            return None
        return self._new_role_session(session.user_id, entitlement, at, "portal")

    def cli_start_role_session(
        self, cli: CliCredentialCache, entitlement: Entitlement, at: datetime
    ) -> RoleSession | None:
        """GetRoleCredentials with the CLI's token."""
        if not self.check_cli(cli, at):
            return None
        return self._new_role_session(cli.user_id, entitlement, at, "cli")

    def use_role_session(self, role: RoleSession, at: datetime) -> bool:
        """Role sessions outlive disable, portal-session deletion and assignment removal."""
        if at >= role.expires_at:
            return False
        return not self.directory.role_use_denied(
            role.user_id, role.permission_set_arn, role.account_id, at
        )

    def role_sessions(self, user_id: str) -> list[RoleSession]:
        return [r for r in self._roles if r.user_id == user_id]


# ---------------------------------------------------------------- the leaver


class AccessKind(StrEnum):
    SIGN_IN = "sign_in"
    """A new sign-in session (authentication at the IdP and Identity Center)."""
    SESSION_START = "session_start"
    """A new application or role session obtained through Identity Center."""
    APPLICATION = "application"
    """Use of an application through an application session."""
    BACKGROUND = "background"
    """Use of an application by a user background session (a job running on)."""
    AWS_ACCOUNT = "aws_account"
    """Use of an AWS account through a role session that no deny refuses."""


@dataclass(frozen=True)
class Access:
    kind: AccessKind
    at: datetime
    #: "portal", an application id, or "<account>/<permission set arn>"
    target: str
    #: "portal" (browser) or "cli"
    via: str


@dataclass(frozen=True, kw_only=True)
class LeaverReport:
    user_id: str
    start: datetime
    until: datetime
    step: timedelta
    accesses: tuple[Access, ...]

    def last(
        self,
        kind: AccessKind | None = None,
        *,
        target: str | None = None,
        via: str | None = None,
    ) -> datetime | None:
        """The last successful access matching every given filter."""
        times = [
            a.at
            for a in self.accesses
            if (kind is None or a.kind == kind)
            and (target is None or a.target == target)
            and (via is None or a.via == via)
        ]
        return max(times, default=None)

    @property
    def last_access(self) -> datetime | None:
        return self.last()

    @property
    def by_kind(self) -> dict[AccessKind, datetime | None]:
        return {kind: self.last(kind) for kind in AccessKind}

    def as_json(self) -> dict[str, Any]:
        def iso(when: datetime | None) -> str | None:
            return None if when is None else wire_time(when)

        return {
            "last_access": iso(self.last_access),
            "by_kind": {kind.value: iso(when) for kind, when in self.by_kind.items()},
            "accesses": len(self.accesses),
        }


@dataclass
class _Held:
    """One sign-in session the leaver holds, with the CLI and application sessions off it."""

    session: SignInSession
    cli: CliCredentialCache | None
    apps: dict[str, ApplicationSession] = field(default_factory=dict)

    def alive(self) -> bool:
        return (
            self.session.ended_at is None
            or (self.cli is not None and self.cli.ended_at is None)
            or any(a.ended_at is None for a in self.apps.values())
        )

    def state(self) -> tuple[object, ...]:
        """Everything but the issue and expiry times that decides what this can still do."""
        return (
            self.session.last_validated_at,
            self.session.ended_at,
            None if self.cli is None else (self.cli.validated_at, self.cli.ended_at),
            tuple(
                sorted(
                    (a.application_id, a.last_refreshed_at, a.ended_at is None)
                    for a in self.apps.values()
                )
            ),
        )


class SimulatedLeaver:
    """A person who keeps trying every way in, every `step`, and notes what worked.

    At each step: sign in again; for every held sign-in session re-check it, attach the
    CLI, open every reachable application and refresh every application session; start a
    role session for every entitlement from the portal and from the CLI; then use every
    application and every account. Of two held sign-in sessions in the same state, the
    one issued earlier is let go (a later deletion cannot spare it alone); of two role
    sessions for the same role and client, the older is let go. Neither loses any access.
    """

    def __init__(
        self,
        model: SessionModel,
        user_id: str,
        *,
        step: timedelta = timedelta(minutes=1),
        sign_in: bool = True,
        use_cli: bool = True,
    ) -> None:
        if step <= timedelta(0):
            raise ValueError("step must be positive")
        self.model = model
        self.user_id = user_id
        self.step_size = step
        self.sign_in = sign_in
        self.use_cli = use_cli
        self._held: list[_Held] = []
        self._adopted = 0
        #: (target, via) -> the freshest role session
        self._roles: dict[tuple[str, str], RoleSession] = {}
        #: application id -> the background session that lives longest
        self._background: dict[str, BackgroundSession] = {}
        self.accesses: list[Access] = []

    def run(self, start: datetime, until: datetime) -> LeaverReport:
        """Step from `start` to `until` (both included when on the grid)."""
        if until < start:
            raise ValueError("until is before start")
        first = len(self.accesses)
        at = start
        while at <= until:
            self.step(at)
            at += self.step_size
        return LeaverReport(
            user_id=self.user_id,
            start=start,
            until=until,
            step=self.step_size,
            accesses=tuple(self.accesses[first:]),
        )

    def _hold(self, session: SignInSession) -> None:
        cli = self.model.attach_cli(session) if self.use_cli else None
        self._held.append(_Held(session, cli))

    def _adopt(self) -> None:
        sessions = self.model.sign_in_sessions(self.user_id)
        for session in sessions[self._adopted :]:
            self._hold(session)
        self._adopted = len(sessions)

    def step(self, at: datetime) -> list[Access]:
        """Try everything once at `at`; returns what worked."""
        model, user = self.model, self.user_id
        found: list[Access] = []
        if self.sign_in and model.sign_in(user, at) is not None:
            found.append(Access(AccessKind.SIGN_IN, at, "portal", "portal"))
        self._adopt()

        portal = [h for h in self._held if model.check_sign_in(h.session, at)]
        clis = [h.cli for h in self._held if h.cli is not None and model.check_cli(h.cli, at)]

        applications = sorted(model.directory.applications(user, at))
        for held in self._held:
            for app in held.apps.values():
                model.refresh_application_session(app, at)
        for held in portal:
            for application_id in applications:
                current = held.apps.get(application_id)
                if current is not None and current.ended_at is None:
                    continue
                opened = model.start_application_session(held.session, application_id, at)
                if opened is not None:
                    held.apps[application_id] = opened
                    found.append(Access(AccessKind.SESSION_START, at, application_id, "portal"))
        for application_id in applications if portal else ():
            background = model.start_background_session(portal[0].session, application_id, at)
            if background is not None:
                target = f"background:{application_id}"
                found.append(Access(AccessKind.SESSION_START, at, target, "portal"))
                held_background = self._background.get(application_id)
                if held_background is None or held_background.expires_at <= background.expires_at:
                    self._background[application_id] = background

        entitlements = sorted(
            model.directory.entitlements(user, at), key=lambda e: (e.target, e.session_duration)
        )
        for entitlement in entitlements:
            starts = [
                model.start_role_session(portal[0].session, entitlement, at) if portal else None,
                model.cli_start_role_session(clis[0], entitlement, at) if clis else None,
            ]
            for role in starts:
                if role is None:
                    continue
                found.append(Access(AccessKind.SESSION_START, at, role.target, role.via))
                key = (role.target, role.via)
                held_role = self._roles.get(key)
                if held_role is None or held_role.expires_at <= role.expires_at:
                    self._roles[key] = role

        used_apps: dict[str, bool] = {}
        for held in self._held:
            for application_id, app in held.apps.items():
                if model.use_application_session(app, at):
                    used_apps[application_id] = True
        found.extend(
            Access(AccessKind.APPLICATION, at, application_id, "portal")
            for application_id in sorted(used_apps)
        )
        found.extend(
            Access(AccessKind.BACKGROUND, at, application_id, "background")
            for application_id, background in sorted(self._background.items())
            if model.use_background_session(background, at)
        )
        self._background = {app: b for app, b in self._background.items() if at < b.expires_at}

        used_roles: dict[str, str] = {}
        for (target, via), role in sorted(self._roles.items()):
            if target not in used_roles and model.use_role_session(role, at):
                used_roles[target] = via
        found.extend(
            Access(AccessKind.AWS_ACCOUNT, at, target, via)
            for target, via in sorted(used_roles.items())
        )

        self._roles = {key: r for key, r in self._roles.items() if at < r.expires_at}
        self._prune()
        self.accesses.extend(found)
        return found

    def _prune(self) -> None:
        """Let go of what can no longer do anything, or can do nothing another cannot."""
        groups: dict[tuple[object, ...], list[_Held]] = {}
        for held in self._held:
            if held.alive():
                groups.setdefault(held.state(), []).append(held)
        kept: list[_Held] = []
        for group in groups.values():
            for index, held in enumerate(group):
                mine = (held.session.issued_at, held.session.expires_at)
                dominated = any(
                    other.session.issued_at >= mine[0]
                    and other.session.expires_at >= mine[1]
                    and ((other.session.issued_at, other.session.expires_at) != mine or j > index)
                    for j, other in enumerate(group)
                    if j != index
                )
                if not dominated:
                    kept.append(held)
        kept.sort(key=lambda h: (h.session.issued_at, h.session.session_id))
        self._held = kept


# ---------------------------------------------------------------- an in-memory directory


#: "Since always", for facts given without a time.
_ALWAYS = datetime.min.replace(tzinfo=UTC)


@dataclass
class _Span:
    key: tuple[str, ...]
    start: datetime | None
    end: datetime | None

    def reaches(self, at: datetime, propagation: timedelta) -> bool:
        return (self.start is None or self.start <= at) and (
            self.end is None or at < self.end + propagation
        )


class _Spans:
    def __init__(self) -> None:
        self._spans: list[_Span] = []

    def add(self, key: tuple[str, ...], start: datetime | None, end: datetime | None) -> None:
        if start is not None and end is not None and end < start:
            raise ValueError("removed before added")
        self._spans.append(_Span(key, start, end))

    def close(self, key: tuple[str, ...], at: datetime) -> None:
        """End the open span for `key`; one never seen opening is taken as always there."""
        for span in reversed(self._spans):
            if span.key == key and span.end is None and (span.start is None or span.start <= at):
                span.end = at
                return
        self._spans.append(_Span(key, None, at))

    def reaching(self, at: datetime, propagation: timedelta) -> Iterator[tuple[str, ...]]:
        return (s.key for s in self._spans if s.reaches(at, propagation))


@dataclass(frozen=True)
class _Provisioning:
    succeeded_at: datetime
    seq: int
    accounts: frozenset[str] | None
    denied_users: frozenset[str]
    denies_everyone: bool

    def denies(self, user_id: str) -> bool:
        return self.denies_everyone or user_id in self.denied_users


class Timeline:
    """A `Directory` held in memory: every fact is given with the time it happened.

    Unknown users are enabled and let in by the IdP; an unknown permission set has the
    default session duration. Removals take effect for new sessions after the facts'
    propagation delay; a provisioned deny bites `deny_propagation` after its success, and a
    later provisioning without it lifts it at that later success.
    """

    def __init__(
        self, facts: AwsSessionFacts | None = None, *, open_applications: Iterable[str] = ()
    ) -> None:
        self.facts = facts or AwsSessionFacts()
        #: Applications set to not require assignments: every user may open them.
        self.open_applications = frozenset(open_applications)
        self._seq = 0
        self._enabled: dict[str, list[tuple[datetime, int, bool]]] = {}
        self._idp: dict[str, list[tuple[datetime, int, bool]]] = {}
        self._deletions: dict[str, list[datetime]] = {}
        #: permission set -> its SessionDuration from each change on
        self._durations: dict[str, list[tuple[datetime, int, timedelta]]] = {}
        #: application -> UserBackgroundSessionApplicationStatus from each change on
        self._background: dict[str, list[tuple[datetime, int, bool]]] = {}
        self._assignments = _Spans()
        self._app_assignments = _Spans()
        self._memberships = _Spans()
        self._provisionings: dict[str, list[_Provisioning]] = {}

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    @staticmethod
    def _value_at(
        events: list[tuple[datetime, int, bool]] | None, at: datetime, default: bool = True
    ) -> bool:
        if not events:
            return default
        index = bisect.bisect_right(events, at, key=lambda event: event[0])
        return default if index == 0 else events[index - 1][2]

    # ------------------------------------------------------------ facts, as they happen

    def set_user_enabled(self, user_id: str, enabled: bool, at: datetime) -> None:
        bisect.insort(self._enabled.setdefault(user_id, []), (at, self._next(), enabled))

    def disable_user(self, user_id: str, at: datetime) -> None:
        self.set_user_enabled(user_id, False, at)

    def enable_user(self, user_id: str, at: datetime) -> None:
        self.set_user_enabled(user_id, True, at)

    def set_idp_allows_sign_in(self, user_id: str, allows: bool, at: datetime) -> None:
        bisect.insort(self._idp.setdefault(user_id, []), (at, self._next(), allows))

    def deactivate_in_idp(self, user_id: str, at: datetime) -> None:
        self.set_idp_allows_sign_in(user_id, False, at)

    def delete_sign_in_sessions(self, user_id: str, at: datetime) -> None:
        """The console's "Delete session" on every session the user has at `at`."""
        bisect.insort(self._deletions.setdefault(user_id, []), at)

    def define_permission_set(
        self, permission_set_arn: str, session_duration: timedelta, *, at: datetime | None = None
    ) -> None:
        """The set's SessionDuration from `at` on (None: always); a role session takes the
        duration in force when it is issued."""
        if session_duration <= timedelta(0):
            raise ValueError("a session duration is positive")
        since = _ALWAYS if at is None else at
        bisect.insort(
            self._durations.setdefault(permission_set_arn, []),
            (since, self._next(), session_duration),
        )

    def change_session_duration(
        self, permission_set_arn: str, session_duration: timedelta, at: datetime
    ) -> None:
        self.define_permission_set(permission_set_arn, session_duration, at=at)

    def session_duration(self, permission_set_arn: str, at: datetime | None = None) -> timedelta:
        """The duration in force at `at` (None: after every known change)."""
        changes = self._durations.get(permission_set_arn, [])
        if at is not None:
            changes = changes[: bisect.bisect_right(changes, at, key=lambda change: change[0])]
        return changes[-1][2] if changes else self.facts.default_role_session_duration

    def set_background_sessions(
        self, application_id: str, enabled: bool, *, at: datetime | None = None
    ) -> None:
        """PutApplicationSessionConfiguration: ENABLED or DISABLED from `at` on."""
        since = _ALWAYS if at is None else at
        bisect.insort(
            self._background.setdefault(application_id, []), (since, self._next(), enabled)
        )

    def assign(
        self,
        principal_id: str,
        permission_set_arn: str,
        account_id: str,
        *,
        at: datetime | None = None,
        removed_at: datetime | None = None,
    ) -> None:
        """An account assignment to a user or group id; `at=None` means always there."""
        self._assignments.add((principal_id, permission_set_arn, account_id), at, removed_at)

    def unassign(
        self, principal_id: str, permission_set_arn: str, account_id: str, at: datetime
    ) -> None:
        self._assignments.close((principal_id, permission_set_arn, account_id), at)

    def add_member(
        self,
        group_id: str,
        user_id: str,
        *,
        at: datetime | None = None,
        removed_at: datetime | None = None,
    ) -> None:
        self._memberships.add((group_id, user_id), at, removed_at)

    def remove_member(self, group_id: str, user_id: str, at: datetime) -> None:
        self._memberships.close((group_id, user_id), at)

    def assign_application(
        self,
        principal_id: str,
        application_id: str,
        *,
        at: datetime | None = None,
        removed_at: datetime | None = None,
    ) -> None:
        self._app_assignments.add((principal_id, application_id), at, removed_at)

    def unassign_application(self, principal_id: str, application_id: str, at: datetime) -> None:
        self._app_assignments.close((principal_id, application_id), at)

    def provision(
        self,
        permission_set_arn: str,
        succeeded_at: datetime,
        *,
        denied_user_ids: Iterable[str] = (),
        denies_everyone: bool = False,
        accounts: Iterable[str] | None = None,
    ) -> None:
        """A ProvisionPermissionSet that SUCCEEDED, with the denies its policy now carries.

        `accounts=None` means every account the set is provisioned to.
        """
        self._provisionings.setdefault(permission_set_arn, []).append(
            _Provisioning(
                succeeded_at=succeeded_at,
                seq=self._next(),
                accounts=None if accounts is None else frozenset(accounts),
                denied_users=frozenset(denied_user_ids),
                denies_everyone=denies_everyone,
            )
        )

    def provision_policy(
        self,
        permission_set_arn: str,
        inline_policy: str,
        succeeded_at: datetime,
        *,
        accounts: Iterable[str] | None = None,
    ) -> None:
        """`provision` with the denies read from the inline policy's JSON."""
        users, everyone = denial_in_policy(inline_policy)
        self.provision(
            permission_set_arn,
            succeeded_at,
            denied_user_ids=users,
            denies_everyone=everyone,
            accounts=accounts,
        )

    # ------------------------------------------------------------ Directory

    def user_enabled(self, user_id: str, at: datetime) -> bool:
        return self._value_at(self._enabled.get(user_id), at)

    def idp_allows_sign_in(self, user_id: str, at: datetime) -> bool:
        return self._value_at(self._idp.get(user_id), at)

    def sign_in_sessions_deleted_at(self, user_id: str, issued_at: datetime) -> datetime | None:
        deletions = self._deletions.get(user_id, [])
        index = bisect.bisect_left(deletions, issued_at)
        return deletions[index] if index < len(deletions) else None

    def _groups(self, user_id: str, at: datetime) -> set[str]:
        propagation = self.facts.assignment_propagation
        return {g for g, u in self._memberships.reaching(at, propagation) if u == user_id}

    def entitlements(self, user_id: str, at: datetime) -> frozenset[Entitlement]:
        principals = {user_id} | self._groups(user_id, at)
        return frozenset(
            Entitlement(arn, account, self.session_duration(arn, at))
            for principal, arn, account in self._assignments.reaching(
                at, self.facts.assignment_propagation
            )
            if principal in principals
        )

    def background_sessions_enabled(self, application_id: str, at: datetime) -> bool:
        return self._value_at(self._background.get(application_id), at, default=False)

    def applications(self, user_id: str, at: datetime) -> frozenset[str]:
        principals = {user_id} | self._groups(user_id, at)
        assigned = {
            app
            for principal, app in self._app_assignments.reaching(
                at, self.facts.assignment_propagation
            )
            if principal in principals
        }
        return self.open_applications | assigned

    def _deny_since(
        self, user_id: str, permission_set_arn: str, account_id: str, at: datetime | None
    ) -> datetime | None:
        """When the deny in force at `at` (None: after everything known) was provisioned."""
        events = sorted(
            (
                p
                for p in self._provisionings.get(permission_set_arn, ())
                if (p.accounts is None or account_id in p.accounts)
                and (at is None or p.succeeded_at <= at)
            ),
            key=lambda p: (p.succeeded_at, p.seq),
        )
        since: datetime | None = None
        for event in events:
            if not event.denies(user_id):
                since = None
            elif since is None:
                since = event.succeeded_at
        return since

    def role_use_denied(
        self, user_id: str, permission_set_arn: str, account_id: str, at: datetime
    ) -> bool:
        since = self._deny_since(user_id, permission_set_arn, account_id, at)
        return since is not None and at >= since + self.facts.deny_propagation

    def deny_effective_at(
        self, user_id: str, permission_set_arn: str, account_id: str
    ) -> datetime | None:
        """When the deny that stands after every known provisioning starts to bite, if any."""
        since = self._deny_since(user_id, permission_set_arn, account_id, None)
        return None if since is None else since + self.facts.deny_propagation


# ---------------------------------------------------------------- policy and duration text


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def denial_in_policy(inline_policy: str) -> tuple[frozenset[str], bool]:
    """The user ids an inline policy denies everything to, and whether it denies everyone.

    Only a statement that ends all access counts: Effect Deny, Action "*", Resource "*",
    no NotAction/NotResource, and either no Condition or exactly
    `StringEquals {"identitystore:userId": ...}`. Anything narrower leaves access alone.
    """
    try:
        document = json.loads(inline_policy) if inline_policy.strip() else {}
    except ValueError:
        return frozenset(), False
    if not isinstance(document, dict):
        return frozenset(), False
    users: set[str] = set()
    everyone = False
    for statement in _as_list(document.get("Statement", [])):
        if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            continue
        if "*" not in _as_list(statement.get("Action")):
            continue
        if "*" not in _as_list(statement.get("Resource")):
            continue
        condition = statement.get("Condition")
        if condition is None or condition == {}:
            everyone = True
            continue
        if not isinstance(condition, dict) or set(condition) != {"StringEquals"}:
            continue
        keys = condition["StringEquals"]
        if not isinstance(keys, dict) or len(keys) != 1:
            continue
        [(key, values)] = keys.items()
        if key.lower() != "identitystore:userid":
            continue
        users.update(v for v in _as_list(values) if isinstance(v, str))
    return frozenset(users), everyone


_DURATION = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def parse_session_duration(text: str) -> timedelta:
    """A permission set's SessionDuration (`PT12H`, `PT1H30M`, `PT90M`, ...)."""
    match = _DURATION.match(text)
    if match is None or not any(match.groups()):
        raise ValueError(f"not an ISO-8601 session duration: {text!r}")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    duration = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if duration <= timedelta(0):
        raise ValueError(f"a session duration is positive, not {text!r}")
    return duration
