"""The drift watchdog: while a countdown runs, re-read the IdP and Identity Center.

A user found re-enabled (a SCIM push, a human) is disabled again in the invariant
order — IdP first, confirmed, then Identity Center, confirmed — an alert goes out,
and the countdown restarts from the new disable time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from worker.actions import DEACTIVATE_USER, DISABLE_USER
from worker.clock import utc_iso
from worker.countdown import INVENTORY_READ
from worker.domain import Case, CaseStatus, StepStatus
from worker.engine import Engine
from worker.errors import ProviderError
from worker.notify import Notification, deliver
from worker.retry import with_retry
from worker.steps import read_inventory
from worker.store.base import ALL_LAPSED

log = structlog.get_logger(__name__)

#: a countdown runs for these cases (waiting: the portal task is open, the IC user is disabled)
WATCHED = (CaseStatus.CONTAINED, CaseStatus.WAITING)


async def listed_statuses(engine: Engine, watched: int) -> Mapping[str, str]:
    """Every Identity Center user's status from one listing, when it takes fewer pages
    than there are watched users (each would otherwise be one DescribeUser); else, or
    when the listing fails, nothing: each user is then read alone. Read at the start of
    a pass, it is as fresh as the per-user reads it replaces, give or take the pass."""
    ic = engine.providers.identity_center
    try:
        statuses = await with_retry(
            lambda: ic.user_statuses(watched - 1),
            engine.policy,
            engine.clock,
            operation="identitystore.ListUsers",
        )
    except ProviderError as exc:
        log.warning("watchdog_listing_failed", error=str(exc))
        return {}
    return statuses or {}


async def check_case(engine: Engine, case: Case, listed: Mapping[str, str] | None = None) -> bool:
    """Re-read one case's user; re-contain on drift. True if drift was found.
    `listed`: statuses from listed_statuses; a user it shows DISABLED is not read
    again, any other is read with DescribeUser as ever."""
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
        ledger = engine.ledger(case.id, "watchdog")
        idp_user = await ledger.call("idp.get_user", lambda: idp.get_user(idp_id))
        if idp_user.deactivated and (listed or {}).get(ic_id) == "DISABLED":
            return False
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
        ledger = engine.ledger(case.id, f"drift-{epoch}")
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
        read = await read_inventory(ledger, ic, ic_id, since=redisabled_at)
        # every epoch's sets stay counted (a session started before the drift lives
        # on), and the earlier countdown's end is a floor
        await engine.store.append_event(
            case.id,
            INVENTORY_READ,
            redisabled_at,
            step_id=None,
            data={"epoch": epoch, "timer": "drift", **read},
        )
        earlier = {m["name"]: m["at"] for m in (case.countdown or {}).get("milestones", [])}
        drift: dict[str, Any] = {
            "epoch": epoch,
            "redisabled_at": utc_iso(redisabled_at),
            **read,
            "floor": earlier.get(ALL_LAPSED),
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
