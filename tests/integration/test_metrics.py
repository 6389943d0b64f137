"""`/metrics` after real cases against the sandbox: step durations, provider calls
counted against the emulators' own audit log, throttles, operator tasks, countdowns
and drift. The metric names are fixed: deploy/prometheus/alerts.yaml relies on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.flows import contain
from worker.cases import drive_case, open_case
from worker.clock import ManualClock, seconds_until
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.metrics import Metrics
from worker.runtime import Runtime, open_runtime
from worker.sandbox import Sandbox, SeededUser
from worker.sandbox.common import FaultRule
from worker.web.app import build_app
from worker.worker import Worker

#: every name the alert rules in deploy/prometheus/alerts.yaml are written against
ALERTED = (
    "offboard_cases",
    "offboard_step_duration_seconds",
    "offboard_provider_calls_total",
    "offboard_provider_errors_total",
    "offboard_provider_throttles_total",
    "offboard_countdowns_open",
    "offboard_next_lapse_seconds",
    "offboard_operator_tasks_waiting",
    "offboard_operator_task_oldest_age_seconds",
    "offboard_drift_detected_total",
    "offboard_triggers_total",
)

#: the emulators' endpoint prefixes (their audit log's names) by the provider label
PROVIDER_ENDPOINTS = {
    "okta": ("okta.",),
    "identity_center": ("identitystore.", "sso-admin."),
    "scim": ("scim.",),
}


class Scrape:
    """One /metrics answer, parsed as Prometheus would."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))

    def exported(self) -> set[str]:
        """The names as written on the TYPE lines (the parser drops a counter's _total)."""
        return {f.name + "_total" if f.type == "counter" else f.name for f in self.families}

    def value(self, sample: str, **labels: str) -> float:
        """The sum of the samples of this name whose labels include these."""
        return sum(
            s.value
            for f in self.families
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, sample: str, label: str) -> set[str]:
        return {s.labels[label] for f in self.families for s in f.samples if s.name == sample}


async def scrape(runtime: Runtime) -> Scrape:
    app = build_app(runtime, run_worker=False)
    async with TestClient(TestServer(app)) as http:
        response = await http.get("/metrics")
        assert response.status == 200
        assert response.content_type == "text/plain"
        return Scrape(await response.text())


def audit_calls(sandbox: Sandbox, provider: str) -> int:
    prefixes = PROVIDER_ENDPOINTS[provider]
    return sum(n for e, n in sandbox.audit.calls.items() if e.startswith(prefixes))


