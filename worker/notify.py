"""Notifications: operator tasks, halted cases, drift alerts and countdown milestones.

A notifier failure never blocks containment: the engine and the worker loop call
`deliver`, which logs and swallows what a notifier raises.

Local notifiers (the log line, the test recorder) run inline. Remote channels
(Slack, signed webhooks: anything with a `channel` name and a `send` method)
retry transient failures themselves and, behind a background `FanOut`, run as
tasks, so a slow Slack never slows a case; each of their deliveries is reported to
a `DeliveryRecorder` as "notification_sent" or "notification_failed", which the
runtime writes into the case timeline (`record_in_timeline`).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import aiohttp
import structlog

from worker.clock import Clock, SystemClock, utc_iso
from worker.config import NotifiersConfig, Secret
from worker.errors import ConfigError, OffboardError, PermanentError, ProviderError, TransientError
from worker.logging import redact
from worker.providers.http import TRANSIENT_STATUSES, retry_after_seconds
from worker.retry import RetryPolicy
from worker.triggers import standard_webhook

log = structlog.get_logger(__name__)

SENT = "notification_sent"
FAILED = "notification_failed"

#: (event kind: "notification_sent" | "notification_failed", case id, outcome)
DeliveryRecorder = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Notification:
    #: "milestone" | "drift" | "operator_task" | "halted" | "countdown_extended" |
    #: "deny_removable"
    kind: str
    case_id: str
    subject: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    async def notify(self, notification: Notification) -> None: ...


@runtime_checkable
class Channel(Protocol):
    """A remote notifier: its deliveries are recorded and may run in the background.

    `send` retries by itself and returns what to record (attempts, delivery id);
    after its last attempt it raises NotificationFailed."""

    channel: str

    async def notify(self, notification: Notification) -> None: ...

    async def send(self, notification: Notification) -> dict[str, Any]: ...


class NotificationFailed(OffboardError):
    """A remote channel gave up on a delivery. The message never carries a secret."""

    def __init__(self, channel: str, reason: str, *, attempts: int) -> None:
        super().__init__(f"{channel}: {reason} (after {attempts} attempt(s))")
        self.channel = channel
        self.reason = reason
        self.attempts = attempts


class EventStore(Protocol):
    """The one store method the timeline recorder needs."""

    async def append_event(
        self, case_id: str, kind: str, now: datetime, *, step_id: str | None, data: dict[str, Any]
    ) -> object: ...


def record_in_timeline(store: EventStore, clock: Clock) -> DeliveryRecorder:
    """A recorder that appends each delivery's outcome to the case's timeline."""

    async def record(kind: str, case_id: str, outcome: dict[str, Any]) -> None:
        await store.append_event(case_id, kind, clock.now(), step_id=None, data=outcome)

    return record


class LogNotifier:
    """The default: every notification is a structured log line."""

    async def notify(self, notification: Notification) -> None:
        log.warning(
            "notification",
            kind=notification.kind,
            case_id=notification.case_id,
            subject=notification.subject,
            title=notification.title,
            **notification.data,
        )


class RecordingNotifier:
    """Keeps what it was asked to send; for tests and the demo."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def notify(self, notification: Notification) -> None:
        self.sent.append(notification)


# --------------------------------------------------------------------------------------
# delivery and fan-out


async def _record_safely(
    record: DeliveryRecorder | None, kind: str, case_id: str, outcome: dict[str, Any]
) -> None:
    if record is None:
        return
    try:
        await record(kind, case_id, outcome)
    except Exception as exc:  # an unwritable timeline must not stop containment either
        log.error(
            "notification_record_failed", case_id=case_id, outcome=kind, error=redact(str(exc))
        )


def _channel_of(notifier: Notifier) -> str:
    return notifier.channel if isinstance(notifier, Channel) else type(notifier).__name__


async def deliver(
    notifier: Notifier, notification: Notification, *, record: DeliveryRecorder | None = None
) -> None:
    """Send one notification; never raises. With `record`, the outcome is reported."""
    channel = _channel_of(notifier)
    outcome: dict[str, Any] = {"notification": notification.kind, "channel": channel}
    try:
        if isinstance(notifier, Channel):
            outcome.update(await notifier.send(notification))
        else:
            await notifier.notify(notification)
    except Exception as exc:  # a notifier must never stop containment
        error = redact(str(exc))
        log.error(
            "notification_failed",
            kind=notification.kind,
            case_id=notification.case_id,
            channel=channel,
            error=error,
        )
        outcome["error"] = error
        outcome["attempts"] = exc.attempts if isinstance(exc, NotificationFailed) else 1
        await _record_safely(record, FAILED, notification.case_id, outcome)
        return
    if isinstance(notifier, Channel):
        log.info(
            "notification_sent",
            kind=notification.kind,
            case_id=notification.case_id,
            channel=channel,
            attempts=outcome.get("attempts"),
        )
    await _record_safely(record, SENT, notification.case_id, outcome)


