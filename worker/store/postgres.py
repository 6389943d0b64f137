"""The shared store: PostgreSQL through an asyncpg pool, for several worker replicas.

Same semantics as the SQLite store (the contract suite runs against both); what
differs is how replicas are kept apart:

- Claims (`claim_next`, `claim_due_timer`) pick their row with
  ``FOR UPDATE SKIP LOCKED`` and update it in the same statement: two replicas never
  claim the same case or fire the same timer, and never wait on each other's claims.
  `claim_case` names its case, so it waits for a concurrent writer of that row and
  then re-checks that the case is still runnable.
- Writes that belong to a claimed case check the lease owner in the transaction
  that writes, holding the case row (``FOR SHARE``) so no claim can slip between the
  check and the write; a worker that lost its lease gets StoreError.
- Event numbers come from a per-case counter on the case row, so concurrent appends
  to one case serialise instead of colliding. The same transaction links the event
  into the case's hash chain and moves the chain head on the case row
  (`worker.store.base.event_hash`); the events table refuses UPDATE, DELETE and
  TRUNCATE.
- Migrations run in one transaction under ``pg_advisory_xact_lock``: replicas
  starting together take turns, and each version is applied once.
- Row locks are always taken timers first, then the case row, then its steps, so
  transactions of this module cannot deadlock one another.

Timestamps are ``timestamptz`` (microseconds, more than the contract's milliseconds),
documents ``jsonb`` (key order is not kept; JSON values compare equal), counters
``bigint``. Every failure of the database (unreachable, refused, a constraint) is a
StoreError whose message never contains the DSN's password.

Work notifications: `create_case`, `resume_case` (when it resumes), `reschedule_case`
and `save_countdown` send ``NOTIFY offboard_work`` in their transaction, so it is
delivered when they commit. `wait_for_work` lets an idle worker sleep until then
instead of until its next poll; see its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]

from worker.clock import utc_iso
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
    chain_time,
    created_event,
    event_hash,
    genesis_hash,
    new_case_id,
    plan_admission,
    settle_admission,
)

#: The channel `wait_for_work` listens on.
WORK_CHANNEL = "offboard_work"

#: pg_advisory_xact_lock key held while migrating ("offboard" in ASCII).
MIGRATION_LOCK = 0x6F6666626F617264

#: A migration step that SQL alone cannot express: it gets the migrating connection,
#: inside the migration's transaction.
PythonMigration = Callable[[Any], Awaitable[None]]

_CHAIN_SCHEMA = """
    ALTER TABLE cases RENAME COLUMN last_event_seq TO events_count;
    ALTER TABLE cases ADD COLUMN events_head text;
    ALTER TABLE events RENAME TO events_unchained;
    ALTER INDEX events_pkey RENAME TO events_unchained_pkey;
    CREATE TABLE events (
        case_id text NOT NULL REFERENCES cases (id),
        seq bigint NOT NULL,
        at timestamptz NOT NULL,
        kind text NOT NULL,
        step_id text,
        data jsonb NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        PRIMARY KEY (case_id, seq)
    );
    CREATE TEMPORARY TABLE events_links (
        case_id text NOT NULL,
        seq bigint NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL
    ) ON COMMIT DROP;
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
    case_id: str | None = None
    prev = ""
    async for row in conn.cursor(
        "SELECT case_id, seq, at, kind, step_id, data FROM events_unchained ORDER BY case_id, seq",
        prefetch=500,
    ):
        if row["case_id"] != case_id:
            case_id, prev = row["case_id"], genesis_hash(row["case_id"])
        digest = event_hash(
            row["case_id"],
            row["seq"],
            chain_time(row["at"]),
            row["kind"],
            row["step_id"],
            row["data"],
            prev,
        )
        links.append((row["case_id"], row["seq"], prev, digest))
        prev = digest
        if len(links) >= 5000:
            await conn.copy_records_to_table("events_links", records=links)
            links = []
    if links:
        await conn.copy_records_to_table("events_links", records=links)
    await conn.execute(_APPEND_ONLY)


