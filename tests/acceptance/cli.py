"""Run the real `offboard` command as a subprocess, without blocking the event loop
that serves the sandbox."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

OFFBOARD = str(Path(sys.executable).with_name("offboard"))
OFFLINE_TOKEN = "0123456789abcdef0123"


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


async def start(
    args: list[str], env: dict[str, str], cwd: Path, log: IO[bytes] | None = None
) -> asyncio.subprocess.Process:
    """`offboard ARGS`; its output piped, or both streams into `log` (a long-running
    command whose log the test reads while it runs)."""
    return await asyncio.create_subprocess_exec(
        OFFBOARD,
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log or asyncio.subprocess.PIPE,
        stderr=log or asyncio.subprocess.PIPE,
    )


async def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> Result:
    process = await start(args, env, cwd)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def offline_config(tmp_path: Path, store: dict[str, Any]) -> Path:
    """A configuration whose providers are never called: for the commands that only read
    the store or fail before a call. Its secrets: $OFFLINE_TEST_TOKEN (OFFLINE_TOKEN)."""
    unreachable = "http://127.0.0.1:9"
    path = tmp_path / f"offboard-{len(list(tmp_path.glob('offboard-*')))}.yaml"
    data = {
        "store": store,
        "idp": {"okta": {"org_url": unreachable, "token": {"env": "OFFLINE_TEST_TOKEN"}}},
        "identity_center": {
            "region": "us-east-1",
            "identity_store_id": "d-1234567890",
            "instance_arn": "arn:aws:sso:::instance/ssoins-1234567890abcdef",
            "identity_source": "scim",
            "endpoint_url": unreachable,
            "scim": {"url": f"{unreachable}/scim/v2", "token": {"env": "OFFLINE_TEST_TOKEN"}},
            "credentials": {
                "access_key_id": {"env": "OFFLINE_TEST_TOKEN"},
                "secret_access_key": {"env": "OFFLINE_TEST_TOKEN"},
            },
        },
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
