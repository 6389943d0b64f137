"""An incident whose operator never answers: the time from the trigger to the deny
statement provisioned on every permission set the person can reach (issue 14).

    .venv/bin/python -m bench.incident_deny --count 20

The emulators run in a process of their own with 50 ms latency on every call and the
providers' real rate limits (scale 1). For each person in turn an incident case is
opened (the trigger: the case committed) and driven in this process until it waits
for the portal-sessions operator task, which nobody confirms. The figure is the case's
created_at to the deny step's `provisioned_at` (every reachable permission set
provisioned and read back as SUCCEEDED). Each case is checked to be WAITING with its
task still open, the deny step and remove-access done.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.emulators import login_of
from bench.harness import (
    Result,
    emulators,
    environment,
    run_in_temporary_directory,
    runtime,
    summary_ms,
    write_config,
)
from worker.cases import drive_case, open_case
from worker.clock import parse_iso
from worker.domain import CaseStatus, StepStatus


async def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    result = Result("incident_deny", {"count": args.count, "latency_s": args.latency, "scale": 1.0})
    to_deny: list[float] = []
    wall: list[float] = []
    sets: list[int] = []
    async with emulators(run_dir, people=args.count, latency=args.latency, scale=1.0) as em:
        _, config = write_config(run_dir, em, scale=1.0, countdown={"watchdog_interval": "PT24H"})
        with environment(em.environment):
            async with runtime(config, run_dir) as rt:
                playbook = rt.playbook("incident")
                for i in range(args.count):
                    started = time.monotonic()
                    case, _ = await open_case(
                        rt, playbook, login_of("leaver", i), {"source": "bench"}
                    )
                    case = await drive_case(rt, case.id)
                    wall.append(time.monotonic() - started)
                    if case.status is not CaseStatus.WAITING:
                        raise RuntimeError(f"{case.id}: {case.status} ({case.halt_reason})")
                    steps = {s.step_id: s for s in await rt.store.steps(case.id)}
                    task = await rt.store.get_task(case.id, "portal-sessions")
                    if task is None or task.confirmed_at is not None:
                        raise RuntimeError(f"{case.id}: the operator task is not open")
                    deny = steps["deny-role-sessions"]
                    if deny.status is not StepStatus.DONE:
                        raise RuntimeError(f"{case.id}: deny step {deny.status}")
                    provisioned = parse_iso(deny.evidence["provisioned_at"])
                    to_deny.append((provisioned - case.created_at).total_seconds())
                    sets.append(len(deny.evidence["permission_sets"]))
    figure = summary_ms(to_deny)
    result.figures = {
        "trigger_to_deny_provisioned": figure,
        "trigger_to_case_waiting_on_operator": summary_ms(wall),
        "permission_sets_denied_per_person": {"min": min(sets), "max": max(sets)},
        "operator_answers": 0,
    }
    result.targets = {"max_le_5s": figure["max_ms"] <= 5000.0}
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--output", help="also write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return run_in_temporary_directory(measure, args, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
