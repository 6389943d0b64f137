"""The embedded store: SQLite in WAL mode through aiosqlite, one writer connection.

SQLite has no SKIP LOCKED: a write transaction begins IMMEDIATE, which takes the
database's write lock, so two processes can never claim the same case; the shared
queries' row locks are dropped here. Times are stored as `utc_iso` text
(milliseconds), documents as JSON text. Only what differs from PostgreSQL lives
here: the connection, transactions, the schema, the event append and WAL upkeep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from worker.clock import parse_iso, utc_iso
from worker.errors import StoreCorrupt, StoreError
from worker.store.base import NewEvent, event_hash, genesis_hash
from worker.store.manager import (
    ONE_ACTIVE_MIGRATION,
    NoRow,
    RowWrite,
    Runner,
    StoreManager,
    migrate,
    queries,
    take_signal,
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
            for case, seq, at, kind, step_id, data in rows:
                if case != case_id:
                    if case_id is not None:
                        heads.append((prev, last, case_id))
                    case_id, prev = case, genesis_hash(case)
                digest = _sql_event_hash(case, seq, at, kind, step_id, data, prev)
                batch.append((case, seq, at, kind, step_id, data, prev, digest))
                prev, last = digest, seq
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
    # version 7: a case escalated while a worker ran it is released pending
    """
    ALTER TABLE cases ADD COLUMN rerun INTEGER NOT NULL DEFAULT 0;
    """,
    # version 8: the rate budget replicas share (Store.lease_budget); times in epoch seconds
    """
    CREATE TABLE rate_budget (
        bucket TEXT NOT NULL,
        holder TEXT NOT NULL,
        window_start REAL NOT NULL,
        granted INTEGER NOT NULL,
        priority INTEGER,
        expires_at REAL NOT NULL,
        PRIMARY KEY (bucket, holder)
    );
    """,
    # version 9: one active case per person, whatever the playbook
    ONE_ACTIVE_MIGRATION,
    # version 10: the all-lapsed time beside the countdown document (utc_iso text, as
    # the document has it), so that a scrape counts running countdowns from an index;
    # the status page's first page read in `cases_urgent`'s order from an index, not
    # sorted from every case; the scrape's counts by state from an index, not from every
    # case row and its documents (131 → 7 ms at 100,000), the task backlog from the
    # open tasks (PostgreSQL's index)
    """
    ALTER TABLE cases ADD COLUMN all_lapsed_at TEXT;
    UPDATE cases SET all_lapsed_at = (
        SELECT json_extract(m.value, '$.at') FROM json_each(cases.countdown, '$.milestones') m
        WHERE json_extract(m.value, '$.name') = 'all-lapsed' ORDER BY m.key LIMIT 1)
    WHERE countdown IS NOT NULL;
    CREATE INDEX cases_all_lapsed ON cases (all_lapsed_at, status)
        WHERE all_lapsed_at IS NOT NULL;
    CREATE INDEX cases_urgency ON cases (
        (CASE status WHEN 'halted' THEN 0 WHEN 'waiting' THEN 1 ELSE 2 END), created_at DESC, id);
    CREATE INDEX cases_status ON cases (status, playbook);
    CREATE INDEX operator_tasks_open ON operator_tasks (opened_at, confirmed_at)
        WHERE confirmed_at IS NULL;
    """,
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


def _event_params(event: NewEvent) -> dict[str, Any]:
    return {
        "case_id": event.case_id,
        "at": utc_iso(event.at),
        "kind": event.kind,
        "step_id": event.step_id,
        "data": json.dumps(event.data),
        "genesis": genesis_hash(event.case_id),
    }


T = TypeVar("T")

#: what SQLite says of a damaged file
_DAMAGED = ("malformed", "file is not a database")

#: set while the current task holds the connection inside a transaction
_IN_TRANSACTION: ContextVar[bool] = ContextVar("_IN_TRANSACTION", default=False)

#: PostgreSQL's row locks: BEGIN IMMEDIATE already holds the whole database
_ROW_LOCK = re.compile(r"\s+FOR (UPDATE|SHARE)( SKIP LOCKED)?")
_ANY = re.compile(r"= ANY\(:(\w+)\)")


@cache
def _sql(name: str) -> str:
    """A named query in SQLite's words: its own version if it has one, lists read
    through json_each, no row locks."""
    named = queries()
    text = named.get(f"{name}.sqlite") or named[name]
    return _ROW_LOCK.sub("", _ANY.sub(r"IN (SELECT value FROM json_each(:\1))", text))


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return value


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: _encode(v) for k, v in params.items()}


class SqliteConnector:
    """Runs the store's queries on one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        # One connection serves every coroutine of the process; a transaction must
        # not interleave with another coroutine's statements.
        self._lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_db: aiosqlite.Connection | None = None
        #: how often the WAL is copied into the database (see `_checkpoints`)
        self.checkpoint_seconds = 1.0
        #: checkpoints run so far, for tests to wait on
        self.checkpoints = 0
        #: WAL frames (4 KiB pages) past which a checkpoint truncates the WAL (64 MiB)
        self.wal_truncate_frames = 16384
        # work made by this process (one process: other processes' work is polled)
        self._work = asyncio.Event()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # It holds people's addresses: readable by its owner only. SQLite gives
                # the -wal and -shm files the database file's mode.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            # isolation_level=None: we issue BEGIN ourselves, so transactions are explicit.
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StoreError(f"SQLite database {self.path}: cannot open: {reason}") from None
        self._db.row_factory = sqlite3.Row
        try:
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._check_integrity()
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
                # opened here, not in the task: a task cancelled while connecting would
                # leave a connection thread that reports to a closed loop at exit
                self._checkpoint_db = await aiosqlite.connect(self.path, isolation_level=None)
                self._checkpointer = asyncio.create_task(self._checkpoints())
        except BaseException:
            await self.close()  # a refused database must not leave its connection thread behind
            raise

    def _corrupt(self, detail: str) -> StoreCorrupt:
        return StoreCorrupt(
            f"the SQLite database {self.path} is damaged ({detail}): stop every offboard "
            "process using it, then restore the file from a backup (with its -wal file, if "
            "any); a case's evidence can be checked after with `offboard evidence --verify`"
        )

    async def _check_integrity(self) -> None:
        """Refuse a damaged file at once (PRAGMA quick_check: every page and index
        entry, not the content), rather than fail at every read later."""
        try:
            rows = await self._all("PRAGMA quick_check")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(str(exc)) from None
        problems = [str(row[0]) for row in rows if str(row[0]) != "ok"]
        if problems:
            raise self._corrupt("; ".join(problems[:3]))

    @contextlib.contextmanager
    def _damage_refused(self) -> Iterator[None]:
        """A damaged file found by a statement: StoreCorrupt, which stops the worker."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if any(sign in str(exc) for sign in _DAMAGED):
                raise self._corrupt(str(exc)) from None
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
        db = self._checkpoint_db
        assert db is not None  # opened with the store, closed after this task
        await db.execute("PRAGMA synchronous=FULL")
        # a truncating checkpoint waits this long for a gap between two writes
        await db.execute("PRAGMA busy_timeout=1000")
        while True:
            await asyncio.sleep(self.checkpoint_seconds)
            try:
                cursor = await db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                row = await cursor.fetchone()
                # Under a steady write load a passive checkpoint never reaches the WAL's
                # end, so SQLite never starts it afresh: it grows without bound and every
                # read searches it (15 GB in a 100,000-case fill). Past the limit, wait
                # for a gap between writes and truncate it: one short pause for a writer.
                if row is not None and row[1] > self.wal_truncate_frames:
                    await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # busy or locked: the next round catches up
                continue
            self.checkpoints += 1

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._checkpoint_db is not None:
            # closed here: a task cancelled before it first ran never reaches a finally
            await self._checkpoint_db.close()
            self._checkpoint_db = None
        if self._db is not None:
            # the last connection to close checkpoints what is left and removes the WAL
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        async with self.transaction():
            await self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            row = await self._one("SELECT MAX(version) AS v FROM schema_version")
            current = (row["v"] if row else None) or 0
            for version in await migrate(MIGRATIONS, current, self.path, self._apply):
                await self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    async def _apply(self, script: str | PythonMigration) -> None:
        if isinstance(script, str):
            for statement in filter(str.strip, script.split(";")):
                await self.db.execute(statement)
        else:
            await script(self.db)

    @contextlib.asynccontextmanager
    async def _begin(self, begin: str) -> AsyncIterator[Runner]:
        """The asyncio lock keeps this process's other coroutines out."""
        async with self._lock:
            token = _IN_TRANSACTION.set(True)
            try:
                with self._damage_refused():
                    await self.db.execute(begin)
                try:
                    yield self
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
                with self._damage_refused():
                    await self.db.execute("COMMIT")
            finally:
                _IN_TRANSACTION.reset(token)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Runner]:
        """BEGIN IMMEDIATE takes the database's write lock at once (other processes)."""
        return self._begin("BEGIN IMMEDIATE")

    def snapshot(self) -> contextlib.AbstractAsyncContextManager[Runner]:
        return self._begin("BEGIN")

    async def _write_in_one_trip(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """BEGIN IMMEDIATE, `work`'s statements and COMMIT (ROLLBACK if any fails) in one
        call on the connection's thread: one thread switch for the whole write, not one
        per statement (a trip costs ~0.1-0.4 ms idle, more on a busy machine). A write
        of its own: not for use inside `transaction()`."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may have rolled back already
                    conn.execute("ROLLBACK")
                raise
            return result

        async with self._lock:
            with self._damage_refused():
                # aiosqlite has no public call that runs several statements in one trip:
                # `_execute(fn)` is the door each of its own calls goes through to the
                # thread, `_conn` the sqlite3 connection they use there. This is the one
                # place they are used (pinned to aiosqlite>=0.20,<0.23, which have both).
                db = self.db
                result: T = await db._execute(transaction, db._conn)  # type: ignore[no-untyped-call]
                return result

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        if _IN_TRANSACTION.get():
            yield
            return
        async with self._lock:
            yield

    # Each helper is one trip to aiosqlite's thread (execute and fetch together): on a
    # busy machine every trip waits for a thread switch, and they add up per step.
    async def _one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        async with self._exclusive():
            with self._damage_refused():
                return list(await self.db.execute_fetchall(sql, params))

    async def one(self, query: str, **params: Any) -> sqlite3.Row | None:
        return await self._one(_sql(query), _params(params))

    async def all(self, query: str, **params: Any) -> list[sqlite3.Row]:
        return await self._all(_sql(query), _params(params))

    async def run(self, query: str, **params: Any) -> int:
        async with self._exclusive():
            with self._damage_refused():
                # the statement has run to completion: its cursor holds nothing to close
                cursor = await self.db.execute(_sql(query), _params(params))
            return cursor.rowcount

    async def many(self, query: str, rows: Sequence[dict[str, Any]]) -> None:
        async with self._exclusive():
            with self._damage_refused():
                await self.db.executemany(_sql(query), [_params(row) for row in rows])

    # what SQLite stores differently

    def time(self, value: Any) -> Any:
        return None if value is None else parse_iso(value)

    def doc(self, value: Any) -> Any:
        return None if value is None else json.loads(value)

    def chain_time(self, value: Any) -> str:
        return str(value)  # hashed as stored: the text

    async def append_event(self, tx: Runner, event: NewEvent) -> int:
        """One statement (`_APPEND_EVENT`), so atomic alone and one trip to the
        database thread. Hashed as it will be read back: the stored text."""
        row = await self._one(_APPEND_EVENT + " RETURNING seq", _event_params(event))
        if row is None:
            raise StoreError(f"no case {event.case_id!r} to record the event {event.kind!r} for")
        return int(row["seq"])

    async def append_event_alone(self, event: NewEvent) -> int:
        # one statement is atomic alone: no BEGIN and COMMIT, two trips fewer
        return await self.append_event(self, event)

    async def append_events(self, tx: Runner, events: Sequence[NewEvent]) -> None:
        async with self._exclusive():
            await self.db.executemany(_APPEND_EVENT, [_event_params(e) for e in events])

    async def rows_then_events(self, writes: Sequence[RowWrite]) -> list[sqlite3.Row | None]:
        statements = [(_sql(w.query), _params(w.params), w.event_of) for w in writes]

        def write(conn: sqlite3.Connection) -> list[sqlite3.Row | None]:
            found: list[sqlite3.Row | None] = [None] * len(statements)
            for n, (sql, values, event_of) in enumerate(statements):
                rows = conn.execute(sql, values).fetchall()
                if not rows:
                    raise NoRow(found)  # rolled back
                found[n] = rows[0]
                event = event_of(rows[0])
                if event is not None:
                    conn.execute(_APPEND_EVENT, _event_params(event))
            return found

        try:
            return await self._write_in_one_trip(write)
        except NoRow as missing:
            return missing.found

    async def notify(self, tx: Runner, what: str) -> None:
        self._work.set()

    async def lock_admission(self, tx: Runner, names: Sequence[str]) -> None:
        """Nothing to do: BEGIN IMMEDIATE already serialises every writer."""

    @contextlib.asynccontextmanager
    async def hold_lock(self, name: str) -> AsyncIterator[None]:
        """Nothing more to do: one process uses the file, and its tasks already queue."""
        yield

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True once this process made work since the last True; other processes'
        work is not seen (their cases are found by polling)."""
        return await take_signal(self._work, timeout)


class SqliteStore(StoreManager):
    """The Store on a SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.connector: SqliteConnector = SqliteConnector(path)
        super().__init__(self.connector)
        self.path = self.connector.path
