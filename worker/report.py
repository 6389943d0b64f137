"""Plain-text views of cases for the terminal: the step table and the timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.actions import ACTIONS
from worker.clock import parse_iso, utc_iso
from worker.domain import (
    Case,
    CaseEvent,
    CaseStatus,
    OperatorTask,
    PlannedStep,
    StepRecord,
    StepStatus,
)
from worker.playbook import gates_later_steps

#: how the plan and the step table mark an operator task that gates nothing
DOES_NOT_WAIT = "opens; does not wait: the automated steps after it run at once"


def _when(at: datetime | None) -> str:
    return utc_iso(at) if at else "-"


def case_header(case: Case, now: datetime | None = None) -> str:
    line = (
        f"case {case.id}  playbook {case.playbook}  subject {case.subject}  "
        f"status {case.status.value.upper()}"
    )
    scheduled = scheduled_text(case, now) if now is not None else ""
    if scheduled:
        line += f"\n  scheduled: {scheduled}"
    if case.halt_reason:
        line += f"\n  halted: {case.halt_reason}"
    return line


def scheduled_text(case: Case, now: datetime) -> str:
    """When a case that waits for its time (a future-dated termination) runs; empty if
    it does not wait."""
    if case.status is not CaseStatus.PENDING or case.run_after is None or case.run_after <= now:
        return ""
    return f"runs at {utc_iso(case.run_after)} ({remaining(case.run_after, now)})"


def plan_mark(step: PlannedStep) -> str:
    """The dry-run plan's note on a step done by a human (empty for the others)."""
    if not ACTIONS[step.action].operator_task:
        return ""
    if gates_later_steps(step.action):
        return "  [operator task when done in the console: the steps after it wait]"
    return f"  [operator task: {DOES_NOT_WAIT}]"


