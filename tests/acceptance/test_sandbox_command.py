"""`offboard sandbox --idp okta|entra|google`: a user tries the tool against the emulator of
their own identity provider, with the configuration the repository ships for it."""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import socket
from pathlib import Path

import pytest

from tests.acceptance import cli
from tests.conftest import REPO

CONFIGS = {
    "okta": "config/sandbox.yaml",
    "entra": "config/sandbox-entra.yaml",
    "google": "config/sandbox-google.yaml",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_file(path: Path) -> dict[str, str]:
    """What `. FILE` would set (a value may span lines: the Google key is JSON)."""
    words = shlex.split(path.read_text(encoding="utf-8"))
    return dict(w.partition("=")[::2] for w in words if w != "export")


@pytest.mark.parametrize("idp", ["entra", "google", "okta"])
async def test_sandbox_runs_the_chosen_idp_where_its_configuration_points(
    idp: str, tmp_path: Path
) -> None:
    idp_port, ic_port = _free_port(), _free_port()
    env_file = tmp_path / "sandbox.env"
    sandbox = await cli.start(
        [
            "sandbox",
            "--idp",
            idp,
            "--idp-port",
            str(idp_port),
            "--identity-center-port",
            str(ic_port),
            "--seed",
            "alice@example.com",
            "--env-file",
            str(env_file),
        ],
        cli.environment({}),
        tmp_path,
    )
    try:
        assert sandbox.stdout is not None
        said = ""
        while "secrets in" not in said:
            line = await asyncio.wait_for(sandbox.stdout.readline(), 60)
            assert line, f"the sandbox ended: {said}"
            said += line.decode()
        assert f"configuration {CONFIGS[idp]}" in said
        # the shipped configuration, with the ports of this run
        text = (REPO / CONFIGS[idp]).read_text(encoding="utf-8")
        text = re.sub(r"127\.0\.0\.1:18080", f"127.0.0.1:{idp_port}", text)
        text = re.sub(r"127\.0\.0\.1:18081", f"127.0.0.1:{ic_port}", text)
        text = text.replace("var/sandbox.db", str(tmp_path / "sandbox.db"))
        config = tmp_path / "sandbox.yaml"
        config.write_text(text, encoding="utf-8")
        (tmp_path / "playbooks").symlink_to(REPO / "playbooks")
        env = cli.environment(_env_file(env_file))

        run = await cli.run(
            ["--config", str(config), "run", "leaver", "--user", "alice@example.com"],
            env,
            tmp_path,
            timeout=120,
        )
        # contained up to the operator's portal-sessions step: the IdP first, then IC
        assert run.returncode == 3, run.stdout + run.stderr
        assert re.search(r"idp-deactivate\s+idp\.deactivate_user\s+done", run.stdout), run.stdout
        assert re.search(r"ic-disable\s+\S+\s+done", run.stdout), run.stdout
    finally:
        sandbox.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sandbox.wait(), 30)
