"""The drift watchdog: while a countdown runs, re-read the IdP and Identity Center.

A user found re-enabled (a SCIM push, a human) is disabled again in the invariant
order — IdP first, confirmed, then Identity Center, confirmed — an alert goes out,
and the countdown restarts from the new disable time.
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.actions import DEACTIVATE_USER, DISABLE_USER
from worker.clock import utc_iso
from worker.domain import Case, CaseStatus, StepStatus
from worker.engine import Engine
from worker.ledger import Ledger
from worker.notify import Notification, deliver

log = structlog.get_logger(__name__)

#: a countdown runs for these cases (waiting: the portal task is open, the IC user is disabled)
WATCHED = (CaseStatus.CONTAINED, CaseStatus.WAITING)


async def check_case(engine: Engine, case: Case) -> bool:
    """Re-read one case's user; re-contain on drift. True if drift was found."""
    records = await engine.store.steps(case.id)
    done = {r.action: r for r in records if r.status is StepStatus.DONE}
    idp_step = done.get(DEACTIVATE_USER.name)
    ic_step = done.get(DISABLE_USER.name)
    if idp_step is None or ic_step is None:
        return False  # the countdown has not started
    idp, ic = engine.providers.idp, engine.providers.identity_center
    idp_id = str(idp_step.evidence["idp_user_id"])
    ic_id = str(ic_step.evidence["ic_user_id"])
    with structlog.contextvars.bound_contextvars(case_id=case.id, watchdog=True):
        ledger = _ledger(engine, case, "watchdog")
        idp_user = await ledger.call("idp.get_user", lambda: idp.get_user(idp_id))
        ic_user = await ledger.call("identitystore.DescribeUser", lambda: ic.get_user(ic_id))
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
        # Each drift epoch has its own ledger entries: an earlier epoch's applied
        # disable must not stop this one.
        ledger = _ledger(engine, case, f"drift-{epoch}")
        await ledger.mutate(
            operation=f"{idp.name}.deactivate",
            read=lambda: idp.get_user(idp_id),
            reached=lambda u: u.deactivated,
            act=lambda _: idp.deactivate_user(idp_id),
        )
        user, _ = await ledger.mutate(
            operation="identity_center.disable",
            read=lambda: ic.get_user(ic_id),
            reached=lambda u: u.disabled,
            act=lambda _: ic.disable_user(ic_id),
        )
        redisabled_at = engine.clock.now()
        sets = await ledger.call(
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


def _ledger(engine: Engine, case: Case, label: str) -> Ledger:
    """The watchdog's own side effects of a case, under the engine's retry and
    read-back settings."""
    return Ledger(
        store=engine.store,
        clock=engine.clock,
        policy=engine.policy,
        case_id=case.id,
        step_id=label,
        verify_timeout=engine.settings.verify_timeout,
        verify_interval=engine.settings.verify_interval,
    )
