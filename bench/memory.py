"""Memory and latency: `offboard serve` with 100,000 open countdowns.

    .venv/bin/python -m bench.memory --cases 100000
    .venv/bin/python -m bench.memory --cases 100000 --store postgres

One leaver is offboarded for real through the emulators (every step, the operator's
confirmation, the countdown with its timers); N-1 contained cases of other people are
then made from it through the store's own API (`admit` in batches, then claim, the
template's countdown document and pending timers, release as contained): each has its
countdown and three pending milestones, but not the template's step evidence (copying
it a step at a time took 24 min for 100,000 cases). Then `offboard serve` starts on that
store and is asked what an operator and Prometheus ask: /metrics (three scrapes),
the case list (/v1/cases: its first page, then every case, following `next` 1,000 at a
time), one case in full, the status page (/ui: its first page, then its last). The
peak resident set (VmHWM) of the serve process is read from /proc after each. Then
each of /metrics, /ui (first page) and /v1/cases (first page) is asked --requests
times, one at a time, and its p50/p99 answer time measured at the client.
--store postgres runs on a throwaway cluster (as tests/pg.py starts one); the copies
are written --fill-concurrency at a time.
What is not exercised: a watchdog pass (it re-reads every person at the providers'
rate limits, which takes hours for 10,000 people and holds one case at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.emulators import login_of
from bench.harness import (
    Result,
    emulators,
    environment,
    free_port,
    run_in_temporary_directory,
    runtime,
    spawn,
    stop,
    summary_ms,
    wait_http,
    write_config,
)
from tests.pg import start_cluster, stop_cluster
from worker.cases import confirm_task, drive_case, open_case
from worker.domain import Arrival, CaseStatus, NewCase, Timer
from worker.runtime import Runtime

TOKEN = "bench-memory-token-0123456789abcdef"  # noqa: S105 - loopback only
TOKEN_ENV = "OFFBOARD_BENCH_API_TOKEN"  # noqa: S105 - the name of a variable
PG_ENV = "OFFBOARD_BENCH_POSTGRES"
#: the answer time each endpoint must keep at 100,000 open countdowns (issue 16)
LATENCY_TARGET_MS = 200.0
RSS_TARGET_MB = 200.0


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def one_real_case(rt: Runtime) -> str:
    case, _ = await open_case(rt, rt.playbook("leaver"), login_of("leaver", 0), {"source": "bench"})
    await drive_case(rt, case.id)
    await confirm_task(rt, case.id, "portal-sessions", "bench")
    contained = await drive_case(rt, case.id)
    if contained.status is not CaseStatus.CONTAINED:
        raise RuntimeError(f"the template case ended {contained.status}")
    return case.id


async def fill(rt: Runtime, template_id: str, copies: int, concurrency: int) -> None:
    """`copies` contained cases of other people carrying the template's countdown and its
    pending timers: admitted 1,000 at a time (one transaction each), then each claimed,
    given the countdown and released as contained, `concurrency` at a time."""
    store = rt.store
    template = await store.get_case(template_id)
    assert template.countdown is not None
    countdown = template.countdown
    timers = [
        replace(t, due_at=t.due_at + timedelta(hours=1))
        for t in await store.timers(template_id)
        if t.fired_at is None
    ]
    new = NewCase(
        playbook=template.playbook,
        subject="",
        steps=template.steps,
        trigger=template.trigger,
        priority=template.priority,
    )
    for first in range(0, copies, BATCH):
        now = rt.clock.now()
        arrivals = [
            Arrival(
                key=f"bench-memory-{i}",
                case=replace(new, subject=login_of("copy", i)),
                answer=lambda case: {"case": case.id},
            )
            for i in range(first, min(first + BATCH, copies))
        ]
        admitted = [a.case for a in await store.admit(arrivals, now) if a.case is not None]
        ids = iter([case.id for case in admitted])
        await asyncio.gather(*(_contain(rt, ids, countdown, timers) for _ in range(concurrency)))


async def _contain(
    rt: Runtime, ids: Iterator[str], countdown: dict[str, Any], timers: list[Timer]
) -> None:
    """Claim, give the countdown to and release as contained each case `ids` yields."""
    store, now = rt.store, rt.clock.now()
    for case_id in ids:
        if await store.claim_case(case_id, "bench", now, 60) is None:
            raise RuntimeError(f"could not claim the copy {case_id}")
        mine = [replace(t, case_id=case_id) for t in timers]
        await store.save_countdown(case_id, countdown, 0, mine, now)
        await store.release_case(case_id, "bench", CaseStatus.CONTAINED, now)


#: copies admitted in one transaction
BATCH = 1000


async def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    with contextlib.ExitStack() as stack:
        store_env: dict[str, str] = {}
        if args.store == "postgres":
            cluster = start_cluster()
            stack.callback(stop_cluster, cluster)
            store_env[PG_ENV] = cluster.dsn()
        return await _measure(args, run_dir, store_env)


async def _measure(args: argparse.Namespace, run_dir: Path, store_env: dict[str, str]) -> Result:
    result = Result(
        "memory",
        {
            "cases": args.cases,
            "store": args.store,
            "requests": args.requests,
            "fill_concurrency": args.fill_concurrency,
        },
    )
    port = free_port()
    sections: dict[str, object] = {}
    if store_env:
        sections["store"] = {"postgres": {"env": PG_ENV}}
    async with emulators(run_dir, people=1, latency=0.0, scale=1000.0) as em:
        path, config = write_config(
            run_dir,
            em,
            scale=1000.0,
            server={"host": "127.0.0.1", "port": port, "api_tokens": {"bench": {"env": TOKEN_ENV}}},
            countdown={"watchdog_interval": "PT24H"},
            **sections,
        )
        env = {**em.environment, TOKEN_ENV: TOKEN, **store_env}
        with environment(env):
            async with runtime(config, run_dir) as rt:
                template = await one_real_case(rt)
                started = time.monotonic()
                await fill(rt, template, args.cases - 1, args.fill_concurrency)
                filled = time.monotonic() - started
                open_countdowns = await rt.store.running_countdowns(rt.clock.now())
        serve = spawn(["--config", str(path), "serve"], run_dir, env, "serve.log")
        stages: dict[str, dict[str, float]] = {}
        latency: dict[str, dict[str, float]] = {}
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                await wait_http(f"{base}/readyz", serve)
                stages["started"] = _stage(serve.pid)
                for n in range(3):
                    await _get(http, f"{base}/metrics")
                    stages[f"metrics_{n + 1}"] = _stage(serve.pid)
                await _get(http, f"{base}/v1/cases")
                stages["case_list"] = _stage(serve.pid)
                listed = await _walk(http, base, "/v1/cases?limit=1000")
                if listed != args.cases:
                    raise RuntimeError(f"the case list walked {listed} cases of {args.cases}")
                stages["case_list_every_page"] = _stage(serve.pid)
                await _get(http, f"{base}/v1/cases/{template}")
                stages["one_case"] = _stage(serve.pid)
                await _get(http, f"{base}/ui")
                stages["status_page"] = _stage(serve.pid)
                await _get(http, f"{base}/ui?page={args.cases // 50 + 1}")
                stages["status_page_last"] = _stage(serve.pid)
                for name, endpoint in ENDPOINTS.items():
                    latency[name] = summary_ms(await _timed(http, base + endpoint, args.requests))
                stages["timed"] = _stage(serve.pid)
        finally:
            stop(serve)
    peak = max(s["peak_mb"] for s in stages.values())
    result.figures = {
        "open_countdowns": open_countdowns,
        "fill_seconds": round(filled, 1),
        "stages": stages,
        "peak_rss_mb": round(peak, 1),
        "latency": latency,
    }
    result.targets = {
        "peak_rss_le_200mb": peak <= RSS_TARGET_MB,
        **{f"{name}_p99_le_200ms": s["p99_ms"] <= LATENCY_TARGET_MS for name, s in latency.items()},
    }
    return result


#: what an operator's browser and Prometheus ask most: each first page
ENDPOINTS = {"metrics": "/metrics", "ui": "/ui", "cases": "/v1/cases"}


async def _timed(http: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    """Answer times of `n` requests, one after another."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await _get(http, url)
        times.append(time.perf_counter() - started)
    return times


def _stage(pid: int) -> dict[str, float]:
    rss, peak = peak_rss_mb(pid)
    return {"rss_mb": round(rss, 1), "peak_mb": round(peak, 1)}


async def _get(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status}")


async def _walk(http: aiohttp.ClientSession, base: str, path: str) -> int:
    """Follow the list's `next` links to the end; how many cases it held."""
    count, following = 0, path
    while following is not None:
        async with http.get(base + following) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {following}: {response.status}")
            page = await response.json()
        count += len(page["cases"])
        following = page["next"]
    return count


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint")
    parser.add_argument("--fill-concurrency", type=int, default=8, help="copies written at a time")
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