class FanOut:
    """Every notifier gets every notification; none can stop the others or the caller.

    Local notifiers run inline. Remote channels are recorded with `record`, and with
    `background=True` each of their deliveries is a task: `notify` returns at once,
    and `aclose()` waits for what is still in flight (call it before the HTTP
    session and the store close)."""

    def __init__(
        self,
        *notifiers: Notifier,
        record: DeliveryRecorder | None = None,
        background: bool = False,
    ) -> None:
        self.notifiers = notifiers
        self.record = record
        self.background = background
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Deliveries still in flight."""
        return len(self._tasks)

    async def notify(self, notification: Notification) -> None:
        for notifier in self.notifiers:
            if not isinstance(notifier, Channel):
                await deliver(notifier, notification)
            elif self.background and not self._closed:
                task = asyncio.create_task(
                    self._deliver_in_background(notifier, notification),
                    name=f"notify {notifier.channel} {notification.kind} {notification.case_id}",
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await deliver(notifier, notification, record=self.record)

    async def _deliver_in_background(self, notifier: Channel, notification: Notification) -> None:
        try:
            await deliver(notifier, notification, record=self.record)
        except asyncio.CancelledError:
            log.error(
                "notification_failed",
                kind=notification.kind,
                case_id=notification.case_id,
                channel=notifier.channel,
                error="cancelled at shutdown",
            )
            outcome = {
                "notification": notification.kind,
                "channel": notifier.channel,
                "error": "cancelled at shutdown",
            }
            await _record_safely(self.record, FAILED, notification.case_id, outcome)
            raise

    async def drain(self, grace: float | None = None) -> None:
        """Wait for the deliveries in flight; after `grace` seconds, cancel the rest
        (they are recorded as failed)."""
        while self._tasks:
            tasks = set(self._tasks)
            _, late = await asyncio.wait(tasks, timeout=grace)
            if late:
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                return

    async def aclose(self, grace: float | None = None) -> None:
        """Stop running deliveries in the background and wait for those in flight
        (at most `grace` seconds, then they are cancelled and recorded as failed)."""
        self._closed = True
        await self.drain(grace)


# --------------------------------------------------------------------------------------
# remote channels


class _HttpChannel:
    """One JSON POST per attempt; transient failures retried with backoff, honouring
    Retry-After; a URL or credential never goes into a message."""

    channel: str

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        attempts: int,
        backoff: float,
        max_backoff: float,
        timeout: float,
        clock: Clock | None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._http = http
        self._policy = RetryPolicy(
            attempts=attempts, initial=backoff, maximum=max_backoff, give_up_after=float("inf")
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock: Clock = clock or SystemClock()

    def __repr__(self) -> str:  # never show the URL of a secret channel
        return f"{type(self).__name__}(channel={self.channel!r})"

    async def notify(self, notification: Notification) -> None:
        await self.send(notification)

    async def send(self, notification: Notification) -> dict[str, Any]:
        raise NotImplementedError

    async def _post_with_retries(
        self,
        notification: Notification,
        url: str,
        body: bytes,
        headers: Callable[[], dict[str, str]],
    ) -> int:
        """POST until a 2xx; returns the attempts it took, or raises NotificationFailed."""
        attempts = self._policy.attempts
        for attempt in range(1, attempts + 1):
            try:
                await self._post_once(url, body, headers())
                return attempt
            except PermanentError as exc:
                raise NotificationFailed(self.channel, _reason(exc), attempts=attempt) from None
            except TransientError as exc:
                if attempt == attempts:
                    raise NotificationFailed(self.channel, _reason(exc), attempts=attempt) from None
                wait = self._wait(attempt, exc.retry_after)
                log.warning(
                    "notification_retry",
                    kind=notification.kind,
                    case_id=notification.case_id,
                    channel=self.channel,
                    attempt=attempt,
                    wait_seconds=round(wait, 3),
                    error=_reason(exc),
                )
                await self._clock.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # The server's hint is a floor: sending earlier only earns another 429.
            return min(retry_after, self._policy.max_hint) + random.uniform(0, 0.05)
        return self._policy.backoff(attempt)

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with self._http.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                text = redact((await response.text(errors="replace")).strip()[:100])
                if 200 <= response.status < 300:
                    return
                message = f"POST answered {response.status} {text}".rstrip()
                if response.status in TRANSIENT_STATUSES or response.status >= 500:
                    hint = retry_after_seconds(response.headers, time.time(), throttled=False)
                    raise TransientError(
                        self.channel, message, retry_after=hint, status=response.status
                    )
                raise PermanentError(self.channel, message, status=response.status)
        except TimeoutError:
            raise TransientError(self.channel, "POST timed out") from None
        except aiohttp.ClientError as exc:
            # the type only: some aiohttp messages carry the URL
            raise TransientError(self.channel, f"POST failed: {type(exc).__name__}") from None
        except OSError as exc:
            raise TransientError(self.channel, f"POST failed: {type(exc).__name__}") from None


def _reason(exc: ProviderError) -> str:
    """The error without the "<channel>: " prefix ProviderError adds."""
    text = str(exc)
    prefix = f"{exc.provider}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"{what}: not an http(s) URL")
    return parts.netloc.rsplit("@", 1)[-1]  # host[:port], never a userinfo part


class SlackNotifier(_HttpChannel):
    """Slack incoming webhook: one message per notification, with `text` and blocks."""

    def __init__(
        self,
        webhook_url: Secret,
        http: aiohttp.ClientSession,
        *,
        attempts: int,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        clock: Clock | None = None,
        channel: str = "slack",
    ) -> None:
        super().__init__(
            http,
            attempts=attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            clock=clock,
        )
        _check_url(webhook_url.reveal(), "slack webhook_url")
        self._url = webhook_url
        self.channel = channel

    async def send(self, notification: Notification) -> dict[str, Any]:
        body = json.dumps(slack_message(notification), default=str).encode()
        attempts = await self._post_with_retries(notification, self._url.reveal(), body, lambda: {})
        return {"attempts": attempts}


class WebhookNotifier(_HttpChannel):
    """A JSON event signed with Standard Webhooks. The webhook-id is the receiver's
    idempotency key, the same on every attempt of one delivery; each attempt is
    signed afresh with its own webhook-timestamp, so a long retry stays inside the
    receiver's tolerance."""

    def __init__(
        self,
        url: str,
        secret: Secret,
        http: aiohttp.ClientSession,
        *,
        attempts: int,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        clock: Clock | None = None,
        channel: str | None = None,
    ) -> None:
        super().__init__(
            http,
            attempts=attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            clock=clock,
        )
        host = _check_url(url, "webhook url")
        try:
            self._signer = standard_webhook(secret.reveal())
        except ValueError as exc:  # never echoes the value
            raise ConfigError(f"webhook secret: {exc}") from None
        self._url = url
        self.channel = channel or f"webhook:{host}"

    def event(self, notification: Notification) -> dict[str, Any]:
        return {
            "type": f"offboard.{notification.kind}",
            "timestamp": utc_iso(self._clock.now()),
            "data": {
                "case_id": notification.case_id,
                "subject": notification.subject,
                "title": notification.title,
                **notification.data,
            },
        }

    async def send(self, notification: Notification) -> dict[str, Any]:
        msg_id = f"msg_{uuid.uuid4().hex}"
        payload = json.dumps(self.event(notification), default=str)

        def headers() -> dict[str, str]:
            # Wall time, not the worker's clock: the receiver checks it against its own.
            now = datetime.now(UTC).replace(microsecond=0)
            return {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._signer.sign(msg_id, now, payload),
            }

        attempts = await self._post_with_retries(notification, self._url, payload.encode(), headers)
        return {"attempts": attempts, "delivery_id": msg_id}


