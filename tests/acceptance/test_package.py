"""The package as an adopter gets it: the wheel built from this repository, installed in a
fresh virtual environment without extras, used from a directory outside the repository.

This is CI's proof (`.ci/run` → `make test`) that `pip install` + `offboard init` +
`offboard demo` work without a checkout. The fresh environment installs the runtime
dependencies only; pip's cache makes a second run quick.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # from a copy: setuptools' build/ in the checkout could carry files deleted since
    source = tmp_path_factory.mktemp("source") / "offboard"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "var", "*.db*"
        ),
    )
    # pip's own build front end (PEP 517, isolated): what `pip install .` would build
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        source,
        dict(os.environ),
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("offboard-*.whl")
    return path


def _assert_carries_playbooks_starter_config_license_and_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert {
        "worker/playbooks/leaver.yaml",
        "worker/playbooks/incident.yaml",
        "worker/starter/offboard.example.yaml",
        "worker/starter/offboard.schema.json",
        "worker/store/queries.sql",
        "worker/web/openapi.json",
        "worker/web/ui_static/ui.js",
    } <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Author"]
    assert any(
        c.startswith("Programming Language :: Python :: 3") for c in metadata.get_all("Classifier")
    )


@pytest.mark.timeout(900)
def test_installed_wheel_inits_checks_and_runs_the_demo_outside_the_repository(
    wheel: Path, tmp_path: Path
) -> None:
    # one test, so that parallel workers do not each build the wheel
    _assert_carries_playbooks_starter_config_license_and_metadata(wheel)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFBOARD_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    installed = _run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, env
    )
    assert installed.returncode == 0, installed.stderr
    # nothing of the test or bench extras came along
    listed = _run([str(bin_dir / "python"), "-m", "pip", "list"], tmp_path, env).stdout.lower()
    assert "pytest" not in listed and "moto" not in listed and "boto3 " not in listed

    work = tmp_path / "adopter"  # outside the repository, empty
    work.mkdir()
    offboard = str(bin_dir / "offboard")

    init = _run([offboard, "init"], work, env)
    assert init.returncode == 0, init.stderr
    assert (work / "offboard.yaml").read_text().startswith("# yaml-language-server")
    assert sorted(p.name for p in (work / "playbooks").iterdir()) == [
        "incident.yaml",
        "leaver.yaml",
    ]

    # the secrets the starter configuration documents, in the shapes it documents
    (work / "secrets").mkdir()
    (work / "secrets" / "identity-center-scim-token").write_text(secrets.token_urlsafe(48))
    check_env = {**env, "OKTA_API_TOKEN": "00" + secrets.token_urlsafe(30)}
    config_check = _run([offboard, "config", "check", "offboard.yaml"], work, check_env)
    assert config_check.returncode == 0, config_check.stderr
    assert "playbooks: incident, leaver" in config_check.stdout

    check = _run([offboard, "check", "playbooks/leaver.yaml", "incident"], work, env)
    assert check.returncode == 0, check.stderr
    assert "order holds" in check.stdout

    demo = _run([offboard, "demo"], work, env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "incident: mallory@example.com" in demo.stdout
    assert "Traceback" not in demo.stderr
