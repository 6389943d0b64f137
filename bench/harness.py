"""What every benchmark shares: the emulators in their own process, a worker
configuration pointing at them, the worker itself as a subprocess, and the
figures (percentiles, peak memory) written the same way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from worker.config import Config, parse_config
from worker.domain import CaseStatus
from worker.runtime import Runtime, open_runtime

REPO = Path(__file__).resolve().parent.parent
OFFBOARD = [sys.executable, "-m", "worker.cli"]


@dataclass
class Emulators:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    control_url: str

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.ready["environment"])

    async def stats(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.control_url}/stats") as response,
        ):
            data: dict[str, Any] = await response.json()
            return data

    async def seed(self, logins: list[str]) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.control_url}/seed", json={"logins": logins}) as response,
        ):
            response.raise_for_status()


@contextlib.asynccontextmanager
async def emulators(
    run_dir: Path, *, people: int, latency: float, scale: float, seed: int = 1
) -> AsyncIterator[Emulators]:
    ready_file = run_dir / "emulators.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.emulators",
            f"--people={people}",
            f"--latency={latency}",
            f"--scale={scale}",
            f"--seed={seed}",
            f"--ready-file={ready_file}",
        ],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the emulators exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the emulators did not start within 120 s")
            await asyncio.sleep(0.05)
        ready = json.loads(ready_file.read_text(encoding="utf-8"))
        yield Emulators(process=process, ready=ready, control_url=ready["control_url"])
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until `url` answers 200 (a server subprocess is up)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout} s")
            await asyncio.sleep(0.05)


def write_config(
    run_dir: Path, em: Emulators, *, scale: float, **sections: Any
) -> tuple[Path, Config]:
    """The worker's configuration: the emulators, SQLite in run_dir, limits at scale."""
    data = dict(em.ready["config"])
    data["store"] = {"sqlite": str(run_dir / "offboard.db")}
    data["playbook_dirs"] = [str(REPO / "playbooks")]
    data["limits"] = {
        "identity_center_per_second": 18.0 * scale,
        "identity_center_burst": max(4, int(4 * scale)),
        "okta_concurrency": int(70 * scale),
    }
    data.update(sections)
    path = run_dir / "offboard.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, parse_config(data, str(path))


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.asynccontextmanager
async def runtime(config: Config, run_dir: Path) -> AsyncIterator[Runtime]:
    async with open_runtime(config, base_dir=run_dir) as rt:
        yield rt


def spawn(
    args: list[str], run_dir: Path, env: dict[str, str], log_name: str
) -> subprocess.Popen[bytes]:
    log = (run_dir / log_name).open("wb")
    return subprocess.Popen(
        [*OFFBOARD, *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def wait_for_statuses(
    rt: Runtime,
    want: int,
    statuses: tuple[CaseStatus, ...],
    *,
    timeout: float,
    poll: float = 0.25,
    process: subprocess.Popen[bytes] | None = None,
) -> float:
    """Wait until `want` cases are in one of `statuses`; the monotonic time it happened."""
    deadline = time.monotonic() + timeout
    while True:
        cases = await rt.store.list_cases(statuses)
        if len(cases) >= want:
            return time.monotonic()
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(cases)} of {want} cases reached {statuses} in {timeout} s")
        await asyncio.sleep(poll)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def run_in_temporary_directory(
    measure: Callable[[Any, Path], Awaitable[Result]], args: Any, *, keep: bool = False
) -> int:
    """Run a bench's `measure` in a fresh run directory (kept with `keep`), emit the result."""
    if keep:
        tmp = tempfile.mkdtemp(prefix="offboard-bench-")
        result = asyncio.run(measure(args, Path(tmp)))
        print(f"run directory kept: {tmp}", flush=True)
    else:
        with tempfile.TemporaryDirectory(prefix="offboard-bench-") as tmp:
            result = asyncio.run(measure(args, Path(tmp)))
    result.emit(args.output)
    return 0


@dataclass
class Result:
    """What a bench prints (as JSON on stdout) and, with --output, writes."""

    bench: str
    parameters: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)

    def emit(self, output: str | None) -> None:
        body = {
            "bench": self.bench,
            "machine": machine(),
            "parameters": self.parameters,
            "figures": self.figures,
            "targets": self.targets,
        }
        text = json.dumps(body, indent=2, sort_keys=False)
        print(text, flush=True)
        if output:
            Path(output).write_text(text + "\n", encoding="utf-8")
