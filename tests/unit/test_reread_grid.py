"""The re-reads of every case fall on one grid, so the cases of a run re-read together
(and share their group and permission-set reads), never more than the interval apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from worker.engine import reread_tick_after

FIVE = timedelta(minutes=5)


def test_two_cases_disabled_apart_re_read_at_the_same_moment() -> None:
    a = datetime(2026, 1, 5, 9, 0, 12, tzinfo=UTC)
    b = datetime(2026, 1, 5, 9, 3, 58, tzinfo=UTC)
    assert reread_tick_after(a, FIVE) == reread_tick_after(b, FIVE)
    assert reread_tick_after(a, FIVE) == datetime(2026, 1, 5, 9, 5, tzinfo=UTC)


@given(
    moment=st.datetimes(
        min_value=datetime(2001, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=1, max_value=60),
)
def test_the_first_re_read_is_after_the_disable_and_within_one_interval(
    moment: datetime, minutes: int
) -> None:
    interval = timedelta(minutes=minutes)
    tick = reread_tick_after(moment, interval)
    assert moment < tick <= moment + interval
