"""A database upgraded from any earlier schema version has exactly the schema of a
fresh install, on both backends (the migrations may be rewritten, never their effect).
`dump_*` is also what to diff before and after rewriting a migration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from tests.pg import with_database
from worker.domain import CaseStatus, NewCase, PlannedStep
from worker.store import postgres, sqlite
from worker.store.base import Store
from worker.store.manager import ONE_ACTIVE_MIGRATION

#: every object of the public schema, as PostgreSQL describes it
PG_SCHEMA = """
SELECT 'column', c.relname || '.' || a.attnum || ' ' || a.attname
       || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || COALESCE(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity::text <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'function', proname || ' ' || pg_get_functiondef(oid) FROM pg_proc
WHERE pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'sequence', relname FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relkind = 'S'
ORDER BY 1, 2
"""


async def dump_sqlite(path: Path) -> list[Any]:
    async with aiosqlite.connect(path) as db:
        rows = await db.execute_fetchall(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        )
    return [tuple(row) for row in rows]


async def dump_postgres(dsn: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(PG_SCHEMA)]
    finally:
        await conn.close()


@pytest.mark.parametrize("start", range(len(sqlite.MIGRATIONS)))
async def test_sqlite_upgrade_ends_at_the_fresh_schema(
    start: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = sqlite.SqliteStore(tmp_path / "fresh.db")
    await fresh.open()
    await fresh.close()
    old = tmp_path / "old.db"
    if start:
        with monkeypatch.context() as patch:
            patch.setattr(sqlite, "MIGRATIONS", sqlite.MIGRATIONS[:start])
            store = sqlite.SqliteStore(old)
            await store.open()
            await store.close()
    store = sqlite.SqliteStore(old)
    await store.open()
    await store.close()
    assert await dump_sqlite(old) == await dump_sqlite(tmp_path / "fresh.db")


@pytest.mark.parametrize("start", range(len(postgres.MIGRATIONS)))
async def test_postgres_upgrade_ends_at_the_fresh_schema(
    start: int, pg_fresh_dsn: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = pg_fresh_dsn
    if start:
        with monkeypatch.context() as patch:
            patch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:start])
            store = postgres.PostgresStore(old)
            await store.open()
            await store.close()
    store = postgres.PostgresStore(old)
    await store.open()
    await store.close()
    # the fresh install: a second database of the same cluster
    admin = await asyncpg.connect(pg_dsn)
    name = f"{old.rsplit('/', 1)[1]}_fresh"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        fresh = postgres.PostgresStore(with_database(pg_dsn, name))
        await fresh.open()
        await fresh.close()
        assert await dump_postgres(old) == await dump_postgres(with_database(pg_dsn, name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _before(migrations: tuple[Any, ...], migration: Any) -> tuple[Any, ...]:
    """The migrations up to, not including, `migration`."""
    return migrations[: migrations.index(migration)]


def _new(subject: str, playbook: str, priority: int) -> NewCase:
    steps = (PlannedStep(id="a", action="idp.deactivate_user", verify="idp.user_status"),)
    return NewCase(playbook=playbook, subject=subject, steps=steps, trigger={}, priority=priority)


async def _seed_duplicates(store: Store) -> dict[str, str]:
    """Before the one-active-case index a person could hold several active cases (one
    per playbook, or a race between replicas)."""
    await store.open()
    try:
        leaver, _ = await store.create_case(_new("dup@example.com", "leaver", 50), T0)
        later = T0 + timedelta(seconds=1)
        incident, _ = await store.create_case(_new("dup@example.com", "incident", 100), later)
        halted, _ = await store.create_case(_new("dup@example.com", "leaver", 50), later)
        await store.claim_case(halted.id, "w", later, 30)
        await store.release_case(halted.id, "w", CaseStatus.HALTED, later)
        other, _ = await store.create_case(_new("other@example.com", "leaver", 50), T0)
    finally:
        await store.close()
    return {"leaver": leaver.id, "incident": incident.id, "halted": halted.id, "other": other.id}


async def _assert_one_active_case_kept(store: Store, ids: dict[str, str]) -> None:
    """The upgrade keeps the highest priority, then the oldest, and closes the others
    naming the one kept; another person's case is untouched."""
    await store.open()
    try:
        cases = {c.id: c for c in await store.list_cases()}
        assert cases[ids["incident"]].status is CaseStatus.PENDING
        assert cases[ids["other"]].status is CaseStatus.PENDING
        for closed in ("leaver", "halted"):
            assert cases[ids[closed]].status is CaseStatus.CANCELLED
            assert f"case {ids['incident']} is kept" in (cases[ids[closed]].halt_reason or "")
        found = await store.find_open_case("dup@example.com")
        assert found is not None and found.id == ids["incident"]
        # and from now on the store refuses a second active case for the person
        again, created = await store.create_case(_new("dup@example.com", "leaver", 50), T0)
        assert created is False and again.id == ids["incident"]
    finally:
        await store.close()


async def test_sqlite_upgrade_keeps_one_active_case_per_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dup.db"
    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "MIGRATIONS", _before(sqlite.MIGRATIONS, ONE_ACTIVE_MIGRATION))
        ids = await _seed_duplicates(sqlite.SqliteStore(path))
    await _assert_one_active_case_kept(sqlite.SqliteStore(path), ids)


