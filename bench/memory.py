"""Memory: peak RSS of `offboard serve` with 10,000 open countdowns.

    .venv/bin/python -m bench.memory --cases 10000

One leaver is offboarded for real through the emulators (every step, the operator's
confirmation, the countdown with its timers); its records are then copied, through the
store's own API, into N contained cases of different people, each with its evidence,
timeline, countdown and three pending milestones. Then `offboard serve` starts on that
store and is asked what an operator and Prometheus ask: /metrics (three scrapes),
the case list (/v1/cases: its first page, then every case, following `next` 1,000 at a
time), one case in full, the status page (/ui: its first page, then its last). The
peak resident set (VmHWM) of the serve process is read from /proc after each.
What is not exercised: a watchdog pass (it re-reads every person at the providers'
rate limits, which takes hours for 10,000 people and holds one case at a time).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

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
    wait_http,
    write_config,
)
from worker.cases import confirm_task, drive_case, open_case
from worker.domain import CaseStatus, NewCase, StepStatus
from worker.runtime import Runtime

TOKEN = "bench-memory-token-0123456789abcdef"  # noqa: S105 - loopback only
TOKEN_ENV = "OFFBOARD_BENCH_API_TOKEN"  # noqa: S105 - the name of a variable


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


async def copy_case(rt: Runtime, template_id: str, subject: str) -> None:
    """A contained case for `subject` with the template's records, through the store API."""
    store, now = rt.store, rt.clock.now()
    template = await store.get_case(template_id)
    case, _ = await store.create_case(
        NewCase(
            playbook=template.playbook,
            subject=subject,
            steps=template.steps,
            trigger=template.trigger,
            priority=template.priority,
        ),
        now,
    )
    claimed = await store.claim_case(case.id, "bench", now, 60)
    if claimed is None:
        raise RuntimeError("could not claim the copy")
    for record in await store.steps(template_id):
        await store.start_step(case.id, record.index, "bench", now)
        await store.finish_step(
            case.id,
            record.index,
            "bench",
            StepStatus.DONE,
            now,
            evidence={**record.evidence, "subject": subject},
            event=("step_done", {"copied_from": template_id}),
        )
    timers = [
        replace(t, case_id=case.id, due_at=t.due_at + timedelta(hours=1))
        for t in await store.timers(template_id)
        if t.fired_at is None
    ]
    assert template.countdown is not None
    await store.save_countdown(case.id, template.countdown, 0, timers, now)
    await store.release_case(case.id, "bench", CaseStatus.CONTAINED, now)


async def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    result = Result("memory", {"cases": args.cases})
    port = free_port()
    async with emulators(run_dir, people=1, latency=0.0, scale=1000.0) as em:
        path, config = write_config(
            run_dir,
            em,
            scale=1000.0,
            server={"host": "127.0.0.1", "port": port, "api_tokens": {"bench": {"env": TOKEN_ENV}}},
            countdown={"watchdog_interval": "PT24H"},
        )
        env = {**em.environment, TOKEN_ENV: TOKEN}
        with environment(env):
            async with runtime(config, run_dir) as rt:
                template = await one_real_case(rt)
                started = time.monotonic()
                for i in range(args.cases - 1):
                    await copy_case(rt, template, login_of("copy", i))
                filled = time.monotonic() - started
                open_countdowns = await rt.store.running_countdowns(rt.clock.now())
        serve = spawn(["--config", str(path), "serve"], run_dir, env, "serve.log")
        stages: dict[str, dict[str, float]] = {}
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
        finally:
            stop(serve)
    peak = max(s["peak_mb"] for s in stages.values())
    result.figures = {
        "open_countdowns": open_countdowns,
        "fill_seconds": round(filled, 1),
        "stages": stages,
        "peak_rss_mb": round(peak, 1),
    }
    result.targets = {"peak_rss_le_150mb": peak <= 150}
    return result


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
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
