"""Run the real `offboard` command as a subprocess, without blocking the event loop
that serves the sandbox."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OFFBOARD = str(Path(sys.executable).with_name("offboard"))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFBOARD_")}
    env.update(extra)
    env["OFFBOARD_LOG_LEVEL"] = "DEBUG"
    return env


async def start(args: list[str], env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        OFFBOARD,
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> Result:
    process = await start(args, env, cwd)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())
