"""Every bench script runs, at a tiny size, so none can rot. Nothing here asserts a
duration: the figures are checked for shape and for what must hold at any speed
(no case halted, one case per delivery, every person processed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

#: beyond each bench run's own 300 s limit, so that it speaks first
pytestmark = pytest.mark.timeout(360)


def run_bench(module: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    output = tmp_path / f"{module}.json"
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, f"--output={output}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    assert result["bench"] == module
    assert result["machine"]["cpus"] >= 1
    return result


def test_mass_offboarding_with_an_incident(tmp_path: Path) -> None:
    result = run_bench(
        "mass_offboard", tmp_path, "--people=20", "--scale=20", "--incidents=1", "--latency=0.01"
    )
    figures = result["figures"]
    assert figures["halted"] == 0
    assert figures["calls_per_person"]["okta"] <= 5.0
    assert len(figures["incident_to_idp_deactivated_s"]) == 1
    assert figures["bound_seconds"]["identity_center"] >= 0
    assert figures["ratio_to_bound"] is None or figures["ratio_to_bound"] > 0


def test_mass_offboarding_by_replicas_sharing_a_postgresql_store(tmp_path: Path) -> None:
    result = run_bench(
        "mass_offboard",
        tmp_path,
        "--people=12",
        "--scale=20",
        "--incidents=1",
        "--latency=0.01",
        "--store=postgres",
        "--replicas=2",
    )
    figures = result["figures"]
    assert result["parameters"]["replicas"] == 2
    assert figures["halted"] == 0
    assert len(figures["incident_to_idp_deactivated_s"]) == 1
    # the bound per Okta endpoint group: lookups, lifecycle, sessions apart
    assert {"okta:user-read", "okta:user-write", "okta:other"} <= set(figures["bound_seconds"])


def test_naive_baseline_compares_with_a_worker_result(tmp_path: Path) -> None:
    worker = tmp_path / "worker.json"
    worker.write_text(
        json.dumps({"parameters": {"people": 4, "scale": 20.0}, "figures": {"total_seconds": 1}}),
        encoding="utf-8",
    )
    result = run_bench(
        "naive_baseline",
        tmp_path,
        "--people=4",
        "--scale=20",
        "--latency=0.01",
        f"--worker-result={worker}",
    )
    figures = result["figures"]
    assert figures["calls"] >= 4 * 9  # every step of every person was done
    assert figures["same_n_and_scale"] is True
    assert figures["speedup"] == pytest.approx(figures["total_seconds"], rel=0.01)
    assert figures["ratio_to_bound"] > 0


def test_intake_against_serve_and_the_bare_handler(tmp_path: Path) -> None:
    result = run_bench("intake", tmp_path, "--count=300", "--concurrency=8", "--warmup=50")
    figures = result["figures"]
    assert figures["one_case_per_delivery"] is True
    assert figures["offboard_serve"]["statuses"] == {"202": 300}
    assert figures["bare_aiohttp"]["statuses"] == {"202": 300}
    assert figures["ratio_to_bare"] > 0


def test_worker_overhead(tmp_path: Path) -> None:
    result = run_bench("overhead", tmp_path, "--count=12", "--warmup=2")
    measured = result["figures"]["accepted_to_deactivation_request"]
    assert measured["n"] == 10
    assert 0 < measured["p50_ms"] <= measured["p99_ms"]
    # the handler's accepted line comes after the admission's transaction began
    accepted = result["figures"]["trigger_accepted_to_deactivation_request"]
    assert accepted["n"] == 10
    assert 0 < accepted["p50_ms"] < measured["p50_ms"]


def test_memory_with_open_countdowns(tmp_path: Path) -> None:
    result = run_bench("memory", tmp_path, "--cases=30", "--requests=2")
    figures = result["figures"]
    assert figures["open_countdowns"] == 30
    assert set(figures["stages"]) >= {"started", "metrics_3", "case_list", "status_page"}
    assert figures["peak_rss_mb"] > 0
    assert {name: s["n"] for name, s in figures["latency"].items()} == {
        "metrics": 2,
        "ui": 2,
        "cases": 2,
    }


def test_memory_with_open_countdowns_on_postgresql(tmp_path: Path) -> None:
    result = run_bench("memory", tmp_path, "--cases=5", "--requests=1", "--store=postgres")
    figures = result["figures"]
    assert result["parameters"]["store"] == "postgres"
    assert figures["open_countdowns"] == 5
    assert figures["latency"]["metrics"]["n"] == 1


def test_incident_deny_without_an_operator(tmp_path: Path) -> None:
    result = run_bench("incident_deny", tmp_path, "--count=2")
    figures = result["figures"]
    assert figures["operator_answers"] == 0
    assert figures["trigger_to_deny_provisioned"]["n"] == 2
    assert figures["permission_sets_denied_per_person"]["min"] >= 1


def test_identity_center_calls_over_the_first_hour(tmp_path: Path) -> None:
    result = run_bench("reread_calls", tmp_path, "--people=4")
    figures = result["figures"]
    # the re-reads run (12 in the hour at PT5M) and each reads every person again
    assert figures["rereads_by_endpoint"]["identitystore.ListGroupMembershipsForMember"] >= 4 * 12
    assert figures["watchdog_per_person_first_hour"] > 0
    assert figures["total_per_person_first_hour"] > figures["containment_per_person"]


def test_many_leavers_rereads_list_the_instance_not_each_user(tmp_path: Path) -> None:
    # 60 leavers in the bench's organisation of 40 groups: listing every group's members
    # (41 requests) and every (account, set) pair's assignments costs less than 60 users'
    # own reads, so the grid's re-reads list the instance; only each case's last re-read
    # (at its own new-sessions-end, off the grid) reads the user alone
    result = run_bench("reread_calls", tmp_path, "--people=60")
    figures = result["figures"]
    rereads = figures["rereads_by_endpoint"]
    assert rereads["identitystore.ListGroupMembershipsForMember"] <= 2 * 60
    assert rereads["identitystore.ListGroupMemberships"] > 0
    assert rereads["sso-admin.ListAccountAssignments"] > 0
    # one ListUsers page tells the watchdog every status: not 12 DescribeUser a person
    assert figures["watchdog_per_person_first_hour"] < 1
    assert figures["rereads_per_person_first_hour"] < 24


def test_store_trips_before_the_idp_request(tmp_path: Path) -> None:
    result = run_bench("store_trips", tmp_path, "--cases=2")
    figures = result["figures"]
    assert len(figures["trips_per_case"]) == 2
    assert figures["last_case_statements"][-1].startswith("INSERT INTO side_effects")
    # a step's write with its event is one trip, a step done and the next started
    # also, the ledger's intent also its read
    assert max(figures["trips_per_case"]) <= 7
