"""Server wait hints, read the way each provider sends them."""

from __future__ import annotations

from multidict import CIMultiDict

from worker.providers.http import retry_after_seconds


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_okta_duplicated_reset_takes_the_smallest() -> None:
    h = headers(("X-Rate-Limit-Reset", "1060"), ("X-Rate-Limit-Reset", "1005"))
    assert retry_after_seconds(h, now=1000.0) == 5.0


def test_okta_reset_is_not_a_wait_unless_throttled() -> None:
    h = headers(("X-Rate-Limit-Reset", "1060"))
    assert retry_after_seconds(h, now=1000.0, throttled=False) is None


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds(headers(("Retry-After", "7")), now=0.0) == 7.0
    date = headers(("Retry-After", "Thu, 01 Jan 1970 00:00:30 GMT"))
    assert retry_after_seconds(date, now=10.0) == 20.0


def test_no_or_garbage_hint() -> None:
    assert retry_after_seconds(headers(), now=0.0) is None
    assert retry_after_seconds(headers(("Retry-After", "soon")), now=0.0) is None
    assert retry_after_seconds(headers(("Retry-After", "-5")), now=0.0) == 0.0
