"""Countdown milestones are durable timers: a real `offboard worker` fires each exactly
once, across a SIGKILL and a restart, and closes the case at the last one."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from tests.acceptance import cli
from tests.flows import delete_portal_sessions
from worker.domain import CaseStatus
from worker.sandbox import Sandbox, SeededUser
from worker.store.sqlite import SqliteStore


async def _fired(db: Path, case_id: str) -> Counter[str]:
    store = SqliteStore(db)
    await store.open()
    try:
        events = await store.events(case_id)
    finally:
        await store.close()
    return Counter(e.data["milestone"] for e in events if e.kind == "milestone_reached")


async def _wait_fired(db: Path, case_id: str, names: set[str], worker: Any) -> Counter[str]:
    for _ in range(300):
        fired = await _fired(db, case_id)
        if names <= set(fired):
            return fired
        if worker.returncode is not None:
            out, err = await worker.communicate()
            raise AssertionError(f"worker exited: {out.decode()} {err.decode()}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"milestones {names} never fired; fired: {dict(fired)}")


async def test_milestones_fire_exactly_once_across_sigkill(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config_data["worker"]["poll_seconds"] = 0.05
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    env = cli.environment({**sandbox.environment(), "OFFBOARD_TEST_CLOCK_OFFSET_FILE": str(offset)})
    base = ["--config", str(config)]
    db = Path(config_data["store"]["sqlite"])

    run = await cli.run([*base, "run", "leaver", "--user", leaver.login], env, tmp_path)
    case_id = run.stdout.split("opened case ")[1].split()[0]
    await delete_portal_sessions(sandbox, leaver)
    confirmed = await cli.run([*base, "confirm", case_id, "portal-sessions"], env, tmp_path)
    assert "status CONTAINED" in confirmed.stdout, confirmed.stdout + confirmed.stderr

    worker = await cli.start([*base, "worker"], env, tmp_path)
    offset.write_text(str(61 * 60))  # past new-sessions-end (1 h)
    await _wait_fired(db, case_id, {"new-sessions-end"}, worker)
    worker.send_signal(signal.SIGKILL)
    await worker.wait()

    offset.write_text(str(2 * 3600 + 60))  # past applications-lapse while no worker runs
    worker = await cli.start([*base, "worker"], env, tmp_path)
    await _wait_fired(db, case_id, {"applications-lapse"}, worker)
    offset.write_text(str(13 * 3600 + 120))  # past role sessions (12 h + 1 h)
    fired = await _wait_fired(db, case_id, {"role-sessions-lapse", "all-lapsed"}, worker)
    worker.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(worker.communicate(), 30)
    assert worker.returncode == 0, err.decode()

    assert fired == Counter(
        {"new-sessions-end": 1, "applications-lapse": 1, "role-sessions-lapse": 1, "all-lapsed": 1}
    )
    status = await cli.run([*base, "status", case_id], env, tmp_path)
    assert f"status {CaseStatus.ACCESS_LAPSED.value.upper()}" in status.stdout
    assert "passed" in status.stdout
