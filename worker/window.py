"""Re-reading until the window closes: while new sessions can still start after the
disable, the user's reachable permission sets (with their durations) and applications
are read again, so a set assigned later or a duration raised later is counted.

Durable timers drive it (`reread-01`, ... every `reread_interval`, `reread-final` at
new-sessions-end): they survive restarts, and a restarted worker catches up. Every
read is an `inventory_read` event; the countdown is the union of all of them. Anything
new extends the countdown at once (a `countdown_extended` event and a notification),
and when the deny step has run, sets found later are covered too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

import structlog

from worker.actions import DENY_ROLE_SESSIONS, DISABLE_USER, REMOVE_ACCESS
from worker.clock import utc_iso
from worker.countdown import (
    DENY_EXTENDED,
    INVENTORY_READ,
    Countdown,
    ReachablePermissionSet,
    inputs_from_json,
)
from worker.domain import Case, StepStatus, Timer
from worker.engine import Engine
from worker.errors import OffboardError, PermanentError
from worker.ledger import Ledger
from worker.notify import Notification, deliver
from worker.providers.base import IdentityCenter
from worker.steps import cover_with_deny, read_inventory
from worker.store.base import CLOSED_STATUSES, DENY_REMOVABLE, REREAD_FINAL, WORK_TIMER_PREFIXES

log = structlog.get_logger(__name__)

#: the event that says the countdown grew, and why
COUNTDOWN_EXTENDED = "countdown_extended"


async def on_timer(engine: Engine, timer: Timer) -> bool:
    """Do a fired work timer's work; False if the timer is a milestone."""
    if not timer.name.startswith(WORK_TIMER_PREFIXES):
        return False
    if timer.name == DENY_REMOVABLE:
        case = await engine.store.get_case(timer.case_id)
        await deliver(
            engine.notifier,
            Notification(
                kind="deny_removable",
                case_id=case.id,
                subject=case.subject,
                title=f"{case.subject}: the deny statements may now be removed",
                data={"due_at": utc_iso(timer.due_at), "run": "offboard cleanup"},
            ),
        )
        return True
    await reread(engine, timer.case_id, timer.name, since=timer.due_at)
    return True


async def reread(engine: Engine, case_id: str, label: str, *, since: datetime) -> Countdown | None:
    """Read the inventory again, record it, cover new sets with the deny if it ran,
    recompute the countdown and say so when it grew. The user's own assignments and
    memberships are read now; what other cases share (a group's assignments, a
    duration) only from a read sent at or after `since`, the timer's due time: as
    fresh as a read of its own sent then. The re-reads of every case fall due at the
    same moments (engine._work_timers), so one read of a group serves them all."""
    store, ic = engine.store, engine.providers.identity_center
    case = await store.get_case(case_id)
    if case.status in CLOSED_STATUSES or case.countdown is None:
        return None
    records = {r.action: r for r in await store.steps(case_id) if r.status is StepStatus.DONE}
    disable = records.get(DISABLE_USER.name)
    if disable is None or disable.evidence.get("ic_user_id") is None:
        return None  # no Identity Center user (issue 14): nothing to read again
    user_id = str(disable.evidence["ic_user_id"])
    epoch = int(case.countdown.get("epoch", 0))
    with structlog.contextvars.bound_contextvars(case_id=case_id, reread=label):
        ledger = engine.ledger(case_id, f"reread-{epoch}")
        # the grid's re-reads fall due together for every case; the last one (at the
        # case's own new-sessions-end) is off the grid and reads the user alone
        on_grid = not label.startswith(REREAD_FINAL)
        read = await read_inventory(ledger, ic, user_id, since=since, run_wide=on_grid)
        removal = records.get(REMOVE_ACCESS.name)
        read["described"] = await _no_longer_listed(
            ledger,
            ic,
            since=since,
            seen=[p["arn"] for p in case.countdown.get("inputs", {}).get("permission_sets", [])],
            listed=[p["arn"] for p in read["permission_sets"]],
            left_groups=removal.evidence.get("left_groups", []) if removal else [],
        )
        await store.append_event(
            case_id,
            INVENTORY_READ,
            engine.clock.now(),
            step_id=None,
            data={"epoch": epoch, "timer": label, **read},
        )
        deny = records.get(DENY_ROLE_SESSIONS.name)
        if deny is not None and not case.countdown.get("drift"):
            try:
                await _cover_new_sets(engine, case, deny.step_id, user_id)
            except OffboardError as exc:
                # uncovered, the deny bound drops out (below); the next re-read tries again
                log.error("deny_extension_failed", error=str(exc))
        countdown = await engine.update_countdown(case_id)
        if countdown is not None:
            await _said_if_extended(engine, case, case.countdown, countdown)
        return countdown


