"""One HTTP delivery (headers, raw body, now) → a verified, parsed `Trigger`, or a precise error.

No I/O here and nothing of aiohttp or the store: the HTTP server calls `accept` and turns a
`TriggerError` into an RFC 9457 problem response with its `status`, `title` and `detail`.
A `detail` never repeats a secret, a token or a signature value, nor the person's address.

Adapters (`adapter_for(kind, ...)`) and what each one verifies:

- ``standard-webhooks``: headers ``webhook-id``, ``webhook-timestamp`` (Unix seconds, within
  the tolerance), ``webhook-signature`` (space-separated ``v1,<base64>``); signed string
  ``{webhook-id}.{webhook-timestamp}.{body}``; secrets ``whsec_<base64 key>``.
- ``bamboohr``: ``X-BambooHR-Signature`` = hex HMAC-SHA256(secret, body || timestamp) and
  ``X-BambooHR-Timestamp`` (Unix seconds, within the tolerance).
- ``hibob``: ``Bob-Signature`` = base64 HMAC-SHA512(secret, body) as HiBob documents it;
  base64 HMAC-SHA256 is accepted too (the digest length tells them apart).
- ``pagerduty``: ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, body)>[,v1=...]``.
- ``bearer``: ``Authorization: Bearer <token>`` (or ``X-API-Key: <token>``) equal to a secret.

Every adapter takes several secrets at once (rotation): a delivery is valid if it verifies
under any of them. HMAC keys are the secrets' UTF-8 bytes, except Standard Webhooks
(the base64-decoded key after ``whsec_``).

Generic payload (our public contract; ``standard-webhooks`` and ``bearer`` sources)::

    purpose "hr":
    {"type": "employee.terminated" | "employee.termination_rescinded",
     "data": {"email": "person@example.com",         # required
              "hr_reference": "E-123",               # required: the HR system's id
              "effective_at": "2026-01-31T17:00:00Z",  # optional: ISO-8601 with an offset,
                                                     # or a date (midnight UTC); absent = now
              "reason": "..."}}                      # optional

    purpose "incident":
    {"type": "identity.compromised",
     "data": {"email": "person@example.com",         # required
              "incident_id": "INC-42",               # required
              "reason": "..."}}                      # optional; incidents act now

Vendor payloads:

- BambooHR: ``{"employees": [{"id": "123", "fields": {"employmentStatus": "Terminated",
  "workEmail": "...", "terminationDate": "YYYY-MM-DD"}, "changedFields": [...]}]}``. The
  webhook must post those three fields under those names. The first employee whose
  ``employmentStatus`` is Terminated (any case) is the subject; ``terminationDate`` is the
  effective time (midnight UTC; empty or ``0000-00-00`` = now).
- HiBob: ``{"type": "employee.left" | "employee.inactivated", "id": "<event id>",
  "data": {"employeeId": "...", "email": "...", "effectiveDate": "YYYY-MM-DD"}}``;
  ``effectiveDate`` is read as midnight UTC. HiBob's connection test (body ``Ping test``
  or ``{"text": "Ping test"}``, perhaps unsigned) is answered as an `IgnoredEvent`.
- PagerDuty v3: ``{"event": {"id": "...", "event_type": "incident.triggered",
  "data": {"id": "<incident id>", "title": "... [offboard person@example.com] ..."}}}``.
  PagerDuty has no field for the person, so the incident title must name exactly one
  with the tag ``[offboard <email>]``.

`delivery_id` (the idempotency key of one delivery): the ``webhook-id`` header;
``bamboohr:<timestamp>:<sha256(body)[:16]>``; ``hibob:<event id>`` (or
``hibob:<sha256(body)>`` when the event has no id); ``pagerduty:<event id>``; for bearer
the ``Idempotency-Key`` or ``webhook-id`` header, else ``bearer:<sha256(body)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Literal, Protocol

from standardwebhooks.webhooks import Webhook

from worker.config import token_problem
from worker.errors import OffboardError

Kind = Literal["terminate", "rescind", "incident"]
Purpose = Literal["hr", "incident"]

ADAPTER_KINDS: Final = ("standard-webhooks", "bamboohr", "hibob", "pagerduty", "bearer")


class TriggerError(OffboardError):
    """A delivery we will not act on; `status` is the HTTP status the server should answer."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "invalid delivery"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.title}: {detail}")
        self.detail = detail