async def test_postgres_upgrade_keeps_one_active_case_per_person(
    pg_fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(postgres, "MIGRATIONS", _before(postgres.MIGRATIONS, ONE_ACTIVE_MIGRATION))
        ids = await _seed_duplicates(postgres.PostgresStore(pg_fresh_dsn))
    await _assert_one_active_case_kept(postgres.PostgresStore(pg_fresh_dsn), ids)


#: countdown documents as the engine wrote them before the all-lapsed time had a column
COUNTDOWNS = {
    "running": {"milestones": [{"name": "all-lapsed", "at": "2026-01-01T00:01:40.000Z"}]},
    "other": {"milestones": [{"name": "roles", "at": "2026-01-01T00:01:40.000Z"}]},
}


def _before_column(migrations: tuple[Any, ...]) -> tuple[Any, ...]:
    """The migrations before the one adding the all-lapsed column."""
    adds = next(m for m in migrations if "ADD COLUMN all_lapsed_at" in str(m))
    return _before(migrations, adds)


async def _seed_countdowns(store: Store, write: Any) -> None:
    """Cases with countdown documents saved before the upgrade: written as the old
    schema holds them (`write(case_id, document)`), since today's store would also
    write the column the upgrade adds."""
    await store.open()
    try:
        for name, document in COUNTDOWNS.items():
            case, _ = await store.create_case(_new(f"{name}@example.com", "leaver", 50), T0)
            await write(case.id, json.dumps(document))
        await store.create_case(_new("none@example.com", "leaver", 50), T0)
    finally:
        await store.close()


async def _assert_countdowns_counted(store: Store) -> None:
    await store.open()
    try:
        assert await store.running_countdowns(T0 + timedelta(seconds=10)) == 1
        assert await store.running_countdowns(T0 + timedelta(seconds=100)) == 0
    finally:
        await store.close()


async def test_sqlite_upgrade_counts_countdowns_saved_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "countdowns.db"

    async def write(case_id: str, document: str) -> None:
        async with aiosqlite.connect(path) as db:
            await db.execute("UPDATE cases SET countdown = ? WHERE id = ?", (document, case_id))
            await db.commit()

    with monkeypatch.context() as patch:
        patch.setattr(sqlite, "MIGRATIONS", _before_column(sqlite.MIGRATIONS))
        await _seed_countdowns(sqlite.SqliteStore(path), write)
    await _assert_countdowns_counted(sqlite.SqliteStore(path))


async def test_postgres_upgrade_counts_countdowns_saved_before_it(
    pg_fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def write(case_id: str, document: str) -> None:
        conn = await asyncpg.connect(pg_fresh_dsn)
        try:
            await conn.execute(
                "UPDATE cases SET countdown = $1::jsonb WHERE id = $2", document, case_id
            )
        finally:
            await conn.close()

    with monkeypatch.context() as patch:
        patch.setattr(postgres, "MIGRATIONS", _before_column(postgres.MIGRATIONS))
        await _seed_countdowns(postgres.PostgresStore(pg_fresh_dsn), write)
    await _assert_countdowns_counted(postgres.PostgresStore(pg_fresh_dsn))
