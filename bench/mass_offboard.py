"""Mass offboarding: N people through playbooks/leaver.yaml at the providers' rate limits.

    .venv/bin/python -m bench.mass_offboard --people 1000            # scale 1: ~9 min
    .venv/bin/python -m bench.mass_offboard --people 1000 --scale 10 # the same ratios, faster

The emulators run in their own process with 50 ms latency, Identity Center at 20 TPS,
Okta at 600 calls a minute (fixed windows, X-Rate-Limit-* headers) and 75 in flight,
all multiplied by --scale. One `offboard worker` process works the queue; the N cases
are enqueued while it runs. The run ends when every case has done every automated
step and waits on its operator task (portal sessions have no API).

Reported: total time, calls per person per provider, throttled responses, and the
lower bound the rate limits imply for the calls the run needed:
- Identity Center: (calls - burst) / TPS, a token bucket holding one second;
- Okta: fixed one-minute windows of B calls starting on the minute: C calls need
  ceil(C / B) windows, so at least until the last of them opens;
the bound is the larger; ratio = total / bound.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.emulators import IC_TPS, OKTA_PER_MINUTE, login_of
from bench.harness import (
    Result,
    emulators,
    environment,
    runtime,
    spawn,
    stop,
    wait_for_statuses,
    write_config,
)
from worker.domain import CaseStatus
from worker.service import open_case

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


def worker_sections(concurrency: int) -> dict[str, Any]:
    return {
        "worker": {"concurrency": concurrency, "poll_seconds": 0.2, "lease_seconds": 120},
        "countdown": {"watchdog_interval": "PT24H"},
    }


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
        },
    )
    async with emulators(run_dir, people=args.people, latency=args.latency, scale=args.scale) as em:
        path, config = write_config(
            run_dir, em, scale=args.scale, **worker_sections(args.concurrency)
        )
        with environment(em.environment):
            async with runtime(config, run_dir) as rt:
                playbook = rt.playbook("leaver")
                worker = spawn(["--config", str(path), "worker"], run_dir, em.environment, "w.log")
                try:
                    await asyncio.sleep(args.warmup)  # the worker imports and opens the store
                    started_wall, started = time.time(), time.monotonic()
                    for i in range(args.people):
                        await open_case(rt, playbook, login_of("leaver", i), {"source": "bench"})
                    enqueued = time.monotonic() - started
                    ended = await wait_for_statuses(
                        rt,
                        args.people,
                        (CaseStatus.WAITING,),
                        timeout=args.timeout,
                        process=worker,
                    )
                    halted = await rt.store.list_cases((CaseStatus.HALTED,))
                finally:
                    stop(worker)
        stats = await em.stats()
    total = ended - started
    calls, throttled = by_provider(stats["calls"]), by_provider(stats["throttled"])
    useful = {p: calls.get(p, 0) - throttled.get(p, 0) for p in ("okta", "identity_center")}
    bounds = {
        "okta": okta_bound(useful["okta"], int(OKTA_PER_MINUTE * args.scale), started_wall),
        "identity_center": identity_center_bound(useful["identity_center"], IC_TPS * args.scale),
    }
    bound = max(bounds.values())
    all_calls = sum(calls.values())
    all_throttled = sum(throttled.values())
    result.figures = {
        "total_seconds": round(total, 2),
        "enqueue_seconds": round(enqueued, 2),
        "people_per_second": round(args.people / total, 2),
        "bound_seconds": {k: round(v, 2) for k, v in bounds.items()},
        "binding": max(bounds, key=lambda k: bounds[k]),
        "ratio_to_bound": round(total / bound, 3) if bound > 0 else None,
        "calls_per_person": {
            p: round(useful[p] / args.people, 2) for p in ("okta", "identity_center")
        },
        "calls_by_endpoint": dict(sorted(stats["calls"].items())),
        "throttled": throttled,
        "throttled_fraction": round(all_throttled / all_calls, 4) if all_calls else 0.0,
        "halted": len(halted),
    }
    result.targets = {
        "ratio_le_1.10": bound > 0 and total / bound <= 1.10,
        "throttled_lt_1pct": all_calls > 0 and all_throttled / all_calls < 0.01,
        "none_halted": not halted,
    }
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="offboard-bench-") as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    result.emit(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
