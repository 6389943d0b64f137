"""The playbooks and the starter configuration that ship with offboard: found without a
checkout's directories, overridden by a configured playbook_dirs, and written by
`offboard init` without overwriting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from worker.bundled import playbooks_dir, starter_dir
from worker.cli import main
from worker.config import parse_config
from worker.playbook import find_playbook, load_playbook
from worker.runtime import playbook_search


def _config(**extra: Any) -> Any:
    data: dict[str, Any] = {
        "store": {"sqlite": "offboard.db"},
        "idp": {"okta": {"org_url": "https://x.okta.com", "token": {"env": "T"}}},
        "identity_center": {
            "region": "us-east-1",
            "identity_store_id": "d-1234567890",
            "instance_arn": "arn:aws:sso:::instance/ssoins-1234567890123456",
            "scim": {"url": "https://scim.example/scim/v2", "token": {"env": "T"}},
        },
        **extra,
    }
    return parse_config(data, "test config")


def test_the_shipped_playbooks_are_found_from_an_empty_directory(tmp_path: Path) -> None:
    search = playbook_search(_config(), tmp_path)  # ./playbooks does not exist here
    assert search[-1] == playbooks_dir()
    assert load_playbook(find_playbook("leaver", search)).name == "leaver"
    assert load_playbook(find_playbook("incident", search)).name == "incident"


def test_a_configured_playbook_wins_over_the_shipped_one(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    shipped = yaml.safe_load((playbooks_dir() / "leaver.yaml").read_text())
    shipped["description"] = "our own leaver"
    (mine / "leaver.yaml").write_text(yaml.safe_dump(shipped))
    search = playbook_search(_config(playbook_dirs=["mine"]), tmp_path)
    assert find_playbook("leaver", search) == mine / "leaver.yaml"
    # and one it does not have still comes from offboard
    assert find_playbook("incident", search) == playbooks_dir() / "incident.yaml"


def test_the_package_data_is_the_repositorys_top_level_source() -> None:
    """One source of truth: in a checkout the shipped files are playbooks/ and config/."""
    assert playbooks_dir() == REPO / "playbooks"
    assert starter_dir() == REPO / "config"


def test_init_writes_a_starter_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "new"
    assert main(["init", str(target)]) == 0
    assert (target / "offboard.yaml").read_text() == (
        starter_dir() / "offboard.example.yaml"
    ).read_text()
    assert (target / "offboard.schema.json").is_file()
    assert sorted(p.name for p in (target / "playbooks").iterdir()) == [
        "incident.yaml",
        "leaver.yaml",
    ]
    assert "offboard config check" in capsys.readouterr().out

    (target / "offboard.yaml").write_text("# mine\n")
    assert main(["init", str(target)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "nothing written" in err
    assert (target / "offboard.yaml").read_text() == "# mine\n"
