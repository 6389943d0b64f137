"""The Store contract against PostgreSQL, and what only the PostgreSQL backend promises:
replicas racing for cases and timers, migrations from replicas starting together,
work notifications, and errors that never show the DSN's password.

Each test gets a fresh database (`pg_fresh_dsn`, tests/pg.py) in the session's
throwaway PostgreSQL 15 cluster.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.pg import with_database
from worker.domain import Arrival, Case, CaseStatus, Timer
from worker.errors import StoreError, StoreUnavailable
from worker.store.base import Store
from worker.store.postgres import MIGRATIONS, PostgresStore

from .store_contract import (
    LEASE,
    T0,
    StoreContract,
    at,
    cancelled_lock_wait_ends_cleanly,
    new_case,
    permission_set_locks_take_turns,
)


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, pg_fresh_dsn: str) -> AsyncIterator[Store]:
        store = PostgresStore(pg_fresh_dsn)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def schema_versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
        return [row["version"] for row in rows]
    finally:
        await conn.close()


@pytest.fixture
async def replicas(pg_fresh_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, each with its own pool: two worker replicas."""
    a, b = PostgresStore(pg_fresh_dsn), PostgresStore(pg_fresh_dsn)
    try:
        await a.open()
        await b.open()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def contained(store: PostgresStore, subject: str) -> Case:
    case, _ = await store.create_case(new_case(subject), at(0))
    assert await store.claim_case(case.id, "setup", at(0), LEASE) is not None
    await store.release_case(case.id, "setup", CaseStatus.CONTAINED, at(1))
    return case


async def test_replicas_take_turns_on_a_permission_set(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    await permission_set_locks_take_turns(a, b)
    await cancelled_lock_wait_ends_cleanly(a, b)


# migrations


async def test_reopening_keeps_data_and_does_not_rerun_migrations(pg_fresh_dsn: str) -> None:
    first = PostgresStore(pg_fresh_dsn)
    await first.open()
    case, _ = await first.create_case(new_case(key="hr:1"), T0)
    await first.close()
    expected = list(range(1, len(MIGRATIONS) + 1))
    assert await schema_versions(pg_fresh_dsn) == expected

    for _ in range(2):
        again = PostgresStore(pg_fresh_dsn)
        await again.open()
        try:
            assert await again.get_case(case.id) == case
            _, created = await again.create_case(new_case(key="hr:1"), at(5))
            assert created is False
        finally:
            await again.close()
        assert await schema_versions(pg_fresh_dsn) == expected


async def test_replicas_starting_together_migrate_a_fresh_database_once(
    pg_fresh_dsn: str,
) -> None:
    stores = [PostgresStore(pg_fresh_dsn) for _ in range(8)]
    try:
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], f"{len(failures)} opens failed, first: {failures[0]!r}"
        assert await schema_versions(pg_fresh_dsn) == list(range(1, len(MIGRATIONS) + 1))
        # every replica can use the schema at once
        created = await asyncio.gather(
            *(s.create_case(new_case(f"u{n}@example.com"), T0) for n, s in enumerate(stores))
        )
        assert len({case.id for case, _ in created}) == len(stores)
    finally:
        for store in stores:
            await store.close()


async def test_newer_schema_version_is_refused_and_changes_nothing(pg_fresh_dsn: str) -> None:
    store = PostgresStore(pg_fresh_dsn)
    await store.open()
    case, _ = await store.create_case(new_case(), T0)
    await store.close()
    newer = len(MIGRATIONS) + 41
    conn = await asyncpg.connect(pg_fresh_dsn)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", newer)
    finally:
        await conn.close()

    refused = PostgresStore(pg_fresh_dsn)
    with pytest.raises(StoreError) as info:
        await refused.open()
    message = str(info.value)
    assert refused.where in message
    assert re.search(rf"\b{newer}\b", message), message
    assert re.search(rf"\b{len(MIGRATIONS)}\b", message), message
    # The refusal closed what it opened, and changed neither data nor schema history.
    with pytest.raises(StoreError, match="not open"):
        await refused.ping()
    assert await schema_versions(pg_fresh_dsn) == [*range(1, len(MIGRATIONS) + 1), newer]
    conn = await asyncpg.connect(pg_fresh_dsn)
    try:
        assert [r["id"] for r in await conn.fetch("SELECT id FROM cases")] == [case.id]
    finally:
        await conn.close()


# replicas