class MalformedDelivery(TriggerError):
    """Missing or garbled headers, a body that is not JSON or not a JSON object."""

    status = 400
    title = "malformed delivery"


class BadSignature(TriggerError):
    """Wrong secret, tampered body, no usable signature, wrong token."""

    status = 401
    title = "invalid signature"


class StaleDelivery(TriggerError):
    """A signed timestamp outside the tolerance: a replay, or a clock far off."""

    status = 401
    title = "stale delivery"


class NotATermination(TriggerError):
    """Valid JSON, but not an event we can act on: wrong type, missing person, bad field."""

    status = 422
    title = "not an actionable event"


class IgnoredEvent(NotATermination):
    """A genuine vendor event that is simply not a termination (a ping, another event type,
    a status change that is not Terminated). Answered 2xx because senders retry, and some
    disable the endpoint, after repeated 4xx, and the next delivery may be a termination."""

    status = 202
    title = "event ignored"


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """A verified request to act on one person, as the sender stated it."""

    #: the configured source name, e.g. "bamboohr-prod"
    source: str
    kind: Kind
    #: the person's login/email, lower-cased and stripped
    subject: str
    #: when the termination takes effect (UTC); None = now
    effective_at: datetime | None
    reason: str
    #: the sender's own id for the employee or incident
    reference: str
    #: idempotency key of this delivery
    delivery_id: str


class TriggerAdapter(Protocol):
    name: str

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None: ...

    def parse(self, source: str, headers: Mapping[str, str], body: bytes) -> Trigger: ...


