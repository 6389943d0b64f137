"""`offboard config check` and `offboard config schema`: every problem at once, each with
its dotted path, and never a secret's value."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import REPO
from worker.cli import main
from worker.config import MIN_TOKEN_LENGTH, config_json_schema, parse_config
from worker.configcheck import check_config, summary
from worker.errors import ConfigError
from worker.sandbox.google import make_service_account_key

WHSEC = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="


def minimal() -> dict[str, Any]:
    return {
        "store": {"sqlite": "var/offboard.db"},
        "playbook_dirs": ["playbooks"],
        "idp": {"okta": {"org_url": "https://x.okta.com", "token": {"env": "T_OKTA"}}},
        "identity_center": {
            "region": "us-east-1",
            "identity_store_id": "d-1234567890",
            "instance_arn": "arn:aws:sso:::instance/ssoins-1234567890123456",
            "scim": {"url": "https://scim.example/scim/v2", "token": {"file": "scim-token"}},
        },
        "server": {
            "api_tokens": {"ops": {"env": "T_OPS"}},
            "hr_sources": {"hris": {"kind": "standard-webhooks", "secrets": [{"env": "T_WH"}]}},
        },
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the real playbooks and every secret of `minimal()`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "playbooks").symlink_to(REPO / "playbooks")
    (tmp_path / "scim-token").write_text("scim-token-value-0123456789\n")
    monkeypatch.setenv("T_OKTA", "okta-token-value-0123456789")
    monkeypatch.setenv("T_OPS", "ops-token-value-0123456789")
    monkeypatch.setenv("T_WH", WHSEC)
    return tmp_path


def write(workdir: Path, data: dict[str, Any]) -> Path:
    path = workdir / "offboard.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_valid_config_is_summarised_without_any_secret(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(workdir, minimal())
    report = check_config(path, base_dir=workdir)
    assert report.problems == ()
    assert report.config is not None

    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok" in out
    assert "idp: okta" in out
    assert "store: sqlite var/offboard.db" in out
    assert "sources: hr hris (standard-webhooks, 1 secret)" in out
    assert "api tokens: ops" in out
    assert "playbooks: incident, leaver" in out
    for secret in ("okta-token-value", "ops-token-value", "scim-token-value", WHSEC):
        assert secret not in out


def test_every_problem_is_reported_at_once_with_its_path(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = minimal()
    data["store"]["sqlitex"] = "typo.db"
    data["idp"]["okta"]["token"] = {"env": "OKTA_TOKEN"}
    data["server"]["api_tokens"]["ci"] = {"file": "/nonexistent/run/secrets/x"}
    data["server"]["api_tokens"]["empty"] = {"file": "empty-token"}
    data["identity_center"]["scim"]["token"] = "inline-scim-token-value"
    data["playbook_dirs"] = ["playbooks", "no-such-dir"]
    data["server"]["hr_sources"]["bob"] = {
        "kind": "hibob",
        "secrets": [{"env": "T_OPS"}],
        "playbook": "offboarding",
    }
    (workdir / "empty-token").write_text("\n")
    monkeypatch.delenv("OKTA_TOKEN", raising=False)
    path = write(workdir, data)

    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:-1] == [
        "store.sqlitex: unknown key",
        "identity_center.scim.token: a secret is never written inline: "
        "use {env: NAME} or {file: PATH}",
        "idp.okta.token: environment variable OKTA_TOKEN is not set",
        "server.api_tokens.ci: file /nonexistent/run/secrets/x does not exist",
        "server.api_tokens.empty: secret file empty-token is empty",
        f"playbook_dirs.1: directory {workdir / 'no-such-dir'} does not exist",
        "server.hr_sources.bob.playbook: playbook 'offboarding' not found in playbook_dirs",
    ]
    assert err[-1] == f"offboard: {path}: 7 problem(s)"
    assert not any("inline-scim-token-value" in line for line in err)


def test_a_playbook_that_does_not_parse_is_named(workdir: Path) -> None:
    (workdir / "more").mkdir()
    (workdir / "more" / "broken.yaml").write_text("name: broken\nsteps: []\n")
    data = minimal()
    data["playbook_dirs"] = ["playbooks", "more"]

    report = check_config(write(workdir, data), base_dir=workdir)

    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"playbook_dirs.1: {workdir / 'more' / 'broken.yaml'}: ")


def test_yaml_syntax_errors_name_the_line(workdir: Path) -> None:
    path = workdir / "offboard.yaml"
    path.write_text("idp:\n  okta: [\n")
    report = check_config(path, base_dir=workdir)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{path}: YAML syntax error at line 3")


SECRET_CONTENT = "S3CRET-CONTENT-never-to-be-shown-0123456789"


def test_wrong_secret_content_is_reported_but_never_shown(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each content check fails on a value that must not appear anywhere in the output."""
    (workdir / "key.json").write_text(SECRET_CONTENT)
    monkeypatch.setenv("T_WH", SECRET_CONTENT)
    monkeypatch.setenv("T_DSN", SECRET_CONTENT)
    data = minimal()
    data["store"] = {"postgres": {"env": "T_DSN"}}
    data["idp"] = {
        "google": {"service_account": {"file": "key.json"}, "delegated_admin": "a@example.com"}
    }
    data["notifiers"] = {"webhooks": [{"url": "https://h.example", "secret": {"env": "T_WH"}}]}
    path = write(workdir, data)

    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    problems = captured.err.splitlines()[:-1]
    assert problems == [
        "store.postgres: not a postgresql:// DSN (the value is not shown)",
        "idp.google.service_account: not a service account JSON key file "
        "(the content is not shown)",
        "server.hr_sources.hris: secret #1 is not a Standard Webhooks secret (whsec_<base64>)",
        "notifiers.webhooks.0.secret: not a Standard Webhooks secret (whsec_<base64>)",
    ]
    assert SECRET_CONTENT not in captured.out + captured.err


