"""The shared store: PostgreSQL through an asyncpg pool, for several worker replicas.

Same semantics as the SQLite store (one `StoreManager`, one set of queries; the
contract suite runs against both). What lives here is what differs:

- Claims (`claim_next`, `claim_due_timer`) pick their row with
  ``FOR UPDATE SKIP LOCKED`` inside the statement that updates it: two replicas
  never claim the same case or fire the same timer, and never wait on each other.
- Writes that belong to a claimed case check the lease owner holding the case row
  (``FOR SHARE``), so no claim can slip between the check and the write.
- Event numbers come from a per-case counter on the case row, so concurrent appends
  to one case serialise instead of colliding; the same transaction links the event
  into the case's hash chain (`worker.store.base.event_hash`) and moves the head.
  The events table refuses UPDATE, DELETE and TRUNCATE.
- `admit` takes transaction-scoped advisory locks per delivery key and person.
- Migrations run in one transaction under ``pg_advisory_xact_lock``: replicas
  starting together take turns, and each version is applied once.
- Row locks are always taken timers first, then the case row, then its steps, so
  transactions of this module cannot deadlock one another.

Timestamps are ``timestamptz`` (microseconds, more than the contract's milliseconds),
documents ``jsonb``, counters ``bigint``. Every failure of the database (unreachable,
refused, a constraint) is a StoreError whose message never contains the DSN's password.

Work notifications: creating, admitting, resuming (when it resumes) and rescheduling
a case and saving a countdown send ``NOTIFY offboard_work`` in their transaction, so
it is delivered when they commit; `wait_for_work` lets an idle worker sleep until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import cache
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from worker.errors import StoreError, StoreUnavailable
from worker.logging import describe_dsn, dsn_secrets
from worker.store.base import NewEvent, chain_time, event_hash, genesis_hash
from worker.store.manager import (
    ONE_ACTIVE_MIGRATION,
    NoRow,
    Row,
    RowWrite,
    Runner,
    StoreManager,
    migrate,
    queries,
    take_signal,
)

#: The channel `wait_for_work` listens on.
WORK_CHANNEL = "offboard_work"

#: pg_advisory_xact_lock key held while migrating ("offboard" in ASCII).
MIGRATION_LOCK = 0x6F6666626F617264

#: How often a lock held by another replica is tried again (`hold_lock`).
LOCK_POLL = 0.05

#: A migration step that SQL alone cannot express: it gets the migrating connection,
#: inside the migration's transaction.
PythonMigration = Callable[[Any], Awaitable[None]]

_CHAIN_SCHEMA = """
    ALTER TABLE cases RENAME COLUMN last_event_seq TO events_count;
    ALTER TABLE cases ADD COLUMN events_head text;
    ALTER TABLE events RENAME TO events_unchained;
    ALTER INDEX events_pkey RENAME TO events_unchained_pkey;
    CREATE TABLE events (case_id text NOT NULL REFERENCES cases (id), seq bigint NOT NULL,
        at timestamptz NOT NULL, kind text NOT NULL, step_id text, data jsonb NOT NULL,
        prev_hash text NOT NULL, hash text NOT NULL, PRIMARY KEY (case_id, seq));
    CREATE TEMPORARY TABLE events_links (case_id text NOT NULL, seq bigint NOT NULL,
        prev_hash text NOT NULL, hash text NOT NULL) ON COMMIT DROP;
"""

_APPEND_ONLY = """
    INSERT INTO events (case_id, seq, at, kind, step_id, data, prev_hash, hash)
        SELECT e.case_id, e.seq, e.at, e.kind, e.step_id, e.data, l.prev_hash, l.hash
        FROM events_unchained e JOIN events_links l USING (case_id, seq);
    -- the head is the last event there is; events_count stays the counter, so events
    -- deleted from the end before this migration still show as deleted
    UPDATE cases SET events_head = l.hash
        FROM (SELECT DISTINCT ON (case_id) case_id, hash FROM events_links
              ORDER BY case_id, seq DESC) l
        WHERE cases.id = l.case_id;
    DROP TABLE events_unchained;
    CREATE FUNCTION offboard_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'events are append-only (% refused)', TG_OP;
    END
    $$;
    CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION offboard_events_append_only();
    CREATE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION offboard_events_append_only();
