"""Mass offboarding: N people through playbooks/leaver.yaml at the providers' rate limits.

    .venv/bin/python -m bench.mass_offboard --people 1000            # scale 1, SQLite
    .venv/bin/python -m bench.mass_offboard --people 1000 --store postgres --replicas 3

The emulators run in their own process with 50 ms latency, Identity Center at 20 TPS,
Okta at its documented per-endpoint budgets (fixed one-minute windows, X-Rate-Limit-*
headers per endpoint group) and 75 requests in flight, all multiplied by --scale.
`offboard serve` (intake and worker) works the queue, with --replicas - 1 more
`offboard worker` processes beside it on PostgreSQL (--store postgres: a throwaway
cluster, as tests/pg.py starts one); the worker's limits are the documented ones
(Identity Center 20 TPS), shared through the store by the replicas. The N cases are
enqueued while it runs (priority normal, as HR triggers are). The run ends when every
case has done every automated step and waits on its operator task (portal sessions
have no API).

Priority: at 25 %, 50 % and 75 % of the run (--incidents) an incident-response
trigger arrives at `POST /v1/hooks/incident/soar` for someone else; reported is the
time from sending it to the IdP deactivation confirmed by read-back (the step's
recorded end, by whichever replica ran it), while the HR cases hold every ordinary
slot and most of the Okta windows.

Reported: total time, calls per person per provider, throttled responses, and the
lower bound the rate limits imply for the calls the run needed, per bucket:
- Identity Center: (calls - burst) / TPS, a token bucket holding one second;
- each Okta endpoint group: C calls at B a minute: C / (B / 60);
the bound is the largest; ratio = total / bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.emulators import IC_TPS, by_provider, login_of, okta_rate_limits, rate_bounds
from bench.harness import (
    Result,
    emulators,
    environment,
    free_port,
    run_in_temporary_directory,
    runtime,
    spawn,
    stop,
    wait_for_statuses,
    wait_http,
    write_config,
)
from tests.pg import start_cluster, stop_cluster
from worker.cases import open_case
from worker.domain import CaseStatus
from worker.runtime import Runtime

INCIDENT_TOKEN = "bench-incident-token-0123456789abcdef"  # noqa: S105 - loopback only
INCIDENT_ENV = "OFFBOARD_BENCH_INCIDENT_TOKEN"


PG_ENV = "OFFBOARD_BENCH_POSTGRES"


def worker_sections(concurrency: int, port: int, scale: float) -> dict[str, Any]:
    return {
        # the documented limits: what the bound is computed from
        "limits": {
            "identity_center_per_second": IC_TPS * scale,
            "identity_center_burst": max(4, int(4 * scale)),
            "okta_concurrency": int(70 * scale),
            "okta_buckets": {k: int(v * scale) for k, v in okta_rate_limits().items()},
        },
        "worker": {"concurrency": concurrency, "poll_seconds": 0.2, "lease_seconds": 120},
        "countdown": {"watchdog_interval": "PT24H"},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "incident_sources": {"soar": {"kind": "bearer", "secrets": [{"env": INCIDENT_ENV}]}},
        },
    }


async def fire_incident(base_url: str, login: str, n: int) -> float:
    """Send one incident trigger; the wall time it was sent."""
    body = {"type": "identity.compromised", "data": {"email": login, "incident_id": f"IR-{n}"}}
    headers = {"Authorization": f"Bearer {INCIDENT_TOKEN}", "Idempotency-Key": f"ir-{n}"}
    sent = time.time()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base_url}/v1/hooks/incident/soar", json=body, headers=headers) as response,
    ):
        if response.status != 202:
            raise RuntimeError(f"incident refused: {response.status} {await response.text()}")
    return sent


async def deactivated_at(rt: Runtime, subject: str, timeout: float = 120) -> float:
    """When the subject's incident case confirmed the IdP deactivation (wall time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        case = await rt.store.find_open_case(subject)
        if case is not None:
            for step in await rt.store.steps(case.id):
                if step.step_id == "idp-deactivate" and step.finished_at is not None:
                    return step.finished_at.timestamp()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the incident case for {subject} did not deactivate in {timeout} s")