async def _no_longer_listed(
    ledger: Ledger,
    ic: IdentityCenter,
    *,
    since: datetime,
    seen: Sequence[str],
    listed: Sequence[str],
    left_groups: Sequence[str],
) -> list[dict[str, Any]]:
    """What a removal took out of the listing but not yet out of AWS: until it has
    propagated, a set removed from the person (or given to a group they just left) can
    still start a role session, with the duration it has *now*. Described fresh, counted
    in the union, never taken as a sign of new access."""
    arns = {arn: "removed" for arn in seen if arn not in listed}
    for group in left_groups:
        for _account, arn in await ledger.call(
            "sso-admin.ListAccountAssignments",
            partial(ic.assignments, "GROUP", group, since=since),
        ):
            if arn not in listed:
                arns[arn] = f"GROUP:{group}"
    described = []
    for arn, via in sorted(arns.items()):
        try:
            name, duration = await ledger.call(
                "sso-admin.DescribePermissionSet", partial(ic.permission_set, arn, since=since)
            )
        except PermanentError:
            continue  # deleted: it issues no new session; its earlier duration stays counted
        described.append(
            ReachablePermissionSet(
                arn=arn, name=name, session_duration=duration, accounts=(), via=(via,)
            ).as_json()
        )
    return described


async def _cover_new_sets(engine: Engine, case: Case, step_id: str, user_id: str) -> None:
    """The deny on every set read since the deny step that it does not cover yet: the
    deny bound applies only while it covers the whole inventory."""
    countdown = await engine.update_countdown(case.id)
    if countdown is None:
        return
    covered = set(
        next(r for r in await engine.store.steps(case.id) if r.step_id == step_id).evidence.get(
            "permission_sets", []
        )
    )
    for e in await engine.store.events(case.id):
        if e.kind == DENY_EXTENDED:
            covered.update(e.data["permission_sets"])
    missing = [ps for ps in countdown.inputs.permission_sets if ps.arn not in covered]
    if not missing:
        return
    # the deny step's own ledger: a statement it put on already is read, not put again
    ledger = engine.ledger(case.id, step_id)
    changed, provisioned_at = await cover_with_deny(
        ledger, engine.providers.identity_center, user_id, missing
    )
    await engine.store.append_event(
        case.id,
        DENY_EXTENDED,
        engine.clock.now(),
        step_id=step_id,
        data={
            "permission_sets": [ps.arn for ps in missing],
            "policies_changed": changed,
            "provisioned_at": utc_iso(provisioned_at),
        },
    )
    log.warning("deny_extended", permission_sets=[ps.name or ps.arn for ps in missing])


async def _said_if_extended(
    engine: Engine, case: Case, before: dict[str, Any], after: Countdown
) -> None:
    """A `countdown_extended` event and a notification when the re-read found anything
    that moves a milestone later or adds one."""
    earlier = {m["name"]: m["at"] for m in before.get("milestones", [])}
    old = inputs_from_json(before["inputs"]) if "inputs" in before else None
    reasons: list[str] = []
    if old is not None:
        known = {ps.arn: ps for ps in old.permission_sets}
        for ps in after.inputs.permission_sets:
            seen = known.get(ps.arn)
            if seen is None:
                reasons.append(f"permission set {ps.name or ps.arn} reachable since the disable")
            elif (seen.session_duration or engine.sessions.max_role_session) < (
                ps.session_duration or engine.sessions.max_role_session
            ):
                reasons.append(f"session duration of {ps.name or ps.arn} raised")
        old_background = {a.arn for a in old.applications or () if a.background_sessions}
        for app in after.inputs.applications or ():
            if app.background_sessions and app.arn not in old_background:
                reasons.append(f"application {app.name or app.arn} keeps background sessions")
    later = [
        m.name for m in after.milestones if m.name not in earlier or utc_iso(m.at) > earlier[m.name]
    ]
    if not later:
        return
    data = {
        "reasons": reasons or [f"{', '.join(later)} moved later"],
        "milestones": later,
        "all_lapsed_before": earlier.get("all-lapsed"),
        "all_lapsed": utc_iso(after.all_lapsed),
    }
    await engine.store.append_event(
        case.id, COUNTDOWN_EXTENDED, engine.clock.now(), step_id=None, data=data
    )
    log.warning("countdown_extended", reasons=data["reasons"], all_lapsed=data["all_lapsed"])
    await deliver(
        engine.notifier,
        Notification(
            kind="countdown_extended",
            case_id=case.id,
            subject=case.subject,
            title=f"{case.subject}: access may last until {data['all_lapsed']}",
            data=data,
        ),
    )
