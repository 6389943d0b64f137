"""Adapters to the outside world, one protocol per role."""

from __future__ import annotations

import aiohttp

from worker.clock import Clock
from worker.config import IdpConfig
from worker.metrics import Metrics
from worker.providers.base import IdentityProvider
from worker.ratelimit import Limits


def identity_provider(
    config: IdpConfig,
    http: aiohttp.ClientSession,
    limits: Limits,
    clock: Clock,
    metrics: Metrics | None = None,
) -> IdentityProvider:
    """The configured IdP (configuration guarantees exactly one)."""
    if config.entra is not None:
        from worker.providers.entra import Entra

        return Entra(config.entra, http, limits["entra"], clock=clock, metrics=metrics)
    if config.google is not None:
        from worker.providers.google import GoogleWorkspace

        return GoogleWorkspace(config.google, http, limits["google"], clock=clock, metrics=metrics)
    from worker.providers.okta import Okta

    assert config.okta is not None
    return Okta(config.okta, http, limits["okta"], metrics=metrics, buckets=limits)