async def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    result = Result(
        "mass_offboard",
        {
            "people": args.people,
            "scale": args.scale,
            "latency_s": args.latency,
            "concurrency": args.concurrency,
            "ic_tps": IC_TPS * args.scale,
            "okta_per_minute": {k: int(v * args.scale) for k, v in okta_rate_limits().items()},
            "incidents": args.incidents,
            "store": args.store,
            "replicas": args.replicas,
        },
    )
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if args.store == "postgres":
            cluster = start_cluster()
            stack.callback(stop_cluster, cluster)
            env[PG_ENV] = cluster.dsn()
        elif args.replicas != 1:
            raise SystemExit("--replicas needs --store postgres (SQLite is one process)")
        return await _measure(args, run_dir, result, env)


async def _measure(
    args: argparse.Namespace, run_dir: Path, result: Result, store_env: dict[str, str]
) -> Result:
    incident_people = [login_of("incident", i) for i in range(args.incidents)]
    marks = [args.people * (k + 1) // (args.incidents + 1) for k in range(args.incidents)]
    port = free_port()
    async with emulators(run_dir, people=args.people, latency=args.latency, scale=args.scale) as em:
        await em.seed(incident_people)
        sections = worker_sections(args.concurrency, port, args.scale)
        if store_env:
            sections["store"] = {"postgres": {"env": PG_ENV}}
        path, config = write_config(run_dir, em, scale=args.scale, **sections)
        env = {**em.environment, INCIDENT_ENV: INCIDENT_TOKEN, **store_env}
        with environment(env):
            async with runtime(config, run_dir) as rt:
                playbook = rt.playbook("leaver")
                serve = spawn(["--config", str(path), "serve"], run_dir, env, "serve.log")
                workers = [
                    spawn(["--config", str(path), "worker"], run_dir, env, f"worker{n}.log")
                    for n in range(1, args.replicas)
                ]
                try:
                    await wait_http(f"http://127.0.0.1:{port}/readyz", serve)
                    started = time.monotonic()
                    for i in range(args.people):
                        await open_case(rt, playbook, login_of("leaver", i), {"source": "bench"})
                    enqueued = time.monotonic() - started
                    latencies = []
                    for n, (mark, login) in enumerate(zip(marks, incident_people, strict=True)):
                        await wait_for_statuses(
                            rt, mark, (CaseStatus.WAITING,), timeout=args.timeout, process=serve
                        )
                        sent = await fire_incident(f"http://127.0.0.1:{port}", login, n)
                        latencies.append(await deactivated_at(rt, login) - sent)
                    ended = await wait_for_statuses(
                        rt,
                        args.people + args.incidents,
                        (CaseStatus.WAITING,),
                        timeout=args.timeout,
                        process=serve,
                    )
                    halted = await rt.store.list_cases((CaseStatus.HALTED,))
                finally:
                    for process in (serve, *workers):
                        stop(process)
        stats = await em.stats()
    total = ended - started
    calls, throttled = by_provider(stats["calls"]), by_provider(stats["throttled"])
    useful = {p: calls.get(p, 0) - throttled.get(p, 0) for p in ("okta", "identity_center")}
    bounds = rate_bounds(stats, args.scale)
    bound = max(bounds.values())
    all_calls = sum(calls.values())
    all_throttled = sum(throttled.values())
    result.figures = {
        "total_seconds": round(total, 2),
        "enqueue_seconds": round(enqueued, 2),
        "people_per_second": round(args.people / total, 2),
        "bound_seconds": {k: round(v, 2) for k, v in bounds.items()},
        "okta_calls_by_bucket": stats["okta_buckets"],
        "binding": max(bounds, key=lambda k: bounds[k]),
        "ratio_to_bound": round(total / bound, 3) if bound > 0 else None,
        # the incident cases are people too (their deny step adds a few calls)
        "calls_per_person": {
            p: round(useful[p] / (args.people + args.incidents), 2)
            for p in ("okta", "identity_center")
        },
        "calls_by_endpoint": dict(sorted(stats["calls"].items())),
        "throttled": throttled,
        "throttled_fraction": round(all_throttled / all_calls, 4) if all_calls else 0.0,
        "halted": len(halted),
        "incident_to_idp_deactivated_s": [round(x, 3) for x in latencies],
    }
    result.targets = {
        "ratio_le_1.10": bound > 0 and total / bound <= 1.10,
        "throttled_lt_1pct": all_calls > 0 and all_throttled / all_calls < 0.01,
        "none_halted": not halted,
        "incident_within_1s": bool(latencies) and max(latencies) <= 1.0,
    }
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--incidents", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--replicas", type=int, default=1, help="worker processes (postgres)")
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
