"""Mass offboarding: N people through playbooks/leaver.yaml at the providers' rate limits.

    .venv/bin/python -m bench.mass_offboard --people 1000            # scale 1: ~9 min
    .venv/bin/python -m bench.mass_offboard --people 1000 --scale 10 # the same ratios, faster

The emulators run in their own process with 50 ms latency, Identity Center at 20 TPS,
Okta at 600 calls a minute (fixed windows, X-Rate-Limit-* headers) and 75 in flight,
all multiplied by --scale. One `offboard serve` process (intake and worker) works the
queue; the N cases are enqueued while it runs (priority normal, as HR triggers are).
The run ends when every case has done every automated step and waits on its operator
task (portal sessions have no API).

Priority: at 25 %, 50 % and 75 % of the run (--incidents) an incident-response
trigger arrives at `POST /v1/hooks/incident/soar` for someone else; reported is the
time from sending it to the IdP deactivation confirmed by read-back (the step's
recorded end), while the thousand HR cases hold every ordinary slot and most of the
Okta window.

Reported: total time, calls per person per provider, throttled responses, and the
lower bound the rate limits imply for the calls the run needed:
- Identity Center: (calls - burst) / TPS, a token bucket holding one second;
- Okta: C calls at B a minute: C / (B / 60);
the bound is the larger; ratio = total / bound. Okta's windows are fixed minutes, so a
client that bursts at each window's start could finish up to a window earlier than
C / (B / 60) in a lucky alignment; that figure is reported too (okta_windowed), but the
worker spreads each window's calls (bursts start hundreds of cases and finish none).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.emulators import IC_TPS, OKTA_PER_MINUTE, login_of
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
from worker.cases import open_case
from worker.domain import CaseStatus
from worker.runtime import Runtime

WINDOW = 60.0


def provider_of(endpoint: str) -> str:
    if endpoint.startswith("okta."):
        return "okta"
    if endpoint.startswith(("identitystore.", "sso-admin.", "scim.")):
        return "identity_center"
    return "other"


def by_provider(counts: dict[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for endpoint, n in counts.items():
        total[provider_of(endpoint)] += n
    return dict(total)


def okta_bound(calls: int, budget: int, started_wall: float) -> float:
    """The earliest a run started at `started_wall` can make `calls` Okta calls."""
    windows = math.ceil(calls / budget)
    if windows <= 1:
        return 0.0
    first_end = (math.floor(started_wall / WINDOW) + 1) * WINDOW
    return first_end - started_wall + (windows - 2) * WINDOW


def identity_center_bound(calls: int, tps: float) -> float:
    return max(0.0, calls - tps) / tps


INCIDENT_TOKEN = "bench-incident-token-0123456789abcdef"  # noqa: S105 - loopback only
INCIDENT_ENV = "OFFBOARD_BENCH_INCIDENT_TOKEN"


def worker_sections(concurrency: int, port: int) -> dict[str, Any]:
    return {
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
            "okta_per_minute": int(OKTA_PER_MINUTE * args.scale),
            "incidents": args.incidents,
        },
    )
    incident_people = [login_of("incident", i) for i in range(args.incidents)]
    marks = [args.people * (k + 1) // (args.incidents + 1) for k in range(args.incidents)]
    port = free_port()
    async with emulators(run_dir, people=args.people, latency=args.latency, scale=args.scale) as em:
        await em.seed(incident_people)
        path, config = write_config(
            run_dir, em, scale=args.scale, **worker_sections(args.concurrency, port)
        )
        env = {**em.environment, INCIDENT_ENV: INCIDENT_TOKEN}
        with environment(env):
            async with runtime(config, run_dir) as rt:
                playbook = rt.playbook("leaver")
                serve = spawn(["--config", str(path), "serve"], run_dir, env, "serve.log")
                try:
                    await wait_http(f"http://127.0.0.1:{port}/readyz", serve)
                    started_wall, started = time.time(), time.monotonic()
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
                    stop(serve)
        stats = await em.stats()
    total = ended - started
    calls, throttled = by_provider(stats["calls"]), by_provider(stats["throttled"])
    useful = {p: calls.get(p, 0) - throttled.get(p, 0) for p in ("okta", "identity_center")}
    budget = int(OKTA_PER_MINUTE * args.scale)
    bounds = {
        "okta": useful["okta"] / (budget / WINDOW),
        "identity_center": identity_center_bound(useful["identity_center"], IC_TPS * args.scale),
    }
    bound = max(bounds.values())
    windowed = okta_bound(useful["okta"], budget, started_wall)
    all_calls = sum(calls.values())
    all_throttled = sum(throttled.values())
    result.figures = {
        "total_seconds": round(total, 2),
        "enqueue_seconds": round(enqueued, 2),
        "people_per_second": round(args.people / total, 2),
        "bound_seconds": {k: round(v, 2) for k, v in bounds.items()},
        "okta_windowed_seconds": round(windowed, 2),
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
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
