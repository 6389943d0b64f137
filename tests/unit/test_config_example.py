"""The shipped configurations are valid, pass `offboard config check`, and say what they need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import REPO
from worker.config import SecretRef, load_config, secret_references
from worker.configcheck import check_config, summary
from worker.errors import ConfigError


def test_example_config_parses_and_needs_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(REPO / "config" / "offboard.example.yaml")
    assert config.identity_center.identity_source == "scim"
    assert config.idp.okta is not None
    monkeypatch.delenv("OKTA_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"idp\.okta\.token: environment variable OKTA_API_TOKEN"):
        config.idp.okta.token.resolve("idp.okta.token")
    monkeypatch.setenv("OKTA_API_TOKEN", "x" * 20)
    secret = config.idp.okta.token.resolve("idp.okta.token")
    assert "x" * 20 not in repr(secret) and "x" * 20 not in str(secret)


# --- every shipped configuration passes `config check` -------------------------------

CONFIGS = sorted(
    [*(REPO / "config").glob("*.yaml"), *(REPO / "config" / "examples").glob("*.yaml")]
)
WHSEC = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="


def test_there_is_an_example_for_each_provider_and_store() -> None:
    texts = [path.read_text() for path in CONFIGS]
    for needle in ("okta:", "entra:", "google:", "sqlite:", "postgres:"):
        assert any(needle in text for text in texts), needle


def header_comment(text: str) -> str:
    """The comment block a file opens with: where it documents the secrets it reads."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def entra_certificate() -> tuple[str, str]:
    from worker.sandbox.entra import make_certificate

    return make_certificate()


def dummy_secret(path: str, entra_certificate: tuple[str, str]) -> str:
    """A value of the shape the setting needs (the content checks run too)."""
    from worker.sandbox.google import make_service_account_key

    if path == "store.postgres":
        return "postgresql://offboard:password@db.example/offboard"
    if path == "idp.google.service_account":
        return make_service_account_key()
    if path == "idp.entra.certificate_key":
        return entra_certificate[0]
    if path == "idp.entra.certificate":
        return entra_certificate[1]
    if path == "notifiers.slack.webhook_url":
        return "https://hooks.slack.com/services/T0/B0/x"
    if "_sources." in path or path.startswith("notifiers.webhooks."):
        return WHSEC
    return "dummy-secret-value-0123456789"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_config_passes_config_check_given_what_it_documents(
    path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    entra_certificate: tuple[str, str],
) -> None:
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    header = header_comment(text)
    monkeypatch.chdir(tmp_path)  # relative secret files and playbook_dirs resolve here
    (tmp_path / "playbooks").symlink_to(REPO / "playbooks")
    for where, raw in secret_references(data):
        ref = SecretRef.model_validate(raw)
        name = ref.env or ref.file
        assert name is not None and name in header, f"{where}: {name} is not in the header"
        value = dummy_secret(where, entra_certificate)
        if ref.env is not None:
            monkeypatch.setenv(ref.env, value)
        else:
            assert ref.file is not None and not Path(ref.file).is_absolute(), (
                f"{where}: examples use relative secret files, so they can be checked here"
            )
            (tmp_path / ref.file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / ref.file).write_text(value)

    report = check_config(path, base_dir=tmp_path)

    assert report.problems == ()
    assert "playbooks: incident, leaver" in "\n".join(summary(report))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_config_validates_against_the_json_schema(path: Path) -> None:
    schema = json.loads((REPO / "config" / "offboard.schema.json").read_text())
    data = yaml.safe_load(path.read_text(encoding="utf-8"))

    assert [e.message for e in Draft202012Validator(schema).iter_errors(data)] == []
    assert load_config(path) is not None  # and through pydantic
