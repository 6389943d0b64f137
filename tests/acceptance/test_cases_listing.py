"""`offboard cases` lists what its help says (the open cases; `--all` for every one), and a
scheduled case's start time shows in `cases` and in `status`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from tests.acceptance.cli import OFFLINE_TOKEN, offline_config
from worker import cli
from worker.clock import SystemClock, utc_iso
from worker.domain import CaseStatus, NewCase
from worker.store.sqlite import SqliteStore


async def _cases(db: Path) -> dict[str, str]:
    """One case in each state that matters here, by the subject's name."""
    store = SqliteStore(db)
    await store.open()
    now = SystemClock().now()
    ids: dict[str, str] = {}

    async def new(name: str, run_after: timedelta | None = None) -> str:
        case, _ = await store.create_case(
            NewCase(
                playbook="leaver",
                subject=f"{name}@example.com",
                steps=(),
                trigger={},
                run_after=now + run_after if run_after else None,
            ),
            now,
        )
        ids[name] = case.id
        return case.id

    async def settle(case_id: str, status: CaseStatus) -> None:
        assert await store.claim_case(case_id, "listing-test", now, 60) is not None
        await store.release_case(case_id, "listing-test", status, now)

    try:
        await new("scheduled", run_after=timedelta(days=3))
        await new("pending")
        await settle(await new("contained"), CaseStatus.CONTAINED)
        await settle(await new("lapsed"), CaseStatus.ACCESS_LAPSED)
        await store.cancel_case(await new("cancelled"), now, "rescinded by HR")
        ids["scheduled_at"] = utc_iso((await store.get_case(ids["scheduled"])).run_after)  # type: ignore[arg-type]
    finally:
        await store.close()
    return ids


def test_cases_lists_open_ones_with_scheduled_times_and_all_with_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OFFLINE_TEST_TOKEN", OFFLINE_TOKEN)
    ids = asyncio.run(_cases(tmp_path / "offboard.db"))
    config = str(offline_config(tmp_path, {"sqlite": str(tmp_path / "offboard.db")}))

    assert cli.main(["--config", config, "cases"]) == 0
    listed = capsys.readouterr().out
    for name in ("scheduled", "pending", "contained"):
        assert ids[name] in listed, name
    for name in ("lapsed", "cancelled"):
        assert ids[name] not in listed, name
    (scheduled_row,) = [line for line in listed.splitlines() if ids["scheduled"] in line]
    assert f"runs at {ids['scheduled_at']}" in scheduled_row

    assert cli.main(["--config", config, "cases", "--all"]) == 0
    everything = capsys.readouterr().out
    for name in ("scheduled", "pending", "contained", "lapsed", "cancelled"):
        assert ids[name] in everything, name

    cli.main(["--config", config, "status", ids["scheduled"]])
    assert f"scheduled: runs at {ids['scheduled_at']}" in capsys.readouterr().out

    assert cli.main(["--config", config, "status"]) == 0
    overview = capsys.readouterr().out
    header = f"{ids['scheduled']}  playbook leaver  subject scheduled@example.com  status PENDING"
    assert f"{header}\n  scheduled: runs at {ids['scheduled_at']}" in overview