def accept(
    adapter: TriggerAdapter,
    source: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> Trigger:
    """Verify, then parse: nothing in the body is looked at before the signature holds."""
    adapter.verify(headers, body, now)
    return adapter.parse(source, headers, body)


# --- canonical signed strings ---------------------------------------------------------


def standard_webhooks_signed_string(msg_id: str, timestamp: str, body: bytes) -> bytes:
    """``{webhook-id}.{webhook-timestamp}.{body}``: the Standard Webhooks signed content,
    HMAC-SHA256'd with the key decoded from ``whsec_<base64>``; the header carries
    ``v1,<base64 digest>``."""
    return f"{msg_id}.{timestamp}.".encode() + body


def bamboohr_signed_string(timestamp: str, body: bytes) -> bytes:
    """``body || X-BambooHR-Timestamp`` (no separator), HMAC-SHA256'd with the webhook's
    private key, sent as lower- or upper-case hex in ``X-BambooHR-Signature``.

    BambooHR says only that the signature covers the payload and the timestamp; the order
    and the absence of a separator are OUR DOCUMENTED ASSUMPTION, to be checked against a
    real delivery before go-live."""
    return body + timestamp.encode("ascii")


def hibob_signed_string(body: bytes) -> bytes:
    """The raw body, HMAC'd with the webhook secret, sent as base64 in ``Bob-Signature``.

    HiBob documents HMAC-SHA512; HMAC-SHA256 is also accepted because it was assumed
    before. Both are OUR ASSUMPTION until checked against a real delivery."""
    return body


def pagerduty_signed_string(body: bytes) -> bytes:
    """The raw body, HMAC-SHA256'd with the subscription's secret, sent as
    ``v1=<hex>`` (comma-separated, several during rotation) in ``X-PagerDuty-Signature``."""
    return body


# --- adapters -------------------------------------------------------------------------

_HR_TYPES: Final[Mapping[str, Kind]] = {
    "employee.terminated": "terminate",
    "employee.termination_rescinded": "rescind",
}
_INCIDENT_TYPES: Final[Mapping[str, Kind]] = {"identity.compromised": "incident"}
# HiBob also sends employee.inactivated when someone goes on leave: it is acted on as asked
_HIBOB_TYPES: Final = ("employee.left", "employee.inactivated")
_PAGERDUTY_TYPES: Final = ("incident.triggered",)

_UNIX_SECONDS = re.compile(r"0|[1-9][0-9]{0,14}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# a header value we use as a key: visible ASCII, so it can be stored and signed as-is
_TOKEN_ID = re.compile(r"[\x21-\x7e]{1,256}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_OFFBOARD_TAG = re.compile(r"\[offboard\s+([^\s\]]+)\s*\]", re.IGNORECASE)
_MAX_REFERENCE = 256
_MAX_REASON = 500


class _Adapter:
    name: str = ""

    def __init__(self, *, secrets: tuple[str, ...], tolerance: timedelta, purpose: Purpose):
        self._secrets = secrets
        self._tolerance = tolerance
        self._purpose = purpose

    def __repr__(self) -> str:
        # never the secrets: adapters end up in logs and tracebacks
        return f"<{self.name} adapter, {self._purpose}, {len(self._secrets)} secret(s)>"

    def _hmacs(self, message: bytes, digest: Callable[[], Any] = hashlib.sha256) -> list[bytes]:
        return [hmac.new(s.encode(), message, digest).digest() for s in self._secrets]


class StandardWebhooksAdapter(_Adapter):
    """Standard Webhooks. Signatures are computed by the `standardwebhooks` library's
    `Webhook.sign`; its `verify` is not used because it checks the timestamp against the
    wall clock with a fixed 5-minute window (ignoring our `now` and tolerance) and lets
    ValueError, binascii.Error and UnicodeDecodeError escape on garbled headers."""

    name = "standard-webhooks"

    def __init__(self, *, secrets: tuple[str, ...], tolerance: timedelta, purpose: Purpose):
        super().__init__(secrets=secrets, tolerance=tolerance, purpose=purpose)
        self._webhooks = [_standard_webhook(s, i) for i, s in enumerate(secrets, 1)]

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        h = _lower(headers)
        msg_id = _required_key_header(h, "webhook-id")
        timestamp = _unix_seconds(h, "webhook-timestamp")
        presented = _standard_signatures(_header(h, "webhook-signature"))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedDelivery("the body is not UTF-8") from None
        _check_fresh(timestamp, "webhook-timestamp", now, self._tolerance)
        if not presented:
            raise BadSignature("webhook-signature has no v1 signature")
        when = datetime.fromtimestamp(int(timestamp), UTC)
        expected = [_b64(w.sign(msg_id, when, text).split(",", 1)[1]) for w in self._webhooks]
        if not _any_equal(expected, presented):
            raise BadSignature("no webhook-signature matches the body under any configured secret")

    def parse(self, source: str, headers: Mapping[str, str], body: bytes) -> Trigger:
        delivery_id = _required_key_header(_lower(headers), "webhook-id")
        return _generic(source, self._purpose, body, delivery_id)


class BambooHRAdapter(_Adapter):
    name = "bamboohr"

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        h = _lower(headers)
        signature = _header(h, "x-bamboohr-signature").strip()
        timestamp = _unix_seconds(h, "x-bamboohr-timestamp")
        if not _HEX_SHA256.fullmatch(signature):
            raise MalformedDelivery("X-BambooHR-Signature is not 64 hex digits")
        _check_fresh(timestamp, "X-BambooHR-Timestamp", now, self._tolerance)
        expected = self._hmacs(bamboohr_signed_string(timestamp, body))
        if not _any_equal(expected, [bytes.fromhex(signature)]):
            raise BadSignature(
                "X-BambooHR-Signature does not match the body and timestamp"
                " under any configured secret"
            )

    def parse(self, source: str, headers: Mapping[str, str], body: bytes) -> Trigger:
        timestamp = _unix_seconds(_lower(headers), "x-bamboohr-timestamp")
        where, employee, fields = _first_terminated(_json_object(body).get("employees"))
        return Trigger(
            source=source,
            kind="terminate",
            subject=_email(fields.get("workEmail"), f"{where}.fields.workEmail"),
            effective_at=_vendor_date(
                fields.get("terminationDate"), f"{where}.fields.terminationDate"
            ),
            reason="BambooHR employmentStatus Terminated",
            reference=_reference(employee.get("id"), f"{where}.id"),
            delivery_id=f"bamboohr:{timestamp}:{hashlib.sha256(body).hexdigest()[:16]}",
        )


def _first_terminated(employees: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The first employee whose employmentStatus is Terminated; later ones are not read."""
    if not isinstance(employees, list) or not employees:
        raise NotATermination("employees must be a non-empty list")
    for i, employee in enumerate(employees):
        where = f"employees[{i}]"
        if not isinstance(employee, dict) or not isinstance(employee.get("fields"), dict):
            raise NotATermination(f"{where} must be an object with a fields object")
        status = employee["fields"].get("employmentStatus")
        if isinstance(status, str) and status.strip().casefold() == "terminated":
            return where, employee, employee["fields"]
    raise IgnoredEvent("no employee in this delivery has employmentStatus Terminated")


class HiBobAdapter(_Adapter):
    name = "hibob"

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        if _is_hibob_ping(body):
            # HiBob's connection test may come unsigned; it triggers nothing, and the
            # connection is only established if it is answered 2xx
            return
        signature = _b64(_header(_lower(headers), "bob-signature").strip(), "Bob-Signature")
        digest: Callable[[], Any]
        if len(signature) == hashlib.sha512().digest_size:
            digest = hashlib.sha512
        elif len(signature) == hashlib.sha256().digest_size:
            digest = hashlib.sha256
        else:
            raise MalformedDelivery("Bob-Signature is not an HMAC-SHA512 or HMAC-SHA256 digest")
        if not _any_equal(self._hmacs(hibob_signed_string(body), digest), [signature]):
            raise BadSignature("Bob-Signature does not match the body under any configured secret")

    def parse(self, source: str, headers: Mapping[str, str], body: bytes) -> Trigger:
        if _is_hibob_ping(body):
            raise IgnoredEvent("HiBob connection test")
        doc = _json_object(body)
        event_type = doc.get("type")
        if event_type not in _HIBOB_TYPES:
            raise IgnoredEvent(
                f"type {_shown(event_type)} is not acted on; {_accepted(_HIBOB_TYPES)}"
            )
        data = _object(doc.get("data"), "data")
        event_id = doc.get("id")
        if event_id is None:
            # no event id in the payload: retries resend the same body, so its hash dedupes
            delivery_id = f"hibob:{hashlib.sha256(body).hexdigest()}"
        else:
            delivery_id = f"hibob:{_reference(event_id, 'id')}"
        return Trigger(
            source=source,
            kind="terminate",
            subject=_email(data.get("email"), "data.email"),
            effective_at=_vendor_date(data.get("effectiveDate"), "data.effectiveDate"),
            reason=f"HiBob {event_type}",
            reference=_reference(data.get("employeeId"), "data.employeeId"),
            delivery_id=delivery_id,
        )


class PagerDutyAdapter(_Adapter):
    name = "pagerduty"

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        presented: list[bytes] = []
        for part in _header(_lower(headers), "x-pagerduty-signature").split(","):
            version, _, value = part.strip().partition("=")
            if version != "v1":
                continue  # other schemes may appear later; v1 is the one we know
            if not _HEX_SHA256.fullmatch(value):
                raise MalformedDelivery("an X-PagerDuty-Signature v1 value is not 64 hex digits")
            presented.append(bytes.fromhex(value))
        if not presented:
            raise BadSignature("X-PagerDuty-Signature has no v1 signature")
        if not _any_equal(self._hmacs(pagerduty_signed_string(body)), presented):
            raise BadSignature(
                "no X-PagerDuty-Signature matches the body under any configured secret"
            )

    def parse(self, source: str, headers: Mapping[str, str], body: bytes) -> Trigger:
        event = _object(_json_object(body).get("event"), "event")
        event_type = event.get("event_type")
        if event_type not in _PAGERDUTY_TYPES:
            raise IgnoredEvent(
                f"event_type {_shown(event_type)} is not acted on; {_accepted(_PAGERDUTY_TYPES)}"
            )
        event_id = _reference(event.get("id"), "event.id")
        incident = _object(event.get("data"), "event.data")
        title = incident.get("title")
        if not isinstance(title, str):
            raise NotATermination("event.data.title must be a string")
        tagged = {m.strip().lower() for m in _OFFBOARD_TAG.findall(title)}
        if not tagged:
            # most incidents are not about a person: nothing is wrong with the delivery
            raise IgnoredEvent(
                "the incident title names nobody to offboard; to name one, put"
                " [offboard person@example.com] in the incident title"
            )
        if len(tagged) > 1:
            raise NotATermination(
                "the incident title names several people with [offboard ...];"
                " open one incident per person"
            )
        return Trigger(
            source=source,
            kind="incident",
            subject=_email(tagged.pop(), "the [offboard ...] tag in event.data.title"),
            effective_at=None,
            reason=_reason(f"PagerDuty incident: {title}"),
            reference=_reference(incident.get("id"), "event.data.id"),
            delivery_id=f"pagerduty:{event_id}",
        )


class BearerAdapter(_Adapter):
    """A static token for SOAR tools and EventBridge API destinations. No timestamp: a
    leaked token can be replayed, which is why deliveries are deduplicated by the caller."""

    name = "bearer"

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        h = _lower(headers)
        if "authorization" in h:
            scheme, _, token = h["authorization"].strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise MalformedDelivery("Authorization must be 'Bearer <token>'")
        elif "x-api-key" in h:
            token = h["x-api-key"].strip()
            if not token:
                raise MalformedDelivery("X-API-Key is empty")
        else:
            raise BadSignature("no credentials: send Authorization: Bearer <token> or X-API-Key")
        # compare digests, so the comparison time depends on neither the token nor its length
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        expected = [hashlib.sha256(s.encode()).digest() for s in self._secrets]
        if not _any_equal(expected, [presented]):
            raise BadSignature("the token matches no configured secret")

    def parse(self, source: str, headers: Mapping[str, str], body: bytes) -> Trigger:
        h = _lower(headers)
        delivery_id = _optional_key_header(h, "idempotency-key") or _optional_key_header(
            h, "webhook-id"
        )
        if delivery_id is None:
            delivery_id = f"bearer:{hashlib.sha256(body).hexdigest()}"
        return _generic(source, self._purpose, body, delivery_id)


_ADAPTERS: Final[Mapping[str, tuple[Callable[..., TriggerAdapter], tuple[Purpose, ...]]]] = {
    "standard-webhooks": (StandardWebhooksAdapter, ("hr", "incident")),
    "bamboohr": (BambooHRAdapter, ("hr",)),
    "hibob": (HiBobAdapter, ("hr",)),
    "pagerduty": (PagerDutyAdapter, ("incident",)),
    "bearer": (BearerAdapter, ("hr", "incident")),
}


def adapter_for(
    kind: str,
    *,
    secrets: Sequence[str],
    tolerance: timedelta = timedelta(minutes=5),
    purpose: Purpose,
) -> TriggerAdapter:
    """The adapter for one configured source. ValueError (never echoing a secret) for an
    unknown kind, a purpose the sender cannot serve, or unusable secrets or tolerance."""
    if kind not in _ADAPTERS:
        raise ValueError(f"unknown trigger kind {kind!r}; known: {', '.join(ADAPTER_KINDS)}")
    cls, purposes = _ADAPTERS[kind]
    if purpose not in purposes:
        raise ValueError(f"a {kind} source cannot have purpose {purpose!r}; it serves {purposes}")
    if tolerance <= timedelta(0):
        raise ValueError("tolerance must be positive")
    adapter = cls(secrets=_checked_secrets(secrets), tolerance=tolerance, purpose=purpose)
    # after the kind's own checks (a whsec_ key's decoding says more than its length)
    for i, secret in enumerate(secrets, 1):
        if (problem := token_problem(secret)) is not None:
            raise ValueError(f"secret #{i}: {problem}")
    return adapter


# --- helpers --------------------------------------------------------------------------


def _checked_secrets(secrets: Sequence[str]) -> tuple[str, ...]:
    # a lone string is a Sequence[str] too: it would become one secret per character
    if isinstance(secrets, str | bytes):
        raise ValueError("secrets must be a list of strings, not a single string")
    checked = tuple(secrets)
    if not checked:
        raise ValueError("at least one secret is needed")
    for i, secret in enumerate(checked, 1):
        if not isinstance(secret, str) or not secret.strip():
            raise ValueError(f"secret #{i} is empty or not a string")
        if secret != secret.strip():
            raise ValueError(f"secret #{i} has surrounding whitespace (a newline from a file?)")
        try:
            secret.encode()
        except UnicodeEncodeError:
            raise ValueError(f"secret #{i} is not valid text") from None
    return checked


def standard_webhook(secret: str) -> Webhook:
    """The signer/verifier of a `whsec_<base64>` secret, for trigger sources and
    notifiers alike; ValueError (never echoing the value) for anything else."""
    problem = "not a Standard Webhooks secret (whsec_<base64>)"
    # the library takes bare base64 too, and decodes leniently ("whsec_!!" would be an
    # empty key): the documented shape is checked here
    key = secret.removeprefix("whsec_")
    if key == secret or not _BASE64.fullmatch(key):
        raise ValueError(problem)
    try:
        if not base64.b64decode(key + "=" * (-len(key) % 4), validate=True):
            raise ValueError(problem)
        return Webhook(secret)
    except Exception:  # binascii.Error, EmptyWebhookSecretError, ...
        raise ValueError(problem) from None


def _standard_webhook(secret: str, index: int) -> Webhook:
    try:
        return standard_webhook(secret)
    except ValueError as exc:
        raise ValueError(f"secret #{index} is {exc}") from None


def _unix_now(now: datetime) -> float:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")  # a caller bug, not a bad delivery
    return now.timestamp()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in lowered and lowered[name] != value:
            # which one the signer meant is unknowable (multidicts keep repeats)
            raise MalformedDelivery(f"header {name} is given more than once")
        lowered[name] = value
    return lowered


def _header(h: Mapping[str, str], name: str) -> str:
    value = h.get(name)
    if value is None or not value.strip():
        raise MalformedDelivery(f"missing {name} header")
    return value


def _required_key_header(h: Mapping[str, str], name: str) -> str:
    value = _optional_key_header(h, name)
    if value is None:
        raise MalformedDelivery(f"missing {name} header")
    return value


def _optional_key_header(h: Mapping[str, str], name: str) -> str | None:
    value = h.get(name)
    if value is None or not value.strip():
        return None
    if not _TOKEN_ID.fullmatch(value.strip()):
        raise MalformedDelivery(f"{name} must be 1-256 visible ASCII characters")
    return value.strip()


def _unix_seconds(h: Mapping[str, str], name: str) -> str:
    """The header as sent, since it is part of the signed string."""
    value = _header(h, name).strip()
    if not _UNIX_SECONDS.fullmatch(value):
        raise MalformedDelivery(f"{name} is not Unix seconds")
    return value


def _check_fresh(value: str, name: str, now: datetime, tolerance: timedelta) -> None:
    skew = int(value) - _unix_now(now)
    if abs(skew) > tolerance.total_seconds():
        direction = "in the future" if skew > 0 else "in the past"
        raise StaleDelivery(
            f"{name} is {abs(skew):.0f}s {direction};"
            f" the tolerance is {tolerance.total_seconds():.0f}s"
        )


def _standard_signatures(header: str) -> list[bytes]:
    presented: list[bytes] = []
    for token in header.split():
        version, _, value = token.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and later versions are not ours to check
        presented.append(_b64(value, "a webhook-signature v1 value"))
    return presented


def _b64(value: str, what: str = "a signature") -> bytes:
    try:
        if not value or not _BASE64.fullmatch(value):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise MalformedDelivery(f"{what} is not base64") from None


def _any_equal(expected: Iterable[bytes], presented: Sequence[bytes]) -> bool:
    matched = False
    for want in expected:
        for got in presented:
            # no early exit: the time taken does not say which secret matched
            matched |= hmac.compare_digest(want, got)
    return matched


def _is_hibob_ping(body: bytes) -> bool:
    if body.strip() in (b"Ping test", b'"Ping test"'):
        return True
    if len(body) > 64:
        return False
    try:
        return bool(json.loads(body) == {"text": "Ping test"})
    except ValueError:
        return False


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise MalformedDelivery("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise MalformedDelivery("the body must be a JSON object")
    return doc


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NotATermination(f"{field} must be an object")
    return value


def _generic(source: str, purpose: Purpose, body: bytes, delivery_id: str) -> Trigger:
    doc = _json_object(body)
    types = _HR_TYPES if purpose == "hr" else _INCIDENT_TYPES
    event_type = doc.get("type")
    if not isinstance(event_type, str) or event_type not in types:
        raise NotATermination(
            f"type {_shown(event_type)} is not one this {purpose} source acts on;"
            f" {_accepted(tuple(types))}"
        )
    data = _object(doc.get("data"), "data")
    ref_field = "hr_reference" if purpose == "hr" else "incident_id"
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise NotATermination("data.reason must be a string")
    return Trigger(
        source=source,
        kind=types[event_type],
        subject=_email(data.get("email"), "data.email"),
        effective_at=(
            _instant(data.get("effective_at"), "data.effective_at") if purpose == "hr" else None
        ),
        reason=_reason(reason or event_type),
        reference=_reference(data.get(ref_field), f"data.{ref_field}"),
        delivery_id=delivery_id,
    )


def _email(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NotATermination(f"{field} is missing: it names the person to act on")
    address = unicodedata.normalize("NFC", value.strip()).lower()
    local, at, domain = address.partition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in domain
        or len(address) > 254
        or any(c.isspace() or not c.isprintable() for c in address)
    ):
        # the address itself is personal data: not repeated in the detail
        raise NotATermination(f"{field} is not an email address (one @, no spaces)")
    # the rest (ASCII only, a protected look-alike) is admission's, for every front end
    return address


def _reference(value: Any, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise NotATermination(f"{field} is missing or not a string")
    if len(value.strip()) > _MAX_REFERENCE:
        raise NotATermination(f"{field} is longer than {_MAX_REFERENCE} characters")
    return value.strip()


def _reason(text: str) -> str:
    # informational only: too long is cut, never a reason to refuse an offboarding
    text = text.strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _instant(value: Any, field: str) -> datetime | None:
    """ISO-8601 with an offset, or a bare date (midnight UTC); None or absent = now."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise NotATermination(f"{field} must be an ISO-8601 string")
    text = value.strip()
    if _DATE.fullmatch(text):
        return _midnight_utc(text, field)
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise NotATermination(f"{field} needs a UTC offset (e.g. Z or +01:00)")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise NotATermination(f"{field} is not an ISO-8601 time") from None


def _vendor_date(value: Any, field: str) -> datetime | None:
    # HR systems send "" or "0000-00-00" for a date that is not set
    if value is None or value in ("", "0000-00-00"):
        return None
    if not isinstance(value, str) or not _DATE.fullmatch(value.strip()):
        raise NotATermination(f"{field} must be a YYYY-MM-DD date")
    return _midnight_utc(value.strip(), field)


def _midnight_utc(text: str, field: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise NotATermination(f"{field} is not a valid date") from None


def _shown(value: Any) -> str:
    # body text echoed into a response and logs: short, and quoted so it cannot pose as ours
    if not isinstance(value, str):
        return "(missing)" if value is None else f"({type(value).__name__})"
    return repr(value if len(value) <= 60 else value[:59] + "…")


def _accepted(types: Sequence[str]) -> str:
    return "accepted: " + ", ".join(types)