def notifier_from_config(
    config: NotifiersConfig,
    http: aiohttp.ClientSession,
    *,
    record: DeliveryRecorder | None = None,
    clock: Clock | None = None,
) -> FanOut:
    """The log line always; Slack and each webhook when configured, in the background.

    The caller owns the returned fan-out: `await fanout.aclose()` before `http` closes."""
    notifiers: list[Notifier] = [LogNotifier()]
    if config.slack is not None:
        url = config.slack.webhook_url.resolve("notifiers.slack.webhook_url")
        notifiers.append(SlackNotifier(url, http, attempts=config.attempts, clock=clock))
    for i, hook in enumerate(config.webhooks):
        where = f"notifiers.webhooks.{i}"
        secret = hook.secret.resolve(f"{where}.secret")
        try:
            host = _check_url(hook.url, f"{where}.url")
            notifiers.append(
                WebhookNotifier(
                    hook.url,
                    secret,
                    http,
                    attempts=config.attempts,
                    clock=clock,
                    channel=f"webhooks[{i}]:{host}",
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return FanOut(*notifiers, record=record, background=True)


# --------------------------------------------------------------------------------------
# Slack messages


def _esc(text: object) -> str:
    """Slack mrkdwn control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    return f"<{_esc(url).replace('|', '%7C')}|{_esc(label)}>"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, 3000)}}


def slack_message(n: Notification) -> dict[str, Any]:
    """The incoming-webhook body for a notification: `text` (the fallback shown in
    notifications, complete on its own) and Block Kit blocks."""
    d = n.data
    who = f"*{_esc(n.subject)}* (case `{_esc(n.case_id)}`)"
    if n.kind == "operator_task":
        console, confirm = str(d.get("console_url", "")), str(d.get("confirm", ""))
        header = f"Operator task: {n.title}"
        text = (
            f"Operator task for {n.subject} (case {n.case_id}): {n.title}. "
            f"Open {console} and, once done, run: {confirm}"
        )
        body = [
            _section(f"{who} needs a human: {_esc(n.title)}"),
            _section(f"1. Open {_link(console, 'the AWS console')}: {_esc(console)}"),
            _section(f"2. Once done, confirm:\n```{_esc(confirm)}```"),
        ]
    elif n.kind == "halted":
        reason, retry = str(d.get("reason", "")), str(d.get("retry", ""))
        header = f"Offboarding halted: {n.subject}"
        text = (
            f"Offboarding of {n.subject} halted (case {n.case_id}): {reason}. "
            f"Fix the cause, then run: {retry}"
        )
        body = [
            _section(f"{who} halted: {_esc(n.title)}"),
            _section(f"*Reason:*\n```{_esc(reason)}```"),
            _section(f"Fix the cause, then retry:\n```{_esc(retry)}```"),
        ]
    elif n.kind == "drift":
        idp, ic = d.get("idp_status", "?"), d.get("ic_status", "?")
        header = f"ALERT: access drift for {n.subject}"
        text = (
            f"ALERT: {n.title} (case {n.case_id}; IdP {idp}, Identity Center {ic}). "
            "The worker is disabling the account again."
        )
        body = [
            _section(f":rotating_light: {who}: {_esc(n.title)}"),
            _section(f"IdP status: `{_esc(idp)}`\nIdentity Center status: `{_esc(ic)}`"),
            _section("The worker is disabling the account again; find out who re-enabled it."),
        ]
    elif n.kind == "milestone":
        milestone, due = d.get("milestone", "?"), d.get("due_at", "?")
        header = f"Milestone {milestone}: {n.subject}"
        text = f"{n.subject} (case {n.case_id}): milestone {milestone} reached, due at {due}."
        body = [_section(f"{who}: milestone *{_esc(milestone)}* reached (due at {_esc(due)})")]
    elif n.kind == "countdown_extended":
        reasons = "; ".join(str(r) for r in d.get("reasons", []))
        until, before = d.get("all_lapsed", "?"), d.get("all_lapsed_before", "?")
        header = f"Countdown extended: {n.subject}"
        text = (
            f"{n.subject} (case {n.case_id}): access may last until {until} "
            f"(was {before}): {reasons}"
        )
        body = [
            _section(
                f":hourglass: {who}: access may last until *{_esc(until)}* (was {_esc(before)})"
            ),
            _section(f"*Why:* {_esc(reasons)}"),
        ]
    else:
        header = n.title
        details = ", ".join(f"{k}: {v}" for k, v in d.items())
        text = f"{n.title} ({n.subject}, case {n.case_id}){': ' + details if details else ''}"
        body = [_section(f"{who}: {_esc(n.title)}")]
        if details:
            body.append(_section(_esc(details)))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, 150)}},
        *body,
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"offboard · {_esc(n.kind)} · case `{_esc(n.case_id)}`"}
            ],
        },
    ]
    return {"text": _cut(text, 3000), "blocks": blocks}
