"""Prometheus metrics: one registry per runtime, shared by the engine, the providers and
`/metrics`. The names are fixed: deploy/prometheus/alerts.yaml is written against them.

Two kinds live here:

- process-local: step durations and provider calls, counted where they happen (the
  engine's step loop, the one HTTP client of the REST providers, Identity Center's
  call wrapper). Each replica exports its own; sum them across replicas.
- store-derived: cases, countdowns, operator tasks and drift, read from the store at
  scrape time (`refresh`) by aggregate queries, so every replica exports the same,
  right, values (take `max`, not `sum`, across replicas). Nothing is queried per step,
  and a scrape loads no case.

docs/metrics.md lists each metric with its labels and meaning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from worker.clock import seconds_until
from worker.errors import ProviderError, TransientError
from worker.store.base import Store

#: 10 ms (a cached read) to 10 min (a verification that polls, a provisioning to wait for)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

#: what a provider says when it means "slow down": AWS's codes and Google's 403 reasons
THROTTLE_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "quotaExceeded",
    }
)

#: the event the drift watchdog records for each re-enabled user it finds
DRIFT_EVENT = "drift_detected"


@dataclass(frozen=True, kw_only=True)
class StoreSnapshot:
    """What the store said at the last scrape."""

    cases: dict[tuple[str, str], int] = field(default_factory=dict)
    countdowns_open: int = 0
    next_lapse_seconds: float = 0.0
    tasks_waiting: int = 0
    oldest_task_age_seconds: float = 0.0
    drift_detected: int = 0


class _StoreCollector:
    """Exports the last snapshot: gauges, and the drift count as a counter."""

    def __init__(self) -> None:
        self.snapshot = StoreSnapshot()

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        cases = GaugeMetricFamily(
            "offboard_cases", "Cases by state and playbook", labels=["state", "playbook"]
        )
        for (state, playbook), count in sorted(s.cases.items()):
            cases.add_metric([state, playbook], count)
        yield cases
        yield GaugeMetricFamily(
            "offboard_countdowns_open",
            "Cases whose residual-access countdown runs and has not reached all-lapsed",
            value=s.countdowns_open,
        )
        yield GaugeMetricFamily(
            "offboard_next_lapse_seconds",
            "Seconds until the earliest unfired milestone (negative: overdue; 0: none)",
            value=s.next_lapse_seconds,
        )
        yield GaugeMetricFamily(
            "offboard_operator_tasks_waiting",
            "Operator tasks not yet confirmed",
            value=s.tasks_waiting,
        )
        yield GaugeMetricFamily(
            "offboard_operator_task_oldest_age_seconds",
            "Age of the oldest unconfirmed operator task (0: none)",
            value=s.oldest_task_age_seconds,
        )
        yield CounterMetricFamily(
            "offboard_drift_detected",
            "Re-enabled users found by the drift watchdog (from the cases' durable events)",
            value=s.drift_detected,
        )


class Metrics:
    """The registry and every metric of one runtime."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.triggers = Counter(
            "offboard_triggers_total",
            "Trigger deliveries by source and outcome",
            ["purpose", "source", "outcome"],
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "offboard_step_duration_seconds",
            "Time one run of a step took, by its outcome",
            ["playbook", "action", "outcome"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.provider_calls = Counter(
            "offboard_provider_calls_total",
            "Requests sent to a provider",
            ["provider"],
            registry=self.registry,
        )
        self.provider_errors = Counter(
            "offboard_provider_errors_total",
            "Provider requests that failed, as transient (retried) or permanent",
            ["provider", "kind"],
            registry=self.registry,
        )
        self.provider_throttles = Counter(
            "offboard_provider_throttles_total",
            "Provider answers that said slow down: 429, ThrottlingException, budget spent",
            ["provider"],
            registry=self.registry,
        )
        self.store_gauges = _StoreCollector()
        self.registry.register(self.store_gauges)

    # -- process-local, on the hot paths: no I/O, a dictionary lookup and an add

    def step_finished(self, playbook: str, action: str, outcome: str, seconds: float) -> None:
        """outcome: done, waiting (an operator task), requeued (transient), failed (halted)."""
        self.step_duration.labels(playbook, action, outcome).observe(seconds)

    def provider_call(self, provider: str) -> None:
        self.provider_calls.labels(provider).inc()

    def provider_failed(self, provider: str, error: ProviderError) -> None:
        throttled = error.status == 429 or error.code in THROTTLE_CODES
        # Google throttles with a 403 its adapter retries: transient, like every throttle
        kind = "transient" if throttled or isinstance(error, TransientError) else "permanent"
        self.provider_errors.labels(provider, kind).inc()
        if throttled:
            self.provider_throttles.labels(provider).inc()

    def provider_throttled(self, provider: str) -> None:
        """A successful answer whose rate-limit headers made every caller pause."""
        self.provider_throttles.labels(provider).inc()

    # -- exposition

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def refresh(metrics: Metrics, store: Store, now: datetime) -> None:
    """Read the store-derived metrics afresh; called by `/metrics` before it renders.

    Five aggregate queries, whatever the number of cases: nothing is loaded per case.
    Asked together: on PostgreSQL each runs on its own pooled connection, so a scrape
    takes the slowest count (≈ 30 ms at 100,000 cases), not their sum."""
    counts, running, backlog, due, drift = await asyncio.gather(
        store.case_counts(),
        store.running_countdowns(now),
        store.task_backlog(),
        store.next_timer_due(),
        store.count_events(DRIFT_EVENT),
    )
    oldest = backlog.oldest_opened_at
    metrics.store_gauges.snapshot = StoreSnapshot(
        cases={(c.status.value, c.playbook): c.count for c in counts},
        countdowns_open=running,
        # none pending: 0 (offboard_countdowns_open tells "none" from "due now")
        next_lapse_seconds=0.0 if due is None else seconds_until(due, now),
        tasks_waiting=backlog.waiting,
        oldest_task_age_seconds=0.0 if oldest is None else max(0.0, -seconds_until(oldest, now)),
        drift_detected=drift,
    )
