"""Intake: how many signed HR webhooks `offboard serve` accepts durably per second.

    .venv/bin/python -m bench.intake --count 10000 --concurrency 32

A load generator in its own process (bench/loadgen.py) sends distinct, signed
Standard-Webhooks terminations to `offboard serve` (SQLite store, the worker running
beside the intake as deployed, the emulators at scale 1 with every person seeded), and
then the same load to a bare aiohttp handler that answers 202 and does nothing
(bench/bare_server.py). An accept is durable: the case and the delivery are committed
(synchronous=FULL) before the 202 is sent. Reported: accepts per second and latency
p50/p99 for each, the ratio, and a check that the store holds one case per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.emulators import login_of
from bench.harness import (
    REPO,
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

SECRET_ENV = "OFFBOARD_BENCH_WHSEC"  # noqa: S105 - the name of a variable


async def load(url: str, secret: str, args: argparse.Namespace, first: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        f"--url={url}",
        f"--secret={secret}",
        f"--count={args.count}",
        f"--concurrency={args.concurrency}",
        f"--warmup={args.warmup}",
        f"--first={first}",
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed ({process.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


async def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    result = Result(
        "intake",
        {"count": args.count, "concurrency": args.concurrency, "warmup": args.warmup},
    )
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    port = free_port()
    async with emulators(run_dir, people=args.count, latency=0.05, scale=1.0) as em:
        path, config = write_config(
            run_dir,
            em,
            scale=1.0,
            server={
                "host": "127.0.0.1",
                "port": port,
                "max_body_bytes": 65536,
                "hr_sources": {
                    "hris": {"kind": "standard-webhooks", "secrets": [{"env": SECRET_ENV}]}
                },
            },
            countdown={"watchdog_interval": "PT24H"},
        )
        env = {**em.environment, SECRET_ENV: secret}
        serve = spawn(["--config", str(path), "serve"], run_dir, env, "serve.log")
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", serve)
            offboard = await load(f"http://127.0.0.1:{port}/v1/hooks/hr/hris", secret, args, 0)
        finally:
            stop(serve)
        with environment(env):
            async with runtime(config, run_dir) as rt:
                cases = await rt.store.list_cases()
                subjects = {c.subject for c in cases}
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", f"--port={bare_port}"], cwd=REPO
    )
    try:
        await wait_http(f"http://127.0.0.1:{bare_port}/readyz", bare)
        baseline = await load(f"http://127.0.0.1:{bare_port}/v1/hooks/hr/hris", secret, args, 0)
    finally:
        stop(bare)
    expected = {login_of("leaver", i) for i in range(args.count)}
    result.figures = {
        "offboard_serve": offboard,
        "bare_aiohttp": baseline,
        "ratio_to_bare": round(offboard["per_second"] / baseline["per_second"], 3),
        "cases_stored": len(cases),
        "one_case_per_delivery": subjects == expected and len(cases) == args.count,
    }
    result.targets = {
        "accepts_ge_1000_per_s": offboard["per_second"] >= 1000,
        "all_202": offboard["statuses"] == {"202": args.count},
        "durable": subjects == expected and len(cases) == args.count,
    }
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