def step_table(steps: list[StepRecord]) -> str:
    rows = [("#", "step", "action", "status", "tries", "finished (UTC)", "verified by")]
    for s in steps:
        verified = str(s.evidence.get("verified_by") or s.error or "")
        if s.status is StepStatus.WAITING and not gates_later_steps(s.action):
            verified = verified or "operator task open; the automated steps after it ran"
        rows.append(
            (
                str(s.index + 1),
                s.step_id,
                s.action,
                s.status.value,
                str(s.attempts),
                _when(s.finished_at),
                verified,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  " + "  ".join(cells) + "  " + row[-1])
    return "\n".join(lines)


def timeline(events: list[CaseEvent]) -> str:
    lines = []
    for e in events:
        detail = ""
        if e.kind == "step_done":
            detail = str(e.data.get("verified_by", ""))
        elif e.kind in ("step_deferred", "case_halted"):
            detail = str(e.data.get("reason", ""))
        elif e.kind == "operator_task_opened":
            detail = f"{e.data.get('title')} -> {e.data.get('console_url')}"
            if e.data.get("blocks_later_steps") is False:
                detail += " (does not wait: later steps run now)"
        elif e.kind == "operator_confirmed":
            detail = f"by {e.data.get('confirmed_by')}"
        elif e.kind == "step_started":
            detail = f"attempt {e.data.get('attempt')}"
        elif e.kind == "countdown_computed":
            detail = f"all access lapsed by {e.data.get('all_lapsed')}"
        elif e.kind == "milestone_reached":
            detail = str(e.data.get("milestone"))
        elif e.kind in ("drift_detected", "recontained"):
            detail = str(e.data.get("summary", ""))
        elif e.kind == "timer_fired":
            detail = str(e.data.get("milestone"))
        elif e.kind == "inventory_read":
            apps = e.data.get("applications")
            detail = f"{len(e.data.get('permission_sets', []))} permission set(s), " + (
                "applications unreadable" if apps is None else f"{len(apps)} application(s)"
            )
        elif e.kind == "countdown_extended":
            detail = f"until {e.data.get('all_lapsed')}: " + "; ".join(e.data.get("reasons", []))
        elif e.kind in ("deny_extended", "deny_removed"):
            detail = f"{len(e.data.get('permission_sets', []))} permission set(s)"
        step = e.step_id or ""
        lines.append(f"  {utc_iso(e.at)}  {e.kind:<22} {step:<16} {detail}".rstrip())
    return "\n".join(lines)


#: `offboard status` on an open task that gates nothing (issue 14)
NOT_HOLDING_UP = (
    "does not hold up automated steps: the steps after it run without waiting; "
    "the case is contained once it is confirmed too"
)


def task_text(task: OperatorTask, *, gates: bool = True) -> str:
    """An operator task; `gates`: whether its step holds back the steps after it."""
    state = (
        f"confirmed by {task.confirmed_by} at {_when(task.confirmed_at)}"
        if task.confirmed_at
        else f"WAITING since {_when(task.opened_at)}"
    )
    text = (
        f"operator task [{task.case_id} {task.step_id}] {state}\n"
        f"  {task.title}\n"
        f"  {task.instructions}\n"
        f"  console: {task.console_url}"
    )
    if task.confirmed_at is None and not gates:
        text += f"\n  {NOT_HOLDING_UP}"
    return text


def remaining(at: datetime, now: datetime) -> str:
    seconds = int((at - now).total_seconds())
    if seconds <= 0:
        return "passed"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"in {hours}h {minutes:02d}m"
    return f"in {minutes}m {secs:02d}s"


def countdown_text(countdown: dict[str, Any] | None, now: datetime) -> str:
    if not countdown:
        return (
            "residual-access countdown: starts once the Identity Center user is confirmed disabled"
        )
    lines = [f"residual-access countdown (now {utc_iso(now)}):"]
    for m in countdown["milestones"]:
        at = parse_iso(m["at"])
        lines.append(f"  {m['name']:<20} {m['at']}  {remaining(at, now):<14} {m['meaning']}")
    inputs = countdown["inputs"]
    lines.append("  inputs:")
    lines.append(f"    Identity Center user disabled (verified) {inputs['ic_disabled_at']}")
    for label, key in (
        ("portal sessions deleted (confirmed)", "portal_revoked_at"),
        ("own assignments and groups removed", "unassigned_at"),
        ("deny statement provisioned", "deny_provisioned_at"),
    ):
        lines.append(f"    {label:<40} {inputs.get(key) or 'no'}")
    for ps in inputs["permission_sets"]:
        duration = ps["session_duration"] or "unknown (counted as the maximum)"
        lines.append(
            f"    permission set {ps['name'] or ps['arn']}: session {duration}, "
            f"accounts {', '.join(ps['accounts'])}, via {', '.join(ps['via'])}"
        )
    if not inputs["permission_sets"]:
        lines.append("    no permission set reachable")
    apps = inputs.get("applications", [])
    if apps is None:
        lines.append("    applications: could not be read (not covered)")
    for app in apps or ():
        background = {True: "enabled", False: "disabled", None: "unknown"}[
            app["background_sessions"]
        ]
        lines.append(
            f"    application {app['name'] or app['arn']}: background sessions {background}, "
            f"via {', '.join(app['via'])}"
        )
    if inputs.get("floor"):
        lines.append(f"    {'an earlier disable ends no earlier than':<40} {inputs['floor']}")
    if countdown.get("deny_removable_at"):
        removable = parse_iso(countdown["deny_removable_at"])
        lines.append(
            f"  deny removable at {countdown['deny_removable_at']} "
            f"({remaining(removable, now)}): role sessions started without the deny end then"
        )
    lines.append("  why: " + "; ".join(countdown["reasons"]))
    for item in countdown["would_shorten"]:
        lines.append(f"  would shorten: {item}")
    for item in countdown["out_of_model"]:
        lines.append(f"  not covered: {item}")
    return "\n".join(lines)
