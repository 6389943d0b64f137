"""A throwaway PostgreSQL 15 cluster for tests.

`postgres_cluster()` starts one in a new temporary directory (initdb, then pg_ctl),
listening on 127.0.0.1 only, on a free port, with trust authentication for loopback
TCP and the directory's Unix socket only, and fsync off: it is fast and disposable.
It stops the cluster and removes the directory on exit.

Two pytest fixtures use it (import both into tests/conftest.py):

- `pg_dsn` (session): the DSN of a database `offboard` in the session's cluster.
- `pg_fresh_dsn` (function): the DSN of a new, empty database made for this test
  only (CREATE DATABASE ... TEMPLATE template0 STRATEGY FILE_COPY), dropped after it.

The server binaries come from /usr/lib/postgresql/15/bin (Debian/Ubuntu's
`postgresql-15`) or from the directory in OFFBOARD_PG_BIN. initdb refuses to run
as root, so under root every PostgreSQL program runs as the `postgres` OS user,
which then owns the temporary directory. Missing binaries fail the tests loudly:
they are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

PG_BIN_ENV = "OFFBOARD_PG_BIN"
DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
DATABASE = "offboard"
#: when TMPDIR is too long for a socket path or closed to `postgres`; mkdtemp makes a
#: private directory inside it, so a shared /tmp is safe here
FALLBACK_TEMP = "/tmp"  # noqa: S108
#: Unix socket paths are limited to 107 bytes; keep the directory well inside that.
_MAX_SOCKET_DIR = 80


class PostgresUnavailable(RuntimeError):
    """The test cluster cannot be started; the message says what to install or fix."""


@dataclass(frozen=True)
class Cluster:
    root: Path
    port: int
    bin_dir: Path
    database: str
    #: seconds from initdb to accepting connections
    startup_seconds: float
    #: commits acknowledged only once in the WAL: they survive a `kill -9` of the server
    durable: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database or self.database}"


def pg_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres; PostgresUnavailable if absent."""
    bin_dir = Path(os.environ.get(PG_BIN_ENV) or DEFAULT_PG_BIN)
    missing = [
        name
        for name in ("initdb", "pg_ctl", "postgres", "psql")
        if not os.access(bin_dir / name, os.X_OK)
    ]
    if missing:
        raise PostgresUnavailable(
            f"PostgreSQL 15 server binaries not found: {', '.join(missing)} missing in "
            f"{bin_dir}. Install them (Debian/Ubuntu: `apt-get install postgresql-15`, "
            f"which puts them in {DEFAULT_PG_BIN}) or point {PG_BIN_ENV} at the directory "
            "holding initdb, pg_ctl, postgres and psql. The PostgreSQL store tests never skip."
        )
    return bin_dir


