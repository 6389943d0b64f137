"""`offboard demo`: the whole leaver flow against the sandbox, through the real adapters.

It starts the emulators on loopback, seeds a leaver who is signed in everywhere,
runs playbooks/leaver.yaml, plays the operator for the console-only step, and
prints the timeline together with the emulators' own record of what happened.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TextIO

import aiohttp

from worker.cases import confirm_task, drive_case, open_case
from worker.clock import utc_iso
from worker.config import parse_config
from worker.domain import Case, CaseStatus
from worker.report import case_header, countdown_text, step_table, task_text, timeline
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox

DEMO_USER = "alice@example.com"
INCIDENT_USER = "mallory@example.com"


async def run_demo(out: TextIO, *, base_dir: Path, db_path: Path | None = None) -> int:
    async with Sandbox() as sandbox:
        seeded = sandbox.seed_leaver(DEMO_USER)
        os.environ.update(sandbox.environment())
        with tempfile.TemporaryDirectory(prefix="offboard-demo-") as tmp:
            db = db_path or Path(tmp) / "demo.db"
            data = sandbox.config_data(sqlite_path=str(db))
            data["playbook_dirs"] = []  # the playbooks that ship with offboard, wherever run
            config = parse_config(data, "demo config")
            print(f"sandbox: Okta at {sandbox.okta_url}", file=out)
            print(f"sandbox: Identity Center at {sandbox.identity_center_url}", file=out)
            print(
                f"seeded {DEMO_USER}: Okta {sandbox.okta.user_status(DEMO_USER)} with "
                f"{sandbox.okta.live_sessions(DEMO_USER)} sessions; Identity Center "
                f"{sandbox.identity_center.user_status(seeded.ic_user_id)} with "
                f"{len(seeded.portal_sessions)} portal sessions\n",
                file=out,
            )
            async with open_runtime(config, base_dir=base_dir) as runtime:
                playbook = runtime.playbook("leaver")
                case, _ = await open_case(runtime, playbook, DEMO_USER, {"source": "demo"})
                case = await drive_case(runtime, case.id)
                if case.status is not CaseStatus.WAITING:
                    print(case_header(case), file=out)
                    return 1
                task = await runtime.store.get_task(case.id, "portal-sessions")
                assert task is not None
                print(task_text(task), file=out)
                deleted = await _play_operator(sandbox.identity_center_url, seeded.ic_user_id)
                print(
                    f"\n[demo operator] deleted {deleted} portal sessions; confirming\n",
                    file=out,
                )
                await confirm_task(runtime, case.id, "portal-sessions", "demo-operator")
                case = await drive_case(runtime, case.id)
                print(case_header(case), file=out)
                print(step_table(await runtime.store.steps(case.id)), file=out)
                case = await runtime.store.get_case(case.id)
                print("", file=out)
                print(countdown_text(case.countdown, runtime.clock.now()), file=out)
                print("\ntimeline:", file=out)
                print(timeline(await runtime.store.events(case.id)), file=out)
                incident = await _incident(runtime, sandbox, out)
        print("\nwhat the providers saw (emulator audit log, in order):", file=out)
        for entry in sandbox.audit.entries():
            print(
                f"  {utc_iso(entry.at)}  #{entry.seq:<3} {entry.action:<36} {entry.target}",
                file=out,
            )
        print(
            f"\nnow: Okta {sandbox.okta.user_status(DEMO_USER)}, "
            f"{sandbox.okta.live_sessions(DEMO_USER)} sessions; Identity Center "
            f"{sandbox.identity_center.user_status(seeded.ic_user_id)}, "
            f"{len(sandbox.identity_center.portal_sessions(seeded.ic_user_id))} portal sessions",
            file=out,
        )
        return 0 if case.status is incident.status is CaseStatus.CONTAINED else 1


async def _incident(runtime: Runtime, sandbox: Sandbox, out: TextIO) -> Case:
    """The same person's colleague, compromised: the incident playbook adds the deny
    statement, and AWS account access ends minutes later instead of 13 hours."""
    seeded = sandbox.seed_leaver(INCIDENT_USER)
    print(f"\n--- incident: {INCIDENT_USER} is compromised (playbooks/incident.yaml) ---", file=out)
    case, _ = await open_case(
        runtime, runtime.playbook("incident"), INCIDENT_USER, {"source": "demo"}
    )
    case = await drive_case(runtime, case.id)
    await _play_operator(sandbox.identity_center_url, seeded.ic_user_id)
    await confirm_task(runtime, case.id, "portal-sessions", "demo-operator")
    case = await drive_case(runtime, case.id)
    print(case_header(case), file=out)
    print(step_table(await runtime.store.steps(case.id)), file=out)
    case = await runtime.store.get_case(case.id)
    print("", file=out)
    print(countdown_text(case.countdown, runtime.clock.now()), file=out)
    return case


async def _play_operator(console_url: str, user_id: str) -> int:
    """What a human does in the console; the sandbox exposes it as an endpoint."""
    async with aiohttp.ClientSession() as http:
        url = f"{console_url}/_console/users/{user_id}/portal-sessions"
        async with http.delete(url) as response:
            response.raise_for_status()
            body = await response.json()
    return int(body["deleted"])
