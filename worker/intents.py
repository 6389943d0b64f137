"""Ledger entries left in intent, settled by reading the provider.

An entry in intent says "this call may have gone out": the worker stopped (or a step
failed for good) between writing it and learning the answer. A step that runs again
reads first and settles its own entry (`Ledger.mutate`), but an entry can be left
where nothing runs again: a step that is done, a watchdog pass of an epoch that has
passed, the deny extended to a set found later. Those are settled here, by the read
that tells (the user's state, the inline policy, the assignments), when a case is
resumed (the entries of its done steps) and when it closes (every entry): applied,
not applied, or — a session revocation — unknown, since no read can tell. The case's
timeline records each, with the read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from worker.domain import Case, LedgerEntry, LedgerState, StepStatus
from worker.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from worker.engine import Engine

log = structlog.get_logger(__name__)

INTENT_SETTLED = "ledger_intent_settled"


async def settle_intents(engine: Engine, case: Case, *, closing: bool) -> int:
    """Settle the case's entries left in intent; how many were. On resume (`closing`
    False) only the entries of steps already done: a step still to run reads and
    settles its own, and the watchdog's may be in flight."""
    entries = await engine.store.ledger_intents(case.id)
    if not entries:
        return 0
    records = await engine.store.steps(case.id)
    done = {r.step_id for r in records if r.status is StepStatus.DONE}
    facts: dict[str, Any] = {}
    for record in records:
        for name, value in record.evidence.items():
            facts.setdefault(name, value)
    settled = 0
    for entry in entries:
        if not closing and entry.step_id not in done:
            continue
        found = await _read(engine, case, entry, facts, closing=closing)
        if found is None:
            continue  # the read failed: settled at the next resume, or at the close
        outcome, read = found
        now = engine.clock.now()
        if await engine.store.ledger_settle(entry.key, outcome, now) is None:
            continue  # its step marked it meanwhile
        settled += 1
        data = {"key": entry.key, "operation": entry.operation, "state": outcome.value}
        await engine.store.append_event(
            case.id, INTENT_SETTLED, now, step_id=entry.step_id, data={**data, "read": read}
        )
        log.info(INTENT_SETTLED, case_id=case.id, **data)
    return settled


def _target(entry: LedgerEntry) -> str:
    """What the entry's call was for: the key after `{case}:{step}:{kind}:`."""
    name = entry.key.removeprefix(f"{entry.case_id}:{entry.step_id}:")
    return name.partition(":")[2]


async def _read(
    engine: Engine, case: Case, entry: LedgerEntry, facts: dict[str, Any], *, closing: bool
) -> tuple[LedgerState, str] | None:
    """What a read of the provider says of the entry's call, and the read in words;
    None when the read failed and the case is not closing (it is tried again later)."""
    idp, ic = engine.providers.idp, engine.providers.identity_center
    idp_user, ic_user = facts.get("idp_user_id"), facts.get("ic_user_id")
    kind, target = entry.operation, _target(entry)
    ledger = engine.ledger(case.id, "settle")

    async def shows(
        label: str, read: Callable[[], Awaitable[Any]], applied: Callable[[Any], bool]
    ) -> tuple[LedgerState, str] | None:
        try:
            value = await ledger.call(label, read)
        except (PermanentError, TransientError) as exc:
            return (LedgerState.UNKNOWN, f"{label} failed: {exc}") if closing else None
        state = LedgerState.APPLIED if applied(value) else LedgerState.NOT_APPLIED
        return state, f"{label}: {value}"

    if kind.endswith(".deactivate") and idp_user:
        return await shows("idp.get_user", partial(idp.get_user, str(idp_user)), _deactivated)
    if kind == "identity_center.disable" and ic_user:
        return await shows(
            "identitystore.DescribeUser", partial(ic.get_user, str(ic_user)), _disabled
        )
    if kind in ("deny-put", "deny-remove") and ic_user:
        put = kind == "deny-put"
        return await shows(
            "sso-admin.GetInlinePolicy",
            partial(ic.deny_policy, target, str(ic_user)),
            lambda policy: bool(policy.denies) is put,
        )
    if kind == "unassign" and ic_user:
        account, _, arn = target.partition(":")
        return await shows(
            "sso-admin.ListAccountAssignmentsForPrincipal",
            partial(ic.assignments, "USER", str(ic_user)),
            lambda found: (account, arn) not in set(found),
        )
    if kind == "leave-group" and ic_user:
        return await shows(
            "identitystore.ListGroupMembershipsForMember",
            partial(ic.group_memberships, str(ic_user)),
            lambda memberships: target not in {m for m, _ in memberships},
        )
    return LedgerState.UNKNOWN, "no read can tell whether this call took effect"


def _deactivated(user: Any) -> bool:
    return bool(user.deactivated)


def _disabled(user: Any) -> bool:
    return bool(user.disabled)