#: Versioned schema: each entry upgrades from the previous version, in one
#: transaction. Never edit a released entry; append a new one. (Versions count
#: separately from the SQLite store's: version 1 here is its versions 1 to 3.)
MIGRATIONS: tuple[str | PythonMigration, ...] = (
    """
    CREATE TABLE cases (
        id text PRIMARY KEY,
        playbook text NOT NULL,
        subject text NOT NULL,
        status text NOT NULL,
        priority bigint NOT NULL,
        steps jsonb NOT NULL,
        trigger jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        run_after timestamptz,
        lease_owner text,
        lease_expires_at timestamptz,
        halt_reason text,
        idempotency_key text UNIQUE,
        countdown jsonb,
        -- seq of the case's last event: bumping it serialises appends to one case
        last_event_seq bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX cases_runnable ON cases (priority DESC, created_at, id)
        WHERE status IN ('pending', 'running');
    CREATE INDEX cases_created ON cases (created_at, id);
    CREATE INDEX cases_subject ON cases (subject, playbook, status);
    CREATE TABLE steps (
        case_id text NOT NULL REFERENCES cases (id),
        idx integer NOT NULL,
        step_id text NOT NULL,
        action text NOT NULL,
        status text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        started_at timestamptz,
        finished_at timestamptz,
        evidence jsonb NOT NULL DEFAULT '{}',
        error text,
        PRIMARY KEY (case_id, idx)
    );
    CREATE TABLE side_effects (
        key text PRIMARY KEY,
        case_id text NOT NULL REFERENCES cases (id),
        step_id text NOT NULL,
        operation text NOT NULL,
        state text NOT NULL,
        requested_at timestamptz NOT NULL,
        applied_at timestamptz
    );
    CREATE TABLE operator_tasks (
        case_id text NOT NULL REFERENCES cases (id),
        step_id text NOT NULL,
        title text NOT NULL,
        instructions text NOT NULL,
        console_url text NOT NULL,
        subject text NOT NULL,
        opened_at timestamptz NOT NULL,
        confirmed_at timestamptz,
        confirmed_by text,
        PRIMARY KEY (case_id, step_id)
    );
    CREATE INDEX operator_tasks_open ON operator_tasks (opened_at) WHERE confirmed_at IS NULL;
    CREATE TABLE events (
        case_id text NOT NULL REFERENCES cases (id),
        seq bigint NOT NULL,
        at timestamptz NOT NULL,
        kind text NOT NULL,
        step_id text,
        data jsonb NOT NULL,
        PRIMARY KEY (case_id, seq)
    );
    CREATE TABLE timers (
        case_id text NOT NULL REFERENCES cases (id),
        name text NOT NULL,
        epoch bigint NOT NULL,
        due_at timestamptz NOT NULL,
        fired_at timestamptz,
        fired_by text,
        closes_case boolean NOT NULL DEFAULT false,
        PRIMARY KEY (case_id, name, epoch)
    );
    CREATE INDEX timers_due ON timers (due_at, case_id, name, epoch) WHERE fired_at IS NULL;
    CREATE TABLE deliveries (
        key text PRIMARY KEY,
        case_id text,
        outcome jsonb NOT NULL,
        received_at timestamptz NOT NULL
    );
    CREATE TABLE refusals (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL,
        source text NOT NULL,
        subject text NOT NULL,
        reason text NOT NULL
    );
    """,
    _chain_events,
    # version 3: a scrape counts events by kind (cases_created already serves paging)
    "CREATE INDEX events_kind ON events (kind);",
)

_COLUMNS = (
    "id",
    "playbook",
    "subject",
    "status",
    "priority",
    "steps",
    "trigger",
    "created_at",
    "updated_at",
    "run_after",
    "lease_owner",
    "lease_expires_at",
    "halt_reason",
    "idempotency_key",
    "countdown",
)
_CASE_COLUMNS = ", ".join(_COLUMNS)
#: the same, qualified, for statements that join another relation
_CASES_COLUMNS = ", ".join(f"cases.{c}" for c in _COLUMNS)

#: $1 is now: pending and due, or running with a lapsed lease
_RUNNABLE = (
    "((status = 'pending' AND (run_after IS NULL OR run_after <= $1)) "
    "OR (status = 'running' AND lease_expires_at <= $1))"
)

#: asyncpg records behave as read-only mappings of column name to value
Row = Mapping[str, Any]

#: errors that mean the server cannot be reached or the connection was lost
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, and the connection dropping mid-query
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, not yet accepting
    asyncpg.exceptions.TooManyConnectionsError,
)
#: errors that mean the server answered but will not let us in
_REFUSED_LOGIN: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # class 28: login refused
    asyncpg.exceptions.InvalidCatalogNameError,  # the database does not exist
)


def _delivery(row: Row) -> Delivery:
    return Delivery(
        key=row["key"],
        case_id=row["case_id"],
        outcome=row["outcome"],
        received_at=row["received_at"],
    )


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: scheme, user, hosts and database, no secrets."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("postgresql", "postgres"):
        return "<a DSN that is not a postgresql:// URL>"
    user = parts.username
    hosts = parts.netloc.rpartition("@")[2]
    where = f"{parts.scheme or 'postgresql'}://{unquote(user) + '@' if user else ''}{hosts}"
    where += parts.path
    socket_hosts = parse_qs(parts.query).get("host")
    if socket_hosts:
        where += f"?host={socket_hosts[0]}"
    return where


