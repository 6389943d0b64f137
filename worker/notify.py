"""Notifications: operator tasks, halted cases, drift alerts and countdown milestones.

A notifier failure never blocks containment: the engine and the worker loop call
`deliver`, which logs and swallows what a notifier raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class Notification:
    #: "milestone" | "drift" | "operator_task" | "halted"
    kind: str
    case_id: str
    subject: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    async def notify(self, notification: Notification) -> None: ...


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


class FanOut:
    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    async def notify(self, notification: Notification) -> None:
        for notifier in self.notifiers:
            await deliver(notifier, notification)


async def deliver(notifier: Notifier, notification: Notification) -> None:
    try:
        await notifier.notify(notification)
    except Exception as exc:  # a notifier must never stop containment
        log.error("notification_failed", kind=notification.kind, error=str(exc))
