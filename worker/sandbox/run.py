"""`offboard sandbox`: the emulators on fixed loopback ports, for trying `offboard serve`
by hand (config/sandbox.yaml points at them)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
from pathlib import Path

from worker.sandbox import Sandbox, SandboxCredentials

PREFIX = "OFFBOARD_SANDBOX_"


def _credentials() -> SandboxCredentials:
    """Reuse the secrets of an earlier run when they are in the environment."""
    env = os.environ
    if f"{PREFIX}OKTA_TOKEN" in env:
        return SandboxCredentials(
            okta_token=env[f"{PREFIX}OKTA_TOKEN"],
            scim_token=env[f"{PREFIX}SCIM_TOKEN"],
            aws_access_key_id=env[f"{PREFIX}AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env[f"{PREFIX}AWS_SECRET_ACCESS_KEY"],
        )
    return SandboxCredentials()


def write_env_file(path: Path, sandbox: Sandbox) -> dict[str, str]:
    values = {
        **sandbox.environment(),
        f"{PREFIX}WHSEC": os.environ.get(f"{PREFIX}WHSEC")
        or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        f"{PREFIX}API_TOKEN": os.environ.get(f"{PREFIX}API_TOKEN") or secrets.token_urlsafe(32),
        f"{PREFIX}INCIDENT_TOKEN": os.environ.get(f"{PREFIX}INCIDENT_TOKEN")
        or secrets.token_urlsafe(32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in values.items()), encoding="utf-8")
    path.chmod(0o600)  # it holds secrets
    return values


async def run_sandbox(
    *, okta_port: int, identity_center_port: int, seed: list[str], env_file: Path
) -> int:
    sandbox = Sandbox(credentials=_credentials())
    await sandbox.start(okta_port=okta_port, identity_center_port=identity_center_port)
    try:
        for login in seed:
            sandbox.seed_leaver(login)
        write_env_file(env_file, sandbox)
        print(f"sandbox: Okta at {sandbox.okta_url}", flush=True)
        print(f"sandbox: Identity Center at {sandbox.identity_center_url}", flush=True)
        print(f"sandbox: seeded {', '.join(seed)}", flush=True)
        print(f"sandbox: secrets in {env_file} (source it before offboard serve)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()
    return 0