"""


async def _chain_events(conn: Any) -> None:
    """Version 2: hash-chain every case's events, those already stored included.

    The table is rebuilt with NOT NULL link columns; the links are computed here,
    in seq order from each case's genesis, over the rows as they read back (the
    data never leaves the server re-encoded: the rows are copied inside it). The
    case's event counter becomes `events_count`, and the case row gets its head. A
    gap already in the numbers is kept, not renumbered: the chain then shows it, as
    it must. From here on the events table refuses UPDATE, DELETE and TRUNCATE."""
    await conn.execute(_CHAIN_SCHEMA)
    links: list[tuple[str, int, str, str]] = []
    last: str | None = None
    prev = ""
    async for case_id, seq, at, kind, step_id, data in conn.cursor(
        "SELECT case_id, seq, at, kind, step_id, data FROM events_unchained ORDER BY case_id, seq",
        prefetch=500,
    ):
        if case_id != last:
            last, prev = case_id, genesis_hash(case_id)
        digest = event_hash(case_id, seq, chain_time(at), kind, step_id, data, prev)
        links.append((case_id, seq, prev, digest))
        prev = digest
        if len(links) >= 5000:
            await conn.copy_records_to_table("events_links", records=links)
            links = []
    if links:
        await conn.copy_records_to_table("events_links", records=links)
    await conn.execute(_APPEND_ONLY)


#: Versioned schema: each entry upgrades from the previous version, in one
#: transaction. Never change what a released entry makes (its text may be rewritten:
#: tests/contract/test_schema_upgrades.py compares upgrades with a fresh install);
#: append a new one. (Versions count separately from the SQLite store's: version 1
#: here is its versions 1 to 3.)
MIGRATIONS: tuple[str | PythonMigration, ...] = (
    """
    CREATE TABLE cases (id text PRIMARY KEY, playbook text NOT NULL, subject text NOT NULL,
        status text NOT NULL, priority bigint NOT NULL, steps jsonb NOT NULL,
        trigger jsonb NOT NULL, created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL, run_after timestamptz, lease_owner text,
        lease_expires_at timestamptz, halt_reason text, idempotency_key text UNIQUE,
        countdown jsonb,
        -- seq of the case's last event: bumping it serialises appends to one case
        last_event_seq bigint NOT NULL DEFAULT 0);
    CREATE INDEX cases_runnable ON cases (priority DESC, created_at, id)
        WHERE status IN ('pending', 'running');
    CREATE INDEX cases_created ON cases (created_at, id);
    CREATE INDEX cases_subject ON cases (subject, playbook, status);
    CREATE TABLE steps (case_id text NOT NULL REFERENCES cases (id), idx integer NOT NULL,
        step_id text NOT NULL, action text NOT NULL, status text NOT NULL,
        attempts integer NOT NULL DEFAULT 0, started_at timestamptz, finished_at timestamptz,
        evidence jsonb NOT NULL DEFAULT '{}', error text, PRIMARY KEY (case_id, idx));
    CREATE TABLE side_effects (key text PRIMARY KEY,
        case_id text NOT NULL REFERENCES cases (id), step_id text NOT NULL,
        operation text NOT NULL, state text NOT NULL, requested_at timestamptz NOT NULL,
        applied_at timestamptz);
    CREATE TABLE operator_tasks (case_id text NOT NULL REFERENCES cases (id),
        step_id text NOT NULL, title text NOT NULL, instructions text NOT NULL,
        console_url text NOT NULL, subject text NOT NULL, opened_at timestamptz NOT NULL,
        confirmed_at timestamptz, confirmed_by text, PRIMARY KEY (case_id, step_id));
    CREATE INDEX operator_tasks_open ON operator_tasks (opened_at) WHERE confirmed_at IS NULL;
    CREATE TABLE events (case_id text NOT NULL REFERENCES cases (id), seq bigint NOT NULL,
        at timestamptz NOT NULL, kind text NOT NULL, step_id text, data jsonb NOT NULL,
        PRIMARY KEY (case_id, seq));
    CREATE TABLE timers (case_id text NOT NULL REFERENCES cases (id), name text NOT NULL,
        epoch bigint NOT NULL, due_at timestamptz NOT NULL, fired_at timestamptz,
        fired_by text, closes_case boolean NOT NULL DEFAULT false,
        PRIMARY KEY (case_id, name, epoch));
    CREATE INDEX timers_due ON timers (due_at, case_id, name, epoch) WHERE fired_at IS NULL;
    CREATE TABLE deliveries (key text PRIMARY KEY, case_id text, outcome jsonb NOT NULL,
        received_at timestamptz NOT NULL);
    CREATE TABLE refusals (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL, source text NOT NULL, subject text NOT NULL,
        reason text NOT NULL);
    """,
    _chain_events,
    # version 3: a scrape counts events by kind (cases_created already serves paging)
    "CREATE INDEX events_kind ON events (kind);",
    # version 4: a case escalated while a worker ran it is released pending
    """
    ALTER TABLE cases ADD COLUMN rerun BOOLEAN NOT NULL DEFAULT FALSE;
    """,
    # version 5: the rate budget replicas share (Store.lease_budget); times in epoch seconds
    """
    CREATE TABLE rate_budget (bucket text NOT NULL, holder text NOT NULL,
        window_start double precision NOT NULL, granted bigint NOT NULL, priority bigint,
        expires_at double precision NOT NULL, PRIMARY KEY (bucket, holder));
    """,
    # version 6: one active case per person, whatever the playbook
    ONE_ACTIVE_MIGRATION,
    # version 7: the all-lapsed time beside the countdown document, so that a scrape
    # counts running countdowns from an index; the status page's first page read
    # in `cases_urgent`'s order from an index, not sorted from every case
    """
    ALTER TABLE cases ADD COLUMN all_lapsed_at timestamptz;
    UPDATE cases SET all_lapsed_at = (
        SELECT (m.value ->> 'at')::timestamptz FROM jsonb_array_elements(
            CASE jsonb_typeof(countdown -> 'milestones') WHEN 'array'
            THEN countdown -> 'milestones' ELSE '[]'::jsonb END
        ) WITH ORDINALITY AS m (value, n)
        WHERE m.value ->> 'name' = 'all-lapsed' ORDER BY m.n LIMIT 1)
    WHERE countdown IS NOT NULL;
    CREATE INDEX cases_all_lapsed ON cases (all_lapsed_at, status)
        WHERE all_lapsed_at IS NOT NULL;
    CREATE INDEX cases_urgency ON cases (
        (CASE status WHEN 'halted' THEN 0 WHEN 'waiting' THEN 1 ELSE 2 END), created_at DESC, id);
    """,
)

#: errors that mean the server cannot be reached or the connection was lost
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, and the connection dropping mid-query
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, not yet accepting
    asyncpg.exceptions.TooManyConnectionsError,
    # a pooled connection left mid-protocol by the server's going ("cannot switch to
    # state ...; another operation is in progress")
    asyncpg.exceptions.InternalClientError,
)
#: every error of the database or of the way to it (StoreError by `_error`)
_FAILURES: tuple[type[BaseException], ...] = (
    *_UNREACHABLE,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
#: ... and, on opening the pool, an unusable DSN
_OPEN_FAILURES: tuple[type[BaseException], ...] = (*_FAILURES, ValueError)
#: errors that mean the server answered but will not let us in
_REFUSED_LOGIN: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # class 28: login refused
    asyncpg.exceptions.InvalidCatalogNameError,  # the database does not exist
)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


_PARAM = re.compile(r"(?<![:\w]):(\w+)")


@cache
def _sql(name: str) -> tuple[str, tuple[str, ...]]:
    """A named query with `$n` placeholders, and the parameter name of each n."""
    named = queries()
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    text = _PARAM.sub(number, named.get(f"{name}.postgres") or named[name])
    return text, tuple(names)


def _args(name: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    text, names = _sql(name)
    return text, [list(v) if isinstance(v, tuple) else v for v in map(params.__getitem__, names)]


async def _init_connection(conn: Any) -> None:
    """Every pooled connection reads and writes jsonb as Python values."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class _Queries:
    """Named queries, each on the connection `_connection` lends."""

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def one(self, query: str, **params: Any) -> Row | None:
        text, args = _args(query, params)
        async with self._connection() as conn:
            return await conn.fetchrow(text, *args)

    async def all(self, query: str, **params: Any) -> list[Row]:
        text, args = _args(query, params)
        async with self._connection() as conn:
            return list(await conn.fetch(text, *args))

    async def run(self, query: str, **params: Any) -> int:
        text, args = _args(query, params)
        async with self._connection() as conn:
            return _count(await conn.execute(text, *args))

    async def many(self, query: str, rows: Sequence[dict[str, Any]]) -> None:
        async with self._connection() as conn:
            if rows:
                text, _ = _sql(query)
                await conn.executemany(text, [_args(query, row)[1] for row in rows])