def _dsn_secrets(dsn: str) -> list[str]:
    """The DSN's password, as written and decoded, to be scrubbed from any message."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme in ("postgresql", "postgres"):
        password = parts.netloc.rpartition("@")[0].partition(":")[2]
        candidates = [password, *parse_qs(parts.query).get("password", [])]
    else:
        # a libpq keyword DSN (host=... password=...) is refused, but must not show either
        candidates = re.findall(r"password\s*=\s*'?([^'\s]+)", dsn)
    secrets = {text for candidate in candidates for text in (candidate, unquote(candidate))}
    return sorted((s for s in secrets if s), key=len, reverse=True)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _case(row: Row) -> Case:
    return Case(
        id=row["id"],
        playbook=row["playbook"],
        subject=row["subject"],
        status=CaseStatus(row["status"]),
        priority=row["priority"],
        steps=tuple(
            PlannedStep(id=s["id"], action=s["action"], verify=s["verify"], options=s["options"])
            for s in row["steps"]
        ),
        trigger=row["trigger"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        run_after=row["run_after"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        halt_reason=row["halt_reason"],
        idempotency_key=row["idempotency_key"],
        countdown=row["countdown"],
    )


def _step(row: Row) -> StepRecord:
    return StepRecord(
        case_id=row["case_id"],
        index=row["idx"],
        step_id=row["step_id"],
        action=row["action"],
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        evidence=row["evidence"],
        error=row["error"],
    )


def _ledger(row: Row) -> LedgerEntry:
    return LedgerEntry(
        key=row["key"],
        case_id=row["case_id"],
        step_id=row["step_id"],
        operation=row["operation"],
        state=LedgerState(row["state"]),
        requested_at=row["requested_at"],
        applied_at=row["applied_at"],
    )


def _task(row: Row) -> OperatorTask:
    return OperatorTask(
        case_id=row["case_id"],
        step_id=row["step_id"],
        title=row["title"],
        instructions=row["instructions"],
        console_url=row["console_url"],
        subject=row["subject"],
        opened_at=row["opened_at"],
        confirmed_at=row["confirmed_at"],
        confirmed_by=row["confirmed_by"],
    )


def _timer(row: Row) -> Timer:
    return Timer(
        case_id=row["case_id"],
        name=row["name"],
        epoch=row["epoch"],
        due_at=row["due_at"],
        fired_at=row["fired_at"],
        fired_by=row["fired_by"],
        closes_case=row["closes_case"],
    )


def _event(row: Row) -> CaseEvent:
    return CaseEvent(
        case_id=row["case_id"],
        seq=row["seq"],
        at=row["at"],
        kind=row["kind"],
        step_id=row["step_id"],
        data=row["data"],
    )


async def _init_connection(conn: Any) -> None:
    """Every pooled connection reads and writes jsonb as Python values."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresStore:
    """The Store on PostgreSQL (``postgresql://user:password@host:port/database``).

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
        self._secrets = _dsn_secrets(dsn)
        self._min = min_connections
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None
        self._listener: Any = None
        self._listen_lock = asyncio.Lock()
        self._work = asyncio.Event()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

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
            return StoreError(f"PostgreSQL at {self.where} is unreachable{action}: {detail}")
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
        except (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._error(exc) from self._cause(exc)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def _fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._connection() as conn:
            row: Row | None = await conn.fetchrow(sql, *args)
            return row

    async def _fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            rows: list[Row] = await conn.fetch(sql, *args)
            return rows

    async def _execute(self, sql: str, *args: Any) -> int:
        async with self._connection() as conn:
            status: str = await conn.execute(sql, *args)
            return _count(status)

    @staticmethod
    async def _notify(conn: Any, payload: str) -> None:
        """Delivered to every listener when the surrounding transaction commits."""
        await conn.execute("SELECT pg_notify($1, $2)", WORK_CHANNEL, payload)

    # lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min,
                max_size=self._max,
                init=_init_connection,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
        except (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
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

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    async def _migrate(self) -> None:
        async with self._transaction() as conn:
            # Replicas starting together queue here; the first applies what is missing.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                await conn.execute(
                    "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
            current: int = await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version"
            )
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"database {self.where} has schema version {current}, newer than this "
                    f"offboard ({len(MIGRATIONS)}): upgrade offboard"
                )
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                if isinstance(script, str):
                    await conn.execute(script)
                else:
                    await script(conn)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    # work notifications

    async def _listen(self) -> None:
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            self._listener = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            except (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise self._error(exc, "connecting to listen") from self._cause(exc)
            try:
                await conn.add_listener(WORK_CHANNEL, self._notified)
                conn.add_termination_listener(self._listener_lost)
            except BaseException as exc:
                conn.terminate()
                if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                    raise self._error(exc, "starting to listen") from self._cause(exc)
                raise
            self._listener = conn

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._work.set()

    def _listener_lost(self, _conn: object) -> None:
        # Wake the waiter: the next wait_for_work reconnects (or reports the outage).
        self._work.set()

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until there may be new work, for at most `timeout` seconds.

        True as soon as a ``NOTIFY offboard_work`` arrived (from any replica, this
        one included) since the previous call returned True, or since `open`: a case
        was created, resumed or rescheduled, or a countdown saved. False when
        `timeout` passed without one. Notifications that arrive while nobody waits
        are kept (as one) for the next call, so none is lost between a `claim_next`
        that found nothing and this call.

        A hint, not a queue: True does not promise a claimable case, and work that
        becomes due with time alone (a `run_after`, a lapsed lease, a timer) sends
        nothing, so callers still poll (pass a timeout no longer than their poll
        interval). If the listening connection was lost it is re-established and the
        call returns True at once, since notifications may have been missed; if it
        cannot be, StoreError. Safe to cancel: nothing is consumed unless it returns.
        """
        self._require_pool()
        if self._listener is None or self._listener.is_closed():
            await self._listen()
            self._work.clear()
            return True
        if not self._work.is_set():
            try:
                await asyncio.wait_for(self._work.wait(), timeout)
            except TimeoutError:
                return False
        self._work.clear()
        return True

    # cases

    async def create_case(self, new: NewCase, now: datetime) -> tuple[Case, bool]:
        case_id = new_case_id()
        async with self._transaction() as conn:
            row = await self._insert_case(conn, case_id, new, now)
            if row is None:
                # The key is taken (ON CONFLICT waited for its writer to commit).
                existing: Row | None = await conn.fetchrow(
                    f"SELECT {_CASE_COLUMNS} FROM cases WHERE idempotency_key = $1",
                    new.idempotency_key,
                )
                if existing is None:
                    raise StoreError(f"case with idempotency key {new.idempotency_key!r} vanished")
                return _case(existing), False
            await self._notify(conn, f"case_created {case_id}")
        return _case(row), True

    async def _insert_case(
        self, conn: Any, case_id: str, new: NewCase, now: datetime
    ) -> Row | None:
        """The case, its pending steps and its first event; None if its key is taken."""
        steps = [
            {"id": s.id, "action": s.action, "verify": s.verify, "options": s.options}
            for s in new.steps
        ]
        row: Row | None = await conn.fetchrow(
            "INSERT INTO cases (id, playbook, subject, status, priority, steps, trigger, "
            "created_at, updated_at, run_after, idempotency_key) "
            "VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $7, $8, $9) "
            f"ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_CASE_COLUMNS}",
            case_id,
            new.playbook,
            new.subject,
            new.priority,
            steps,
            new.trigger,
            now,
            new.run_after,
            new.idempotency_key,
        )
        if row is None:
            return None
        if new.steps:
            await conn.executemany(
                "INSERT INTO steps (case_id, idx, step_id, action, status) "
                "VALUES ($1, $2, $3, $4, 'pending')",
                [(case_id, i, s.id, s.action) for i, s in enumerate(new.steps)],
            )
        await self._append_event(
            conn,
            case_id,
            "case_created",
            now,
            None,
            created_event(new),
        )
        return row

    async def admit(self, arrivals: Sequence[Arrival], now: datetime) -> list[Admission]:
        if not arrivals:
            return []
        keys = sorted({a.key for a in arrivals})
        people = sorted({a.case.subject for a in arrivals})
        async with self._transaction() as conn:
            # Replicas admitting the same key, or a case for the same person, take
            # turns (locks taken in one global order: no deadlock between them).
            await conn.execute(
                "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(k, 0) AS h "
                "FROM unnest($1::text[]) AS k ORDER BY 1) AS locks",
                [f"delivery:{k}" for k in keys] + [f"person:{p}" for p in people],
            )
            rows: list[Row] = await conn.fetch(
                "SELECT * FROM deliveries WHERE key = ANY($1::text[])", keys
            )
            seen = {d.key: d for d in map(_delivery, rows)}
            rows = await conn.fetch(
                f"SELECT {_CASE_COLUMNS} FROM cases WHERE subject = ANY($1::text[]) "
                f"AND status IN {OPEN_STATUSES_SQL} ORDER BY created_at DESC, id DESC",
                people,
            )
            open_cases: dict[tuple[str, str], Case] = {}
            for case in map(_case, rows):  # newest first: the oldest is written last
                open_cases[(case.subject, case.playbook)] = case
            plan = plan_admission(arrivals, seen, open_cases)
            created: dict[str, Case] = {}
            for case_id, new in plan.creates:
                row = await self._insert_case(conn, case_id, new, now)
                if row is None:  # plan_admission refuses idempotency keys
                    raise StoreError(f"case {case_id} could not be created")
                created[case_id] = _case(row)
            deliveries, admissions = settle_admission(plan, arrivals, created, now)
            if deliveries:
                await conn.executemany(
                    "INSERT INTO deliveries (key, case_id, outcome, received_at) "
                    "VALUES ($1, $2, $3, $4)",
                    [(d.key, d.case_id, d.outcome, d.received_at) for d in deliveries],
                )
            if created:
                await self._notify(conn, f"cases_admitted {len(created)}")
        return admissions

    async def get_case(self, case_id: str) -> Case:
        row = await self._fetchrow(f"SELECT {_CASE_COLUMNS} FROM cases WHERE id = $1", case_id)
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        return _case(row)

    async def list_cases(self, statuses: tuple[CaseStatus, ...] | None = None) -> list[Case]:
        if statuses:
            rows = await self._fetch(
                f"SELECT {_CASE_COLUMNS} FROM cases WHERE status = ANY($1::text[]) "
                "ORDER BY created_at, id",
                [s.value for s in statuses],
            )
        else:
            rows = await self._fetch(f"SELECT {_CASE_COLUMNS} FROM cases ORDER BY created_at, id")
        return [_case(r) for r in rows]

    async def claim_next(
        self, worker_id: str, now: datetime, lease_seconds: float, *, min_priority: int = 0
    ) -> Case | None:
        row = await self._fetchrow(
            "WITH c AS ("
            f"SELECT id FROM cases WHERE {_RUNNABLE} AND priority >= $4 "
            "ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            "UPDATE cases SET status = 'running', lease_owner = $2, lease_expires_at = $3, "
            f"updated_at = $1 FROM c WHERE cases.id = c.id RETURNING {_CASES_COLUMNS}",
            now,
            worker_id,
            now + timedelta(seconds=lease_seconds),
            min_priority,
        )
        return None if row is None else _case(row)

    async def claim_case(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> Case | None:
        # No SKIP LOCKED: this names its case, so it waits for whoever writes that row
        # (a claim, a heartbeat) and then re-checks that the case is still runnable.
        row = await self._fetchrow(
            "UPDATE cases SET status = 'running', lease_owner = $2, lease_expires_at = $3, "
            f"updated_at = $1 WHERE id = $4 AND {_RUNNABLE} RETURNING {_CASE_COLUMNS}",
            now,
            worker_id,
            now + timedelta(seconds=lease_seconds),
            case_id,
        )
        return None if row is None else _case(row)

    async def heartbeat(
        self, case_id: str, worker_id: str, now: datetime, lease_seconds: float
    ) -> bool:
        count = await self._execute(
            "UPDATE cases SET lease_expires_at = $1 "
            "WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
            now + timedelta(seconds=lease_seconds),
            case_id,
            worker_id,
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
        count = await self._execute(
            "UPDATE cases SET status = $1, run_after = $2, halt_reason = $3, "
            "lease_owner = NULL, lease_expires_at = NULL, updated_at = $4 "
            "WHERE id = $5 AND lease_owner = $6",
            status.value,
            run_after,
            halt_reason,
            now,
            case_id,
            worker_id,
        )
        if count != 1:
            raise StoreError(f"case {case_id} is not held by worker {worker_id}")

    async def find_open_case(self, subject: str, playbook: str) -> Case | None:
        row = await self._fetchrow(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE subject = $1 AND playbook = $2 "
            f"AND status IN {OPEN_STATUSES_SQL} ORDER BY created_at, id LIMIT 1",
            subject,
            playbook,
        )
        return None if row is None else _case(row)

    async def _lock_not_started(self, conn: Any, case_id: str) -> None:
        """Hold the case row for this transaction; StoreError if the case has started."""
        row: Row | None = await conn.fetchrow(
            "SELECT status, EXISTS (SELECT 1 FROM steps WHERE case_id = $1 AND attempts > 0) "
            "AS started FROM cases WHERE id = $1 FOR UPDATE",
            case_id,
        )
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        if row["status"] != CaseStatus.PENDING.value or row["started"]:
            raise CaseStarted(
                f"case {case_id} has started (status {row['status']}): "
                "containment cannot be withdrawn or moved once it began"
            )

    async def reschedule_case(self, case_id: str, run_after: datetime, now: datetime) -> Case:
        async with self._transaction() as conn:
            await self._lock_not_started(conn, case_id)
            row: Row = await conn.fetchrow(
                "UPDATE cases SET run_after = $2, updated_at = $3 WHERE id = $1 "
                f"RETURNING {_CASE_COLUMNS}",
                case_id,
                run_after,
                now,
            )
            await self._append_event(
                conn, case_id, "case_rescheduled", now, None, {"run_after": utc_iso(run_after)}
            )
            await self._notify(conn, f"case_rescheduled {case_id}")
        return _case(row)

    async def cancel_case(self, case_id: str, now: datetime, reason: str) -> Case:
        async with self._transaction() as conn:
            await self._lock_not_started(conn, case_id)
            row: Row = await conn.fetchrow(
                "UPDATE cases SET status = 'cancelled', halt_reason = $2, updated_at = $3 "
                f"WHERE id = $1 RETURNING {_CASE_COLUMNS}",
                case_id,
                reason,
                now,
            )
            await self._append_event(conn, case_id, "case_cancelled", now, None, {"reason": reason})
        return _case(row)

    async def resume_case(self, case_id: str, now: datetime) -> Case:
        async with self._transaction() as conn:
            row: Row | None = await conn.fetchrow(
                "UPDATE cases SET status = 'pending', run_after = NULL, halt_reason = NULL, "
                "updated_at = $2 WHERE id = $1 AND status IN ('waiting', 'halted') "
                f"RETURNING {_CASE_COLUMNS}",
                case_id,
                now,
            )
            if row is not None:
                await self._notify(conn, f"case_resumed {case_id}")
                return _case(row)
        return await self.get_case(case_id)

    # steps

    async def steps(self, case_id: str) -> list[StepRecord]:
        rows = await self._fetch("SELECT * FROM steps WHERE case_id = $1 ORDER BY idx", case_id)
        return [_step(r) for r in rows]

    async def _lock_owned(self, conn: Any, case_id: str, worker_id: str) -> None:
        """Hold the case row (shared) for this transaction, so no claim can take it
        before the write commits; StoreError unless `worker_id` holds the case."""
        owner: Row | None = await conn.fetchrow(
            "SELECT lease_owner FROM cases WHERE id = $1 FOR SHARE", case_id
        )
        if owner is None:
            raise NotFound(f"no case {case_id!r}")
        if owner["lease_owner"] != worker_id:
            raise StoreError(f"case {case_id} is not held by worker {worker_id}")

    async def start_step(
        self, case_id: str, index: int, worker_id: str, now: datetime
    ) -> StepRecord:
        async with self._transaction() as conn:
            await self._lock_owned(conn, case_id, worker_id)
            row: Row | None = await conn.fetchrow(
                "UPDATE steps SET status = 'running', attempts = attempts + 1, "
                "started_at = COALESCE(started_at, $3) WHERE case_id = $1 AND idx = $2 "
                "RETURNING *",
                case_id,
                index,
                now,
            )
        if row is None:
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
        finished = now if status in (StepStatus.DONE, StepStatus.FAILED) else None
        async with self._transaction() as conn:
            await self._lock_owned(conn, case_id, worker_id)
            row: Row | None = await conn.fetchrow(
                "UPDATE steps SET status = $3, finished_at = $4, evidence = $5, error = $6 "
                "WHERE case_id = $1 AND idx = $2 RETURNING *",
                case_id,
                index,
                status.value,
                finished,
                evidence or {},
                error,
            )
            if row is not None and event is not None:
                # one transaction: a kill cannot leave a done step without its event
                await self._append_event(conn, case_id, event[0], now, row["step_id"], event[1])
        if row is None:
            raise NotFound(f"case {case_id} has no step {index}")
        return _step(row)

    # side-effect ledger

    async def ledger_get(self, key: str) -> LedgerEntry | None:
        row = await self._fetchrow("SELECT * FROM side_effects WHERE key = $1", key)
        return None if row is None else _ledger(row)

    async def ledger_intent(
        self, key: str, case_id: str, step_id: str, operation: str, now: datetime
    ) -> LedgerEntry:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO side_effects (key, case_id, step_id, operation, state, "
                "requested_at) VALUES ($1, $2, $3, $4, 'intent', $5) "
                "ON CONFLICT (key) DO NOTHING",
                key,
                case_id,
                step_id,
                operation,
                now,
            )
            # A statement of its own: it sees the row even if another wrote it first.
            row: Row = await conn.fetchrow("SELECT * FROM side_effects WHERE key = $1", key)
        return _ledger(row)

    async def ledger_applied(self, key: str, now: datetime) -> LedgerEntry:
        row = await self._fetchrow(
            "UPDATE side_effects SET state = 'applied', applied_at = COALESCE(applied_at, $2) "
            "WHERE key = $1 RETURNING *",
            key,
            now,
        )
        if row is None:
            raise NotFound(f"no ledger entry {key!r}")
        return _ledger(row)

    # operator tasks

    async def open_task(self, task: OperatorTask) -> OperatorTask:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO operator_tasks (case_id, step_id, title, instructions, "
                "console_url, subject, opened_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (case_id, step_id) DO NOTHING",
                task.case_id,
                task.step_id,
                task.title,
                task.instructions,
                task.console_url,
                task.subject,
                task.opened_at,
            )
            row: Row = await conn.fetchrow(
                "SELECT * FROM operator_tasks WHERE case_id = $1 AND step_id = $2",
                task.case_id,
                task.step_id,
            )
        return _task(row)

    async def get_task(self, case_id: str, step_id: str) -> OperatorTask | None:
        row = await self._fetchrow(
            "SELECT * FROM operator_tasks WHERE case_id = $1 AND step_id = $2", case_id, step_id
        )
        return None if row is None else _task(row)

    async def confirm_task(
        self, case_id: str, step_id: str, confirmed_by: str, now: datetime
    ) -> OperatorTask:
        row = await self._fetchrow(
            "UPDATE operator_tasks SET confirmed_at = COALESCE(confirmed_at, $3), "
            "confirmed_by = COALESCE(confirmed_by, $4) WHERE case_id = $1 AND step_id = $2 "
            "RETURNING *",
            case_id,
            step_id,
            now,
            confirmed_by,
        )
        if row is None:
            raise NotFound(f"case {case_id} has no operator task for step {step_id!r}")
        return _task(row)

    async def open_tasks(self) -> list[OperatorTask]:
        rows = await self._fetch(
            "SELECT * FROM operator_tasks WHERE confirmed_at IS NULL "
            "ORDER BY opened_at, case_id, step_id"
        )
        return [_task(r) for r in rows]

    # countdown and its timers

    async def save_countdown(
        self,
        case_id: str,
        countdown: dict[str, Any],
        epoch: int,
        timers: list[Timer],
        now: datetime,
    ) -> None:
        async with self._transaction() as conn:
            # Timers before the case row: the lock order claim_due_timer uses too.
            await conn.execute(
                "DELETE FROM timers WHERE case_id = $1 AND epoch < $2 AND fired_at IS NULL",
                case_id,
                epoch,
            )
            if timers:
                await conn.executemany(
                    "INSERT INTO timers (case_id, name, epoch, due_at, closes_case) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (case_id, name, epoch) "
                    "DO UPDATE SET due_at = excluded.due_at WHERE timers.fired_at IS NULL",
                    [(case_id, t.name, epoch, t.due_at, t.closes_case) for t in timers],
                )
            await conn.execute(
                "UPDATE cases SET countdown = $2, updated_at = $3 WHERE id = $1",
                case_id,
                countdown,
                now,
            )
            await self._notify(conn, f"countdown_saved {case_id}")

    async def claim_due_timer(self, worker_id: str, now: datetime) -> Timer | None:
        async with self._transaction() as conn:
            row: Row | None = await conn.fetchrow(
                "WITH t AS ("
                "SELECT case_id, name, epoch FROM timers WHERE fired_at IS NULL AND due_at <= $1 "
                "ORDER BY due_at, case_id, name, epoch LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "UPDATE timers SET fired_at = $1, fired_by = $2 FROM t "
                "WHERE timers.case_id = t.case_id AND timers.name = t.name "
                "AND timers.epoch = t.epoch RETURNING timers.*",
                now,
                worker_id,
            )
            if row is None:
                return None
            timer = _timer(row)
            await self._append_event(
                conn,
                timer.case_id,
                "milestone_reached",
                now,
                None,
                {"milestone": timer.name, "epoch": timer.epoch, "due_at": utc_iso(timer.due_at)},
            )
            if timer.closes_case:
                await conn.execute(
                    "UPDATE cases SET status = 'access_lapsed', updated_at = $2 "
                    "WHERE id = $1 AND status = 'contained'",
                    timer.case_id,
                    now,
                )
                await self._append_event(conn, timer.case_id, "case_access_lapsed", now, None, {})
        return timer

    async def timers(self, case_id: str) -> list[Timer]:
        rows = await self._fetch(
            "SELECT * FROM timers WHERE case_id = $1 ORDER BY epoch, due_at, name", case_id
        )
        return [_timer(r) for r in rows]

    async def next_timer_due(self) -> datetime | None:
        row = await self._fetchrow("SELECT MIN(due_at) AS due FROM timers WHERE fired_at IS NULL")
        due: datetime | None = None if row is None else row["due"]
        return due

    # trigger deliveries and refusals

    async def record_delivery(self, delivery: Delivery) -> tuple[Delivery, bool]:
        async with self._connection() as conn:
            inserted: Row | None = await conn.fetchrow(
                "INSERT INTO deliveries (key, case_id, outcome, received_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING RETURNING key",
                delivery.key,
                delivery.case_id,
                delivery.outcome,
                delivery.received_at,
            )
        if inserted is not None:
            return delivery, True
        existing = await self.get_delivery(delivery.key)
        if existing is None:
            raise StoreError(f"delivery {delivery.key!r} vanished")
        return existing, False

    async def get_delivery(self, key: str) -> Delivery | None:
        row = await self._fetchrow("SELECT * FROM deliveries WHERE key = $1", key)
        return None if row is None else _delivery(row)

    async def record_refusal(self, refusal: Refusal) -> None:
        await self._execute(
            "INSERT INTO refusals (at, source, subject, reason) VALUES ($1, $2, $3, $4)",
            refusal.at,
            refusal.source,
            refusal.subject,
            refusal.reason,
        )

    async def refusals(self) -> list[Refusal]:
        rows = await self._fetch("SELECT * FROM refusals ORDER BY id")
        return [
            Refusal(at=r["at"], source=r["source"], subject=r["subject"], reason=r["reason"])
            for r in rows
        ]

    # timeline

    async def _append_event(
        self,
        conn: Any,
        case_id: str,
        kind: str,
        now: datetime,
        step_id: str | None,
        data: dict[str, Any],
    ) -> int:
        # Bumping the counter locks the case row until commit: appends to one case
        # take turns, so two never compute the same seq or link to the same head.
        # The data and time come back as the server stores them, which is what is
        # hashed (jsonb normalises numbers; timestamptz keeps microseconds).
        head: Row | None = await conn.fetchrow(
            "UPDATE cases SET events_count = events_count + 1 WHERE id = $1 "
            "RETURNING events_count, events_head, $2::jsonb AS data, $3::timestamptz AS at",
            case_id,
            data,
            now,
        )
        if head is None:
            raise StoreError(f"no case {case_id!r} to record the event {kind!r} for")
        seq: int = head["events_count"]
        prev: str = head["events_head"] or genesis_hash(case_id)
        digest = event_hash(case_id, seq, chain_time(head["at"]), kind, step_id, head["data"], prev)
        # One statement: the event and the head that points at it.
        await conn.execute(
            "WITH event AS (INSERT INTO events (case_id, seq, at, kind, step_id, data, "
            "prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)) "
            "UPDATE cases SET events_head = $8 WHERE id = $1",
            case_id,
            seq,
            now,
            kind,
            step_id,
            data,
            prev,
            digest,
        )
        return seq

    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> CaseEvent:
        async with self._transaction() as conn:
            seq = await self._append_event(conn, case_id, kind, now, step_id, data)
        return CaseEvent(case_id=case_id, seq=seq, at=now, kind=kind, step_id=step_id, data=data)

    async def events(self, case_id: str) -> list[CaseEvent]:
        rows = await self._fetch("SELECT * FROM events WHERE case_id = $1 ORDER BY seq", case_id)
        return [_event(r) for r in rows]

    async def evidence(self, case_id: str) -> list[EvidenceRecord]:
        rows = await self._fetch("SELECT * FROM events WHERE case_id = $1 ORDER BY seq", case_id)
        return [
            EvidenceRecord(
                case_id=r["case_id"],
                seq=r["seq"],
                at=chain_time(r["at"]),
                kind=r["kind"],
                step_id=r["step_id"],
                data=r["data"],
                prev_hash=r["prev_hash"],
                hash=r["hash"],
            )
            for r in rows
        ]

    async def evidence_head(self, case_id: str) -> tuple[str, int]:
        row = await self._fetchrow(
            "SELECT events_head, events_count FROM cases WHERE id = $1", case_id
        )
        if row is None:
            raise NotFound(f"no case {case_id!r}")
        return row["events_head"] or genesis_hash(case_id), int(row["events_count"])

    # aggregates and pages

    async def case_counts(self) -> list[CaseCount]:
        rows = await self._fetch(
            "SELECT status, playbook, COUNT(*) AS n FROM cases "
            "GROUP BY status, playbook ORDER BY status, playbook"
        )
        return [
            CaseCount(status=CaseStatus(r["status"]), playbook=r["playbook"], count=r["n"])
            for r in rows
        ]

    async def running_countdowns(self, now: datetime) -> int:
        # a countdown document whose milestones are not a list has no all-lapsed
        row = await self._fetchrow(
            "SELECT COUNT(*) AS n FROM cases WHERE countdown IS NOT NULL "
            "AND status <> ALL($1::text[]) AND ("
            "SELECT (m.value ->> 'at')::timestamptz FROM jsonb_array_elements("
            "CASE jsonb_typeof(countdown -> 'milestones') WHEN 'array' "
            "THEN countdown -> 'milestones' ELSE '[]'::jsonb END"
            ") WITH ORDINALITY AS m (value, n) "
            "WHERE m.value ->> 'name' = $2 ORDER BY m.n LIMIT 1) > $3",
            [s.value for s in CLOSED_STATUSES],
            ALL_LAPSED,
            now,
        )
        return 0 if row is None else int(row["n"])

    async def count_events(self, kind: str) -> int:
        row = await self._fetchrow("SELECT COUNT(*) AS n FROM events WHERE kind = $1", kind)
        return 0 if row is None else int(row["n"])

    async def task_backlog(self) -> TaskBacklog:
        row = await self._fetchrow(
            "SELECT COUNT(*) AS n, MIN(opened_at) AS oldest FROM operator_tasks "
            "WHERE confirmed_at IS NULL"
        )
        if row is None:
            return TaskBacklog(waiting=0, oldest_opened_at=None)
        return TaskBacklog(waiting=int(row["n"]), oldest_opened_at=row["oldest"])

    async def open_tasks_of(self, case_ids: Sequence[str]) -> list[OperatorTask]:
        rows = await self._fetch(
            "SELECT * FROM operator_tasks WHERE case_id = ANY($1::text[]) "
            "AND confirmed_at IS NULL ORDER BY opened_at, case_id, step_id",
            list(case_ids),
        )
        return [_task(r) for r in rows]

    async def urgent_cases(
        self, statuses: tuple[CaseStatus, ...] | None, *, limit: int, offset: int
    ) -> CasePage:
        wanted = [s.value for s in statuses] if statuses else None
        where = "WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))"
        # one snapshot: the page and the count agree
        async with (
            self._connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows: list[Row] = await conn.fetch(
                f"SELECT {_CASE_COLUMNS} FROM cases {where} "
                f"ORDER BY {URGENCY_ORDER} LIMIT $2 OFFSET $3",
                wanted,
                max(0, limit),
                max(0, offset),
            )
            total: int = await conn.fetchval(f"SELECT COUNT(*) FROM cases {where}", wanted)
        return CasePage(cases=tuple(map(_case, rows)), total=total)

    async def cases_after(
        self, statuses: tuple[CaseStatus, ...] | None, *, after: str | None, limit: int
    ) -> list[Case]:
        wanted = [s.value for s in statuses] if statuses else None
        select = (
            f"SELECT {_CASE_COLUMNS} FROM cases "
            "WHERE ($1::text[] IS NULL OR status = ANY($1::text[])) "
        )
        async with self._connection() as conn:
            if after is None:
                rows: list[Row] = await conn.fetch(
                    select + "ORDER BY created_at, id LIMIT $2", wanted, max(0, limit)
                )
            else:
                start = await conn.fetchrow("SELECT created_at FROM cases WHERE id = $1", after)
                if start is None:
                    raise NotFound(f"no case {after!r}")
                # a row comparison: a range of the index cases_created (created_at, id)
                rows = await conn.fetch(
                    select + "AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $4",
                    wanted,
                    start["created_at"],
                    after,
                    max(0, limit),
                )
        return [_case(r) for r in rows]
