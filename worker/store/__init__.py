"""Durable state. `open_store` picks the backend from configuration."""

from worker.store.base import Store
from worker.store.postgres import PostgresStore
from worker.store.sqlite import SqliteStore

__all__ = ["PostgresStore", "SqliteStore", "Store"]
