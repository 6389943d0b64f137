"""The embedded store: SQLite in WAL mode through aiosqlite, one writer connection.

SQLite has no SKIP LOCKED; claims run inside BEGIN IMMEDIATE, which takes the
database's write lock, so two processes can never claim the same case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from worker.clock import parse_iso, utc_iso
from worker.domain import (
    Admission,
    Arrival,
    Case,
    CaseEvent,
    CaseStatus,
    Delivery,
    LedgerEntry,
    LedgerState,
    NewCase,
    OperatorTask,
    PlannedStep,
    Refusal,
    StepRecord,
    StepStatus,
    Timer,
)
from worker.errors import CaseStarted, NotFound, StoreError
from worker.store.base import (
    ALL_LAPSED,
    CLOSED_STATUSES,
    OPEN_STATUSES_SQL,
    URGENCY_ORDER,
    CaseCount,
    CasePage,
    EvidenceRecord,
    TaskBacklog,
    created_event,
    event_hash,
    genesis_hash,
    new_case_id,
    plan_admission,
    settle_admission,
)

#: A migration step that SQL alone cannot express; it runs inside the migration's
#: transaction, on the store's connection.
PythonMigration = Callable[[aiosqlite.Connection], Awaitable[None]]

#: The events table from version 4 on: the hash chain, and nothing can change a row.
_CHAINED_EVENTS = (
    """
    CREATE TABLE events_chained (
        case_id TEXT NOT NULL REFERENCES cases (id),
        seq INTEGER NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        step_id TEXT,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (case_id, seq)
    )
    """,
    "ALTER TABLE cases ADD COLUMN events_head TEXT",
    "ALTER TABLE cases ADD COLUMN events_count INTEGER NOT NULL DEFAULT 0",
)
_APPEND_ONLY = (
    """
    CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
    """
    CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
    """,
)