class _Runner(_Queries):
    """Named queries on one connection: a transaction's."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext(self.conn)


def _conn(tx: Runner) -> Any:
    if not isinstance(tx, _Runner):
        raise TypeError(f"not a PostgreSQL transaction: {tx!r}")
    return tx.conn


class PostgresConnector(_Queries):
    """Runs the store's queries on PostgreSQL (``postgresql://user:password@host/db``).

    `open` connects the pool, migrates the schema and starts listening for work
    notifications on one more, dedicated connection; `close` releases them all.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 60.0,
    ) -> None:
        self._dsn = dsn
        #: where the DSN points, without its password: safe for messages and logs
        self.where = describe_dsn(dsn)
        self._secrets = dsn_secrets(dsn)
        self._min = min_connections
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None
        self._listener: Any = None
        self._listen_lock = asyncio.Lock()
        self._work = asyncio.Event()

    # connections and errors

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: BaseException, doing: str = "") -> StoreError:
        """The StoreError for a failure of the database, with a message safe to show."""
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        action = f" while {doing}" if doing else ""
        if doing == "connecting" and isinstance(exc, ValueError):
            return StoreError(f"unusable PostgreSQL DSN {self.where}: {detail}")
        if isinstance(exc, _REFUSED_LOGIN):
            return StoreError(f"PostgreSQL at {self.where} refused the connection: {detail}")
        if isinstance(exc, _UNREACHABLE) or (
            isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
        ):
            return StoreUnavailable(f"PostgreSQL at {self.where} is unreachable{action}: {detail}")
        return StoreError(f"PostgreSQL at {self.where} refused the operation{action}: {detail}")

    def _cause(self, exc: BaseException) -> BaseException | None:
        """The exception to chain: the original, unless its text would show a secret."""
        text = repr(exc) + str(exc)
        return None if any(secret in text for secret in self._secrets) else exc

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                yield conn
        except StoreError:
            raise
        except _FAILURES as exc:
            raise self._error(exc) from self._cause(exc)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Runner]:
        async with self._connection() as conn, conn.transaction():
            yield _Runner(conn)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Runner]:
        async with (
            self._connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield _Runner(conn)

    # lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        # The worker reports an outage itself (store_unavailable, store_available); the
        # pool's traceback at each try to reconnect its idle floor adds nothing.
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min,
                max_size=self._max,
                init=_init_connection,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
        except _OPEN_FAILURES as exc:
            raise self._error(exc, "connecting") from self._cause(exc)
        try:
            await self._migrate()
            await self._listen()
        except BaseException:
            await self.close()  # a refused database must not leave connections behind
            raise

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                await listener.close(timeout=5)
            except Exception:
                listener.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:
                pool.terminate()

    async def _migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            # Replicas starting together queue here; the first applies what is missing.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                await conn.execute(
                    "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")

            async def apply(script: str | PythonMigration) -> None:
                await (conn.execute(script) if isinstance(script, str) else script(conn))

            for version in await migrate(MIGRATIONS, current, self.where, apply):
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    # work notifications

    async def _listen(self) -> None:
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            self._listener = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            except _FAILURES as exc:
                raise self._error(exc, "connecting to listen") from self._cause(exc)
            try:
                await conn.add_listener(WORK_CHANNEL, self._notified)
                conn.add_termination_listener(self._listener_lost)
            except BaseException as exc:
                conn.terminate()
                if isinstance(exc, _FAILURES):
                    raise self._error(exc, "starting to listen") from self._cause(exc)
                raise
            self._listener = conn

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._work.set()

    def _listener_lost(self, _conn: object) -> None:
        # Wake the waiter: the next wait_for_work reconnects (or reports the outage).
        self._work.set()

    async def notify(self, tx: Runner, what: str) -> None:
        """Delivered to every listener when the surrounding transaction commits."""
        await _conn(tx).execute("SELECT pg_notify($1, $2)", WORK_CHANNEL, what)

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True once a ``NOTIFY offboard_work`` came (from any replica, this one
        included) since the last True or `open`: one that comes while nobody waits is
        kept (`take_signal`), so none is lost between a `claim_next` that found nothing
        and this call. A lost listening connection is re-established and the call
        returns True at once (notifications may have been missed); if it cannot be,
        StoreError."""
        self._require_pool()
        if self._listener is None or self._listener.is_closed():
            await self._listen()
            self._work.clear()
            return True
        return await take_signal(self._work, timeout)

    async def lock_admission(self, tx: Runner, names: Sequence[str]) -> None:
        # Replicas admitting the same key, or a case for the same person, take
        # turns (locks taken in one global order: no deadlock between them).
        await _conn(tx).execute(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(k, 0) AS h "
            "FROM unnest($1::text[]) AS k ORDER BY 1) AS locks",
            list(names),
        )

    @contextlib.asynccontextmanager
    async def hold_lock(self, name: str) -> AsyncIterator[None]:
        """A session advisory lock on a connection of its own, outside the pool: held
        across provider calls, it must not take a pooled connection from the store's
        own writes. Should the connection drop, the server lets the lock go.

        Taken by trying every LOCK_POLL seconds, not by a statement that blocks: a
        worker whose lease is lost cancels its step, and a cancelled wait must end at
        once as a cancellation (a blocked statement ends as the server's "canceling
        statement", which would read as a store failure)."""
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        except _FAILURES as exc:
            raise self._error(exc, "connecting to lock") from self._cause(exc)
        try:
            while True:
                try:
                    taken = await conn.fetchval(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name
                    )
                except _FAILURES as exc:
                    raise self._error(exc, "locking") from self._cause(exc)
                if taken:
                    break
                await asyncio.sleep(LOCK_POLL)
            yield
        finally:
            # closing the session releases its advisory locks
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()

    # what PostgreSQL stores differently

    def time(self, value: Any) -> Any:
        return value

    def doc(self, value: Any) -> Any:
        return value

    def chain_time(self, value: Any) -> str:
        return chain_time(value)

    async def append_event(self, tx: Runner, event: NewEvent) -> int:
        # Bumping the counter locks the case row until commit: appends to one case
        # take turns, so two never compute the same seq or link to the same head.
        # The data and time come back as the server stores them, which is what is
        # hashed (jsonb normalises numbers; timestamptz keeps microseconds).
        conn = _conn(tx)
        head: Row | None = await conn.fetchrow(
            "UPDATE cases SET events_count = events_count + 1 WHERE id = $1 "
            "RETURNING events_count, events_head, $2::jsonb AS data, $3::timestamptz AS at",
            event.case_id,
            event.data,
            event.at,
        )
        if head is None:
            raise StoreError(f"no case {event.case_id!r} to record the event {event.kind!r} for")
        seq: int = head["events_count"]
        prev: str = head["events_head"] or genesis_hash(event.case_id)
        at = chain_time(head["at"])
        digest = event_hash(event.case_id, seq, at, event.kind, event.step_id, head["data"], prev)
        # One statement: the event and the head that points at it.
        await conn.execute(
            "WITH event AS (INSERT INTO events (case_id, seq, at, kind, step_id, data, "
            "prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)) "
            "UPDATE cases SET events_head = $8 WHERE id = $1",
            event.case_id,
            seq,
            event.at,
            event.kind,
            event.step_id,
            event.data,
            prev,
            digest,
        )
        return seq

    async def append_event_alone(self, event: NewEvent) -> int:
        async with self.transaction() as tx:
            return await self.append_event(tx, event)

    async def append_events(self, tx: Runner, events: Sequence[NewEvent]) -> None:
        for event in events:
            await self.append_event(tx, event)

    async def rows_then_events(self, writes: Sequence[RowWrite]) -> list[Row | None]:
        found: list[Row | None] = [None] * len(writes)
        try:
            async with self.transaction() as tx:
                for n, w in enumerate(writes):
                    row = await tx.one(w.query, **w.params)
                    if row is None:
                        raise NoRow(found)  # rolled back
                    found[n] = row
                    event = w.event_of(row)
                    if event is not None:
                        await self.append_event(tx, event)
        except NoRow as missing:
            return missing.found
        return found


class PostgresStore(StoreManager):
    """The Store on PostgreSQL; the arguments are `PostgresConnector`'s."""

    def __init__(self, dsn: str, **options: Any) -> None:
        self.connector: PostgresConnector = PostgresConnector(dsn, **options)
        super().__init__(self.connector)
        #: where the DSN points, without its password: safe for messages and logs
        self.where = self.connector.where

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"
