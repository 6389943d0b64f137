"""PostgreSQL killed (`kill -9` of the postmaster) and started again, twice, under a
running `offboard worker`: the worker does not exit, says it lost the database and
got it back, and finishes every case (the chaos harness does the same with three
replicas and faults: bench/chaos.py --pg-restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.cli import environment, start, write_config
from tests.conftest import fast_settings
from tests.flows import CONTAINMENT_ORDER
from tests.pg import Cluster, kill_cluster, restart_cluster, start_cluster, stop_cluster
from worker.cases import open_case
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.errors import StoreUnavailable
from worker.runtime import open_runtime
from worker.sandbox import Sandbox

DSN_ENV = "OFFBOARD_TEST_PG_DSN"
CASES = 6


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A cluster of this test's own: it is killed and restarted."""
    started = start_cluster(durable=True)  # a commit acknowledged survives the kill
    try:
        yield started
    finally:
        stop_cluster(started)


@pytest.mark.timeout(180)
async def test_the_worker_rides_out_two_postgres_restarts_and_finishes_its_cases(
    cluster: Cluster, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, cluster.dsn())
    data = fast_settings(sandbox.config_data(sqlite_path=str(tmp_path / "unused.db")))
    data["store"] = {"postgres": {"env": DSN_ENV}}
    data["worker"]["lease_seconds"] = 3
    config_path = write_config(tmp_path / "offboard.yaml", data)
    users = [sandbox.seed_leaver(f"leaver{i}@example.com") for i in range(CASES)]
    env = environment({**sandbox.environment(), DSN_ENV: cluster.dsn()})
    log_path = tmp_path / "worker.log"

    async with open_runtime(parse_config(data, "test"), base_dir=tmp_path) as runtime:
        playbook = runtime.playbook("leaver")
        cases = [
            (await open_case(runtime, playbook, u.login, {"source": "test"}))[0]
            for u in users[: CASES // 2]
        ]
        with log_path.open("wb") as log:
            worker = await start(["--config", str(config_path), "worker"], env, tmp_path, log)
            try:
                for _ in range(2):
                    # mid-run: kill the database once the worker has begun a deactivation
                    seen = sandbox.audit.calls["okta.deactivate"]
                    for _ in range(1500):
                        if sandbox.audit.calls["okta.deactivate"] > seen:
                            break
                        await asyncio.sleep(0.01)
                    await asyncio.to_thread(kill_cluster, cluster)
                    await asyncio.sleep(1.0)  # down a while: the worker tries and waits
                    assert worker.returncode is None, log_path.read_text()
                    await asyncio.to_thread(restart_cluster, cluster)
                # cases admitted after the restarts run too
                for u in users[CASES // 2 :]:
                    cases.append((await open_case(runtime, playbook, u.login, {}))[0])

                async def statuses() -> list[CaseStatus]:
                    return [(await runtime.store.get_case(c.id)).status for c in cases]

                for _ in range(6000):
                    # the test's own pool meets the restart too: a failed look looks again
                    with contextlib.suppress(StoreUnavailable):
                        if all(s is CaseStatus.WAITING for s in await statuses()):
                            break
                    await asyncio.sleep(0.02)
                assert all(s is CaseStatus.WAITING for s in await statuses()), log_path.read_text()[
                    -6000:
                ]
                assert worker.returncode is None, log_path.read_text()[-6000:]
            finally:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(worker.wait(), 60)
    text = log_path.read_text()
    assert worker.returncode == 0, text[-6000:]
    assert "store_unavailable" in text and "store_available" in text
    assert "Traceback" not in text
    # every automated containment step ran for every person (the portal waits for a human)
    for action in CONTAINMENT_ORDER[:3]:
        assert len({e.target for e in sandbox.audit.entries(action=action)}) == CASES, action


@pytest.mark.timeout(120)
async def test_a_worker_started_while_postgres_is_down_waits_for_it(
    cluster: Cluster, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A replica restarted during a restart or a failover waits (up to a minute) for
    the database rather than exit; a refused login or a bad DSN still exit 2 at once."""
    data = fast_settings(sandbox.config_data(sqlite_path=str(tmp_path / "unused.db")))
    data["store"] = {"postgres": {"env": DSN_ENV}}
    config_path = write_config(tmp_path / "offboard.yaml", data)
    env = environment({**sandbox.environment(), DSN_ENV: cluster.dsn()})
    log_path = tmp_path / "worker.log"
    await asyncio.to_thread(kill_cluster, cluster)
    with log_path.open("wb") as log:
        worker = await start(["--config", str(config_path), "worker"], env, tmp_path, log)
        try:
            for _ in range(1000):
                if "store_unavailable_at_start" in log_path.read_text():
                    break
                await asyncio.sleep(0.01)
            assert worker.returncode is None, log_path.read_text()
            await asyncio.to_thread(restart_cluster, cluster)
            for _ in range(3000):
                if "worker_started" in log_path.read_text() or worker.returncode is not None:
                    break
                await asyncio.sleep(0.01)
            assert "worker_started" in log_path.read_text(), log_path.read_text()
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 60)
    assert worker.returncode == 0, log_path.read_text()
