"""A damaged SQLite file is refused when the store opens, with the file named and
what to do (exit 2, no traceback); the file is created readable by its owner only;
a worker that meets the damage while running stops with the message once."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.cli import environment, run, write_config
from worker.cases import open_case
from worker.config import parse_config
from worker.errors import StoreCorrupt
from worker.runtime import open_runtime
from worker.sandbox import Sandbox
from worker.store.sqlite import SqliteStore
from worker.worker import Worker

PAGE = 4096


async def a_store_with_cases(path: Path, config_data: dict[str, Any], sandbox: Sandbox) -> None:
    async with open_runtime(parse_config(config_data, "test"), base_dir=path.parent) as rt:
        for i in range(3):
            user = sandbox.seed_leaver(f"leaver{i}@example.com")
            await open_case(rt, rt.playbook("leaver"), user.login, {"source": "test"})


def damage(path: Path, page: int) -> None:
    """Garbage over one page of the file, as a bad disk or a torn copy leaves it."""
    with path.open("r+b") as file:
        file.seek(page * PAGE)
        file.write(b"\xa5" * PAGE)


async def test_a_new_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "var" / "offboard.db")
    await store.open()
    try:
        for name in ("offboard.db", "offboard.db-wal", "offboard.db-shm"):
            mode = stat.S_IMODE((tmp_path / "var" / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
    finally:
        await store.close()


async def test_a_damaged_file_is_refused_at_open_naming_it_and_what_to_do(
    tmp_path: Path, config_data: dict[str, Any], sandbox: Sandbox
) -> None:
    path = Path(config_data["store"]["sqlite"])
    await a_store_with_cases(path, config_data, sandbox)
    damage(path, 2)

    store = SqliteStore(path)
    with pytest.raises(StoreCorrupt) as info:
        await store.open()
    assert str(path) in str(info.value) and "backup" in str(info.value)

    config = write_config(tmp_path / "offboard.yaml", config_data)
    env = environment(sandbox.environment())
    for command in (["worker"], ["evidence", "--verify"], ["cases"]):
        result = await run(["--config", str(config), *command], env, tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert str(path) in result.stderr and "backup" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


async def test_a_worker_meeting_damage_at_runtime_stops_with_the_message(
    runtime: Any, leaver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one log line every lease forever (the case claimed, its read failing, the
    lease lapsing, the case claimed again): the loop ends with StoreCorrupt."""
    store = runtime.store
    assert isinstance(store, SqliteStore)
    await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    refuse = store.connector._corrupt("database disk image is malformed")

    async def malformed(*args: Any, **kwargs: Any) -> Any:
        raise refuse

    # the case row reads, its steps' page does not
    monkeypatch.setattr(store, "steps", malformed)
    with pytest.raises(StoreCorrupt):
        await asyncio.wait_for(Worker(runtime).run(asyncio.Event()), 30)