def _run_as() -> dict[str, Any]:
    """subprocess arguments that run PostgreSQL's programs as the `postgres` user under
    root (initdb refuses root), and as ourselves otherwise."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            "running as root, but there is no `postgres` OS user to run the test cluster "
            "as (initdb refuses root): install postgresql-15, which creates it, or "
            "`useradd --system postgres`"
        ) from None
    env = {**os.environ, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


def _owner_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    user = pwd.getpwnam(SUPERUSER)
    return user.pw_uid, user.pw_gid


def _usable_temp_base() -> str:
    """A base directory the cluster user can reach, short enough for a socket path."""
    base = tempfile.gettempdir()
    if len(base) > _MAX_SOCKET_DIR - 30:
        return FALLBACK_TEMP
    if os.geteuid() == 0:
        # postgres must be able to traverse every ancestor of its directory.
        for parent in (Path(base), *Path(base).parents):
            if not parent.stat().st_mode & stat.S_IXOTH:
                return FALLBACK_TEMP
    return base


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str], *, cwd: Path, what: str, log: Path | None = None) -> None:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, **_run_as()
    )
    if result.returncode != 0:
        server_log = ""
        if log is not None and log.exists():
            server_log = "\n--- server log ---\n" + log.read_text(errors="replace")[-4000:]
        raise PostgresUnavailable(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout}{result.stderr}{server_log}"
        )


def start_cluster(database: str = DATABASE, *, durable: bool = False) -> Cluster:
    """initdb and start a cluster with an empty `database`; the caller must
    `stop_cluster` it. `durable`: synchronous_commit on, for a cluster that is killed
    (`kill_cluster`): off, a commit already acknowledged may be lost in the crash."""
    bin_dir = pg_bin_dir()
    _run_as()  # fails early, before making anything, without a postgres user under root
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="offboard-pg-", dir=_usable_temp_base()))
    try:
        os.chown(root, *_owner_ids())
        data = root / "data"
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=root,
            what="initdb",
        )
        # Only the cluster's own socket and loopback TCP, no password: a test server.
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n", encoding="utf-8"
        )
        log = root / "server.log"
        last_error: PostgresUnavailable | None = None
        for _ in range(5):  # another process may take the free port before we bind it
            port = _free_port()
            try:
                _pg_ctl_start(bin_dir, root, port, durable=durable)
            except PostgresUnavailable as exc:
                last_error = exc
                if "could not bind" not in str(exc) and "already in use" not in str(exc):
                    raise
                continue
            _run(
                [
                    str(bin_dir / "psql"),
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    str(root),
                    "-p",
                    str(port),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                    "-c",
                    f'CREATE DATABASE "{database}"',
                ],
                cwd=root,
                what="CREATE DATABASE",
                log=log,
            )
            return Cluster(
                root=root,
                port=port,
                bin_dir=bin_dir,
                database=database,
                startup_seconds=time.monotonic() - started,
                durable=durable,
            )
        assert last_error is not None
        raise last_error
    except BaseException:
        _stop(bin_dir, root)
        raise


def _pg_ctl_start(bin_dir: Path, root: Path, port: int, *, durable: bool) -> None:
    options = " ".join(
        f"-c {setting}"
        for setting in (
            "listen_addresses=127.0.0.1",
            f"port={port}",
            f"unix_socket_directories={root}",
            "fsync=off",
            f"synchronous_commit={'on' if durable else 'off'}",
            "full_page_writes=off",
            "max_connections=200",
        )
    )
    log = root / "server.log"
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(root / "data"),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        cwd=root,
        what="pg_ctl start",
        log=log,
    )


def kill_cluster(cluster: Cluster) -> int:
    """`kill -9` of the postmaster (by the pid in its own postmaster.pid), as a crash
    or an OOM kill does; waits until nothing accepts connections on its port. The pid."""
    pid = int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    for _ in range(600):
        with socket.socket() as probe:
            probe.settimeout(0.1)
            if probe.connect_ex(("127.0.0.1", cluster.port)) != 0:
                return pid
        time.sleep(0.01)
    raise PostgresUnavailable(f"PostgreSQL {pid} still accepts connections after SIGKILL")


def restart_cluster(cluster: Cluster) -> None:
    """Start a killed cluster again on its port (crash recovery runs first). The
    orphaned backends of a killed postmaster may hold its shared memory a moment."""
    last: PostgresUnavailable | None = None
    for _ in range(50):
        try:
            _pg_ctl_start(cluster.bin_dir, cluster.root, cluster.port, durable=cluster.durable)
            return
        except PostgresUnavailable as exc:
            last = exc
            time.sleep(0.1)
    assert last is not None
    raise last


def stop_cluster(cluster: Cluster) -> None:
    """Stop the server at once (it is thrown away) and remove its directory."""
    _stop(cluster.bin_dir, cluster.root)


def _stop(bin_dir: Path, root: Path) -> None:
    data = root / "data"
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        result = subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            cwd=root,
            capture_output=True,
            timeout=60,
            check=False,
            **_run_as(),
        )
        if result.returncode != 0 and pid_file.exists():
            # pg_ctl could not stop it: end that postmaster (ours, by its pid) directly.
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGQUIT)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """A running throwaway cluster with the database `offboard`, removed afterwards."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of the database `offboard` in this session's throwaway cluster (started on
    first use, stopped and removed at the end of the session)."""
    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        unavailable = str(exc)
    else:
        unavailable = ""
    if unavailable:
        pytest.fail(unavailable, pytrace=False)  # loudly, for every test that needs it
    try:
        yield cluster.dsn()
    finally:
        stop_cluster(cluster)


def with_database(dsn: str, database: str) -> str:
    """The same DSN naming another database of that cluster."""
    return dsn.rsplit("/", 1)[0] + "/" + database


@pytest.fixture
async def pg_fresh_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """DSN of a new, empty database for this test alone; dropped after it."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
    finally:
        await admin.close()
    try:
        yield with_database(pg_dsn, name)
    finally:
        admin = await asyncpg.connect(pg_dsn)
        try:
            # FORCE: a test that failed may have left connections behind.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