async def test_two_replicas_draining_with_claim_next_claim_each_case_once(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    created = [
        (await a.create_case(new_case(f"user{n}@example.com", priority=n % 3), at(n)))[0]
        for n in range(120)
    ]

    async def drain(store: PostgresStore, worker: str) -> list[Case]:
        claimed = []
        while (case := await store.claim_next(worker, at(1000), LEASE)) is not None:
            claimed.append(case)
        return claimed

    # several workers per replica, all at once
    drains = [drain(store, f"{name}-{n}") for name, store in (("a", a), ("b", b)) for n in range(4)]
    results = await asyncio.gather(*drains)

    claims = [case for result in results for case in result]
    counts = Counter(c.id for c in claims)
    assert [case_id for case_id, n in counts.items() if n > 1] == [], "claimed twice"
    assert set(counts) == {c.id for c in created}
    assert sum(1 for r in results if r) > 1, "one worker took everything: no race happened"
    for claimed in claims:
        assert (await b.get_case(claimed.id)).lease_owner == claimed.lease_owner


async def test_two_replicas_racing_for_each_case_claim_it_exactly_once(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    cases = [(await b.create_case(new_case(f"u{n}@example.com"), T0))[0] for n in range(40)]

    for case in cases:
        got = await asyncio.gather(
            *(
                store.claim_case(case.id, f"{name}-{n}", at(1), LEASE)
                for name, store in (("a", a), ("b", b))
                for n in range(3)
            )
        )
        winners = [g for g in got if g is not None]
        assert len(winners) == 1, f"{case.id} claimed by {len(winners)} workers"
        assert (await a.get_case(case.id)).lease_owner == winners[0].lease_owner


async def test_two_replicas_fire_each_timer_exactly_once(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    cases = [await contained(a, f"u{n}@example.com") for n in range(15)]
    for n, case in enumerate(cases):
        timers = [
            Timer(case_id=case.id, name=name, epoch=0, due_at=at(10 + n + i), closes_case=last)
            for i, (name, last) in enumerate((("idp", False), ("roles", False), ("all", True)))
        ]
        await (a if n % 2 else b).save_countdown(case.id, {"n": n}, 0, timers, at(2))

    async def fire_all(store: PostgresStore, worker: str) -> list[Timer]:
        fired = []
        while (timer := await store.claim_due_timer(worker, at(100))) is not None:
            fired.append(timer)
        return fired

    results = await asyncio.gather(
        *(fire_all(store, f"{name}-{n}") for name, store in (("a", a), ("b", b)) for n in range(4))
    )

    fired = Counter((t.case_id, t.name, t.epoch) for result in results for t in result)
    assert all(n == 1 for n in fired.values()), "a timer fired twice"
    assert len(fired) == 3 * len(cases)
    assert sum(1 for r in results if r) > 1, "one worker fired everything: no race happened"
    for case in cases:
        assert (await a.get_case(case.id)).status is CaseStatus.ACCESS_LAPSED
        events = await b.events(case.id)
        kinds = Counter(e.kind for e in events)
        assert kinds["milestone_reached"] == 3
        assert kinds["case_access_lapsed"] == 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert all(t.fired_at == at(100) for t in await a.timers(case.id))
    assert await a.next_timer_due() is None


async def test_replicas_appending_to_one_case_number_events_without_gaps(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    case, _ = await a.create_case(new_case(), T0)

    appended = await asyncio.gather(
        *(
            (a if n % 2 else b).append_event(case.id, "note", at(n), step_id=None, data={"n": n})
            for n in range(40)
        )
    )

    assert sorted(e.seq for e in appended) == list(range(2, 42))
    events = await a.events(case.id)
    assert [e.seq for e in events] == list(range(1, 42))
    assert {e.data["n"]: e.seq for e in events[1:]} == {e.data["n"]: e.seq for e in appended}


async def test_replicas_creating_with_one_idempotency_key_create_one_case(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = replicas
    results = await asyncio.gather(
        *((a if n % 2 else b).create_case(new_case(key="hr:E1"), at(n)) for n in range(10))
    )
    assert sum(created for _, created in results) == 1
    assert len({case.id for case, _ in results}) == 1
    assert len(await a.list_cases()) == 1
    assert [e.kind for e in await b.events(results[0][0].id)] == ["case_created"]


async def test_one_store_serves_concurrent_coroutines(pg_fresh_dsn: str) -> None:
    store = PostgresStore(pg_fresh_dsn, max_connections=3)
    await store.open()
    try:
        created = await asyncio.gather(
            *(store.create_case(new_case(f"u{n}@example.com"), T0) for n in range(20))
        )
        assert len({case.id for case, _ in created}) == 20
    finally:
        await store.close()


# work notifications


async def test_wait_for_work_wakes_on_a_case_created_by_another_replica(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    waiter, writer = replicas
    assert await waiter.wait_for_work(0.05) is False

    started = time.monotonic()
    waiting = asyncio.create_task(waiter.wait_for_work(10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await writer.create_case(new_case(), T0)
    assert await waiting is True
    assert time.monotonic() - started < 2

    # consumed: the next wait times out
    started = time.monotonic()
    assert await waiter.wait_for_work(0.3) is False
    assert time.monotonic() - started >= 0.29


async def test_wait_for_work_keeps_a_notification_that_came_before_the_call(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    waiter, writer = replicas
    assert await waiter.wait_for_work(0) is False
    await writer.create_case(new_case("a@example.com"), T0)
    await writer.create_case(new_case("b@example.com"), T0)
    # A round trip on the listening connection: PostgreSQL delivers what was committed
    # before it ends, so both notifications are in before anyone waits (else a loaded
    # machine may deliver the second after the first wait, and that is not the point).
    await waiter.connector._listener.fetchval("SELECT 1")
    # the notifications arrived without anyone waiting, and are kept (as one)
    assert await waiter.wait_for_work(5) is True
    assert await waiter.wait_for_work(0.1) is False


async def test_what_makes_work_notifies_and_what_does_not(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    waiter, writer = replicas

    async def notifies(action: Callable[[], Awaitable[object]]) -> bool:
        assert await waiter.wait_for_work(0) is False
        await action()
        # A notification is delivered at commit, long before this times out; one that
        # came late would fail the next call's first assertion.
        return await waiter.wait_for_work(0.3)

    pending, _ = await writer.create_case(new_case("p@example.com", run_after=at(60)), T0)
    await waiter.wait_for_work(1)
    assert await notifies(lambda: writer.reschedule_case(pending.id, at(30), at(1)))

    held = await writer.claim_case(pending.id, "w1", at(31), LEASE)
    assert held is not None
    assert not await notifies(lambda: writer.heartbeat(held.id, "w1", at(32), LEASE))
    await writer.release_case(held.id, "w1", CaseStatus.WAITING, at(33))
    assert await notifies(lambda: writer.resume_case(held.id, at(34)))
    # resuming a case that is not waiting or halted changes nothing: no wake-up
    assert not await notifies(lambda: writer.resume_case(held.id, at(35)))

    case = await contained(writer, "c@example.com")
    await waiter.wait_for_work(1)
    timer = Timer(case_id=case.id, name="all", epoch=0, due_at=at(90), closes_case=True)
    assert await notifies(lambda: writer.save_countdown(case.id, {}, 0, [timer], at(40)))
    # an idempotent replay creates nothing and wakes no one
    await writer.create_case(new_case("k@example.com", key="hr:k"), T0)
    await waiter.wait_for_work(1)
    assert not await notifies(lambda: writer.create_case(new_case(key="hr:k"), T0))


async def test_wait_for_work_listens_again_after_losing_its_connection(
    replicas: tuple[PostgresStore, PostgresStore], pg_fresh_dsn: str
) -> None:
    waiter, writer = replicas
    admin = await asyncpg.connect(pg_fresh_dsn)
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    finally:
        await admin.close()
    assert ended == 2  # both replicas' listeners

    # woken by the loss, then it listens again: True (it may have missed something)
    assert await waiter.wait_for_work(5) is True
    for _ in range(3):
        if await waiter.wait_for_work(0.2) is False:
            break
    waiting = asyncio.create_task(waiter.wait_for_work(10))
    await asyncio.sleep(0.05)
    await writer.create_case(new_case(), T0)
    assert await waiting is True


@pytest.mark.parametrize(
    "failure",
    [
        # a connection the server's restart left mid-protocol (seen in a chaos run)
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
    ],
    ids=type,
)
async def test_a_listener_lost_while_it_starts_to_listen_is_an_outage(
    replicas: tuple[PostgresStore, PostgresStore],
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    """The worker rides out an outage (StoreUnavailable); any other error ends it."""
    waiter, _ = replicas
    await waiter.connector._listener.close()

    async def add_listener(*_: object) -> None:
        raise failure

    monkeypatch.setattr(asyncpg.Connection, "add_listener", add_listener)
    with pytest.raises(StoreUnavailable, match="unreachable while starting to listen"):
        await waiter.wait_for_work(1)
    monkeypatch.undo()
    assert await waiter.wait_for_work(1) is True  # listening again once it can


# failures


async def test_an_unreachable_server_is_a_store_error_without_the_password(
    pg_fresh_dsn: str, unused_tcp_port: int
) -> None:
    password = "s3cr3t-Pa55w0rd"
    parts = urlsplit(pg_fresh_dsn)
    dsn = urlunsplit(parts._replace(netloc=f"offboard:{password}@127.0.0.1:{unused_tcp_port}"))
    store = PostgresStore(dsn, connect_timeout=5)

    with pytest.raises(StoreError) as info:
        await store.open()

    message = str(info.value)
    assert "unreachable" in message
    assert f"127.0.0.1:{unused_tcp_port}" in message
    assert "offboard@" in message
    everything = "".join(traceback.format_exception(info.value))
    assert password not in everything
    assert password not in repr(store)
    with pytest.raises(StoreError, match="not open"):
        await store.get_case("c-x")


async def test_a_missing_database_is_a_store_error_without_the_password(
    pg_fresh_dsn: str,
) -> None:
    password = "another-S3cret"
    dsn = with_password(with_database(pg_fresh_dsn, "no_such_database"), password)
    with pytest.raises(StoreError) as info:
        await PostgresStore(dsn).open()
    message = str(info.value)
    assert "refused the connection" in message
    assert "no_such_database" in message
    assert password not in "".join(traceback.format_exception(info.value))


async def test_a_connection_lost_mid_query_is_a_store_error_and_the_store_recovers(
    pg_fresh_dsn: str,
) -> None:
    password = "pw-in-dsn-9"  # trust authentication ignores it; it must still not show
    store = PostgresStore(with_password(pg_fresh_dsn, password))
    await store.open()
    admin = await asyncpg.connect(pg_fresh_dsn)
    try:
        case, _ = await store.create_case(new_case(), T0)
        # Hold the case row so the store's claim waits on it, then end that session.
        holding = admin.transaction()
        await holding.start()
        await admin.execute("SELECT 1 FROM cases WHERE id = $1 FOR UPDATE", case.id)
        claim = asyncio.create_task(store.claim_case(case.id, "w1", at(1), LEASE))
        for _ in range(200):
            waiting = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert len(waiting) == 1
        await admin.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])

        with pytest.raises(StoreError) as info:
            await claim
        assert "unreachable" in str(info.value)
        assert store.where in str(info.value)
        assert password not in "".join(traceback.format_exception(info.value))
        await holding.rollback()

        # the pool replaces the dead connection
        assert await store.get_case(case.id) == case
        assert await store.claim_case(case.id, "w1", at(1), LEASE) is not None
    finally:
        await admin.close()
        await store.close()


async def test_a_case_that_does_not_exist_is_refused_with_a_store_error(
    pg_fresh_dsn: str,
) -> None:
    store = PostgresStore(pg_fresh_dsn)
    await store.open()
    try:
        with pytest.raises(StoreError):
            await store.ledger_intent("k", "c-missing", "s", "op", T0)
        with pytest.raises(StoreError):
            await store.append_event("c-missing", "note", T0, step_id=None, data={})
    finally:
        await store.close()


async def test_replicas_admitting_together_create_one_case_per_delivery_and_person(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    """An HR system that retries against the other replica, or sends two deliveries
    for one person at once: exactly one case per person, one record per delivery."""
    a, b = replicas

    def arrival(key: str, subject: str) -> Arrival:
        return Arrival(
            key=key,
            case=new_case(subject),
            answer=lambda case: {"status": 202, "body": {"case_id": case.id}},
        )

    for round_ in range(20):
        same = f"hook:same:{round_}"
        person = f"p{round_}@example.com"
        first, second, third, fourth = await asyncio.gather(
            a.admit([arrival(same, person)], at(round_)),
            b.admit([arrival(same, person)], at(round_)),
            a.admit([arrival(f"hook:other-a:{round_}", person)], at(round_)),
            b.admit([arrival(f"hook:other-b:{round_}", person)], at(round_)),
        )
        admissions = [*first, *second, *third, *fourth]
        assert sum(1 for x in admissions if x.created) == 1, admissions
        made = next(x for x in admissions if x.created)
        assert made.case is not None
        # the same delivery, if it made the case, is replayed by the other replica
        if any(x.created for x in (*first, *second)):
            (replayed,) = [x for x in (*first, *second) if not x.created]
            assert replayed.delivery == made.delivery and replayed.case is None
        # every other admission names the one case (open) or its delivery (replayed)
        for x in admissions:
            assert (x.case is None or x.case.id == made.case.id) and (
                x.delivery is None or x.delivery.case_id == made.case.id
            )
    cases = await a.list_cases()
    assert len(cases) == 20
    assert len({c.subject for c in cases}) == 20
