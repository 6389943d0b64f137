"""Webhook deliveries → triggers: each adapter's signature, freshness, payload and errors.

Deliveries are signed here independently of worker.triggers: Standard Webhooks with the
`standardwebhooks` library, the others with hmac/hashlib directly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook

from worker.errors import OffboardError
from worker.triggers import (
    ADAPTER_KINDS,
    BadSignature,
    IgnoredEvent,
    MalformedDelivery,
    NotATermination,
    Purpose,
    StaleDelivery,
    Trigger,
    TriggerAdapter,
    TriggerError,
    accept,
    adapter_for,
    bamboohr_signed_string,
    hibob_signed_string,
    pagerduty_signed_string,
    standard_webhooks_signed_string,
)

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
TS = "1767603600"  # NOW in Unix seconds
SOURCE = "src-prod"


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


SW_SECRETS = (_whsec(b"current-standard-key-0123"), _whsec(b"next-standard-key-456789"))
SW_WRONG = _whsec(b"someone-elses-key-000000")
BAMBOO_SECRETS = ("bamboo-current-secret-1", "bamboo-next-secret-22")
BOB_SECRETS = ("bob-current-secret-333", "bob-next-secret-4444")
PD_SECRETS = ("pd-current-secret-55555", "pd-next-secret-666666")
BEARER_SECRETS = ("bearer-current-token-777", "bearer-next-token-88888")


def _hmac(secret: str, message: bytes, digest: Any = hashlib.sha256) -> bytes:
    return hmac.new(secret.encode(), message, digest).digest()


def _unix(when: datetime) -> str:
    return str(int(when.timestamp()))


# --- independent signers: (body, secret, when) -> headers --------------------------------


def sign_standard(body: bytes, secret: str, when: datetime = NOW) -> dict[str, str]:
    signature = Webhook(secret).sign("msg_2mXc", when, body.decode())
    return {
        "webhook-id": "msg_2mXc",
        "webhook-timestamp": _unix(when),
        "webhook-signature": signature,
    }


def sign_bamboo(body: bytes, secret: str, when: datetime = NOW) -> dict[str, str]:
    ts = _unix(when)
    return {
        "X-BambooHR-Signature": _hmac(secret, body + ts.encode()).hex(),
        "X-BambooHR-Timestamp": ts,
    }


def sign_hibob(body: bytes, secret: str, when: datetime = NOW) -> dict[str, str]:
    return {"Bob-Signature": base64.b64encode(_hmac(secret, body, hashlib.sha512)).decode()}


def sign_pagerduty(body: bytes, secret: str, when: datetime = NOW) -> dict[str, str]:
    return {"X-PagerDuty-Signature": "v1=" + _hmac(secret, body).hex()}


def sign_bearer(body: bytes, secret: str, when: datetime = NOW) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


HR_BODY = dumps(
    {
        "type": "employee.terminated",
        "data": {
            "email": " Leaver@Example.COM ",
            "effective_at": "2026-01-31T17:00:00+01:00",
            "reason": "resigned",
            "hr_reference": "E-123",
        },
    }
)
INCIDENT_BODY = dumps(
    {
        "type": "identity.compromised",
        "data": {"email": "leaver@example.com", "reason": "token theft", "incident_id": "INC-42"},
    }
)
BAMBOO_BODY = dumps(
    {
        "employees": [
            {
                "id": "123",
                "fields": {
                    "employmentStatus": "Terminated",
                    "workEmail": "Leaver@Example.com",
                    "terminationDate": "2026-01-31",
                },
                "changedFields": ["employmentStatus"],
            }
        ]
    }
)
BOB_BODY = dumps(
    {
        "type": "employee.left",
        "id": "evt-1",
        "data": {
            "employeeId": "3332883884017713238",
            "email": "leaver@example.com",
            "effectiveDate": "2026-01-31",
        },
    }
)


def pd_body(title: str, event_type: str = "incident.triggered") -> bytes:
    return dumps(
        {
            "event": {
                "id": "01DEN5KCN6ABCDEF",
                "event_type": event_type,
                "resource_type": "incident",
                "occurred_at": "2026-01-05T08:59:00.000Z",
                "data": {"id": "PGR0VU2", "type": "incident", "number": 42, "title": title},
            }
        }
    )


PD_BODY = pd_body("Stolen laptop [offboard Leaver@Example.com]")
JAN_31 = datetime(2026, 1, 31, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    kind: str
    purpose: Purpose
    secrets: tuple[str, str]
    wrong_secret: str
    sign: Callable[..., dict[str, str]]
    body: bytes
    expected: Trigger
    not_termination: bytes
    required_headers: tuple[str, ...]
    timestamped: bool = False
    signs_body: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def adapter(self, secrets: tuple[str, ...] | None = None, **kw: Any) -> TriggerAdapter:
        return adapter_for(self.kind, secrets=secrets or self.secrets, purpose=self.purpose, **kw)

    def headers(
        self, body: bytes | None = None, secret: str | None = None, **kw: Any
    ) -> dict[str, str]:
        return self.sign(self.body if body is None else body, secret or self.secrets[0], **kw)


def _trigger(**kw: Any) -> Trigger:
    return Trigger(**({"source": SOURCE} | kw))


CASES = [
    Case(
        kind="standard-webhooks",
        purpose="hr",
        secrets=SW_SECRETS,
        wrong_secret=SW_WRONG,
        sign=sign_standard,
        body=HR_BODY,
        expected=_trigger(
            kind="terminate",
            subject="leaver@example.com",
            effective_at=datetime(2026, 1, 31, 16, 0, tzinfo=UTC),
            reason="resigned",
            reference="E-123",
            delivery_id="msg_2mXc",
        ),
        not_termination=dumps({"type": "employee.hired", "data": {"email": "a@b.c"}}),
        required_headers=("webhook-id", "webhook-timestamp", "webhook-signature"),
        timestamped=True,
    ),
    Case(
        kind="bamboohr",
        purpose="hr",
        secrets=BAMBOO_SECRETS,
        wrong_secret="bamboo-wrong-secret-99",
        sign=sign_bamboo,
        body=BAMBOO_BODY,
        expected=_trigger(
            kind="terminate",
            subject="leaver@example.com",
            effective_at=JAN_31,
            reason="BambooHR employmentStatus Terminated",
            reference="123",
            delivery_id=f"bamboohr:{TS}:{hashlib.sha256(BAMBOO_BODY).hexdigest()[:16]}",
        ),
        not_termination=dumps(
            {"employees": [{"id": "9", "fields": {"employmentStatus": "Full-Time"}}]}
        ),
        required_headers=("X-BambooHR-Signature", "X-BambooHR-Timestamp"),
        timestamped=True,
    ),
    Case(
        kind="hibob",
        purpose="hr",
        secrets=BOB_SECRETS,
        wrong_secret="bob-wrong-secret-00000",
        sign=sign_hibob,
        body=BOB_BODY,
        expected=_trigger(
            kind="terminate",
            subject="leaver@example.com",
            effective_at=JAN_31,
            reason="HiBob employee.left",
            reference="3332883884017713238",
            delivery_id="hibob:evt-1",
        ),
        not_termination=dumps({"type": "employee.updated", "id": "e", "data": {}}),
        required_headers=("Bob-Signature",),
    ),
    Case(
        kind="pagerduty",
        purpose="incident",
        secrets=PD_SECRETS,
        wrong_secret="pd-wrong-secret-0000000",
        sign=sign_pagerduty,
        body=PD_BODY,
        expected=_trigger(
            kind="incident",
            subject="leaver@example.com",
            effective_at=None,
            reason="PagerDuty incident: Stolen laptop [offboard Leaver@Example.com]",
            reference="PGR0VU2",
            delivery_id="pagerduty:01DEN5KCN6ABCDEF",
        ),
        not_termination=pd_body("Disk full on db-3"),
        required_headers=("X-PagerDuty-Signature",),
    ),
    Case(
        kind="bearer",
        purpose="incident",
        secrets=BEARER_SECRETS,
        wrong_secret="bearer-wrong-token-0000",
        sign=sign_bearer,
        body=INCIDENT_BODY,
        expected=_trigger(
            kind="incident",
            subject="leaver@example.com",
            effective_at=None,
            reason="token theft",
            reference="INC-42",
            delivery_id="bearer:" + hashlib.sha256(INCIDENT_BODY).hexdigest(),
        ),
        not_termination=dumps({"type": "employee.terminated", "data": {}}),
        # a missing token is 401, not 400: see test_bearer_missing_or_malformed_credentials
        required_headers=(),
        signs_body=False,
    ),
]
BY_KIND = {c.kind: c for c in CASES}
ids = [c.kind for c in CASES]


def test_cases_cover_every_adapter() -> None:
    assert set(BY_KIND) == set(ADAPTER_KINDS)
    assert _unix(NOW) == TS


# --- the common contract, for every adapter ---------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_signed_delivery_is_accepted_and_parsed(case: Case) -> None:
    assert accept(case.adapter(), SOURCE, case.headers(), case.body, NOW) == case.expected


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_headers_are_case_insensitive(case: Case) -> None:
    for transform in (str.upper, str.lower, str.title):
        headers = {transform(k): v for k, v in case.headers().items()}
        assert accept(case.adapter(), SOURCE, headers, case.body, NOW) == case.expected


@pytest.mark.parametrize("case", [c for c in CASES if c.signs_body], ids=lambda c: c.kind)
def test_tampered_body_is_a_bad_signature(case: Case) -> None:
    tampered = case.body.replace(b"leaver@", b"ceo@").replace(b"Leaver@", b"Ceo@")
    assert tampered != case.body
    with pytest.raises(BadSignature):
        accept(case.adapter(), SOURCE, case.headers(), tampered, NOW)


def test_a_bearer_token_does_not_cover_the_body() -> None:
    # documented limit of the bearer adapter: integrity comes from TLS alone
    case = BY_KIND["bearer"]
    other = INCIDENT_BODY.replace(b"leaver@", b"other@")
    assert accept(case.adapter(), SOURCE, case.headers(), other, NOW).subject == "other@example.com"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_wrong_secret_is_a_bad_signature(case: Case) -> None:
    with pytest.raises(BadSignature):
        accept(case.adapter(), SOURCE, case.headers(secret=case.wrong_secret), case.body, NOW)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_rotation_accepts_either_secret(case: Case) -> None:
    current, following = case.secrets
    for signer in (current, following):
        headers = case.headers(secret=signer)
        assert accept(case.adapter(), SOURCE, headers, case.body, NOW) == case.expected
    # once the old secret is retired, its signatures stop working
    with pytest.raises(BadSignature):
        accept(case.adapter((following,)), SOURCE, case.headers(secret=current), case.body, NOW)


@pytest.mark.parametrize("case", [c for c in CASES if c.timestamped], ids=lambda c: c.kind)
@pytest.mark.parametrize("offset", [-301, 301, -86400, 10**9])
def test_timestamp_outside_tolerance_is_stale(case: Case, offset: int) -> None:
    headers = case.headers(when=NOW + timedelta(seconds=offset))
    with pytest.raises(StaleDelivery) as caught:
        accept(case.adapter(), SOURCE, headers, case.body, NOW)
    way = "in the past" if offset < 0 else "in the future"
    assert f"{abs(offset)}s {way}" in caught.value.detail
    assert "tolerance is 300s" in caught.value.detail


@pytest.mark.parametrize("case", [c for c in CASES if c.timestamped], ids=lambda c: c.kind)
def test_tolerance_is_configurable_both_ways(case: Case) -> None:
    ten_minutes_old = case.headers(when=NOW - timedelta(minutes=10))
    wide = case.adapter(tolerance=timedelta(minutes=15))
    # beyond the library's fixed 5 minutes, yet within ours
    assert accept(wide, SOURCE, ten_minutes_old, case.body, NOW).subject == "leaver@example.com"
    narrow = case.adapter(tolerance=timedelta(seconds=30))
    with pytest.raises(StaleDelivery):
        accept(narrow, SOURCE, case.headers(when=NOW - timedelta(seconds=31)), case.body, NOW)
    edge = case.headers(when=NOW - timedelta(seconds=300))
    assert accept(case.adapter(), SOURCE, edge, case.body, NOW).subject == "leaver@example.com"


@pytest.mark.parametrize("case", [c for c in CASES if c.required_headers], ids=lambda c: c.kind)
def test_missing_header_is_malformed(case: Case) -> None:
    for name in case.required_headers:
        headers = {k: v for k, v in case.headers().items() if k != name}
        with pytest.raises(MalformedDelivery) as caught:
            accept(case.adapter(), SOURCE, headers, case.body, NOW)
        assert name.lower() in caught.value.detail.lower()
        blank = case.headers() | {name: "  "}
        with pytest.raises(MalformedDelivery):
            accept(case.adapter(), SOURCE, blank, case.body, NOW)


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("body", [b"{not json", b"", b"[" * 100_000, b"\xff\xfe\x00"])
def test_signed_garbage_body_is_malformed(case: Case, body: bytes) -> None:
    headers = case.sign(body, case.secrets[0]) if _signable(case, body) else case.headers(body=b"")
    with pytest.raises(MalformedDelivery):
        accept(case.adapter(), SOURCE, headers, body, NOW)


def _signable(case: Case, body: bytes) -> bool:
    # the standardwebhooks library signs text only
    return case.kind != "standard-webhooks" or body.isascii()


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_signed_json_that_is_not_an_object_is_malformed(case: Case, body: bytes) -> None:
    with pytest.raises(MalformedDelivery):
        accept(case.adapter(), SOURCE, case.headers(body=body), body, NOW)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_valid_json_that_is_not_a_termination(case: Case) -> None:
    body = case.not_termination
    with pytest.raises(NotATermination) as caught:
        accept(case.adapter(), SOURCE, case.headers(body=body), body, NOW)
    assert caught.value.status in (202, 422)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_signature_is_checked_before_the_body_is_read(case: Case) -> None:
    headers = case.headers(secret=case.wrong_secret)
    with pytest.raises(BadSignature):
        accept(case.adapter(), SOURCE, headers, b"{not json", NOW)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_error_detail_never_contains_a_secret_or_signature(case: Case) -> None:
    errors = list(_failures(case))
    assert len(errors) >= 3
    secrets = [*case.secrets, case.wrong_secret]
    secrets += [s.removeprefix("whsec_") for s in secrets]
    signatures = [v for s in secrets for v in _credential_values(case.headers(secret=s))]
    for error in errors:
        shown = f"{error.detail} {error} {error.title}"
        for secret in secrets:
            assert secret not in shown
        for value in signatures:
            assert value not in shown, (value, shown)
        # no personal data either
        assert "leaver@" not in shown.lower()


def _credential_values(headers: dict[str, str]) -> Iterator[str]:
    for name, value in headers.items():
        if name.lower() in ("webhook-id", "webhook-timestamp", "x-bamboohr-timestamp"):
            continue
        yield value
        for part in value.replace(",", " ").replace("=", " ").split():
            if len(part) >= 16:
                yield part


def _failures(case: Case) -> Iterator[TriggerError]:
    wrong = case.headers(secret=case.wrong_secret)
    good = case.headers()
    tampered = case.body.replace(b"eaver@", b"ccomplice@")
    attempts: list[tuple[dict[str, str], bytes, datetime]] = [
        (wrong, case.body, NOW),
        (good, tampered, NOW),
        (good, case.body, NOW + timedelta(hours=1)),
        ({k: v + "x" for k, v in good.items()}, case.body, NOW),
        ({k: v[:-3] for k, v in good.items()}, case.body, NOW),
        ({}, case.body, NOW),
        (case.headers(body=b"{}"), b"{}", NOW),
        (case.headers(body=b"{bad"), b"{bad", NOW),
    ]
    bad_email = case.body.replace(b"eaver@", b"eaver @")
    attempts.append((case.headers(body=bad_email), bad_email, NOW))
    for headers, body, now in attempts:
        try:
            accept(case.adapter(), SOURCE, headers, body, now)
        except TriggerError as error:
            yield error


def test_error_classes_carry_status_and_title() -> None:
    assert issubclass(TriggerError, OffboardError)
    expected = {
        MalformedDelivery: 400,
        BadSignature: 401,
        StaleDelivery: 401,
        NotATermination: 422,
        IgnoredEvent: 202,
    }
    for cls, status in expected.items():
        error = cls("what is wrong")
        assert (error.status, error.detail) == (status, "what is wrong")
        assert error.title and str(error) == f"{error.title}: what is wrong"
    assert issubclass(IgnoredEvent, NotATermination)


def test_conflicting_repeated_header_is_malformed() -> None:
    case = BY_KIND["pagerduty"]
    headers = CIMultiDict(case.headers())
    headers.add("x-pagerduty-signature", "v1=" + "0" * 64)
    with pytest.raises(MalformedDelivery):
        accept(case.adapter(), SOURCE, headers, case.body, NOW)
    same = CIMultiDict(case.headers())
    same.add("X-PAGERDUTY-SIGNATURE", case.headers()["X-PagerDuty-Signature"])
    assert accept(case.adapter(), SOURCE, same, case.body, NOW) == case.expected


def test_naive_now_is_a_caller_bug() -> None:
    case = BY_KIND["bamboohr"]
    with pytest.raises(ValueError, match="timezone-aware"):
        accept(case.adapter(), SOURCE, case.headers(), case.body, NOW.replace(tzinfo=None))


# --- canonical signed strings: known vectors -----------------------------------------


def test_standard_webhooks_signed_string_and_published_vector() -> None:
    body = b'{"test": 2432232314}'
    signed = standard_webhooks_signed_string("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body)
    assert signed == b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}'
    # the example from the Standard Webhooks / Svix documentation
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert digest == "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    adapter = adapter_for("standard-webhooks", secrets=[secret], purpose="hr")
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v1,{digest}",
    }
    adapter.verify(headers, body, datetime.fromtimestamp(1614265330 + 60, UTC))


def test_bamboohr_signed_string_is_body_then_timestamp() -> None:
    body = b'{"ok":true}'
    assert bamboohr_signed_string("1767603600", body) == b'{"ok":true}1767603600'
    digest = hmac.new(b"bamboo-secret-0123", b'{"ok":true}1767603600', hashlib.sha256).hexdigest()
    assert digest == "0e8db028af592a6e9f71ddafc8b42afe752d21cbb560d28bf4b9ceebe795bf3c"
    adapter = adapter_for("bamboohr", secrets=["bamboo-secret-0123"], purpose="hr")
    adapter.verify({"X-BambooHR-Signature": digest, "X-BambooHR-Timestamp": TS}, body, NOW)
    upper = {"X-BambooHR-Signature": digest.upper(), "X-BambooHR-Timestamp": TS}
    adapter.verify(upper, body, NOW)


def test_hibob_signed_string_is_the_body() -> None:
    body = b'{"ok":true}'
    assert hibob_signed_string(body) == body
    sha512 = (
        "xShxFGeDSlJhQMSHc49EAktzklnryOl8SC41FmYMm3pj582YdYq6ILu+5sUK5pACNhHLcW31fdE7u5aVqrvAAw=="
    )
    key = b"hibob-secret-0123"
    expected = base64.b64encode(hmac.new(key, body, hashlib.sha512).digest()).decode()
    assert expected == sha512
    adapter = adapter_for("hibob", secrets=["hibob-secret-0123"], purpose="hr")
    adapter.verify({"Bob-Signature": sha512}, body, NOW)
    # HMAC-SHA256, the brief's assumption, is accepted as well
    sha256 = base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
    adapter.verify({"Bob-Signature": sha256}, body, NOW)


def test_pagerduty_signed_string_is_the_body() -> None:
    body = b'{"ok":true}'
    assert pagerduty_signed_string(body) == body
    digest = hmac.new(b"pagerduty-secret-0123", body, hashlib.sha256).hexdigest()
    assert digest == "8b069d08ececb81f018cb4bd145ab01a1add56996eeea4cf84128ea1a4f905f8"
    adapter = adapter_for("pagerduty", secrets=["pagerduty-secret-0123"], purpose="incident")
    adapter.verify({"X-PagerDuty-Signature": f"v1={digest}"}, body, NOW)


def test_library_signature_equals_our_canonical_string() -> None:
    key = b"current-standard-key-0123"
    library = Webhook(_whsec(key)).sign("msg_1", NOW, HR_BODY.decode())
    ours = hmac.new(key, standard_webhooks_signed_string("msg_1", TS, HR_BODY), hashlib.sha256)
    assert library == "v1," + base64.b64encode(ours.digest()).decode()


# --- standard webhooks ---------------------------------------------------------------


SW = BY_KIND["standard-webhooks"]


def test_standard_webhooks_several_signatures_any_may_match() -> None:
    good = SW.headers()
    other = sign_standard(HR_BODY, SW_WRONG)["webhook-signature"]
    mixed = good | {"webhook-signature": f"v1a,AAAA {other} {good['webhook-signature']}"}
    assert accept(SW.adapter(), SOURCE, mixed, HR_BODY, NOW) == SW.expected


@pytest.mark.parametrize(
    ("signature", "error"),
    [
        ("v1,not base64!", MalformedDelivery),
        ("v1,", MalformedDelivery),
        ("v1a,AAAA v2,AAAA", BadSignature),
        ("nonsense", BadSignature),
        ("v1,AAAA", BadSignature),
    ],
)
def test_standard_webhooks_garbled_signature(signature: str, error: type[TriggerError]) -> None:
    headers = SW.headers() | {"webhook-signature": signature}
    with pytest.raises(error):
        accept(SW.adapter(), SOURCE, headers, HR_BODY, NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1.767e9", "-5", "1767603600.5", "nan", "٣"])
def test_standard_webhooks_garbled_timestamp_is_malformed(timestamp: str) -> None:
    headers = SW.headers() | {"webhook-timestamp": timestamp}
    with pytest.raises(MalformedDelivery):
        accept(SW.adapter(), SOURCE, headers, HR_BODY, NOW)


@pytest.mark.parametrize("msg_id", ["has space", "x" * 257, "é"])
def test_standard_webhooks_unusable_id_is_malformed(msg_id: str) -> None:
    headers = SW.headers() | {"webhook-id": msg_id}
    with pytest.raises(MalformedDelivery):
        accept(SW.adapter(), SOURCE, headers, HR_BODY, NOW)


def test_standard_webhooks_non_utf8_body_is_malformed() -> None:
    with pytest.raises(MalformedDelivery, match="UTF-8"):
        accept(SW.adapter(), SOURCE, SW.headers(body=b""), b"\xff{}", NOW)


def _generic(doc: dict[str, Any], purpose: Purpose = "hr") -> Trigger:
    body = dumps(doc)
    adapter = adapter_for("standard-webhooks", secrets=SW_SECRETS, purpose=purpose)
    return accept(adapter, SOURCE, sign_standard(body, SW_SECRETS[0]), body, NOW)


def test_generic_rescind_and_defaults() -> None:
    trigger = _generic(
        {"type": "employee.termination_rescinded", "data": {"email": "a@b.co", "hr_reference": 7}}
    )
    assert (trigger.kind, trigger.effective_at) == ("rescind", None)
    assert (trigger.reason, trigger.reference) == ("employee.termination_rescinded", "7")


@pytest.mark.parametrize(
    ("effective_at", "expected"),
    [
        ("2026-01-31T17:00:00Z", datetime(2026, 1, 31, 17, tzinfo=UTC)),
        ("2026-01-31T17:00:00-05:00", datetime(2026, 1, 31, 22, tzinfo=UTC)),
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        (None, None),
    ],
)
def test_generic_effective_at(effective_at: str | None, expected: datetime | None) -> None:
    data = {"email": "a@b.co", "hr_reference": "E1", "effective_at": effective_at}
    trigger = _generic({"type": "employee.terminated", "data": data})
    assert trigger.effective_at == expected
    assert trigger.effective_at is None or trigger.effective_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("effective_at", "why"),
    [
        ("2026-01-31T17:00:00", "UTC offset"),
        ("tomorrow", "ISO-8601"),
        ("2026-02-30", "valid date"),
        ("0001-01-01T00:00:00+01:00", "ISO-8601"),
        (1767603600, "ISO-8601"),
    ],
)
def test_generic_bad_effective_at(effective_at: Any, why: str) -> None:
    data = {"email": "a@b.co", "hr_reference": "E1", "effective_at": effective_at}
    with pytest.raises(NotATermination, match=why):
        _generic({"type": "employee.terminated", "data": data})


@pytest.mark.parametrize(
    "email", [None, "", "   ", "no-at-sign", "two@@ats.com", "a b@c.d", "@b.c", "a@", 5, "a@b\x00"]
)
def test_generic_bad_email_is_not_a_termination(email: Any) -> None:
    data = {"email": email, "hr_reference": "E1"}
    with pytest.raises(NotATermination, match=r"data\.email") as caught:
        _generic({"type": "employee.terminated", "data": data})
    assert type(caught.value) is NotATermination  # a person we cannot name needs a human


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"type": "employee.hired", "data": {}}, "accepted: employee.terminated"),
        ({"data": {}}, r"\(missing\)"),
        ({"type": ["x"], "data": {}}, r"\(list\)"),
        ({"type": "employee.terminated", "data": "x"}, "data must be an object"),
        ({"type": "employee.terminated", "data": {"email": "a@b.c"}}, "hr_reference"),
        (
            {"type": "employee.terminated", "data": {"email": "a@b.c", "hr_reference": True}},
            "hr_reference",
        ),
        (
            {"type": "employee.terminated", "data": {"email": "a@b.c", "hr_reference": "x" * 257}},
            "longer than 256",
        ),
        (
            {
                "type": "employee.terminated",
                "data": {"email": "a@b.c", "hr_reference": "1", "reason": 3},
            },
            "reason",
        ),
        ({"type": "identity.compromised", "data": {}}, "accepted: employee.terminated"),
    ],
)
def test_generic_not_a_termination(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(NotATermination, match=match):
        _generic(doc)


def test_generic_incident_purpose() -> None:
    doc = {"type": "identity.compromised", "data": {"email": "X@Y.io", "incident_id": "INC-1"}}
    trigger = _generic(doc, "incident")
    assert (trigger.kind, trigger.subject, trigger.reference) == ("incident", "x@y.io", "INC-1")
    assert trigger.reason == "identity.compromised"
    with pytest.raises(NotATermination, match=r"accepted: identity\.compromised"):
        _generic({"type": "employee.terminated", "data": {}}, "incident")


def test_long_reason_is_cut_not_refused() -> None:
    data = {"email": "a@b.co", "hr_reference": "E1", "reason": "r" * 5000}
    reason = _generic({"type": "employee.terminated", "data": data}).reason
    assert len(reason) == 500 and reason.endswith("…")


def test_type_echo_is_short_and_quoted() -> None:
    with pytest.raises(NotATermination) as caught:
        _generic({"type": "z" * 1000, "data": {}})
    assert len(caught.value.detail) < 200 and "'zzz" in caught.value.detail


# --- bamboohr --------------------------------------------------------------------------


BAMBOO = BY_KIND["bamboohr"]


def _bamboo(employees: list[Any]) -> Trigger:
    body = dumps({"employees": employees})
    return accept(BAMBOO.adapter(), SOURCE, BAMBOO.headers(body=body), body, NOW)


def test_bamboohr_status_is_case_insensitive_and_the_first_terminated_is_taken() -> None:
    trigger = _bamboo(
        [
            {"id": 1, "fields": {"employmentStatus": "Full-Time", "workEmail": "stays@x.io"}},
            {"id": 2, "fields": {"employmentStatus": " TERMINATED ", "workEmail": "goes@x.io"}},
            {"id": 3, "fields": {"employmentStatus": "terminated", "workEmail": "later@x.io"}},
        ]
    )
    assert (trigger.subject, trigger.reference, trigger.effective_at) == ("goes@x.io", "2", None)


@pytest.mark.parametrize("date", ["", "0000-00-00", None])
def test_bamboohr_unset_termination_date_means_now(date: str | None) -> None:
    fields = {"employmentStatus": "Terminated", "workEmail": "a@x.io", "terminationDate": date}
    assert _bamboo([{"id": "1", "fields": fields}]).effective_at is None


@pytest.mark.parametrize(
    ("employees", "ignored"),
    [
        ([{"id": "1", "fields": {"employmentStatus": "Active", "workEmail": "a@x.io"}}], True),
        ([{"id": "1", "fields": {"employmentStatus": "Terminated"}}], False),
        (
            [
                {
                    "id": "1",
                    "fields": {
                        "employmentStatus": "Terminated",
                        "workEmail": "a@x.io",
                        "terminationDate": "31/01/2026",
                    },
                }
            ],
            False,
        ),
        ([{"fields": {"employmentStatus": "Terminated", "workEmail": "a@x.io"}}], False),
        ([], False),
        (["x"], False),
        ([{"id": "1"}], False),
    ],
)
def test_bamboohr_not_a_termination(employees: list[Any], ignored: bool) -> None:
    with pytest.raises(NotATermination) as caught:
        _bamboo(employees)
    assert isinstance(caught.value, IgnoredEvent) is ignored


@pytest.mark.parametrize("signature", ["abc", "g" * 64, "0" * 63, "sha256=" + "0" * 64])
def test_bamboohr_garbled_signature_is_malformed(signature: str) -> None:
    headers = BAMBOO.headers() | {"X-BambooHR-Signature": signature}
    with pytest.raises(MalformedDelivery):
        accept(BAMBOO.adapter(), SOURCE, headers, BAMBOO_BODY, NOW)


def test_bamboohr_timestamp_is_signed() -> None:
    headers = BAMBOO.headers() | {"X-BambooHR-Timestamp": str(int(TS) + 1)}
    with pytest.raises(BadSignature):
        accept(BAMBOO.adapter(), SOURCE, headers, BAMBOO_BODY, NOW)


# --- hibob -----------------------------------------------------------------------------


BOB = BY_KIND["hibob"]


def test_hibob_inactivated_without_event_id_dedupes_on_the_body() -> None:
    doc = json.loads(BOB_BODY) | {"type": "employee.inactivated"}
    del doc["id"]
    body = dumps(doc)
    trigger = accept(BOB.adapter(), SOURCE, BOB.headers(body=body), body, NOW)
    assert trigger.kind == "terminate" and trigger.reason == "HiBob employee.inactivated"
    assert trigger.delivery_id == "hibob:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("body", [b"Ping test", b'"Ping test"', b'{"text": "Ping test"}'])
def test_hibob_connection_test_is_ignored_even_unsigned(body: bytes) -> None:
    with pytest.raises(IgnoredEvent, match="connection test"):
        accept(BOB.adapter(), SOURCE, {}, body, NOW)


def test_hibob_other_events_are_ignored_and_a_left_without_email_is_not() -> None:
    with pytest.raises(IgnoredEvent, match=r"accepted: employee\.left, employee\.inactivated"):
        body = BOB.not_termination
        accept(BOB.adapter(), SOURCE, BOB.headers(body=body), body, NOW)
    body = dumps({"type": "employee.left", "id": "e2", "data": {"employeeId": "42"}})
    with pytest.raises(NotATermination, match=r"data\.email") as caught:
        accept(BOB.adapter(), SOURCE, BOB.headers(body=body), body, NOW)
    assert not isinstance(caught.value, IgnoredEvent)


@pytest.mark.parametrize("signature", ["not base64!", "AAAA", "QUJD"])
def test_hibob_garbled_signature_is_malformed(signature: str) -> None:
    with pytest.raises(MalformedDelivery):
        accept(BOB.adapter(), SOURCE, {"Bob-Signature": signature}, BOB_BODY, NOW)


# --- pagerduty -------------------------------------------------------------------------


PD = BY_KIND["pagerduty"]


def test_pagerduty_several_signatures_during_rotation() -> None:
    ours = _hmac(PD_SECRETS[1], PD_BODY).hex()
    header = f"v1={'0' * 64}, v0=whatever,v1={ours}"
    trigger = accept(PD.adapter(), SOURCE, {"X-PagerDuty-Signature": header}, PD_BODY, NOW)
    assert trigger == PD.expected


@pytest.mark.parametrize(
    ("header", "error"),
    [("v1=xyz", MalformedDelivery), ("v0=abc", BadSignature), ("garbage", BadSignature)],
)
def test_pagerduty_garbled_signature(header: str, error: type[TriggerError]) -> None:
    with pytest.raises(error):
        accept(PD.adapter(), SOURCE, {"X-PagerDuty-Signature": header}, PD_BODY, NOW)


def _pd(body: bytes) -> Trigger:
    return accept(PD.adapter(), SOURCE, PD.headers(body=body), body, NOW)


def test_pagerduty_tag_is_case_insensitive_and_may_repeat_one_person() -> None:
    title = "[OFFBOARD  A@X.io ] compromised; again: [offboard a@x.io]"
    assert _pd(pd_body(title)).subject == "a@x.io"


def test_pagerduty_untagged_incident_says_how_to_name_someone() -> None:
    with pytest.raises(IgnoredEvent, match=r"\[offboard person@example.com\]"):
        _pd(pd_body("Disk full on db-3"))


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (pd_body("[offboard a@x.io] and [offboard b@x.io]"), NotATermination, "one incident per"),
        (pd_body("[offboard not-an-email]"), NotATermination, "not an email"),
        (pd_body("[offboard a@x.io]", "incident.acknowledged"), IgnoredEvent, "incident.trig"),
        (pd_body("[offboard a@x.io]", "pagey.ping"), IgnoredEvent, "not acted on"),
        (dumps({"event": {"event_type": "incident.triggered", "data": {}}}), NotATermination, "id"),
        (dumps({"event": "x"}), NotATermination, "event must be an object"),
        (dumps({"messages": []}), NotATermination, "event must be an object"),
    ],
)
def test_pagerduty_not_a_termination(body: bytes, error: type[NotATermination], match: str) -> None:
    with pytest.raises(error, match=match) as caught:
        _pd(body)
    if error is NotATermination:
        assert not isinstance(caught.value, IgnoredEvent)


# --- bearer ----------------------------------------------------------------------------


BEARER = BY_KIND["bearer"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {BEARER_SECRETS[0]}"},
        {"authorization": f"bearer   {BEARER_SECRETS[1]} "},
        {"X-API-Key": BEARER_SECRETS[0]},
    ],
)
def test_bearer_token_forms(headers: dict[str, str]) -> None:
    assert accept(BEARER.adapter(), SOURCE, headers, INCIDENT_BODY, NOW) == BEARER.expected


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, BadSignature),
        ({"Authorization": f"Basic {BEARER_SECRETS[0]}"}, MalformedDelivery),
        ({"Authorization": "Bearer"}, MalformedDelivery),
        ({"Authorization": "Bearer  "}, MalformedDelivery),
        ({"X-API-Key": " "}, MalformedDelivery),
        ({"Authorization": f"Bearer {BEARER_SECRETS[0]}x"}, BadSignature),
        ({"Authorization": f"Bearer {BEARER_SECRETS[0][:-1]}"}, BadSignature),
        ({"X-API-Key": "\ud800"}, BadSignature),
    ],
)
def test_bearer_missing_or_malformed_credentials(
    headers: dict[str, str], error: type[TriggerError]
) -> None:
    # no credentials at all is 401 (as HTTP has it); a garbled Authorization header is 400
    with pytest.raises(error):
        accept(BEARER.adapter(), SOURCE, headers, INCIDENT_BODY, NOW)


@pytest.mark.parametrize(
    ("extra", "delivery_id"),
    [
        ({"Idempotency-Key": "soar-run-9", "webhook-id": "w-1"}, "soar-run-9"),
        ({"webhook-id": "w-1"}, "w-1"),
        ({"Idempotency-Key": "  "}, "bearer:" + hashlib.sha256(INCIDENT_BODY).hexdigest()),
    ],
)
def test_bearer_delivery_id(extra: dict[str, str], delivery_id: str) -> None:
    headers = BEARER.headers() | extra
    assert accept(BEARER.adapter(), SOURCE, headers, INCIDENT_BODY, NOW).delivery_id == delivery_id


def test_bearer_unusable_idempotency_key_is_malformed() -> None:
    headers = BEARER.headers() | {"Idempotency-Key": "two words"}
    with pytest.raises(MalformedDelivery, match="idempotency-key"):
        accept(BEARER.adapter(), SOURCE, headers, INCIDENT_BODY, NOW)


def test_bearer_hr_purpose_takes_the_generic_hr_payload() -> None:
    adapter = adapter_for("bearer", secrets=BEARER_SECRETS, purpose="hr")
    trigger = accept(adapter, SOURCE, BEARER.headers(), HR_BODY, NOW)
    assert trigger == replace(
        BY_KIND["standard-webhooks"].expected,
        delivery_id="bearer:" + hashlib.sha256(HR_BODY).hexdigest(),
    )


# --- adapter_for -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("zapier", {}, "unknown trigger kind 'zapier'"),
        ("bearer", {"secrets": "a-single-string"}, "not a single string"),
        ("bearer", {"secrets": []}, "at least one"),
        ("bearer", {"secrets": ["ok-token-0123456789", ""]}, "secret #2 is empty"),
        ("bearer", {"secrets": ["token\n"]}, "whitespace"),
        ("bearer", {"secrets": ["\ud800"]}, "not valid text"),
        ("standard-webhooks", {"secrets": ["whsec_!!!"]}, "whsec_"),
        ("standard-webhooks", {"secrets": ["whsec_"]}, "whsec_"),
        ("standard-webhooks", {"secrets": ["whsec_QUJD", "whsec_A"]}, "secret #2"),
        ("pagerduty", {"purpose": "hr"}, "cannot have purpose 'hr'"),
        ("bamboohr", {"purpose": "incident"}, "cannot have purpose"),
        ("bearer", {"tolerance": timedelta(0)}, "tolerance"),
        ("bearer", {"secrets": ["long-enough-token-01", "short"]}, "secret #2: a token needs at"),
    ],
)
def test_adapter_for_refuses_bad_configuration(
    kind: str, kwargs: dict[str, Any], match: str
) -> None:
    arguments: dict[str, Any] = {"secrets": ["whsec_QUJD"], "purpose": "hr"} | kwargs
    if kind == "pagerduty" and "purpose" not in kwargs:
        arguments["purpose"] = "incident"
    with pytest.raises(ValueError, match=match) as caught:
        adapter_for(kind, **arguments)
    secrets = arguments["secrets"]
    for secret in secrets if isinstance(secrets, list) else []:
        if len(secret) > 6:
            assert secret.strip() not in str(caught.value)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_adapter_repr_and_name_hide_the_secrets(case: Case) -> None:
    adapter = case.adapter()
    assert adapter.name == case.kind
    for secret in case.secrets:
        assert secret not in repr(adapter)


# --- no delivery crashes the server (no 5xx) -------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "webhook-id",
        "Webhook-Timestamp",
        "webhook-signature",
        "X-BambooHR-Signature",
        "x-bamboohr-timestamp",
        "Bob-Signature",
        "X-PagerDuty-Signature",
        "Authorization",
        "X-API-Key",
        "Idempotency-Key",
    ]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from([TS, "v1,AAAA", "v1=" + "0" * 64, "Bearer x", "0" * 64, "QUJD", "v1,"]),
    st.builds(lambda s: "v1," + base64.b64encode(s).decode(), st.binary(max_size=40)),
)
# the keys and values the parsers look for, so that generated documents reach deep paths
KEYS = st.sampled_from(
    (
        "type data email hr_reference incident_id effective_at reason employees fields"
        " employmentStatus workEmail terminationDate id employeeId effectiveDate event"
        " event_type title text"
    ).split()
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "employee.terminated",
            "employee.termination_rescinded",
            "identity.compromised",
            "employee.left",
            "employee.inactivated",
            "incident.triggered",
            "Terminated",
            "a@b.c",
            " A@B.C ",
            "2026-01-31",
            "0000-00-00",
            "2026-01-31T17:00:00Z",
            "2026-02-30",
            "[offboard a@b.c]",
            "Ping test",
            "9999-12-31T23:59:59-23:59",
        ]
    ),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)
DOCS = st.dictionaries(KEYS, JSON, max_size=5) | JSON


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.sampled_from(CASES),
    headers=st.dictionaries(HEADER_NAMES | st.text(max_size=20), HEADER_VALUES, max_size=6),
    body=st.binary(max_size=200) | DOCS.map(dumps),
    skew=st.integers(min_value=-(10**6), max_value=10**6),
)
def test_arbitrary_deliveries_raise_only_trigger_errors(
    case: Case, headers: dict[str, str], body: bytes, skew: int
) -> None:
    adapter = case.adapter()
    now = NOW + timedelta(seconds=skew)
    try:
        accept(adapter, SOURCE, headers, body, now)
    except TriggerError:
        pass
    try:  # parse on its own too, as if the signature had held
        adapter.parse(SOURCE, headers | case.headers(), body)
    except TriggerError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), doc=DOCS)
def test_signed_arbitrary_json_gives_a_sound_trigger_or_a_trigger_error(
    case: Case, doc: Any
) -> None:
    body = dumps(doc)
    try:
        trigger = accept(case.adapter(), SOURCE, case.headers(body=body), body, NOW)
    except TriggerError as error:
        assert error.status in (202, 400, 422)  # the signature held: never 401
        return
    assert trigger.subject == trigger.subject.strip().lower()
    assert trigger.subject.count("@") == 1 and " " not in trigger.subject
    assert trigger.reference and trigger.delivery_id and trigger.source == SOURCE
    assert trigger.effective_at is None or trigger.effective_at.utcoffset() == timedelta(0)
