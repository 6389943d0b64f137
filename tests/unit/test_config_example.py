"""The shipped example configuration is valid and says what it needs."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from worker.config import load_config
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
