"""The operations every front end shares (CLI now, HTTP API later): open a case,
drive it, confirm an operator task, and assemble the runtime from configuration."""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog

from worker.actions import DENY_ROLE_SESSIONS
from worker.clock import Clock, SystemClock, seconds_until
from worker.config import Config
from worker.domain import Case, CaseStatus, NewCase, OperatorTask, Refusal, StepStatus
from worker.engine import Engine, EngineSettings
from worker.errors import CaseStarted, NotFound, OffboardError
from worker.ledger import Ledger
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

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: case states in which nothing more will happen without a human
FINAL = (
    CaseStatus.CONTAINED,
    CaseStatus.HALTED,
    CaseStatus.ACCESS_LAPSED,
    CaseStatus.CANCELLED,
)


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
                config.identity_center, http, limits["identity-center"], metrics=metrics
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


class ProtectedIdentity(OffboardError):
    """A break-glass or service identity that no trigger may offboard."""


#: a login: printable ASCII without spaces, exactly one @ (the OpenAPI document says the same)
LOGIN = re.compile(r"[!-?A-~]+@[!-?A-~]+")


def is_login(subject: str) -> bool:
    return LOGIN.fullmatch(subject) is not None


def protected_pattern(subject: str, patterns: list[str]) -> str | None:
    lowered = subject.lower()
    return next((p for p in patterns if fnmatch.fnmatchcase(lowered, p.lower())), None)


