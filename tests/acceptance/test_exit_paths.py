"""Every documented error exit ends with its code and one line naming the problem: never a
traceback, also not one printed at exit by a thread (aiosqlite's "Event loop is closed"),
and not when the reader of stdout has gone (`offboard status CASE | head`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.cli import OFFLINE_TOKEN, offline_config
from worker import cli
from worker.clock import SystemClock
from worker.domain import CaseStatus, NewCase
from worker.store.sqlite import SqliteStore

OFFBOARD = str(Path(sys.executable).with_name("offboard"))
TOKEN = OFFLINE_TOKEN
#: runs of each documented error exit (1 halted, 2 bad input or configuration)
ROUNDS = 20


async def _halted_case(db: Path) -> str:
    store = SqliteStore(db)
    await store.open()
    try:
        now = SystemClock().now()
        case, _ = await store.create_case(
            NewCase(playbook="leaver", subject="bob@example.com", steps=(), trigger={}), now
        )
        claimed = await store.claim_case(case.id, "exit-test", now, 60)
        assert claimed is not None
        await store.release_case(
            case.id, "exit-test", CaseStatus.HALTED, now, halt_reason="okta: 403 forbidden"
        )
        return case.id
    finally:
        await store.close()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What a thread of the command raised after its loop was gone."""
    seen: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: seen.append(repr(a.exc_value)))
    yield seen


def _error_exits(tmp_path: Path, halted: str) -> list[tuple[list[str], int, str]]:
    good = str(offline_config(tmp_path, {"sqlite": str(tmp_path / "offboard.db")}))
    no_store = str(offline_config(tmp_path, {"sqlite": "/proc/no-such-dir/offboard.db"}))
    postgres = str(offline_config(tmp_path, {"postgres": {"env": "EXIT_TEST_DSN"}}))
    return [
        (["--config", str(tmp_path / "missing.yaml"), "status"], 2, "cannot read config"),
        (["--config", good, "status", "no-such-case"], 2, "no case 'no-such-case'"),
        (["--config", good, "confirm", "no-such-case", "portal-sessions"], 2, "no case"),
        (["--config", good, "retry", "no-such-case"], 2, "no case"),
        (["--config", good, "evidence", "no-such-case"], 2, "no case"),
        (["--config", good, "run", "no-such-playbook", "--user", "a@example.com"], 2, "not found"),
        (["--config", good, "run", "leaver", "--user", "not an address"], 2, "email address"),
        (
            ["--config", good, "bulk", str(tmp_path / "no.csv"), "--playbook", "leaver"],
            2,
            "cannot read",
        ),
        (["--config", no_store, "status", "x"], 2, "cannot open"),
        (["--config", postgres, "status", "x"], 2, "unreachable"),
        (["check", str(tmp_path / "no-such.yaml")], 2, "cannot read playbook"),
        (["init", "/proc/no-such-dir"], 2, "cannot write"),
        (["--config", good, "status", halted], 1, "okta: 403 forbidden"),
    ]


def test_each_documented_error_exit_twenty_times_without_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    thread_errors: list[str],
) -> None:
    monkeypatch.setenv("OFFLINE_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("EXIT_TEST_DSN", "postgresql://u:pw@127.0.0.1:9/db")  # nothing listens
    halted = asyncio.run(_halted_case(tmp_path / "offboard.db"))
    causes = _error_exits(tmp_path, halted)
    # round-robin over the causes until each exit code has been seen ROUNDS times
    runs: dict[int, int] = {}
    while any(runs.get(code, 0) < ROUNDS for _, code, _ in causes):
        for argv, code, says in causes:
            if runs.get(code, 0) >= ROUNDS:
                continue
            runs[code] = runs.get(code, 0) + 1
            assert cli.main(argv) == code, argv
            out, err = capsys.readouterr()
            assert says in out + err, (argv, out, err)
            assert "Traceback" not in out + err, (argv, err)
    assert runs == {1: ROUNDS, 2: ROUNDS}
    # the store's connection threads end with the command, none is left behind
    for thread in threading.enumerate():
        if "connection_worker" in thread.name:
            thread.join(timeout=5)
            assert not thread.is_alive()
    assert thread_errors == []


def _run_to_a_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: `| true`
    try:
        return subprocess.Popen(
            [OFFBOARD, *args], stdout=write_end, stderr=subprocess.PIPE, env=env
        )
    finally:
        os.close(write_end)


def test_a_closed_pipe_and_a_failing_command_end_quietly_in_a_real_process(
    tmp_path: Path,
) -> None:
    halted = asyncio.run(_halted_case(tmp_path / "offboard.db"))
    config = str(offline_config(tmp_path, {"sqlite": str(tmp_path / "offboard.db")}))
    env = {**os.environ, "OFFLINE_TEST_TOKEN": TOKEN}
    # a few at a time: the thread race shows at interpreter exit, so these are processes
    for _ in range(3):
        processes = [
            _run_to_a_closed_pipe(["--config", config, "status", halted], env),
            _run_to_a_closed_pipe(["--config", config, "cases"], env),
            _run_to_a_closed_pipe(["--config", config, "status", "no-such-case"], env),
        ]
        for process in processes:
            _, err = process.communicate(timeout=120)
            assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
            assert process.returncode in (1, 2), (process.args, err.decode())
