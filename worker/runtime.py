"""The runtime: the store, the providers, the engine and the clock a process works
with, assembled from configuration, and where its playbooks are found."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from worker.admission import Admissions
from worker.clock import Clock, SystemClock
from worker.config import Config
from worker.engine import Engine, EngineSettings
from worker.intake import Intake
from worker.metrics import Metrics
from worker.notify import Notifier, notifier_from_config, record_in_timeline
from worker.playbook import Playbook, find_playbook, load_playbook
from worker.providers import identity_provider
from worker.providers.identity_center import AwsIdentityCenter
from worker.ratelimit import Limits
from worker.steps import Providers
from worker.store.base import Store
from worker.store.postgres import PostgresStore
from worker.store.sqlite import SqliteStore


@dataclass(frozen=True, kw_only=True)
class Runtime:
    config: Config
    store: Store
    providers: Providers
    engine: Engine
    clock: Clock
    base_dir: Path
    #: the process's Prometheus metrics, shared by the engine, the providers and /metrics
    metrics: Metrics = field(default_factory=Metrics)
    #: the process's client-side rate limiters, by provider, shared by every case
    limits: Limits = field(default_factory=lambda: Limits({}))

    def playbook_dirs(self) -> list[Path]:
        return [
            Path(d) if Path(d).is_absolute() else self.base_dir / d
            for d in self.config.playbook_dirs
        ]

    def playbook(self, name_or_path: str) -> Playbook:
        return load_playbook(find_playbook(name_or_path, self.playbook_dirs()))

    def playbook_names(self) -> list[str]:
        names: set[str] = set()
        for directory in self.playbook_dirs():
            names.update(p.stem for p in directory.glob("*.yaml"))
        return sorted(names)

    def admissions(self, *, intake: Intake | None = None) -> Admissions:
        """The admission path (worker/admission.py) over this runtime's store; the
        server's, with an intake, groups its webhooks' commits."""
        return Admissions(
            self.store, self.clock.now, protected=self.config.protected_identities, intake=intake
        )


@contextlib.asynccontextmanager
async def open_store(config: Config, base_dir: Path) -> AsyncIterator[Store]:
    store: Store
    if config.store.postgres is not None:
        store = PostgresStore(config.store.postgres.resolve("store.postgres").reveal())
    else:
        path = Path(config.store.sqlite)
        store = SqliteStore(path if path.is_absolute() else base_dir / path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def open_runtime(
    config: Config,
    *,
    base_dir: Path,
    clock: Clock | None = None,
    worker_id: str | None = None,
    notifier: Notifier | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[Runtime]:
    clock = clock or SystemClock()
    metrics = metrics or Metrics()
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(config, base_dir))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        if notifier is None:
            fanout = notifier_from_config(
                config.notifiers, http, record=record_in_timeline(store, clock), clock=clock
            )
            # closes before the store and the session: deliveries in flight finish
            # (or are cancelled after 20 s) and are recorded in the case timeline
            stack.push_async_callback(fanout.aclose, 20.0)
            notifier = fanout
        limits = config.limits.limits()
        idp = identity_provider(config.idp, http, limits, clock, metrics)
        ic = await stack.enter_async_context(
            AwsIdentityCenter(
                config.identity_center,
                http,
                limits["identity-center"],
                metrics=metrics,
                clock=clock,
            )
        )
        providers = Providers(idp=idp, identity_center=ic)
        settings = EngineSettings(
            lease_seconds=config.worker.lease_seconds,
            verify_timeout=config.worker.verify_timeout_seconds,
            verify_interval=config.worker.verify_interval_seconds,
            requeue_after=config.worker.requeue_after_seconds,
        )
        engine = Engine(
            store=store,
            providers=providers,
            clock=clock,
            policy=config.retry.policy(),
            settings=settings,
            sessions=config.countdown.settings(),
            notifier=notifier,
            worker_id=worker_id,
            metrics=metrics,
        )
        yield Runtime(
            config=config,
            store=store,
            providers=providers,
            engine=engine,
            clock=clock,
            base_dir=base_dir,
            metrics=metrics,
            limits=limits,
        )