async def open_case(
    runtime: Runtime,
    playbook: Playbook,
    subject: str,
    trigger: dict[str, Any],
    *,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[Case, bool]:
    """A new case, or the open case this playbook already has for this person.

    Re-running a command after a crash resumes instead of starting twice; a later
    trigger for a termination not yet started moves it to the new time."""
    subject = subject.strip()
    if not is_login(subject):
        raise OffboardError(f"the subject must be the person's login (an email), not {subject!r}")
    pattern = protected_pattern(subject, runtime.config.protected_identities)
    if pattern is not None:
        reason = f"{subject} is a protected identity (matches {pattern!r}): never offboarded"
        await runtime.store.record_refusal(
            Refusal(
                at=runtime.clock.now(),
                source=str(trigger.get("source", "unknown")),
                subject=subject,
                reason=reason,
            )
        )
        raise ProtectedIdentity(reason)
    existing = await runtime.store.find_open_case(subject, playbook.name)
    if existing is not None:
        due = run_after or runtime.clock.now()
        scheduled = existing.status is CaseStatus.PENDING and existing.run_after is not None
        if scheduled and existing.run_after != due:
            with contextlib.suppress(CaseStarted):  # it started meanwhile: leave it be
                existing = await runtime.store.reschedule_case(
                    existing.id, due, runtime.clock.now()
                )
        return existing, False
    return await runtime.store.create_case(
        playbook_case(
            playbook, subject, trigger, run_after=run_after, idempotency_key=idempotency_key
        ),
        runtime.clock.now(),
    )


def playbook_case(
    playbook: Playbook,
    subject: str,
    trigger: dict[str, Any],
    *,
    run_after: datetime | None = None,
    idempotency_key: str | None = None,
) -> NewCase:
    """The case a playbook makes for a person: its steps, at its priority."""
    return NewCase(
        playbook=playbook.name,
        subject=subject,
        steps=playbook.steps,
        trigger=trigger,
        priority=playbook.priority,
        run_after=run_after,
        idempotency_key=idempotency_key,
    )


async def drive_case(runtime: Runtime, case_id: str) -> Case:
    """Run one case until it needs a human or is finished, waiting out leases and retries."""
    store, engine, clock = runtime.store, runtime.engine, runtime.clock
    while True:
        case = await store.get_case(case_id)
        if case.status in FINAL or case.status is CaseStatus.WAITING:
            return case
        claimed = await store.claim_case(
            case_id, engine.worker_id, clock.now(), engine.settings.lease_seconds
        )
        if claimed is None:
            # Held by another (perhaps dead) worker, or not due yet: wait for the lease or timer.
            wake = case.lease_expires_at if case.status is CaseStatus.RUNNING else case.run_after
            delay = 0.5 if wake is None else max(0.05, min(5.0, seconds_until(wake, clock.now())))
            if case.status is CaseStatus.RUNNING:
                log.info(
                    "case_held_elsewhere", case_id=case_id, holder=case.lease_owner, wait=delay
                )
            await clock.sleep(delay)
            continue
        await engine.run_claimed(claimed)


async def confirm_task(
    runtime: Runtime, case_id: str, step_id: str, confirmed_by: str
) -> OperatorTask:
    """Record an operator's confirmation and make the case runnable again."""
    case = await runtime.store.get_case(case_id)
    if step_id not in {s.id for s in case.steps}:
        known = ", ".join(s.id for s in case.steps)
        raise OffboardError(f"case {case_id} has no step {step_id!r} (steps: {known})")
    task = await runtime.store.get_task(case_id, step_id)
    if task is None:
        raise NotFound(f"case {case_id} has no open operator task for step {step_id!r}")
    task = await runtime.store.confirm_task(case_id, step_id, confirmed_by, runtime.clock.now())
    await runtime.store.append_event(
        case_id,
        "operator_confirmed",
        runtime.clock.now(),
        step_id=step_id,
        data={"confirmed_by": confirmed_by},
    )
    steps = await runtime.store.steps(case_id)
    if any(s.step_id == step_id and s.status is StepStatus.WAITING for s in steps):
        await runtime.store.resume_case(case_id, runtime.clock.now())
    return task


async def remove_deny_statements(runtime: Runtime) -> list[tuple[str, list[str]]]:
    """Take our deny statements off permission sets once a case's access has lapsed,
    so permission sets do not grow forever. Returns (case, permission sets) cleaned."""
    ic = runtime.providers.identity_center
    cleaned: list[tuple[str, list[str]]] = []
    for case in await runtime.store.list_cases((CaseStatus.ACCESS_LAPSED,)):
        steps = await runtime.store.steps(case.id)
        deny = next(
            (
                s
                for s in steps
                if s.action == DENY_ROLE_SESSIONS.name and s.status is StepStatus.DONE
            ),
            None,
        )
        events = await runtime.store.events(case.id)
        if deny is None or any(e.kind == "deny_removed" for e in events):
            continue
        user_id = str(deny.evidence["ic_user_id"])
        ledger = Ledger(
            store=runtime.store,
            clock=runtime.clock,
            policy=runtime.engine.policy,
            case_id=case.id,
            step_id=deny.step_id,
            verify_timeout=runtime.engine.settings.verify_timeout,
            verify_interval=runtime.config.worker.verify_interval_seconds,
        )
        changed: list[str] = []
        for arn in deny.evidence.get("permission_sets", []):
            _, removal = await ledger.mutate(
                operation="sso-admin.PutInlinePolicy",
                entry_key=f"deny-remove:{arn}",
                read=partial(ic.deny_policy, arn, user_id),
                reached=lambda policy: not policy.denies,
                act=ic.remove_deny,
                verify=False,
            )
            if not removal["acted"]:
                continue
            request = await ledger.call("ProvisionPermissionSet", partial(ic.provision, arn))
            await ledger.poll_until("ProvisioningStatus", partial(ic.provisioned, request), bool)
            changed.append(arn)
        await runtime.store.append_event(
            case.id,
            "deny_removed",
            runtime.clock.now(),
            step_id=None,
            data={"permission_sets": changed},
        )
        cleaned.append((case.id, changed))
    return cleaned


async def retry_case(runtime: Runtime, case_id: str, retried_by: str) -> Case:
    """Run a halted case again from the step that failed, once a human fixed the cause."""
    case = await runtime.store.get_case(case_id)
    if case.status is not CaseStatus.HALTED:
        raise OffboardError(f"case {case_id} is {case.status.value}, not halted: nothing to retry")
    await runtime.store.append_event(
        case_id,
        "case_retried",
        runtime.clock.now(),
        step_id=None,
        data={"retried_by": retried_by, "halt_reason": case.halt_reason},
    )
    return await runtime.store.resume_case(case_id, runtime.clock.now())
