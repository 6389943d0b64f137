"""A database upgraded from any earlier schema version has exactly the schema of a
fresh install, on both backends (the migrations may be rewritten, never their effect).
`dump_*` is also what to diff before and after rewriting a migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from tests.pg import with_database
from worker.store import postgres, sqlite

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