async def _chain_events(db: aiosqlite.Connection) -> None:
    """Version 4: hash-chain every case's events, those already stored included.

    The table is rebuilt (SQLite cannot add NOT NULL columns to it otherwise): each
    existing row is copied as it is, with the links computed in seq order from the
    case's genesis, and the case row gets its head. A gap already in the numbers is
    kept, not renumbered: the chain then shows it, as it must. From here on the events
    table refuses UPDATE and DELETE."""
    for statement in _CHAINED_EVENTS:
        await db.execute(statement)
    heads: list[tuple[str, int, str]] = []
    case_id: str | None = None
    prev, last = "", 0
    async with db.execute(
        "SELECT case_id, seq, at, kind, step_id, data FROM events ORDER BY case_id, seq"
    ) as cursor:
        while rows := list(await cursor.fetchmany(500)):
            batch = []
            for row in rows:
                if row["case_id"] != case_id:
                    if case_id is not None:
                        heads.append((prev, last, case_id))
                    case_id, prev = row["case_id"], genesis_hash(row["case_id"])
                digest = event_hash(
                    row["case_id"],
                    row["seq"],
                    row["at"],
                    row["kind"],
                    row["step_id"],
                    json.loads(row["data"]),
                    prev,
                )
                batch.append((*tuple(row), prev, digest))
                prev, last = digest, row["seq"]
            await db.executemany(
                "INSERT INTO events_chained (case_id, seq, at, kind, step_id, data, prev_hash, "
                "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
    if case_id is not None:
        heads.append((prev, last, case_id))
    await db.executemany("UPDATE cases SET events_head = ?, events_count = ? WHERE id = ?", heads)
    await db.execute("DROP TABLE events")
    await db.execute("ALTER TABLE events_chained RENAME TO events")
    for statement in _APPEND_ONLY:
        await db.execute(statement)


async def _move_head_by_trigger(db: aiosqlite.Connection) -> None:
    # A trigger body holds semicolons: one statement, not split like the scripts.
    await db.execute(
        """
        CREATE TRIGGER events_move_head AFTER INSERT ON events
        BEGIN
            UPDATE cases SET events_head = NEW.hash, events_count = NEW.seq
            WHERE id = NEW.case_id;
        END
        """
    )


def _sql_event_hash(
    case_id: str, seq: int, at: str, kind: str, step_id: str | None, data: str, prev: str
) -> str:
    """`event_hash` for SQL: the event's data as stored (JSON text)."""
    return event_hash(case_id, seq, at, kind, step_id, json.loads(data), prev)


#: Versioned schema: each entry upgrades from the previous version. Never edit a
#: released entry; append a new one. A string is SQL statements separated by `;`.
MIGRATIONS: tuple[str | PythonMigration, ...] = (
    """
    CREATE TABLE cases (
        id TEXT PRIMARY KEY,
        playbook TEXT NOT NULL,
        subject TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        steps TEXT NOT NULL,
        trigger TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        run_after TEXT,
        lease_owner TEXT,
        lease_expires_at TEXT,
        halt_reason TEXT,
        idempotency_key TEXT UNIQUE
    );
    CREATE INDEX cases_runnable ON cases (status, priority DESC, created_at);
    CREATE TABLE steps (
        case_id TEXT NOT NULL REFERENCES cases (id),
        idx INTEGER NOT NULL,
        step_id TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        started_at TEXT,
        finished_at TEXT,
        evidence TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        PRIMARY KEY (case_id, idx)
    );
    CREATE TABLE side_effects (
        key TEXT PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases (id),
        step_id TEXT NOT NULL,
        operation TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        applied_at TEXT
    );
    CREATE TABLE operator_tasks (
        case_id TEXT NOT NULL REFERENCES cases (id),
        step_id TEXT NOT NULL,
        title TEXT NOT NULL,
        instructions TEXT NOT NULL,
        console_url TEXT NOT NULL,
        subject TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        confirmed_at TEXT,
        confirmed_by TEXT,
        PRIMARY KEY (case_id, step_id)
    );
    CREATE TABLE events (
        case_id TEXT NOT NULL REFERENCES cases (id),
        seq INTEGER NOT NULL,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        step_id TEXT,
        data TEXT NOT NULL,
        PRIMARY KEY (case_id, seq)
    );
    """,
    """
    ALTER TABLE cases ADD COLUMN countdown TEXT;
    CREATE TABLE timers (
        case_id TEXT NOT NULL REFERENCES cases (id),
        name TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        due_at TEXT NOT NULL,
        fired_at TEXT,
        fired_by TEXT,
        closes_case INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (case_id, name, epoch)
    );
    CREATE INDEX timers_due ON timers (fired_at, due_at);
    """,
    """
    CREATE INDEX cases_subject ON cases (subject, playbook, status);
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        case_id TEXT,
        outcome TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE TABLE refusals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        source TEXT NOT NULL,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    """,
    _chain_events,
    # version 5: a scrape counts events by kind, the API pages cases by (created_at, id)
    """
    CREATE INDEX events_kind ON events (kind);
    CREATE INDEX cases_created ON cases (created_at, id);
    """,
    # version 6: appending an event moves the case's chain head in the same statement
    _move_head_by_trigger,
)

#: Appends one event to its case's chain: linked to the head, hashed by the
#: registered `offboard_event_hash`, the head moved by the trigger `events_move_head`.
#: Parameters: case id, at, kind, step id, data (JSON text). The counter, not MAX(seq):
#: a deleted last event leaves a gap the chain shows.
_APPEND_EVENT = (
    "INSERT INTO events (case_id, seq, at, kind, step_id, data, prev_hash, hash) "
    "SELECT id, events_count + 1, :at, :kind, :step_id, :data, "
    "COALESCE(NULLIF(events_head, ''), :genesis), "
    "offboard_event_hash(id, events_count + 1, :at, :kind, :step_id, :data, "
    "COALESCE(NULLIF(events_head, ''), :genesis)) FROM cases WHERE id = :case_id"
)


def _event_params(
    case_id: str, kind: str, at: str, step_id: str | None, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "at": at,
        "kind": kind,
        "step_id": step_id,
        "data": json.dumps(data),
        "genesis": genesis_hash(case_id),
    }


#: a statement's parameters: positional (`?`) or named (`:name`)
_Params = tuple[Any, ...] | dict[str, Any]

#: set while the current task holds the connection inside a transaction
_IN_TRANSACTION: ContextVar[bool] = ContextVar("_IN_TRANSACTION", default=False)

_CASE_COLUMNS = (
    "id, playbook, subject, status, priority, steps, trigger, created_at, updated_at, "
    "run_after, lease_owner, lease_expires_at, halt_reason, idempotency_key, countdown"
)


def _ts(when: datetime | None) -> str | None:
    return None if when is None else utc_iso(when)


def _dt(text: str | None) -> datetime | None:
    return None if text is None else parse_iso(text)


def _steps_json(new: NewCase) -> str:
    return json.dumps(
        [
            {"id": s.id, "action": s.action, "verify": s.verify, "options": s.options}
            for s in new.steps
        ]
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        key=row["key"],
        case_id=row["case_id"],
        outcome=json.loads(row["outcome"]),
        received_at=parse_iso(row["received_at"]),
    )


def _case(row: sqlite3.Row) -> Case:
    steps = tuple(
        PlannedStep(id=s["id"], action=s["action"], verify=s["verify"], options=s["options"])
        for s in json.loads(row["steps"])
    )
    created_at = parse_iso(row["created_at"])
    updated_at = parse_iso(row["updated_at"])
    return Case(
        id=row["id"],
        playbook=row["playbook"],
        subject=row["subject"],
        status=CaseStatus(row["status"]),
        priority=row["priority"],
        steps=steps,
        trigger=json.loads(row["trigger"]),
        created_at=created_at,
        updated_at=updated_at,
        run_after=_dt(row["run_after"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=_dt(row["lease_expires_at"]),
        halt_reason=row["halt_reason"],
        idempotency_key=row["idempotency_key"],
        countdown=json.loads(row["countdown"]) if row["countdown"] else None,
    )


def _timer(row: sqlite3.Row) -> Timer:
    return Timer(
        case_id=row["case_id"],
        name=row["name"],
        epoch=row["epoch"],
        due_at=parse_iso(row["due_at"]),
        fired_at=_dt(row["fired_at"]),
        fired_by=row["fired_by"],
        closes_case=bool(row["closes_case"]),
    )


def _step(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        case_id=row["case_id"],
        index=row["idx"],
        step_id=row["step_id"],
        action=row["action"],
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        evidence=json.loads(row["evidence"]),
        error=row["error"],
    )


def _ledger(row: sqlite3.Row) -> LedgerEntry:
    requested_at = parse_iso(row["requested_at"])
    return LedgerEntry(
        key=row["key"],
        case_id=row["case_id"],
        step_id=row["step_id"],
        operation=row["operation"],
        state=LedgerState(row["state"]),
        requested_at=requested_at,
        applied_at=_dt(row["applied_at"]),
    )


def _task(row: sqlite3.Row) -> OperatorTask:
    return OperatorTask(
        case_id=row["case_id"],
        step_id=row["step_id"],
        title=row["title"],
        instructions=row["instructions"],
        console_url=row["console_url"],
        subject=row["subject"],
        opened_at=parse_iso(row["opened_at"]),
        confirmed_at=_dt(row["confirmed_at"]),
        confirmed_by=row["confirmed_by"],
    )


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        # One connection serves every coroutine of the process; a transaction must
        # not interleave with another coroutine's statements.
        self._lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None
        #: how often the WAL is copied into the database (see `_checkpoints`)
        self.checkpoint_seconds = 1.0
        #: checkpoints run so far, for tests to wait on
        self.checkpoints = 0

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves, so transactions are explicit.
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._enable_wal()
            # FULL: a committed step record survives a power cut as well as kill -9.
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.create_function(
                "offboard_event_hash", 7, _sql_event_hash, deterministic=True
            )
            # the WAL is checkpointed beside the writes, never inside a commit
            await self._db.execute("PRAGMA wal_autocheckpoint=0")
            await self._migrate()
            if self.path != ":memory:":
                self._checkpointer = asyncio.create_task(self._checkpoints())
        except BaseException:
            await self.close()  # a refused database must not leave its connection thread behind
            raise

    async def _enable_wal(self) -> None:
        # Switching a new file to WAL takes an exclusive lock that busy_timeout does
        # not wait for: processes starting together must take turns.
        for attempt in range(50):
            try:
                await self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))

    async def _checkpoints(self) -> None:
        """Copy the WAL into the database file every `checkpoint_seconds`, on a
        connection of its own. SQLite's automatic checkpoint runs inside the commit
        that crosses 1,000 pages, which then waits for the database file's fsync (10 ms
        here: the overhead bench's p99); a passive checkpoint never blocks a writer."""
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA synchronous=FULL")
            while True:
                await asyncio.sleep(self.checkpoint_seconds)
                try:
                    await db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or locked: the next round catches up
                    continue
                self.checkpoints += 1
        finally:
            await db.close()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._db is not None:
            # the last connection to close checkpoints what is left and removes the WAL
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def _migrate(self) -> None:
        async with self._transaction():
            await self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            row = await self._one("SELECT MAX(version) AS v FROM schema_version")
            current = (row["v"] if row else None) or 0
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"database {self.path} has schema version {current}, newer than this "
                    f"offboard ({len(MIGRATIONS)}): upgrade offboard"
                )
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                if isinstance(script, str):
                    for statement in filter(str.strip, script.split(";")):
                        await self.db.execute(statement)
                else:
                    await script(self.db)
                await self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """BEGIN IMMEDIATE takes the database's write lock at once (other processes),
        the asyncio lock keeps this process's other coroutines out."""
        async with self._lock:
            token = _IN_TRANSACTION.set(True)
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
                await self.db.execute("COMMIT")
            finally:
                _IN_TRANSACTION.reset(token)

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        if _IN_TRANSACTION.get():
            yield
            return
        async with self._lock:
            yield

    # Each helper is one trip to aiosqlite's thread (execute and fetch together): on a
    # busy machine every trip waits for a thread switch, and they add up per step.
    async def _one(self, sql: str, params: _Params = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: _Params = ()) -> list[sqlite3.Row]:
        async with self._exclusive():
            return list(await self.db.execute_fetchall(sql, params))

    async def _returning(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        """A write with RETURNING, its first row."""
        return await self._one(sql, params)

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        async with self._exclusive():
            # the statement has run to completion: its cursor holds nothing to close
            cursor = await self.db.execute(sql, params)
            return cursor.rowcount

    # cases

    async def create_case(self, new: NewCase, now: datetime) -> tuple[Case, bool]:
        case_id = new_case_id()
        async with self._transaction():
            if new.idempotency_key is not None:
                row = await self._one(
                    f"SELECT {_CASE_COLUMNS} FROM cases WHERE idempotency_key = ?",
                    (new.idempotency_key,),
                )
                if row is not None:
                    return _case(row), False
            steps_json = _steps_json(new)
            await self._write(
                f"INSERT INTO cases ({_CASE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, NULL)",
                (
                    case_id,
                    new.playbook,
                    new.subject,
                    CaseStatus.PENDING.value,
                    new.priority,
                    steps_json,
                    json.dumps(new.trigger),
                    utc_iso(now),
                    utc_iso(now),
                    _ts(new.run_after),
                    new.idempotency_key,
                ),
            )
            await self.db.executemany(
                "INSERT INTO steps (case_id, idx, step_id, action, status) VALUES (?, ?, ?, ?, ?)",
                [
                    (case_id, i, s.id, s.action, StepStatus.PENDING.value)
                    for i, s in enumerate(new.steps)
                ],
            )
            await self._append_event(
                case_id,
                "case_created",
                now,
                None,
                created_event(new),
            )
        return await self.get_case(case_id), True

    async def admit(self, arrivals: Sequence[Arrival], now: datetime) -> list[Admission]:
        # Set-based: a handful of statements and one commit for the whole group, so
        # that intake costs about the same for one delivery as for a hundred.
        if not arrivals:
            return []
        keys = json.dumps(sorted({a.key for a in arrivals}))
        people = json.dumps(sorted({a.case.subject for a in arrivals}))
        at = utc_iso(now)
        async with self._transaction():
            seen = {
                d.key: d
                for d in map(
                    _delivery,
                    await self._all(
                        "SELECT * FROM deliveries WHERE key IN (SELECT value FROM json_each(?))",
                        (keys,),
                    ),
                )
            }
            open_cases: dict[tuple[str, str], Case] = {}
            rows = await self._all(
                f"SELECT {_CASE_COLUMNS} FROM cases "
                "WHERE subject IN (SELECT value FROM json_each(?)) "
                # `+status`: by person (cases_subject), never a scan of every pending case
                f"AND +status IN {OPEN_STATUSES_SQL} ORDER BY created_at DESC",
                (people,),
            )
            for case in map(_case, rows):  # newest first: the oldest is written last
                open_cases[(case.subject, case.playbook)] = case
            plan = plan_admission(arrivals, seen, open_cases)
            if plan.creates:
                cases = [
                    (
                        case_id,
                        new.playbook,
                        new.subject,
                        CaseStatus.PENDING.value,
                        new.priority,
                        _steps_json(new),
                        json.dumps(new.trigger),
                        at,
                        at,
                        _ts(new.run_after),
                    )
                    for case_id, new in plan.creates
                ]
                steps = [
                    (case_id, i, s.id, s.action, StepStatus.PENDING.value)
                    for case_id, new in plan.creates
                    for i, s in enumerate(new.steps)
                ]
                await self.db.executemany(
                    "INSERT INTO cases (id, playbook, subject, status, priority, steps, trigger, "
                    "created_at, updated_at, run_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    cases,
                )
                await self.db.executemany(
                    "INSERT INTO steps (case_id, idx, step_id, action, status) "
                    "VALUES (?, ?, ?, ?, ?)",
                    steps,
                )
                await self.db.executemany(
                    _APPEND_EVENT,
                    [
                        _event_params(case_id, "case_created", at, None, created_event(new))
                        for case_id, new in plan.creates
                    ],
                )
            rows = await self._all(
                f"SELECT {_CASE_COLUMNS} FROM cases WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([case_id for case_id, _ in plan.creates]),),
            )
            created = {case.id: case for case in map(_case, rows)}
            deliveries, admissions = settle_admission(plan, arrivals, created, now)
            if deliveries:
                await self.db.executemany(
                    "INSERT INTO deliveries (key, case_id, outcome, received_at) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (d.key, d.case_id, json.dumps(d.outcome), utc_iso(d.received_at))
                        for d in deliveries
                    ],
                )
        return admissions

    async def get_case(self, case_id: str) -> Case:
        row = await self._one(f"SELECT {_CASE_COLUMNS} FROM cases WHERE id = ?", (case_id,))
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        return _case(row)

    async def list_cases(self, statuses: tuple[CaseStatus, ...] | None = None) -> list[Case]:
        sql = f"SELECT {_CASE_COLUMNS} FROM cases"
        params: tuple[Any, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            params = tuple(s.value for s in statuses)
        rows = await self._all(sql + " ORDER BY created_at, id", params)
        return [_case(r) for r in rows]

    _RUNNABLE = (
        "((status = 'pending' AND (run_after IS NULL OR run_after <= ?)) "
        "OR (status = 'running' AND lease_expires_at <= ?))"
    )

    async def claim_next(
        self, worker_id: str, now: datetime, lease_seconds: float, *, min_priority: int = 0
    ) -> Case | None:
        return await self._claim(
            f"SELECT id FROM cases WHERE {self._RUNNABLE} AND priority >= ? "
            "ORDER BY priority DESC, created_at, id LIMIT 1",
            (utc_iso(now), utc_iso(now), min_priority),
            worker_id,
            now,
            lease_seconds,
        )

    async def claim_case(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> Case | None:
        return await self._claim(
            f"SELECT id FROM cases WHERE id = ? AND {self._RUNNABLE}",
            (case_id, utc_iso(now), utc_iso(now)),
            worker_id,
            now,
            lease_seconds,
        )

    async def _claim(
        self,
        select: str,
        params: tuple[Any, ...],
        worker_id: str,
        now: datetime,
        lease_seconds: float,
    ) -> Case | None:
        # One statement, so one atomic step and one trip to the database thread: the
        # claim is on the path from a trigger to the first provider call.
        row = await self._returning(
            "UPDATE cases SET status = 'running', lease_owner = ?, lease_expires_at = ?, "
            f"updated_at = ? WHERE id = ({select}) RETURNING {_CASE_COLUMNS}",
            (
                worker_id,
                utc_iso(now + timedelta(seconds=lease_seconds)),
                utc_iso(now),
                *params,
            ),
        )
        return None if row is None else _case(row)

    async def heartbeat(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> bool:
        count = await self._write(
            "UPDATE cases SET lease_expires_at = ? "
            "WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (utc_iso(now + timedelta(seconds=lease_seconds)), case_id, worker_id),
        )
        return count == 1

    async def release_case(
        self,
        case_id: str,
        worker_id: str,
        status: CaseStatus,
        now: datetime,
        *,
        run_after: datetime | None = None,
        halt_reason: str | None = None,
    ) -> None:
        count = await self._write(
            "UPDATE cases SET status = ?, run_after = ?, halt_reason = ?, lease_owner = NULL, "
            "lease_expires_at = NULL, updated_at = ? WHERE id = ? AND lease_owner = ?",
            (status.value, _ts(run_after), halt_reason, utc_iso(now), case_id, worker_id),
        )
        if count != 1:
            raise StoreError(f"case {case_id} is not held by worker {worker_id}")

    async def find_open_case(self, subject: str, playbook: str) -> Case | None:
        row = await self._one(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE subject = ? AND playbook = ? "
            f"AND status IN {OPEN_STATUSES_SQL} ORDER BY created_at LIMIT 1",
            (subject, playbook),
        )
        return None if row is None else _case(row)

    async def _not_started(self, case_id: str) -> None:
        case = await self.get_case(case_id)
        row = await self._one(
            "SELECT COUNT(*) AS n FROM steps WHERE case_id = ? AND attempts > 0", (case_id,)
        )
        if case.status is not CaseStatus.PENDING or (row is not None and row["n"]):
            raise CaseStarted(
                f"case {case_id} has started (status {case.status.value}): "
                "containment cannot be withdrawn or moved once it began"
            )

    async def reschedule_case(self, case_id: str, run_after: datetime, now: datetime) -> Case:
        async with self._transaction():
            await self._not_started(case_id)
            await self._write(
                "UPDATE cases SET run_after = ?, updated_at = ? WHERE id = ?",
                (utc_iso(run_after), utc_iso(now), case_id),
            )
            await self._append_event(
                case_id, "case_rescheduled", now, None, {"run_after": utc_iso(run_after)}
            )
        return await self.get_case(case_id)

    async def cancel_case(self, case_id: str, now: datetime, reason: str) -> Case:
        async with self._transaction():
            await self._not_started(case_id)
            await self._write(
                "UPDATE cases SET status = 'cancelled', halt_reason = ?, updated_at = ? "
                "WHERE id = ?",
                (reason, utc_iso(now), case_id),
            )
            await self._append_event(case_id, "case_cancelled", now, None, {"reason": reason})
        return await self.get_case(case_id)

    async def resume_case(self, case_id: str, now: datetime) -> Case:
        await self._write(
            "UPDATE cases SET status = 'pending', run_after = NULL, halt_reason = NULL, "
            "updated_at = ? WHERE id = ? AND status IN ('waiting', 'halted')",
            (utc_iso(now), case_id),
        )
        return await self.get_case(case_id)

    # steps

    async def steps(self, case_id: str) -> list[StepRecord]:
        rows = await self._all("SELECT * FROM steps WHERE case_id = ? ORDER BY idx", (case_id,))
        return [_step(r) for r in rows]

    async def _check_owner(self, case_id: str, worker_id: str) -> None:
        row = await self._one("SELECT lease_owner FROM cases WHERE id = ?", (case_id,))
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        if row["lease_owner"] != worker_id:
            raise StoreError(f"case {case_id} is not held by worker {worker_id}")

    #: a step write happens only while the writer holds the case's lease
    _HELD = "EXISTS (SELECT 1 FROM cases WHERE id = ? AND lease_owner = ?)"

    async def start_step(
        self, case_id: str, index: int, worker_id: str, now: datetime
    ) -> StepRecord:
        row = await self._returning(
            "UPDATE steps SET status = 'running', attempts = attempts + 1, "
            f"started_at = COALESCE(started_at, ?) WHERE case_id = ? AND idx = ? AND {self._HELD} "
            "RETURNING *",
            (utc_iso(now), case_id, index, case_id, worker_id),
        )
        return await self._held_step(row, case_id, index, worker_id)

    async def _held_step(
        self, row: sqlite3.Row | None, case_id: str, index: int, worker_id: str
    ) -> StepRecord:
        if row is None:
            await self._check_owner(case_id, worker_id)  # says which: no case, or not ours
            raise NotFound(f"case {case_id} has no step {index}")
        return _step(row)

    async def finish_step(
        self,
        case_id: str,
        index: int,
        worker_id: str,
        status: StepStatus,
        now: datetime,
        *,
        evidence: dict[str, Any] | None = None,
        error: str | None = None,
        event: tuple[str, dict[str, Any]] | None = None,
    ) -> StepRecord:
        finished = utc_iso(now) if status in (StepStatus.DONE, StepStatus.FAILED) else None
        async with self._transaction():
            row = await self._finish_step_row(
                case_id, index, worker_id, status, finished, evidence, error
            )
            step = await self._held_step(row, case_id, index, worker_id)
            if event is not None:
                # one transaction: a kill cannot leave a done step without its event
                await self._append_event(case_id, event[0], now, step.step_id, event[1])
        return step

    async def _finish_step_row(
        self,
        case_id: str,
        index: int,
        worker_id: str,
        status: StepStatus,
        finished: str | None,
        evidence: dict[str, Any] | None,
        error: str | None,
    ) -> sqlite3.Row | None:
        return await self._returning(
            "UPDATE steps SET status = ?, finished_at = ?, evidence = ?, error = ? "
            f"WHERE case_id = ? AND idx = ? AND {self._HELD} RETURNING *",
            (
                status.value,
                finished,
                json.dumps(evidence or {}),
                error,
                case_id,
                index,
                case_id,
                worker_id,
            ),
        )

    # ledger

    async def ledger_get(self, key: str) -> LedgerEntry | None:
        row = await self._one("SELECT * FROM side_effects WHERE key = ?", (key,))
        return None if row is None else _ledger(row)

    async def ledger_intent(
        self, key: str, case_id: str, step_id: str, operation: str, now: datetime
    ) -> LedgerEntry:
        # DO UPDATE that changes nothing: the existing entry comes back unchanged
        row = await self._returning(
            "INSERT INTO side_effects (key, case_id, step_id, operation, state, requested_at) "
            "VALUES (?, ?, ?, ?, 'intent', ?) ON CONFLICT (key) DO UPDATE SET key = key "
            "RETURNING *",
            (key, case_id, step_id, operation, utc_iso(now)),
        )
        assert row is not None
        return _ledger(row)

    async def ledger_applied(self, key: str, now: datetime) -> LedgerEntry:
        row = await self._returning(
            "UPDATE side_effects SET state = 'applied', applied_at = COALESCE(applied_at, ?) "
            "WHERE key = ? RETURNING *",
            (utc_iso(now), key),
        )
        if row is None:
            raise NotFound(f"no ledger entry {key!r}")
        return _ledger(row)

    # operator tasks

    async def open_task(self, task: OperatorTask) -> OperatorTask:
        await self._write(
            "INSERT INTO operator_tasks (case_id, step_id, title, instructions, console_url, "
            "subject, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (case_id, step_id) DO NOTHING",
            (
                task.case_id,
                task.step_id,
                task.title,
                task.instructions,
                task.console_url,
                task.subject,
                utc_iso(task.opened_at),
            ),
        )
        existing = await self.get_task(task.case_id, task.step_id)
        assert existing is not None
        return existing

    async def get_task(self, case_id: str, step_id: str) -> OperatorTask | None:
        row = await self._one(
            "SELECT * FROM operator_tasks WHERE case_id = ? AND step_id = ?", (case_id, step_id)
        )
        return None if row is None else _task(row)

    async def confirm_task(
        self, case_id: str, step_id: str, confirmed_by: str, now: datetime
    ) -> OperatorTask:
        await self._write(
            "UPDATE operator_tasks SET confirmed_at = COALESCE(confirmed_at, ?), "
            "confirmed_by = COALESCE(confirmed_by, ?) WHERE case_id = ? AND step_id = ?",
            (utc_iso(now), confirmed_by, case_id, step_id),
        )
        task = await self.get_task(case_id, step_id)
        if task is None:
            raise NotFound(f"case {case_id} has no operator task for step {step_id!r}")
        return task

    async def open_tasks(self) -> list[OperatorTask]:
        rows = await self._all(
            "SELECT * FROM operator_tasks WHERE confirmed_at IS NULL ORDER BY opened_at"
        )
        return [_task(r) for r in rows]

    # countdown and timers

    async def save_countdown(
        self,
        case_id: str,
        countdown: dict[str, Any],
        epoch: int,
        timers: list[Timer],
        now: datetime,
    ) -> None:
        async with self._transaction():
            await self._write(
                "UPDATE cases SET countdown = ?, updated_at = ? WHERE id = ?",
                (json.dumps(countdown), utc_iso(now), case_id),
            )
            await self._write(
                "DELETE FROM timers WHERE case_id = ? AND epoch < ? AND fired_at IS NULL",
                (case_id, epoch),
            )
            for timer in timers:
                await self._write(
                    "INSERT INTO timers (case_id, name, epoch, due_at, closes_case) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (case_id, name, epoch) "
                    "DO UPDATE SET due_at = excluded.due_at WHERE fired_at IS NULL",
                    (case_id, timer.name, epoch, utc_iso(timer.due_at), int(timer.closes_case)),
                )

    async def claim_due_timer(self, worker_id: str, now: datetime) -> Timer | None:
        async with self._transaction():
            row = await self._one(
                "SELECT * FROM timers WHERE fired_at IS NULL AND due_at <= ? "
                "ORDER BY due_at, case_id, name LIMIT 1",
                (utc_iso(now),),
            )
            if row is None:
                return None
            await self._write(
                "UPDATE timers SET fired_at = ?, fired_by = ? "
                "WHERE case_id = ? AND name = ? AND epoch = ?",
                (utc_iso(now), worker_id, row["case_id"], row["name"], row["epoch"]),
            )
            timer = _timer(row)
            await self._append_event(
                timer.case_id,
                "milestone_reached",
                now,
                None,
                {"milestone": timer.name, "epoch": timer.epoch, "due_at": utc_iso(timer.due_at)},
            )
            if timer.closes_case:
                await self._write(
                    "UPDATE cases SET status = 'access_lapsed', updated_at = ? "
                    "WHERE id = ? AND status = 'contained'",
                    (utc_iso(now), timer.case_id),
                )
                await self._append_event(timer.case_id, "case_access_lapsed", now, None, {})
        return Timer(
            case_id=timer.case_id,
            name=timer.name,
            epoch=timer.epoch,
            due_at=timer.due_at,
            fired_at=now,
            fired_by=worker_id,
            closes_case=timer.closes_case,
        )

    async def timers(self, case_id: str) -> list[Timer]:
        rows = await self._all(
            "SELECT * FROM timers WHERE case_id = ? ORDER BY epoch, due_at, name", (case_id,)
        )
        return [_timer(r) for r in rows]

    async def next_timer_due(self) -> datetime | None:
        row = await self._one("SELECT MIN(due_at) AS due FROM timers WHERE fired_at IS NULL")
        return _dt(row["due"]) if row else None

    # deliveries and refusals

    async def record_delivery(self, delivery: Delivery) -> tuple[Delivery, bool]:
        async with self._transaction():
            existing = await self.get_delivery(delivery.key)
            if existing is not None:
                return existing, False
            await self._write(
                "INSERT INTO deliveries (key, case_id, outcome, received_at) VALUES (?, ?, ?, ?)",
                (
                    delivery.key,
                    delivery.case_id,
                    json.dumps(delivery.outcome),
                    utc_iso(delivery.received_at),
                ),
            )
        return delivery, True

    async def get_delivery(self, key: str) -> Delivery | None:
        row = await self._one("SELECT * FROM deliveries WHERE key = ?", (key,))
        return None if row is None else _delivery(row)

    async def record_refusal(self, refusal: Refusal) -> None:
        await self._write(
            "INSERT INTO refusals (at, source, subject, reason) VALUES (?, ?, ?, ?)",
            (utc_iso(refusal.at), refusal.source, refusal.subject, refusal.reason),
        )

    async def refusals(self) -> list[Refusal]:
        rows = await self._all("SELECT * FROM refusals ORDER BY id")
        return [
            Refusal(
                at=parse_iso(r["at"]), source=r["source"], subject=r["subject"], reason=r["reason"]
            )
            for r in rows
        ]

    # timeline

    async def _append_event(
        self, case_id: str, kind: str, now: datetime, step_id: str | None, data: dict[str, Any]
    ) -> int:
        """Insert the event, linked to the case's chain head, and move the head to it:
        one statement (`_APPEND_EVENT`), so atomic alone and one trip to the database
        thread; inside the caller's transaction if any. Hashed as it will be read
        back: the stored text, not what was passed."""
        row = await self._one(
            _APPEND_EVENT + " RETURNING seq",
            _event_params(case_id, kind, utc_iso(now), step_id, data),
        )
        if row is None:
            raise StoreError(f"no case {case_id!r} to record the event {kind!r} for")
        return int(row["seq"])

    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> CaseEvent:
        seq = await self._append_event(case_id, kind, now, step_id, data)
        return CaseEvent(case_id=case_id, seq=seq, at=now, kind=kind, step_id=step_id, data=data)

    async def events(self, case_id: str) -> list[CaseEvent]:
        rows = await self._all("SELECT * FROM events WHERE case_id = ? ORDER BY seq", (case_id,))
        return [
            CaseEvent(
                case_id=r["case_id"],
                seq=r["seq"],
                at=parse_iso(r["at"]),
                kind=r["kind"],
                step_id=r["step_id"],
                data=json.loads(r["data"]),
            )
            for r in rows
        ]

    async def evidence(self, case_id: str) -> list[EvidenceRecord]:
        rows = await self._all("SELECT * FROM events WHERE case_id = ? ORDER BY seq", (case_id,))
        return [
            EvidenceRecord(
                case_id=r["case_id"],
                seq=r["seq"],
                at=r["at"],
                kind=r["kind"],
                step_id=r["step_id"],
                data=_stored_data(r["data"]),
                prev_hash=r["prev_hash"] or "",
                hash=r["hash"] or "",
            )
            for r in rows
        ]

    async def evidence_head(self, case_id: str) -> tuple[str, int]:
        row = await self._one(
            "SELECT events_head, events_count FROM cases WHERE id = ?", (case_id,)
        )
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        return row["events_head"] or genesis_hash(case_id), int(row["events_count"])

    # aggregates and pages

    async def case_counts(self) -> list[CaseCount]:
        rows = await self._all(
            "SELECT status, playbook, COUNT(*) AS n FROM cases "
            "GROUP BY status, playbook ORDER BY status, playbook"
        )
        return [
            CaseCount(status=CaseStatus(r["status"]), playbook=r["playbook"], count=r["n"])
            for r in rows
        ]

    async def running_countdowns(self, now: datetime) -> int:
        # Milestone times are utc_iso text (milliseconds, Z): compared as text. `now`
        # is cut to its millisecond, since utc_iso would round it up past a milestone
        # due within that millisecond.
        cut = utc_iso(now.replace(microsecond=now.microsecond - now.microsecond % 1000))
        closed = ", ".join("?" for _ in CLOSED_STATUSES)
        row = await self._one(
            "SELECT COUNT(*) AS n FROM cases "
            f"WHERE countdown IS NOT NULL AND status NOT IN ({closed}) AND ("
            "SELECT json_extract(m.value, '$.at') "
            "FROM json_each(cases.countdown, '$.milestones') m "
            "WHERE json_extract(m.value, '$.name') = ? ORDER BY m.key LIMIT 1) > ?",
            (*(s.value for s in CLOSED_STATUSES), ALL_LAPSED, cut),
        )
        return int(row["n"]) if row else 0

    async def count_events(self, kind: str) -> int:
        row = await self._one("SELECT COUNT(*) AS n FROM events WHERE kind = ?", (kind,))
        return int(row["n"]) if row else 0

    async def task_backlog(self) -> TaskBacklog:
        row = await self._one(
            "SELECT COUNT(*) AS n, MIN(opened_at) AS oldest FROM operator_tasks "
            "WHERE confirmed_at IS NULL"
        )
        if row is None:
            return TaskBacklog(waiting=0, oldest_opened_at=None)
        return TaskBacklog(waiting=int(row["n"]), oldest_opened_at=_dt(row["oldest"]))

    async def open_tasks_of(self, case_ids: Sequence[str]) -> list[OperatorTask]:
        rows = await self._all(
            "SELECT * FROM operator_tasks WHERE case_id IN (SELECT value FROM json_each(?)) "
            "AND confirmed_at IS NULL ORDER BY opened_at, case_id, step_id",
            (json.dumps(list(case_ids)),),
        )
        return [_task(r) for r in rows]

    async def urgent_cases(
        self, statuses: tuple[CaseStatus, ...] | None, *, limit: int, offset: int
    ) -> CasePage:
        where, params = _status_filter(statuses)
        # the page's ids first: the sort holds ids, not whole cases
        rows = await self._all(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE id IN ("
            f"SELECT id FROM cases {where} ORDER BY {URGENCY_ORDER} LIMIT ? OFFSET ?) "
            f"ORDER BY {URGENCY_ORDER}",
            (*params, max(0, limit), max(0, offset)),
        )
        total = await self._one(f"SELECT COUNT(*) AS n FROM cases {where}", params)
        return CasePage(cases=tuple(map(_case, rows)), total=int(total["n"]) if total else 0)

    async def cases_after(
        self, statuses: tuple[CaseStatus, ...] | None, *, after: str | None, limit: int
    ) -> list[Case]:
        where, params = _status_filter(statuses)
        if after is not None:
            start = await self._one("SELECT created_at FROM cases WHERE id = ?", (after,))
            if start is None:
                raise NotFound(f"no case {after!r}")
            where += (" AND " if where else "WHERE ") + "(created_at, id) > (?, ?)"
            params += (start["created_at"], after)
        rows = await self._all(
            f"SELECT {_CASE_COLUMNS} FROM cases {where} ORDER BY created_at, id LIMIT ?",
            (*params, max(0, limit)),
        )
        return [_case(r) for r in rows]


def _status_filter(statuses: tuple[CaseStatus, ...] | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause keeping cases in these states (none: every case), and its values."""
    if not statuses:
        return "", ()
    return (
        f"WHERE status IN ({', '.join('?' for _ in statuses)})",
        tuple(s.value for s in statuses),
    )


def _stored_data(text: str) -> dict[str, Any]:
    """An event's data as stored; text that is no longer a JSON object (someone wrote
    to the file) is kept as it is, under a key of its own, so its hash fails and the
    check says which event it was instead of stopping there."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        data = None
    return data if isinstance(data, dict) else {"<unreadable stored data>": str(text)}
