"""Durable state: the `Store` protocol (base), its one implementation over named
queries (manager, queries.sql) and the two databases it runs on (sqlite, postgres)."""

from worker.store.base import Store
from worker.store.postgres import PostgresStore
from worker.store.sqlite import SqliteStore

__all__ = ["PostgresStore", "SqliteStore", "Store"]
