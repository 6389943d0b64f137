"""The action registry: every action a playbook may name, declared once.

An action is known here by its name and nowhere else: playbook validation reads its
phase and verifications, the engine its handler and countdown input, the watchdog
and the cleanup find their steps by it, and the dry run asks its provider role for
the calls it would make.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from worker import steps
from worker.countdown import CountdownInput
from worker.errors import PermanentError


class Phase(IntEnum):
    """Where an action stands in the one safe order."""

    #: reads only: the person found in every system before anything changes
    RESOLVE = 0
    IDP = 1
    IDENTITY_CENTER = 2
    PORTAL_SESSIONS = 3
    HARDENING = 4


class Role(StrEnum):
    """The provider an action talks to (providers/base.py)."""

    #: the identity provider: Okta, Entra ID or Google Workspace
    IDP = "idp"
    #: AWS IAM Identity Center
    IDENTITY_CENTER = "identity_center"
    #: every configured system (reads only)
    EVERY = "every"


@dataclass(frozen=True, kw_only=True)
class Action:
    name: str
    phase: Phase
    role: Role
    handler: steps.StepHandler
    #: a containment action appears once and must name one of its verifications
    containment: bool
    #: the read-backs a step may name in `verify`
    verifications: tuple[str, ...]
    #: what it does, in a sentence (dry-run plans, the UI)
    summary: str
    #: the countdown input its evidence gives: the countdown is recomputed after it
    countdown_input: CountdownInput | None = None
    #: done by a human in the console: the step opens an operator task and waits
    operator_task: bool = False


RESOLVE = Action(
    name="person.resolve",
    phase=Phase.RESOLVE,
    role=Role.EVERY,
    handler=steps.person_resolve,
    containment=False,
    verifications=("person.found",),
    summary=(
        "find the person in every system (reads only) and record the ids the later "
        "steps act on; two matches or no IdP user halt before anything changes"
    ),
)
#: the id of the resolve step every playbook begins with (worker/playbook.py adds it)
RESOLVE_STEP_ID = "resolve"
DEACTIVATE_USER = Action(
    name="idp.deactivate_user",
    phase=Phase.IDP,
    role=Role.IDP,
    handler=steps.idp_deactivate_user,
    containment=True,
    verifications=("idp.user_status",),
    summary="deactivate the user in the identity provider",
)
REVOKE_SESSIONS = Action(
    name="idp.revoke_sessions",
    phase=Phase.IDP,
    role=Role.IDP,
    handler=steps.idp_revoke_sessions,
    containment=True,
    verifications=("idp.user_status",),
    summary="end the user's IdP sessions and revoke their OAuth tokens",
)
DISABLE_USER = Action(
    name="identity_center.disable_user",
    phase=Phase.IDENTITY_CENTER,
    role=Role.IDENTITY_CENTER,
    handler=steps.identity_center_disable_user,
    containment=True,
    verifications=("identity_center.user_status",),
    summary="disable the IAM Identity Center user",
    countdown_input=CountdownInput.IC_DISABLED,
)
PORTAL_SESSIONS = Action(
    name="identity_center.portal_sessions",
    phase=Phase.PORTAL_SESSIONS,
    role=Role.IDENTITY_CENTER,
    handler=steps.identity_center_portal_sessions,
    containment=True,
    verifications=("operator.confirmation",),
    summary="have an operator revoke the user's access-portal sessions (console only)",
    countdown_input=CountdownInput.PORTAL_REVOKED,
    operator_task=True,
)
DENY_ROLE_SESSIONS = Action(
    name="identity_center.deny_role_sessions",
    phase=Phase.HARDENING,
    role=Role.IDENTITY_CENTER,
    handler=steps.identity_center_deny_role_sessions,
    containment=False,
    verifications=("identity_center.deny_provisioned",),
    summary="deny everything to this user id on every reachable permission set",
    countdown_input=CountdownInput.DENY_PROVISIONED,
)
REMOVE_ACCESS = Action(
    name="identity_center.remove_access",
    phase=Phase.HARDENING,
    role=Role.IDENTITY_CENTER,
    handler=steps.identity_center_remove_access,
    containment=False,
    verifications=("identity_center.access_removed",),
    summary="delete the user's own account assignments and group memberships",
    countdown_input=CountdownInput.UNASSIGNED,
)

BACKGROUND_SESSIONS = Action(
    name="identity_center.background_sessions",
    phase=Phase.HARDENING,
    role=Role.IDENTITY_CENTER,
    handler=steps.identity_center_background_sessions,
    containment=False,
    verifications=("identity_center.background_sessions_reported",),
    summary=(
        "report the applications that keep the user's background sessions and how to end "
        "them (no API ends one user's)"
    ),
)

#: Every action a playbook may name, by name.
ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        RESOLVE,
        DEACTIVATE_USER,
        REVOKE_SESSIONS,
        DISABLE_USER,
        PORTAL_SESSIONS,
        DENY_ROLE_SESSIONS,
        REMOVE_ACCESS,
        BACKGROUND_SESSIONS,
    )
}


def action(name: str) -> Action:
    """The action a planned step names; an unknown one halts its case (a playbook
    loaded by an older or newer version)."""
    try:
        return ACTIONS[name]
    except KeyError:
        raise PermanentError("playbook", f"no handler for action {name!r}") from None
