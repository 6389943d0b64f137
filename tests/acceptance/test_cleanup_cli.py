"""`offboard cleanup` says what it removed and what it keeps, and until when: a deny
statement stays until every role session that could have started without it has
ended (issue 13), never merely until all-lapsed."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from tests.acceptance import cli
from tests.flows import delete_portal_sessions
from worker.clock import parse_iso
from worker.providers.policy import deny_sid
from worker.sandbox import Sandbox, SeededUser
from worker.store.base import REREAD_FINAL
from worker.store.sqlite import SqliteStore


async def _countdown(db: Path, case_id: str) -> tuple[dict[str, Any], bool]:
    """The stored countdown, and whether the window's last re-read has fired."""
    store = SqliteStore(db)
    await store.open()
    try:
        case = await store.get_case(case_id)
        timers = await store.timers(case_id)
    finally:
        await store.close()
    assert case.countdown is not None
    final = any(t.name == REREAD_FINAL and t.fired_at is not None for t in timers)
    return case.countdown, final


async def test_cleanup_keeps_the_deny_until_the_role_bound_without_it(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config_data["worker"]["poll_seconds"] = 0.05
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    env = cli.environment({**sandbox.environment(), "OFFBOARD_TEST_CLOCK_OFFSET_FILE": str(offset)})
    base = ["--config", str(config)]
    db = Path(config_data["store"]["sqlite"])

    run = await cli.run([*base, "run", "incident", "--user", leaver.login], env, tmp_path)
    case_id = run.stdout.split("opened case ")[1].split()[0]
    await delete_portal_sessions(sandbox, leaver)
    await cli.run([*base, "confirm", case_id, "portal-sessions"], env, tmp_path)

    # no worker has run the window's re-reads yet: kept, and said why
    early = await cli.run([*base, "cleanup"], env, tmp_path)
    assert f"{case_id}: deny statement kept on 2 permission set(s)" in early.stdout, early
    assert "has not run yet" in early.stdout

    # a worker runs the re-reads and the milestones up to all-lapsed (+2 h) and past it
    worker = await cli.start([*base, "worker"], env, tmp_path)
    offset.write_text(str(3 * 3600))
    for _ in range(300):
        countdown, final = await _countdown(db, case_id)
        if final:
            break
        await asyncio.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    await asyncio.wait_for(worker.communicate(), 30)
    removable = countdown["deny_removable_at"]
    assert parse_iso(removable) > parse_iso(countdown["milestones"][-1]["at"])  # all-lapsed

    kept = await cli.run([*base, "cleanup"], env, tmp_path)
    assert f"{case_id}: deny statement kept on 2 permission set(s) until at least " in kept.stdout
    assert removable in kept.stdout, kept.stdout
    for ps in countdown["inputs"]["permission_sets"]:
        assert deny_sid(leaver.ic_user_id) in sandbox.identity_center.inline_policy(ps["arn"])

    offset.write_text(str(14 * 3600))  # past the role bound without the deny (+13 h)
    removed = await cli.run([*base, "cleanup"], env, tmp_path)
    assert f"{case_id}: deny statement removed from 2 permission set(s)" in removed.stdout
    again = await cli.run([*base, "cleanup"], env, tmp_path)
    assert "no deny statement to remove or keep" in again.stdout
