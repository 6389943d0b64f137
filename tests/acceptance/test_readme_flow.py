"""The README's hand-run path: `offboard sandbox`, `offboard serve` with
config/sandbox.yaml, and a webhook signed by curl + openssl."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from tests.acceptance import cli
from tests.conftest import REPO


def _env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = value.strip("'")
    return values


async def test_sandbox_serve_and_a_curl_signed_webhook(tmp_path: Path) -> None:
    (tmp_path / "playbooks").symlink_to(REPO / "playbooks")
    env_file = tmp_path / "var" / "sandbox.env"
    env = cli.environment({})
    sandbox = await cli.start(["sandbox", "--env-file", str(env_file)], env, tmp_path)
    serve = None
    try:
        assert sandbox.stdout is not None
        line = ""
        while "secrets in" not in line:
            line = (await asyncio.wait_for(sandbox.stdout.readline(), 30)).decode()
            assert line, "the sandbox ended before it said where its secrets are"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        env = {**env, **_env_file_values(env_file)}
        config = str(REPO / "config" / "sandbox.yaml")
        serve = await cli.start(["--config", config, "serve", "--port", "0"], env, tmp_path)
        assert serve.stdout is not None
        line = (await asyncio.wait_for(serve.stdout.readline(), 30)).decode()
        base = line.split()[-1]

        script = await asyncio.create_subprocess_exec(
            "bash",
            str(REPO / "deploy" / "examples" / "send-hr-webhook.sh"),
            "alice@example.com",
            f"{base}/v1/hooks/hr/hris",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(script.communicate(), 30)
        answer = json.loads(out)
        assert answer["outcome"] == "created", answer
        assert answer["subject"] == "alice@example.com" and answer["playbook"] == "leaver"
    finally:
        for process in (serve, sandbox):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
    assert sandbox.returncode == 0