def audit_throttled(sandbox: Sandbox, provider: str) -> int:
    prefixes = PROVIDER_ENDPOINTS[provider]
    return sum(n for e, n in sandbox.audit.throttled.items() if e.startswith(prefixes))


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sandbox(monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> AsyncIterator[Sandbox]:
    # the emulators and the worker share one controllable clock
    async with Sandbox(clock=clock) as sb:
        for name, value in sb.environment().items():
            monkeypatch.setenv(name, value)
        yield sb


@pytest.fixture
async def runtime(
    config_data: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Runtime]:
    config = parse_config(config_data, "test")
    async with open_runtime(config, base_dir=tmp_path, clock=clock) as rt:
        yield rt


async def test_every_alerted_metric_is_exported_even_before_any_case(runtime: Runtime) -> None:
    metrics = await scrape(runtime)
    missing = set(ALERTED) - metrics.exported()
    assert not missing, f"/metrics lacks {sorted(missing)}"
    for name in ALERTED:
        assert f"# TYPE {name} " in metrics.text
    assert metrics.value("offboard_countdowns_open") == 0
    assert metrics.value("offboard_next_lapse_seconds") == 0
    assert metrics.value("offboard_operator_task_oldest_age_seconds") == 0
    assert metrics.value("offboard_drift_detected_total") == 0


async def test_a_leaver_case_is_timed_step_by_step_and_every_call_counted(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    case = await contain(runtime, sandbox, leaver)
    assert case.status is CaseStatus.CONTAINED
    metrics = await scrape(runtime)

    count = "offboard_step_duration_seconds_count"
    for step in runtime.playbook("leaver").steps:
        assert metrics.value(count, playbook="leaver", action=step.action, outcome="done") == 1
    # the console-only step opened a task first, then was confirmed
    assert metrics.value(count, action="identity_center.portal_sessions", outcome="waiting") == 1
    assert metrics.labels(count, "outcome") == {"done", "waiting"}
    assert metrics.value("offboard_step_duration_seconds_sum") > 0

    # the emulators counted every request they received: the independent count
    for provider in PROVIDER_ENDPOINTS:
        calls = metrics.value("offboard_provider_calls_total", provider=provider)
        assert calls == audit_calls(sandbox, provider) > 0, provider
    assert metrics.labels("offboard_provider_calls_total", "provider") == set(PROVIDER_ENDPOINTS)
    # issue 13: the disable reads the user's applications too, without an error
    errors = "offboard_provider_errors_total"
    assert metrics.value(errors) == metrics.value(errors, provider="identity_center") == 0
    assert metrics.value(errors, provider="identity_center", kind="permanent") == 0
    assert metrics.value("offboard_provider_throttles_total") == 0
    assert metrics.value("offboard_cases", state="contained", playbook="leaver") == 1


async def test_throttles_and_errors_are_counted_by_provider_and_kind(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    for endpoint in ("okta.get_user", "identitystore.GetUserId"):
        sandbox.faults.add(FaultRule(endpoint=endpoint, kind="throttle", count=1, retry_after=0.05))
    sandbox.faults.add(FaultRule(endpoint="scim.patch_user", kind="error", count=2, status=503))
    before = await scrape(runtime)
    case = await contain(runtime, sandbox, leaver)
    assert case.status is CaseStatus.CONTAINED
    after = await scrape(runtime)

    throttles = "offboard_provider_throttles_total"
    errors = "offboard_provider_errors_total"
    for provider in ("okta", "identity_center"):
        assert before.value(throttles, provider=provider) == 0
        assert after.value(throttles, provider=provider) == audit_throttled(sandbox, provider) == 1
        assert after.value(errors, provider=provider, kind="transient") == 1
    assert after.value(errors, provider="scim", kind="transient") == 2
    assert after.value(throttles, provider="scim") == 0
    assert after.value(errors, kind="permanent") == 0
    assert after.value(errors, provider="identity_center", kind="permanent") == 0
    # the refused requests were sent, and counted, too
    for provider in PROVIDER_ENDPOINTS:
        calls = after.value("offboard_provider_calls_total", provider=provider)
        assert calls == audit_calls(sandbox, provider), provider


async def test_a_permanent_refusal_is_counted_and_the_step_failed(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser
) -> None:
    sandbox.faults.add(FaultRule(endpoint="okta.deactivate", kind="error", count=1, status=403))
    case = await contain(runtime, sandbox, leaver)
    assert case.status is CaseStatus.HALTED
    metrics = await scrape(runtime)
    assert metrics.value("offboard_provider_errors_total", provider="okta", kind="permanent") == 1
    failed = metrics.value(
        "offboard_step_duration_seconds_count", action="idp.deactivate_user", outcome="failed"
    )
    assert failed == 1
    assert metrics.value("offboard_cases", state="halted", playbook="leaver") == 1


async def test_an_operator_task_waiting_shows_its_age(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, clock: ManualClock
) -> None:
    case, _ = await open_case(runtime, runtime.playbook("leaver"), leaver.login, {})
    case = await drive_case(runtime, case.id)
    assert case.status is CaseStatus.WAITING
    [task] = await runtime.store.open_tasks()
    clock.advance(timedelta(minutes=25))

    metrics = await scrape(runtime)
    assert metrics.value("offboard_operator_tasks_waiting") == 1
    age = metrics.value("offboard_operator_task_oldest_age_seconds")
    assert age == pytest.approx(seconds_until(clock.now(), task.opened_at))
    assert age >= 25 * 60
    assert metrics.value("offboard_cases", state="waiting", playbook="leaver") == 1


async def test_the_countdown_after_containment_and_after_it_lapsed(
    runtime: Runtime, sandbox: Sandbox, leaver: SeededUser, clock: ManualClock
) -> None:
    case = await contain(runtime, sandbox, leaver)
    timers = await runtime.store.timers(case.id)
    first = min(t.due_at for t in timers if t.fired_at is None)

    metrics = await scrape(runtime)
    assert metrics.value("offboard_countdowns_open") == 1
    lapse = metrics.value("offboard_next_lapse_seconds")
    assert lapse == pytest.approx(seconds_until(first, clock.now()))
    assert 0 < lapse <= 3600  # new-sessions-end: an hour after the disable at most

    clock.advance(timedelta(hours=14))
    await Worker(runtime).tick()  # fires every milestone; all-lapsed closes the case
    metrics = await scrape(runtime)
    assert metrics.value("offboard_countdowns_open") == 0
    assert metrics.value("offboard_next_lapse_seconds") == 0
    assert metrics.value("offboard_cases", state="access_lapsed", playbook="leaver") == 1


async def test_drift_is_counted_from_the_store_so_every_replica_sees_it(
    runtime: Runtime,
    sandbox: Sandbox,
    leaver: SeededUser,
    clock: ManualClock,
    config_data: dict[str, Any],
    tmp_path: Path,
) -> None:
    await contain(runtime, sandbox, leaver)
    worker = Worker(runtime)
    assert await worker.watchdog_pass() == 0
    assert (await scrape(runtime)).value("offboard_drift_detected_total") == 0

    clock.advance(timedelta(minutes=20))
    sandbox.okta.reactivate(leaver.login)
    sandbox.identity_center.set_user_status(leaver.ic_user_id, "ENABLED", actor="scim-push")
    assert await worker.watchdog_pass() == 1
    metrics = await scrape(runtime)
    assert metrics.value("offboard_drift_detected_total") == 1
    assert [f.type for f in metrics.families if f.name == "offboard_drift_detected"] == ["counter"]

    # another replica on the same store, which did none of the work
    config = parse_config(config_data, "test")
    other_metrics = Metrics()
    async with open_runtime(config, base_dir=tmp_path, clock=clock, metrics=other_metrics) as other:
        assert other.metrics is other_metrics
        replica = await scrape(other)
    assert replica.value("offboard_drift_detected_total") == 1
    assert replica.value("offboard_countdowns_open") == 1
    assert replica.value("offboard_cases", state="contained", playbook="leaver") == 1
    # the process-local metrics are its own: it ran no step and called no provider
    assert replica.value("offboard_step_duration_seconds_count") == 0
    assert replica.value("offboard_provider_calls_total") == 0

    # the count holds once the case has closed, and is read once settled
    clock.advance(timedelta(hours=16))
    await worker.tick()
    assert (await scrape(runtime)).value("offboard_drift_detected_total") == 1
    clock.advance(timedelta(hours=2))
    assert (await scrape(runtime)).value("offboard_drift_detected_total") == 1
    assert (await scrape(runtime)).value("offboard_cases", state="access_lapsed") == 1


async def test_a_scrape_counts_in_the_store_and_loads_no_case(
    runtime: Runtime,
    sandbox: Sandbox,
    leaver: SeededUser,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contained = await contain(runtime, sandbox, leaver)
    waiting, _ = await open_case(
        runtime, runtime.playbook("leaver"), sandbox.seed_leaver("second@example.com").login, {}
    )
    assert (await drive_case(runtime, waiting.id)).status is CaseStatus.WAITING
    await runtime.store.append_event(
        contained.id, "drift_detected", clock.now(), step_id=None, data={}
    )
    clock.advance(timedelta(minutes=5))

    async def loads_cases(*args: object, **kwargs: object) -> None:
        raise AssertionError("a scrape must not load cases, timelines, steps or tasks")

    # what a scrape used to read per case: every case, then each one's timeline
    for method in ("list_cases", "events", "steps", "open_tasks", "get_case"):
        monkeypatch.setattr(runtime.store, method, loads_cases)
    metrics = await scrape(runtime)
    assert metrics.value("offboard_cases", state="contained", playbook="leaver") == 1
    assert metrics.value("offboard_cases", state="waiting", playbook="leaver") == 1
    assert metrics.value("offboard_cases") == 2
    # the waiting case's countdown runs too: its Identity Center user is disabled
    assert metrics.value("offboard_countdowns_open") == 2
    assert metrics.value("offboard_operator_tasks_waiting") == 1
    assert metrics.value("offboard_operator_task_oldest_age_seconds") >= 5 * 60
    assert metrics.value("offboard_drift_detected_total") == 1
