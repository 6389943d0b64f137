"""The drift watchdog: while a countdown runs, re-read the IdP and Identity Center.

A user found re-enabled (a SCIM push, a human) is disabled again in the invariant
order — IdP first, confirmed, then Identity Center, confirmed — an alert goes out,
and the countdown restarts from the new disable time.
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.clock import utc_iso
from worker.domain import Case, CaseStatus, PlannedStep, StepRecord, StepStatus
from worker.engine import Engine
from worker.notify import Notification, deliver
from worker.steps import StepContext, guarded_mutation

log = structlog.get_logger(__name__)

#: a countdown runs for these cases (waiting: the portal task is open, the IC user is disabled)
WATCHED = (CaseStatus.CONTAINED, CaseStatus.WAITING)


async def check_case(engine: Engine, case: Case) -> bool:
    """Re-read one case's user; re-contain on drift. True if drift was found."""
    records = await engine.store.steps(case.id)
    done = {r.action: r for r in records if r.status is StepStatus.DONE}
    idp_step = done.get("idp.deactivate_user")
    ic_step = done.get("identity_center.disable_user")
    if idp_step is None or ic_step is None:
        return False  # the countdown has not started
    idp, ic = engine.providers.idp, engine.providers.identity_center
    idp_id = str(idp_step.evidence["idp_user_id"])
    ic_id = str(ic_step.evidence["ic_user_id"])
    with structlog.contextvars.bound_contextvars(case_id=case.id, watchdog=True):
        ctx = _context(engine, case, records[0].index, "watchdog")
        idp_user = await ctx.call("idp.get_user", lambda: idp.get_user(idp_id))
        ic_user = await ctx.call("identitystore.DescribeUser", lambda: ic.get_user(ic_id))
        if idp_user.deactivated and ic_user.disabled:
            return False
        epoch = int((case.countdown or {}).get("epoch", 0)) + 1
        summary = f"IdP {idp_user.status}, Identity Center {ic_user.status}"
        log.error("drift_detected", idp_status=idp_user.status, ic_status=ic_user.status)
        await engine.store.append_event(
            case.id, "drift_detected", engine.clock.now(), step_id=None, data={"summary": summary}
        )
        await deliver(
            engine.notifier,
            Notification(
                kind="drift",
                case_id=case.id,
                subject=case.subject,
                title=f"{case.subject} was re-enabled ({summary}); disabling again",
                data={"idp_status": idp_user.status, "ic_status": ic_user.status},
            ),
        )
        # The same order as ever: the IdP first and confirmed, then Identity Center.
        ctx = _context(engine, case, records[0].index, f"drift-{epoch}")
        await guarded_mutation(
            ctx,
            operation=f"{idp.name}.deactivate",
            read=lambda: idp.get_user(idp_id),
            reached=lambda u: u.deactivated,
            act=lambda: idp.deactivate_user(idp_id),
        )
        user, _ = await guarded_mutation(
            ctx,
            operation="identity_center.disable",
            read=lambda: ic.get_user(ic_id),
            reached=lambda u: u.disabled,
            act=lambda: ic.disable_user(ic_id),
        )
        redisabled_at = engine.clock.now()
        sets = await ctx.call(
            "identity_center.inventory", lambda: ic.reachable_permission_sets(ic_id)
        )
        drift: dict[str, Any] = {
            "epoch": epoch,
            "redisabled_at": utc_iso(redisabled_at),
            "permission_sets": [ps.as_json() for ps in sets],
        }
        await engine.store.save_countdown(
            case.id,
            {**(case.countdown or {}), "epoch": epoch, "drift": drift},
            epoch,
            [],
            redisabled_at,
        )
        await engine.store.append_event(
            case.id,
            "recontained",
            redisabled_at,
            step_id=None,
            data={"summary": f"UserStatus {user.status}; countdown restarted", "epoch": epoch},
        )
        await engine.update_countdown(case.id)
        return True


def _context(engine: Engine, case: Case, index: int, label: str) -> StepContext:
    step = PlannedStep(id=label, action="watchdog", verify=None)
    return StepContext(
        case=case,
        step=step,
        index=index,
        record=StepRecord(
            case_id=case.id,
            index=index,
            step_id=label,
            action="watchdog",
            status=StepStatus.RUNNING,
        ),
        earlier={},
        store=engine.store,
        clock=engine.clock,
        providers=engine.providers,
        policy=engine.policy,
        verify_timeout=engine.settings.verify_timeout,
        verify_interval=engine.settings.verify_interval,
    )
