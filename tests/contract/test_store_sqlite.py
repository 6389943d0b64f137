"""The Store contract against SQLite, and what only the SQLite backend promises."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import aiosqlite.core
import pytest

from worker.domain import Case, CaseEvent, StepStatus
from worker.errors import StoreError
from worker.store.base import Store
from worker.store.sqlite import MIGRATIONS, SqliteStore

from .store_contract import LEASE, T0, StoreContract, at, new_case


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = SqliteStore(tmp_path / "offboard.db")
        await store.open()
        try:
            yield store
        finally:
            await store.close()


async def schema_versions(path: Path) -> list[int]:
    async with (
        aiosqlite.connect(path) as db,
        db.execute("SELECT version FROM schema_version ORDER BY version") as cursor,
    ):
        return [row[0] for row in await cursor.fetchall()]


async def test_reopening_keeps_data_and_does_not_rerun_migrations(tmp_path: Path) -> None:
    path = tmp_path / "offboard.db"
    first = SqliteStore(path)
    await first.open()
    case, _ = await first.create_case(new_case(key="hr:1"), T0)
    await first.close()
    expected = list(range(1, len(MIGRATIONS) + 1))
    assert await schema_versions(path) == expected

    for _ in range(2):
        again = SqliteStore(path)
        await again.open()
        try:
            assert await again.get_case(case.id) == case
            assert [c.id for c in await again.list_cases()] == [case.id]
            _, created = await again.create_case(new_case(key="hr:1"), at(5))
            assert created is False
        finally:
            await again.close()
        assert await schema_versions(path) == expected


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "offboard.db"
    store = SqliteStore(path)
    await store.open()
    case, _ = await store.create_case(new_case(), T0)
    await store.close()
    newer = len(MIGRATIONS) + 41
    async with aiosqlite.connect(path) as db:
        await db.execute("INSERT INTO schema_version VALUES (?)", (newer,))
        await db.commit()

    refused = SqliteStore(path)
    try:
        with pytest.raises(StoreError) as info:
            await refused.open()
    finally:
        await refused.close()

    message = str(info.value).replace(str(path), "<path>")
    assert "<path>" in message
    assert re.search(rf"\b{newer}\b", message), message
    assert re.search(rf"\b{len(MIGRATIONS)}\b", message), message
    # The refusal changed nothing: the data and the schema history are as they were.
    assert await schema_versions(path) == [*range(1, len(MIGRATIONS) + 1), newer]
    async with (
        aiosqlite.connect(path) as db,
        db.execute("SELECT id FROM cases") as cursor,
    ):
        assert [row[0] for row in await cursor.fetchall()] == [case.id]


async def test_refused_open_leaves_no_connection_open(tmp_path: Path) -> None:
    path = tmp_path / "offboard.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    async with aiosqlite.connect(path) as db:
        await db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS) + 1,))
        await db.commit()

    refused = SqliteStore(path)
    try:
        with pytest.raises(StoreError):
            await refused.open()
        # the connection (and with it aiosqlite's thread) was closed by the refusal
        assert refused.connector._db is None
        with pytest.raises(StoreError, match="not open"):
            await refused.ping()
    finally:
        await refused.close()


async def test_processes_starting_together_can_all_open_a_new_database(
    tmp_path: Path,
) -> None:
    failures: list[BaseException] = []
    for n in range(100):
        path = tmp_path / f"new-{n}.db"
        stores = [SqliteStore(path) for _ in range(3)]
        try:
            results = await asyncio.gather(
                *(store.open() for store in stores), return_exceptions=True
            )
            failures += [r for r in results if isinstance(r, BaseException)]
        finally:
            for store in stores:
                await store.close()
    assert failures == [], f"{len(failures)} opens failed, first: {failures[0]!r}"


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    """Two stores on one file, each with its own connection: two worker processes."""
    path = tmp_path / "shared.db"
    a, b = SqliteStore(path), SqliteStore(path)
    try:
        # One after the other: opening a new database at the same instant is its own
        # test (test_processes_starting_together_can_all_open_a_new_database).
        await a.open()
        await b.open()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_two_processes_never_claim_the_same_case_with_claim_next(
    two_processes: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = two_processes
    created = [
        (await a.create_case(new_case(f"user{n}@example.com", priority=n % 3), at(n)))[0]
        for n in range(40)
    ]

    async def drain(store: SqliteStore, worker: str) -> list[Case]:
        claimed = []
        while (case := await store.claim_next(worker, at(100), LEASE)) is not None:
            claimed.append(case)
        return claimed

    by_a, by_b = await asyncio.gather(drain(a, "worker-a"), drain(b, "worker-b"))

    ids = [c.id for c in by_a + by_b]
    assert len(ids) == len(set(ids)), "a case was claimed twice"
    assert set(ids) == {c.id for c in created}
    for claimed, worker in [(c, "worker-a") for c in by_a] + [(c, "worker-b") for c in by_b]:
        assert claimed.lease_owner == worker
        assert (await a.get_case(claimed.id)).lease_owner == worker


async def test_two_processes_racing_for_each_case_claim_it_exactly_once(
    two_processes: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = two_processes
    cases = [(await b.create_case(new_case(f"u{n}@example.com"), T0))[0] for n in range(40)]

    for case in cases:
        got_a, got_b = await asyncio.gather(
            a.claim_case(case.id, "worker-a", at(1), LEASE),
            b.claim_case(case.id, "worker-b", at(1), LEASE),
        )
        winners = [got for got in (got_a, got_b) if got is not None]
        assert len(winners) == 1, f"{case.id} claimed by {len(winners)} workers"
        assert (await a.get_case(case.id)).lease_owner == winners[0].lease_owner


async def test_one_store_serves_concurrent_coroutines(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "offboard.db")
    await store.open()
    try:
        created = await asyncio.gather(
            *(store.create_case(new_case(f"u{n}@example.com"), T0) for n in range(5))
        )
        assert len({case.id for case, _ in created}) == 5
    finally:
        await store.close()


async def test_admit_finds_open_cases_by_person_not_by_scanning(tmp_path: Path) -> None:
    """With thousands of pending cases, admitting must not read them all: every
    statement `admit` runs searches an index (a scan made intake slow down as the
    backlog grew)."""
    from worker.domain import Arrival

    store = SqliteStore(tmp_path / "offboard.db")
    await store.open()
    statements: list[str] = []
    try:
        await store.connector.db.set_trace_callback(statements.append)
        arrival = Arrival(key="hook:1", case=new_case("a@example.com"), answer=lambda c: {})
        await store.admit([arrival], T0)
        await store.connector.db.set_trace_callback(None)
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(reads) >= 3
        for statement in reads:
            plan = await store.connector.db.execute_fetchall(f"EXPLAIN QUERY PLAN {statement}")
            details = [row[3] for row in plan]
            scans = [d for d in details if d.startswith("SCAN") and "json_each" not in d]
            assert scans == [], (statement, details)
            if "FROM cases WHERE subject" in statement:
                assert any("cases_subject" in d for d in details), details
    finally:
        await store.close()


async def test_a_scrape_reads_indexes_not_case_rows(tmp_path: Path) -> None:
    """At 100,000 open countdowns a /metrics scrape that read every case row (its
    countdown document with it) took 190 ms: every statement `refresh` runs searches an
    index or scans one that holds every column it needs."""
    from worker.metrics import Metrics, refresh

    store = SqliteStore(tmp_path / "offboard.db")
    await store.open()
    statements: list[str] = []
    try:
        await store.create_case(new_case("a@example.com"), T0)
        await store.connector.db.set_trace_callback(statements.append)
        await refresh(Metrics(), store, T0)
        await store.connector.db.set_trace_callback(None)
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(reads) >= 5
        for statement in reads:
            plan = await store.connector.db.execute_fetchall(f"EXPLAIN QUERY PLAN {statement}")
            details = [row[3] for row in plan]
            scans = [d for d in details if d.startswith("SCAN") and "json_each" not in d]
            assert all("COVERING INDEX" in d for d in scans), (statement, details)
    finally:
        await store.close()


async def test_a_long_wal_is_started_afresh(tmp_path: Path) -> None:
    """Under a steady write load a passive checkpoint never catches up with the WAL's end,
    so SQLite never starts it afresh: past `wal_truncate_frames` the checkpointer waits
    for a gap between the writes and truncates it (a 100,000-case fill grew it to 15 GB)."""
    path = tmp_path / "offboard.db"
    store = SqliteStore(path)
    wal = store.connector
    wal.checkpoint_seconds = 3600.0  # held back until the test lets it run
    wal.wal_truncate_frames = 10
    await store.open()
    try:
        for n in range(50):
            await store.create_case(new_case(f"p{n}@example.com"), T0)
        wal_file = tmp_path / "offboard.db-wal"
        assert wal_file.stat().st_size > 10 * 4096
        wal.checkpoint_seconds = 0.01
        assert wal._checkpointer is not None
        wal._checkpointer.cancel()
        wal._checkpointer = asyncio.create_task(wal._checkpoints())
        for _ in range(500):
            if wal.checkpoints:
                break
            await asyncio.sleep(0.01)
        assert wal.checkpoints >= 1
        assert wal_file.stat().st_size == 0
        assert len(await store.list_cases()) == 50
    finally:
        await store.close()


async def test_the_wal_is_checkpointed_beside_the_writes_not_in_a_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "offboard.db"
    store = SqliteStore(path)
    wal = store.connector
    wal.checkpoint_seconds = 3600.0  # held back until the test lets it run
    await store.open()
    try:
        # no commit runs a checkpoint (SQLite's default: the one crossing 1,000 pages)
        assert (await wal._one("PRAGMA wal_autocheckpoint"))[0] == 0  # type: ignore[index]
        await asyncio.sleep(0.1)
        size = path.stat().st_size
        for n in range(50):
            await store.create_case(new_case(f"p{n}@example.com"), T0)
        assert path.stat().st_size == size  # every page still in the WAL only
        # the background checkpointer copies them into the database file
        wal.checkpoint_seconds = 0.01
        assert wal._checkpointer is not None
        wal._checkpointer.cancel()
        wal._checkpointer = asyncio.create_task(wal._checkpoints())
        for _ in range(500):
            if wal.checkpoints:
                break
            await asyncio.sleep(0.01)
        assert wal.checkpoints >= 1
        assert path.stat().st_size > size
        assert len(await store.list_cases()) == 50
    finally:
        await store.close()
    assert not wal._checkpointer


@pytest.fixture
async def claimed(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, Case]]:
    """A store on a file with one case claimed by worker w1."""
    store = SqliteStore(tmp_path / "offboard.db")
    await store.open()
    try:
        case, _ = await store.create_case(new_case(), T0)
        await store.claim_case(case.id, "w1", T0, LEASE)
        yield store, case
    finally:
        await store.close()


async def test_a_step_write_is_one_trip_to_the_database_thread(
    claimed: tuple[SqliteStore, Case], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each trip is a thread switch: on the way to the IdP request they were most of
    # the worker's own overhead (bench/store_trips.py)
    store, case = claimed
    db = store.connector.db
    trips: list[object] = []
    original = aiosqlite.core.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self is db:
            trips.append(fn)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
    await store.start_step(case.id, 0, "w1", at(1))
    assert len(trips) == 1
    await store.finish_step(
        case.id, 0, "w1", StepStatus.DONE, at(2), evidence={}, event=("step_done", {})
    )
    assert len(trips) == 2
    await store.start_step(case.id, 1, "w1", at(3))
    await store.finish_and_start(
        case.id, 1, "w1", at(4), evidence={}, event=("step_done", {}), next_index=2
    )
    assert len(trips) == 4  # the step done and the next one started: one trip
    await store.close()
    assert [e.kind for e in (await _events(tmp_path))][-5:] == [
        "step_started",
        "step_done",
        "step_started",
        "step_done",
        "step_started",
    ]


async def test_a_failed_one_trip_write_leaves_nothing_and_no_open_transaction(
    claimed: tuple[SqliteStore, Case],
) -> None:
    store, case = claimed
    started = await store.start_step(case.id, 0, "w1", at(1))
    events = await store.events(case.id)
    with pytest.raises(TypeError):  # the event's data cannot be stored: after the step
        await store.finish_step(
            case.id, 0, "w1", StepStatus.DONE, at(2), event=("step_done", {"x": object()})
        )
    assert store.connector.db.in_transaction is False
    assert (await store.steps(case.id))[0] == started
    assert await store.events(case.id) == events
    done = await store.finish_step(case.id, 0, "w1", StepStatus.DONE, at(3))
    assert done.status is StepStatus.DONE


async def _events(tmp_path: Path) -> list[CaseEvent]:
    reopened = SqliteStore(tmp_path / "offboard.db")
    await reopened.open()
    try:
        [case] = await reopened.list_cases()
        return await reopened.events(case.id)
    finally:
        await reopened.close()
