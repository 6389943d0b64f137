"""Time, behind one small interface so that tests and the sandbox can control it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock UTC time and real sleeping."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; `sleep` advances it instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class OffsetClock:
    """Wall-clock time shifted by the number of seconds written in a file.

    For acceptance tests of a real `offboard` process: the test moves time forward by
    rewriting the file, so a 13-hour countdown can be watched in seconds."""

    def __init__(self, path: str) -> None:
        self.path = path

    def offset(self) -> float:
        try:
            with open(self.path, encoding="utf-8") as f:
                return float(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset())

    async def sleep(self, seconds: float) -> None:
        # never sleep long: the offset may jump while we sleep
        await asyncio.sleep(min(max(0.0, seconds), 0.2))


def utc_iso(when: datetime) -> str:
    """ISO-8601 in UTC with a Z, to the millisecond: how every timestamp is stored and shown.

    Rounded up, never down: a stored time that feeds the countdown must not move
    earlier, or a recomputed milestone could come before the truth."""
    when = when.astimezone(UTC)
    if when.microsecond % 1000:
        when += timedelta(microseconds=1000 - when.microsecond % 1000)
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d}Z"
    )


def parse_iso(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def seconds_until(when: datetime, now: datetime) -> float:
    return (when - now) / timedelta(seconds=1)
