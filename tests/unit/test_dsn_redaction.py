"""`worker.logging.describe_dsn` and `dsn_secrets`: where a DSN points, and its password
in every form a message could show it (the PostgreSQL store's errors use both)."""

from __future__ import annotations

from worker.logging import describe_dsn, dsn_secrets


def test_describe_dsn_keeps_user_hosts_and_database_not_the_password() -> None:
    dsn = "postgresql://app:s%40cret@db1:5432,db2/offboard?host=/run/pg&password=other"
    assert describe_dsn(dsn) == "postgresql://app@db1:5432,db2/offboard?host=/run/pg"
    assert describe_dsn("host=db password=x") == "<a DSN that is not a postgresql:// URL>"


def test_dsn_secrets_are_the_passwords_as_written_and_decoded_longest_first() -> None:
    dsn = "postgres://app:s%40cret@db/offboard?password=other"
    assert dsn_secrets(dsn) == ["s%40cret", "s@cret", "other"]
    assert dsn_secrets("host=db password='hunter22' user=app") == ["hunter22"]
    assert dsn_secrets("postgresql://app@db/offboard") == []