def test_entra_certificate_and_key_must_belong_together(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.sandbox.entra import make_certificate

    key, _ = make_certificate()
    _, other_certificate = make_certificate()
    monkeypatch.setenv("T_KEY", key)
    monkeypatch.setenv("T_CERT", other_certificate)
    data = minimal()
    data["idp"] = {
        "entra": {
            "tenant_id": "t",
            "client_id": "c",
            "certificate_key": {"env": "T_KEY"},
            "certificate": {"env": "T_CERT"},
        }
    }

    report = check_config(write(workdir, data), base_dir=workdir)

    assert report.problems == (
        "idp.entra.certificate: its public key does not belong to idp.entra.certificate_key",
    )


def test_the_summary_names_references_not_values(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_DSN", "postgresql://offboard:hunter2-password@db/offboard")
    data = minimal()
    data["store"] = {"postgres": {"env": "T_DSN"}}
    report = check_config(write(workdir, data), base_dir=workdir)

    text = "\n".join(summary(report))

    assert "store: postgresql (DSN from env T_DSN)" in text
    assert "hunter2" not in text


def test_the_committed_schema_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    committed = (REPO / "config" / "offboard.schema.json").read_text(encoding="utf-8")
    assert json.loads(committed) == config_json_schema(), (
        "config/offboard.schema.json is stale: offboard config schema > config/offboard.schema.json"
    )
    assert main(["config", "schema"]) == 0
    assert capsys.readouterr().out == committed


def test_the_schema_says_a_secret_is_a_reference() -> None:
    validator = Draft202012Validator(config_json_schema())
    data = minimal()
    assert list(validator.iter_errors(data)) == []
    data["idp"]["okta"]["token"] = "inline"
    data["store"]["sqlitex"] = "typo.db"
    paths = {".".join(map(str, e.absolute_path)) for e in validator.iter_errors(data)}
    # okta is "an OktaConfig or null": the schema reports at that choice
    assert paths == {"idp.okta", "store"}


# --- issue 15: addresses that would carry a token in clear; tokens too short ---------

#: every provider address a token is sent to, by its dotted path (and how to set it)
ADDRESSES: dict[str, tuple[str, ...]] = {
    "idp.okta.org_url": ("idp", "okta", "org_url"),
    "identity_center.scim.url": ("identity_center", "scim", "url"),
    "identity_center.endpoint_url": ("identity_center", "endpoint_url"),
    "idp.entra.graph_url": ("idp", "entra", "graph_url"),
    "idp.entra.login_url": ("idp", "entra", "login_url"),
    "idp.google.directory_url": ("idp", "google", "directory_url"),
    "idp.google.token_url": ("idp", "google", "token_url"),
    "notifiers.webhooks.0.url": ("notifiers", "webhooks", "0", "url"),
}


def _with_address(path: str, value: str) -> dict[str, Any]:
    data = minimal()
    if path.startswith("idp.entra."):
        data["idp"] = {
            "entra": {"tenant_id": "t", "client_id": "c", "client_secret": {"env": "T_OKTA"}}
        }
    elif path.startswith("idp.google."):
        data["idp"] = {
            "google": {"service_account": {"env": "T_KEY"}, "delegated_admin": "a@example.com"}
        }
    elif path.startswith("notifiers."):
        data["notifiers"] = {"webhooks": [{"url": "https://x.example", "secret": {"env": "T_WH"}}]}
    node: Any = data
    *parents, last = ADDRESSES[path]
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return data


@pytest.mark.parametrize("path", sorted(ADDRESSES))
@pytest.mark.parametrize(
    "value", ["http://provider.example/api", "provider.example/api", "ftp://provider.example"]
)
def test_a_provider_address_in_clear_or_without_a_scheme_is_refused_with_its_path(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, path: str, value: str
) -> None:
    monkeypatch.setenv("T_KEY", make_service_account_key())
    data = _with_address(path, value)

    report = check_config(write(workdir, data), base_dir=workdir)

    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"{path}: "), report.problems
    if value.startswith("http://"):
        assert "https://" in report.problems[0] and "loopback" in report.problems[0]
    with pytest.raises(ConfigError, match=re.escape(path)):  # at load as well
        parse_config(data, "offboard.yaml")


@pytest.mark.parametrize(
    "value",
    [
        "https://provider.example/api",
        "http://127.0.0.1:18080",
        "http://127.8.9.10/x",
        "http://[::1]:8080/x",
        "http://localhost:9000",
    ],
)
def test_https_anywhere_and_http_on_loopback_are_accepted(workdir: Path, value: str) -> None:
    for path in ("idp.okta.org_url", "identity_center.scim.url", "notifiers.webhooks.0.url"):
        report = check_config(write(workdir, _with_address(path, value)), base_dir=workdir)
        assert report.problems == (), (path, report.problems)


def test_secret_addresses_are_held_to_the_same_rule_and_never_shown(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slack webhook URL and a Google key file's token_uri are secrets' contents."""
    slack = "http://hooks.slack.example/services/T0/B0/secret-part"
    monkeypatch.setenv("T_SLACK", slack)
    key = json.loads(make_service_account_key())
    key["token_uri"] = "http://oauth2.example/token"
    monkeypatch.setenv("T_KEY", json.dumps(key))
    data = minimal()
    data["idp"] = {
        "google": {"service_account": {"env": "T_KEY"}, "delegated_admin": "a@example.com"}
    }
    data["notifiers"] = {"slack": {"webhook_url": {"env": "T_SLACK"}}}

    report = check_config(write(workdir, data), base_dir=workdir)

    problems = sorted(report.problems)
    assert [p.split(":")[0] for p in problems] == [
        "idp.google.service_account",
        "notifiers.slack.webhook_url",
    ], problems
    assert all("https://" in p for p in problems)
    assert not any("secret-part" in p or "oauth2.example" in p for p in problems)


@pytest.mark.parametrize(
    ("variable", "path"),
    [
        ("T_OPS", "server.api_tokens.ops"),
        ("T_OKTA", "idp.okta.token"),
        ("T_BEARER", "server.incident_sources.soar"),
    ],
)
def test_a_token_shorter_than_the_minimum_is_refused_unshown(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    path: str,
) -> None:
    monkeypatch.setenv("T_BEARER", "soar-token-0123456789")
    monkeypatch.setenv(variable, "abc")
    data = minimal()
    data["server"]["incident_sources"] = {
        "soar": {"kind": "bearer", "secrets": [{"env": "T_BEARER"}]}
    }

    assert main(["config", "check", str(write(workdir, data))]) == 2

    err = capsys.readouterr().err.splitlines()[:-1]
    assert len(err) == 1 and err[0].startswith(f"{path}: "), err
    assert f"at least {MIN_TOKEN_LENGTH} characters" in err[0]
    assert "abc" not in err[0].removeprefix(path)


def test_a_short_scim_token_file_is_refused(workdir: Path) -> None:
    (workdir / "scim-token").write_text("short\n")
    report = check_config(write(workdir, minimal()), base_dir=workdir)
    assert [p.split(":")[0] for p in report.problems] == ["identity_center.scim.token"]


def test_the_minimum_token_length_is_sixteen() -> None:
    # 16 characters of a random token are ~96 bits (base64) or 64 (hex): no online guess
    assert MIN_TOKEN_LENGTH == 16


def test_standard_webhooks_secrets_must_carry_the_whsec_prefix(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operating.md: a Standard Webhooks secret is `whsec_<base64>`; base64 alone
    (which the library would take) or a prefix with nothing usable after it is refused,
    for a trigger source and for a notifier alike."""
    bare = WHSEC.removeprefix("whsec_")
    monkeypatch.setenv("T_BARE", bare)
    monkeypatch.setenv("T_EMPTY", "whsec_!!")
    data = minimal()
    data["server"]["hr_sources"]["hris"]["secrets"] = [{"env": "T_BARE"}]
    data["notifiers"] = {
        "webhooks": [
            {"url": "https://h.example", "secret": {"env": "T_BARE"}},
            {"url": "https://h.example", "secret": {"env": "T_EMPTY"}},
        ]
    }
    path = write(workdir, data)

    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[:-1] == [
        "server.hr_sources.hris: secret #1 is not a Standard Webhooks secret (whsec_<base64>)",
        "notifiers.webhooks.0.secret: not a Standard Webhooks secret (whsec_<base64>)",
        "notifiers.webhooks.1.secret: not a Standard Webhooks secret (whsec_<base64>)",
    ]
    assert bare not in captured.out + captured.err
