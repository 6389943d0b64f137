"""`offboard sandbox`: the emulators on fixed loopback ports, for trying `offboard serve`
by hand. `--idp` picks the identity provider people are seeded in; the configuration
that points at it is config/sandbox.yaml (Okta), config/sandbox-entra.yaml or
config/sandbox-google.yaml."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shlex
import signal
from pathlib import Path

from worker.sandbox import IdpName, Sandbox, SandboxCredentials

PREFIX = "OFFBOARD_SANDBOX_"
#: the configuration that points at the sandbox, by identity provider
CONFIGS: dict[IdpName, str] = {
    "okta": "config/sandbox.yaml",
    "entra": "config/sandbox-entra.yaml",
    "google": "config/sandbox-google.yaml",
}
IDP_NAMES: dict[IdpName, str] = {"okta": "Okta", "entra": "Entra ID", "google": "Google Workspace"}


def _credentials() -> SandboxCredentials:
    """Reuse the secrets of an earlier run when they are in the environment."""
    env = os.environ
    if f"{PREFIX}OKTA_TOKEN" not in env:
        return SandboxCredentials()
    earlier = {
        "okta_token": env[f"{PREFIX}OKTA_TOKEN"],
        "scim_token": env[f"{PREFIX}SCIM_TOKEN"],
        "aws_access_key_id": env[f"{PREFIX}AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env[f"{PREFIX}AWS_SECRET_ACCESS_KEY"],
    }
    # an env file of an older sandbox may lack these: new ones are made then
    for field, name in (
        ("entra_client_secret", "ENTRA_CLIENT_SECRET"),
        ("google_key", "GOOGLE_KEY"),
    ):
        if f"{PREFIX}{name}" in env:
            earlier[field] = env[f"{PREFIX}{name}"]
    return SandboxCredentials(**earlier)


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
    path.write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()), encoding="utf-8"
    )
    path.chmod(0o600)  # it holds secrets
    return values


async def run_sandbox(
    *,
    idp: IdpName = "okta",
    idp_port: int,
    identity_center_port: int,
    seed: list[str],
    env_file: Path,
) -> int:
    sandbox = Sandbox(credentials=_credentials(), idp=idp)
    # the chosen IdP on its fixed port (the config points there), the others anywhere
    await sandbox.start(identity_center_port=identity_center_port, **{f"{idp}_port": idp_port})
    try:
        for login in seed:
            sandbox.seed_leaver(login)
        write_env_file(env_file, sandbox)
        url = {"okta": sandbox.okta_url, "entra": sandbox.entra_url, "google": sandbox.google_url}
        print(f"sandbox: {IDP_NAMES[idp]} at {url[idp]}", flush=True)
        print(f"sandbox: Identity Center at {sandbox.identity_center_url}", flush=True)
        print(f"sandbox: seeded {', '.join(seed)} in {IDP_NAMES[idp]}", flush=True)
        print(f"sandbox: configuration {CONFIGS[idp]}", flush=True)
        print(f"sandbox: secrets in {env_file} (source it before offboard serve)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()
    return 0
