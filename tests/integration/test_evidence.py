"""The evidence chain end to end: a real case through the sandbox, exported for an
auditor, checked in the store and offline, and tampered with in both backends.

Tampering goes around the store, as someone with the database would: the events
table refuses UPDATE and DELETE, so each tamper first removes that guard (which
anyone able to write the file or own the table can), then edits or deletes rows.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest

from tests.flows import contain
from worker.clock import parse_iso
from worker.config import parse_config
from worker.domain import CaseStatus, NewCase, PlannedStep
from worker.evidence import CSV_COLUMNS, export, verify, verify_export
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.store.base import Store, event_hash, genesis_hash
from worker.store.postgres import MIGRATIONS as PG_MIGRATIONS
from worker.store.postgres import PostgresStore
from worker.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from worker.store.sqlite import SqliteStore

DSN_ENV = "OFFBOARD_TEST_EVIDENCE_DSN"
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# tampering around the store


class Tamper(Protocol):
    async def edit(self, case_id: str, seq: int) -> None:
        """Change the event's data in place, hashes left as they were."""

    async def delete(self, case_id: str, seq: int) -> None: ...

    async def guarded(self) -> None:
        """Assert the database itself refuses to change or delete an event."""


class SqliteTamper:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        db = sqlite3.connect(self.path)
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.commit()
        finally:
            db.close()

    async def edit(self, case_id: str, seq: int) -> None:
        self._run(
            ("DROP TRIGGER IF EXISTS events_append_only_update", ()),
            (
                "UPDATE events SET data = json_set(data, '$.verified_by', 'forged') "
                "WHERE case_id = ? AND seq = ?",
                (case_id, seq),
            ),
        )

    async def delete(self, case_id: str, seq: int) -> None:
        self._run(
            ("DROP TRIGGER IF EXISTS events_append_only_delete", ()),
            ("DELETE FROM events WHERE case_id = ? AND seq = ?", (case_id, seq)),
        )

    async def guarded(self) -> None:
        for sql in ("UPDATE events SET kind = 'x'", "DELETE FROM events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                self._run((sql, ()))


class PostgresTamper:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                for sql, params in statements:
                    await conn.execute(sql, *params)
        finally:
            await conn.close()

    async def edit(self, case_id: str, seq: int) -> None:
        await self._run(
            ("ALTER TABLE events DISABLE TRIGGER events_append_only", ()),
            (
                'UPDATE events SET data = data || \'{"verified_by": "forged"}\'::jsonb '
                "WHERE case_id = $1 AND seq = $2",
                (case_id, seq),
            ),
            ("ALTER TABLE events ENABLE TRIGGER events_append_only", ()),
        )

    async def delete(self, case_id: str, seq: int) -> None:
        await self._run(
            ("ALTER TABLE events DISABLE TRIGGER events_append_only", ()),
            ("DELETE FROM events WHERE case_id = $1 AND seq = $2", (case_id, seq)),
            ("ALTER TABLE events ENABLE TRIGGER events_append_only", ()),
        )

    async def guarded(self) -> None:
        for sql in ("UPDATE events SET kind = 'x'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await self._run((sql, ()))


@pytest.fixture
async def pg_runtime(
    config_data: dict[str, Any],
    pg_fresh_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Runtime]:
    """The runtime of the `runtime` fixture, on PostgreSQL."""
    monkeypatch.setenv(DSN_ENV, pg_fresh_dsn)
    config_data["store"] = {"postgres": {"env": DSN_ENV}}
    async with open_runtime(parse_config(config_data, "test config"), base_dir=tmp_path) as rt:
        assert isinstance(rt.store, PostgresStore)
        yield rt


# a case, exported


async def test_a_contained_case_exports_per_step_evidence_that_verifies(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    store = runtime.store
    case = await contain(runtime, sandbox, leaver)
    assert case.status is CaseStatus.CONTAINED

    text = await export(store, case.id, "json", exported_at=NOW)
    document = json.loads(text)
    assert document["exported_at"] == "2026-01-05T09:00:00.000Z"
    assert document["case"]["id"] == case.id
    assert document["case"]["subject"] == leaver.login
    assert document["case"]["playbook"] == "leaver"
    assert document["case"]["trigger"] == {"source": "test"}
    assert document["case"]["status"] == "contained"
    assert parse_iso(document["case"]["created_at"]) == case.created_at

    # every step: when it started and finished, how often it ran, what verified it
    steps = document["steps"]
    assert [s["step_id"] for s in steps] == [s.id for s in case.steps]
    for step in steps:
        assert step["status"] == "done", step
        assert step["attempts"] >= 1, step
        assert step["started_at"] and step["finished_at"] and step["verified_by"], step
        assert parse_iso(step["started_at"]) <= parse_iso(step["finished_at"]), step
    # in containment order: each step finished before the next started
    for before, after in itertools.pairwise(steps):
        assert parse_iso(before["finished_at"]) <= parse_iso(after["started_at"])
    confirmed = {s["step_id"]: s["confirmed_by"] for s in steps if s["confirmed_by"]}
    assert confirmed == {"portal-sessions": "test-operator"}
    portal = next(s for s in steps if s["step_id"] == "portal-sessions")
    assert portal["confirmed_at"] is not None
    assert portal["attempts"] == 2  # opened the task, then verified the confirmation

    milestones = document["countdown"]["milestones"]
    assert milestones and all(m["name"] and m["at"] for m in milestones)
    assert milestones[-1]["name"] == "all-lapsed" and milestones[-1]["reached_at"] is None

    records = await store.evidence(case.id)
    head = await store.evidence_head(case.id)
    assert [e["hash"] for e in document["events"]] == [r.hash for r in records]
    assert document["events"][0]["prev_hash"] == genesis_hash(case.id)
    kinds = {e["kind"] for e in document["events"]}
    assert {"case_created", "step_started", "step_done", "operator_task_opened"} <= kinds
    assert {"operator_confirmed", "countdown_computed", "case_contained"} <= kinds
    verification = document["verification"]
    assert verification["chain_valid"] is True and verification["problems"] == []
    assert (verification["head"], verification["count"]) == head == (records[-1].hash, len(records))

    assert await verify(store, case.id) == []
    assert await verify(store) == []
    assert verify_export(text) == []
    # the same store gives the same export: an auditor can compare two
    assert await export(store, case.id, "json", exported_at=NOW) == text

    rows = list(csv.reader(io.StringIO(await export(store, case.id, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(int(r[0]), r[1], r[5], r[6]) for r in rows[1:]] == [
        (r.seq, r.at, r.prev_hash, r.hash) for r in records
    ]
    by_kind = {(r[2], r[3]): r[4] for r in rows[1:]}
    assert by_kind[("operator_confirmed", "portal-sessions")] == "confirmed by test-operator"
    assert by_kind[("step_done", "idp-deactivate")].startswith("done, verified by ")
    assert by_kind[("case_created", "")].startswith(f"case opened for {leaver.login}")


async def test_csv_quotes_what_needs_it_and_defuses_formulas(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "offboard.db")
    await store.open()
    try:
        case, _ = await store.create_case(_new_case(), NOW)
        awkward = 'comma, "quotes"\nand a second line'
        await store.append_event(
            case.id, "step_deferred", NOW, step_id="idp", data={"reason": awkward}
        )
        for cell in ('=HYPERLINK("http://x.example")', "+1", "-1", "@SUM(A1)"):
            await store.append_event(case.id, "note", NOW, step_id=cell, data={"v": cell})
        text = await export(store, case.id, "csv")
    finally:
        await store.close()

    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 1 + 6
    assert rows[2][4] == f"deferred: {awkward}"  # one cell, newline and quotes intact
    for row in rows[3:]:
        assert row[3].startswith("'") and row[3][1] in "=+-@", row
    assert all(len(row) == len(CSV_COLUMNS) for row in rows)


# tampering in the store


async def _tampering_is_detected(
    store: Store, runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, tamper: Tamper
) -> None:
    case = await contain(runtime, sandbox, leaver)
    untouched, _ = await store.create_case(_new_case("other@example.com"), NOW)
    records = await store.evidence(case.id)
    count = len(records)
    assert count >= 8 and await verify(store) == []
    await tamper.guarded()
    assert await verify(store) == []

    def problem(text: str) -> str:
        return f"case {case.id}: {text}"

    # an event edited in place: that event, and nothing else
    done = next(r.seq for r in records if r.kind == "step_done")
    await tamper.edit(case.id, done)
    edited = problem(f"event {done} was edited (hash mismatch)")
    assert await verify(store, case.id) == [edited]
    assert await verify(store) == [edited]
    # an export of it says so, and the offline check agrees
    text = await export(store, case.id, "json")
    verification = json.loads(text)["verification"]
    assert verification["chain_valid"] is False and verification["problems"] == [edited]
    assert verify_export(text) == [edited]

    # an event deleted from the middle: a gap
    middle = done + 2
    await tamper.delete(case.id, middle)
    gap = problem(f"event {middle} missing (sequence gap)")
    assert await verify(store, case.id) == [edited, gap]

    # the last event deleted: the case row's head still counts it
    head, head_count = await store.evidence_head(case.id)
    assert head_count == count
    await tamper.delete(case.id, count)
    deleted = problem(f"last event(s) deleted (head {head}, count {count}; the events end at ")
    problems = await verify(store, case.id)
    assert problems[:2] == [edited, gap] and len(problems) == 3
    assert problems[2].startswith(deleted), problems[2]
    assert verify_export(await export(store, case.id, "json")) == problems

    # appending afterwards does not hide it: the new event follows the lost one
    appended = await store.append_event(case.id, "note", NOW, step_id=None, data={})
    assert appended.seq == count + 1
    assert await verify(store) == [edited, gap, problem(f"event {count} missing (sequence gap)")]
    assert await verify(store, untouched.id) == []


async def test_tampering_in_sqlite_is_detected(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, tmp_path: Path
) -> None:
    assert isinstance(runtime.store, SqliteStore)
    tamper = SqliteTamper(tmp_path / "offboard.db")
    await _tampering_is_detected(runtime.store, runtime, sandbox, leaver, tamper)


async def test_tampering_in_postgres_is_detected(
    pg_runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, pg_fresh_dsn: str
) -> None:
    tamper = PostgresTamper(pg_fresh_dsn)
    await _tampering_is_detected(pg_runtime.store, pg_runtime, sandbox, leaver, tamper)


# tampering with an export


async def test_a_tampered_export_is_detected_offline(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    case = await contain(runtime, sandbox, leaver)
    text = await export(runtime.store, case.id, "json")
    original = json.loads(text)
    assert verify_export(text) == []
    events = original["events"]
    done = next(i for i, e in enumerate(events) if e["kind"] == "step_done")
    seq = events[done]["seq"]

    def tampered(change: Callable[[dict[str, Any]], None]) -> list[str]:
        document = copy.deepcopy(original)
        change(document)
        return verify_export(json.dumps(document, indent=2))

    def problem(text: str) -> str:
        return f"case {case.id}: {text}"

    def edit_event(d: dict[str, Any]) -> None:
        d["events"][done]["data"]["verified_by"] = "forged"

    assert problem(f"event {seq} was edited (hash mismatch)") in tampered(edit_event)

    def forge_event(d: dict[str, Any]) -> None:
        # someone who knows the algorithm rehashes the event they edited
        event = d["events"][done]
        event["data"]["verified_by"] = "forged"
        event["hash"] = _rehash(case.id, event)

    assert problem(f"event {seq + 1} does not follow event {seq} (prev_hash mismatch)") in (
        tampered(forge_event)
    )

    def forge_tail(d: dict[str, Any]) -> None:
        # ...and every event after it: the head the export recorded gives it away
        forge_event(d)
        for event, before in zip(d["events"][done + 1 :], d["events"][done:], strict=False):
            event["prev_hash"] = before["hash"]
            event["hash"] = _rehash(case.id, event)

    last = events[-1]["seq"]
    forged = tampered(forge_tail)
    assert any(p.startswith(problem(f"the chain head is not event {last}")) for p in forged)

    def drop_middle(d: dict[str, Any]) -> None:
        del d["events"][2]

    # (what the dropped event said is also missing from the step it summarised)
    assert problem("event 3 missing (sequence gap)") in tampered(drop_middle)

    def drop_last(d: dict[str, Any]) -> None:
        d["events"].pop()

    dropped = tampered(drop_last)
    assert dropped[0].startswith(problem("last event(s) deleted"))
    # made when the chain was valid, so the export was changed afterwards
    assert dropped[1:] == [problem("the export says chain_valid True, but its events say False")]

    def move_finish(d: dict[str, Any]) -> None:
        d["steps"][0]["finished_at"] = "2020-01-01T00:00:00.000Z"

    [moved] = tampered(move_finish)
    assert moved.startswith(problem(f"step {case.steps[0].id}: finished_at '2020-01-01"))

    def swap_confirmer(d: dict[str, Any]) -> None:
        next(s for s in d["steps"] if s["confirmed_by"])["confirmed_by"] = "someone-else"

    assert len(tampered(swap_confirmer)) == 1

    def change_trigger(d: dict[str, Any]) -> None:
        d["case"]["trigger"] = {"source": "forged"}

    assert tampered(change_trigger) == [problem("case.trigger is not what event 1 records")]

    def claim_valid(d: dict[str, Any]) -> None:
        d["verification"]["chain_valid"] = False

    assert len(tampered(claim_valid)) == 1

    # text edits, not only parsed ones
    assert verify_export(text.replace('"test-operator"', '"forger"', 1)) != []
    assert verify_export(text[: len(text) // 2])[0].startswith("not a JSON evidence export")
    assert verify_export('{"format": "something else"}')[0].startswith("malformed")
    assert verify_export("[]")[0].startswith("malformed")


def _rehash(case_id: str, event: dict[str, Any]) -> str:
    return event_hash(
        case_id,
        event["seq"],
        event["at"],
        event["kind"],
        event["step_id"],
        event["data"],
        event["prev_hash"],
    )


def _new_case(subject: str = "someone@example.com") -> NewCase:
    return NewCase(
        playbook="leaver",
        subject=subject,
        steps=(PlannedStep(id="idp", action="idp.deactivate_user", verify="idp.user_status"),),
        trigger={"source": "test"},
    )


# the migration chains what was there before


def _old_events(case_id: str, seqs: list[int]) -> list[tuple[Any, ...]]:
    return [
        (case_id, seq, f"2026-01-05T09:00:{seq:02d}.000Z", "note", None, {"n": seq, "x": 1e300})
        for seq in seqs
    ]


async def test_upgrading_sqlite_chains_the_events_already_stored(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    try:
        for version, script in enumerate(SQLITE_MIGRATIONS[:3], start=1):
            assert isinstance(script, str)
            db.executescript(script)
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        for case_id in ("c-a", "c-gap"):
            db.execute(
                "INSERT INTO cases (id, playbook, subject, status, priority, steps, trigger, "
                "created_at, updated_at) VALUES (?, 'leaver', 's@example.com', 'contained', 0, "
                "'[]', '{}', '2026-01-05T09:00:00.000Z', '2026-01-05T09:00:00.000Z')",
                (case_id,),
            )
        rows = _old_events("c-a", [1, 2, 3, 4, 5]) + _old_events("c-gap", [1, 2, 4])
        db.executemany(
            "INSERT INTO events (case_id, seq, at, kind, step_id, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(*row[:5], json.dumps(row[5])) for row in rows],
        )
        db.commit()
    finally:
        db.close()

    store = SqliteStore(path)
    await store.open()
    try:
        await _assert_upgraded(store)
        assert await store.evidence_head("c-gap") == ((await store.evidence("c-gap"))[-1].hash, 4)
    finally:
        await store.close()
    await SqliteTamper(path).guarded()


async def test_upgrading_postgres_chains_the_events_already_stored(pg_fresh_dsn: str) -> None:
    conn = await asyncpg.connect(pg_fresh_dsn)
    try:
        first = PG_MIGRATIONS[0]
        assert isinstance(first, str)
        await conn.execute(first)
        await conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now()); INSERT INTO schema_version VALUES (1)"
        )
        # c-gap's counter says 5: its last event was deleted before the upgrade
        for case_id, last in (("c-a", 5), ("c-gap", 5)):
            await conn.execute(
                "INSERT INTO cases (id, playbook, subject, status, priority, steps, trigger, "
                "created_at, updated_at, last_event_seq) VALUES ($1, 'leaver', 's@example.com', "
                "'contained', 0, '[]', '{}', now(), now(), $2)",
                case_id,
                last,
            )
        rows = _old_events("c-a", [1, 2, 3, 4, 5]) + _old_events("c-gap", [1, 2, 4])
        await conn.executemany(
            "INSERT INTO events (case_id, seq, at, kind, step_id, data) "
            "VALUES ($1, $2, $3::text::timestamptz, $4, $5, $6::text::jsonb)",
            [(*row[:5], json.dumps(row[5])) for row in rows],
        )
    finally:
        await conn.close()

    store = PostgresStore(pg_fresh_dsn)
    await store.open()
    try:
        await _assert_upgraded(store, gap_count=5)
    finally:
        await store.close()
    await PostgresTamper(pg_fresh_dsn).guarded()


async def _assert_upgraded(store: Store, gap_count: int = 4) -> None:
    records = await store.evidence("c-a")
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == genesis_hash("c-a")
    assert await verify(store, "c-a") == []
    assert await store.evidence_head("c-a") == (records[-1].hash, 5)
    # a gap that was already there is kept, and shown
    expected = ["case c-gap: event 3 missing (sequence gap)"]
    if gap_count > 4:
        head = (await store.evidence("c-gap"))[-1].hash
        expected.append(
            f"case c-gap: last event(s) deleted (head {head}, count {gap_count}; "
            "the events end at 4)"
        )
    assert await verify(store) == expected
    # and the chain goes on from where the upgrade left it
    appended = await store.append_event("c-a", "note", NOW, step_id=None, data={})
    assert appended.seq == 6
    assert await verify(store, "c-a") == []
    assert (await store.evidence("c-a"))[-1].prev_hash == records[-1].hash
