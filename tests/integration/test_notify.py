"""Slack and signed-webhook notifications against local receivers: content, Standard
Webhooks signatures, retries (500, 429 + Retry-After, timeouts, resets), recorded
outcomes, background delivery, and no secret in any log line."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from worker.clock import SystemClock
from worker.config import NotifiersConfig, Secret, SecretRef, SlackConfig, WebhookNotifierConfig
from worker.domain import NewCase
from worker.logging import REDACTED, configure_logging
from worker.notify import (
    FAILED,
    SENT,
    FanOut,
    LogNotifier,
    Notification,
    NotificationFailed,
    RecordingNotifier,
    SlackNotifier,
    WebhookNotifier,
    deliver,
    notifier_from_config,
    record_in_timeline,
    slack_message,
)
from worker.playbook import load_playbook
from worker.sandbox.common import serve_on_loopback
from worker.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"notify-test-signing-key-0123456789").decode()
SLACK_PATH = "/services/T0NOTIFY/B0NOTIFY/slackhooksecretpart0123456789"
CONSOLE = (
    "https://us-east-1.console.aws.amazon.com/singlesignon/home?region=us-east-1&x=<y>"
    "#!/instances/ssoins-1234/users/user-details?user=abc-123"
)

# what the engine, the worker loop and the watchdog send
TASK = Notification(
    kind="operator_task",
    case_id="case-0001",
    subject="leaver@example.com",
    title="Disable leaver@example.com in the Identity Center console",
    data={"console_url": CONSOLE, "confirm": "offboard confirm case-0001 disable-ic"},
)
HALTED = Notification(
    kind="halted",
    case_id="case-0002",
    subject="leaver@example.com",
    title="case halted at deactivate-idp",
    data={
        "reason": "step deactivate-idp (okta.deactivate) failed: okta: 403 <forbidden>",
        "retry": "offboard retry case-0002",
    },
)
DRIFT = Notification(
    kind="drift",
    case_id="case-0003",
    subject="leaver@example.com",
    title="leaver@example.com was re-enabled (IdP ACTIVE, Identity Center ENABLED)",
    data={"idp_status": "ACTIVE", "ic_status": "ENABLED"},
)
MILESTONE = Notification(
    kind="milestone",
    case_id="case-0004",
    subject="leaver@example.com",
    title="leaver@example.com: role_sessions_expired",
    data={"milestone": "role_sessions_expired", "due_at": "2026-01-05T21:00:00.000Z"},
)

#: what a scripted receiver does for one request
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status(code: int, **headers: str) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text="ok" if code < 300 else "nope", headers=headers)

    return answer


def hang(seconds: float) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="too late")

    return answer


async def reset(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.abort()
    raise ConnectionResetError("test: connection reset")


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers POSTs from a script (the last answer repeats) and keeps every request."""

    script: list[Answer]
    url: str = ""
    requests: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(time.monotonic(), request.path, dict(request.headers), body))
        answer = self.script[min(len(self.requests), len(self.script)) - 1]
        return await answer(request)


ReceiverFactory = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[ReceiverFactory]:
    served = []

    async def start(*script: Answer, path: str = "/hook") -> Receiver:
        rec = Receiver(list(script) or [status(200)])
        app = web.Application()
        app.router.add_post(path, rec.handle)
        server = await serve_on_loopback(app)
        served.append(server)
        rec.url = server.url + path
        return rec

    yield start
    for server in served:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def __call__(self, kind: str, case_id: str, outcome: dict[str, Any]) -> None:
        self.events.append((kind, case_id, outcome))


@pytest.fixture
def logs() -> Any:
    captured = io.StringIO()
    configure_logging(level="DEBUG", stream=captured)
    yield captured
    configure_logging(level="INFO")


def log_lines(captured: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------
# signed webhooks


async def test_webhook_is_signed_retried_after_500_and_429_and_recorded_sent(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver(status(500), status(429, **{"Retry-After": "1"}), status(204))
    hook = WebhookNotifier(rec.url, Secret(WEBHOOK_SECRET), http, attempts=5, backoff=0.01)
    recorded = Recorded()
    fanout = FanOut(hook, record=recorded, background=True)

    started = time.monotonic()
    await fanout.notify(TASK)
    assert time.monotonic() - started < 0.2, "the caller waited for the delivery"
    assert fanout.pending == 1
    await fanout.aclose()

    assert len(rec.requests) == 3
    ids = {r.headers["webhook-id"] for r in rec.requests}
    assert len(ids) == 1, "the webhook-id changed between the retries of one delivery"
    verifier = Webhook(WEBHOOK_SECRET)
    for request in rec.requests:
        event = verifier.verify(request.body, request.headers)
        assert event["type"] == "offboard.operator_task"
        assert event["timestamp"].endswith("Z")
        assert event["data"] == {
            "case_id": "case-0001",
            "subject": "leaver@example.com",
            "title": TASK.title,
            "console_url": CONSOLE,
            "confirm": "offboard confirm case-0001 disable-ic",
        }
    assert rec.requests[0].body == rec.requests[2].body
    assert rec.requests[2].at - rec.requests[1].at >= 1.0, "sent before Retry-After"

    assert recorded.events == [
        (
            SENT,
            "case-0001",
            {
                "notification": "operator_task",
                "channel": hook.channel,
                "attempts": 3,
                "delivery_id": ids.pop(),
            },
        )
    ]


async def test_a_wrong_secret_does_not_verify(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver()
    hook = WebhookNotifier(rec.url, Secret(WEBHOOK_SECRET), http, attempts=1)
    await hook.notify(MILESTONE)
    other = "whsec_" + base64.b64encode(b"some-other-key-entirely-000000").decode()
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(rec.requests[0].body, rec.requests[0].headers)


async def test_receiver_that_always_fails_is_recorded_failed_and_deliver_returns(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver(status(503))
    hook = WebhookNotifier(rec.url, Secret(WEBHOOK_SECRET), http, attempts=4, backoff=0.01)
    recorded = Recorded()

    await deliver(hook, HALTED, record=recorded)  # must not raise

    assert len(rec.requests) == 4
    assert len({r.headers["webhook-id"] for r in rec.requests}) == 1
    [(kind, case_id, outcome)] = recorded.events
    assert (kind, case_id) == (FAILED, "case-0002")
    assert outcome["attempts"] == 4
    assert outcome["channel"] == hook.channel
    assert outcome["notification"] == "halted"
    assert "503" in outcome["error"]


async def test_the_notifier_itself_raises_notification_failed(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver(status(502))
    hook = WebhookNotifier(rec.url, Secret(WEBHOOK_SECRET), http, attempts=2, backoff=0.01)
    with pytest.raises(NotificationFailed) as caught:
        await hook.notify(DRIFT)
    assert caught.value.attempts == 2
    assert len(rec.requests) == 2


async def test_a_permanent_refusal_is_not_retried(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver(status(410))
    hook = WebhookNotifier(rec.url, Secret(WEBHOOK_SECRET), http, attempts=5, backoff=0.01)
    recorded = Recorded()
    await deliver(hook, DRIFT, record=recorded)
    assert len(rec.requests) == 1
    [(kind, _, outcome)] = recorded.events
    assert kind == FAILED and outcome["attempts"] == 1 and "410" in outcome["error"]


@pytest.mark.parametrize("first", [hang(2.0), reset], ids=["timeout", "reset"])
async def test_timeouts_and_resets_are_retried(
    receiver: ReceiverFactory, http: aiohttp.ClientSession, first: Answer
) -> None:
    rec = await receiver(first, status(200))
    hook = WebhookNotifier(
        rec.url, Secret(WEBHOOK_SECRET), http, attempts=3, backoff=0.01, timeout=0.3
    )
    recorded = Recorded()
    await deliver(hook, MILESTONE, record=recorded)
    assert len(rec.requests) == 2
    assert [(k, o["attempts"]) for k, _, o in recorded.events] == [(SENT, 2)]


# --------------------------------------------------------------------------------------
# Slack


async def test_slack_message_for_each_kind(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver(path=SLACK_PATH)
    slack = SlackNotifier(Secret(rec.url), http, attempts=1)
    for notification in (TASK, HALTED, DRIFT, MILESTONE):
        await slack.notify(notification)
    task, halted, drift, milestone = (r.json() for r in rec.requests)
    for message in (task, halted, drift, milestone):
        assert set(message) == {"text", "blocks"}
        assert message["blocks"][0]["type"] == "header"
        assert all(len(b["text"]["text"]) <= 3000 for b in message["blocks"] if "text" in b)

    def blocks_text(message: dict[str, Any]) -> str:
        return json.dumps(message["blocks"])

    # operator task: the console link and the exact confirm command
    assert CONSOLE in task["text"]
    assert "offboard confirm case-0001 disable-ic" in task["text"]
    escaped = CONSOLE.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert f"<{escaped}|the AWS console>" in blocks_text(task)
    assert "```offboard confirm case-0001 disable-ic```" in blocks_text(task)
    assert "leaver@example.com" in task["text"] and "case-0001" in task["text"]

    # halted: the reason and the retry command
    assert HALTED.data["reason"] in halted["text"]
    assert "offboard retry case-0002" in halted["text"]
    assert "```offboard retry case-0002```" in blocks_text(halted)
    assert "403 &lt;forbidden&gt;" in blocks_text(halted)  # mrkdwn escaped

    # drift: an alert with both statuses
    assert drift["text"].startswith("ALERT")
    assert ":rotating_light:" in blocks_text(drift)
    assert "ACTIVE" in drift["text"] and "ENABLED" in drift["text"]

    # milestone: which, and when
    assert "role_sessions_expired" in milestone["text"]
    assert "2026-01-05T21:00:00.000Z" in milestone["text"]


def test_slack_message_for_an_unknown_kind_still_says_what_happened() -> None:
    message = slack_message(
        Notification(kind="other", case_id="c", subject="s@example.com", title="T", data={"k": 1})
    )
    assert "T" in message["text"] and "k: 1" in message["text"]


async def test_slack_honours_retry_after_then_gives_up(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    rec = await receiver(status(429, **{"Retry-After": "0.5"}), status(500), path=SLACK_PATH)
    slack = SlackNotifier(Secret(rec.url), http, attempts=3, backoff=0.01)
    recorded = Recorded()
    await deliver(slack, TASK, record=recorded)
    assert len(rec.requests) == 3
    assert rec.requests[1].at - rec.requests[0].at >= 0.5
    [(kind, _, outcome)] = recorded.events
    assert kind == FAILED and outcome["attempts"] == 3 and outcome["channel"] == "slack"


# --------------------------------------------------------------------------------------
# secrets


async def test_no_secret_in_logs_or_recorded_outcomes(
    receiver: ReceiverFactory, http: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    slack_rec = await receiver(status(500), path=SLACK_PATH)
    hook_rec = await receiver(status(429, **{"Retry-After": "0"}), status(200))
    bad = await receiver(status(400), path=SLACK_PATH + "x")
    recorded = Recorded()
    fanout = FanOut(
        LogNotifier(),
        SlackNotifier(Secret(slack_rec.url), http, attempts=2, backoff=0.01),
        SlackNotifier(Secret(bad.url), http, attempts=2, backoff=0.01, channel="slack-2"),
        WebhookNotifier(hook_rec.url, Secret(WEBHOOK_SECRET), http, attempts=2, backoff=0.01),
        record=recorded,
        background=True,
    )
    for notification in (TASK, HALTED):
        await fanout.notify(notification)
    await fanout.aclose()

    text = logs.getvalue()
    events = [line["event"] for line in log_lines(logs)]
    assert "notification_retry" in events
    assert "notification_failed" in events
    assert "notification_sent" in events
    assert sorted(k for k, _, _ in recorded.events) == [FAILED] * 4 + [SENT] * 2
    stored = json.dumps(recorded.events)
    for secret in (slack_rec.url, bad.url, SLACK_PATH, WEBHOOK_SECRET, WEBHOOK_SECRET[6:]):
        assert secret not in text
        assert secret not in stored
    assert REDACTED not in text, "a secret reached a log call (the redactor caught it)"
    assert "Secret('***')" not in text


def test_a_malformed_webhook_secret_is_a_config_error_without_the_value() -> None:
    from worker.errors import ConfigError

    value = "not!!base64-at-all-but-long"
    with pytest.raises(ConfigError) as caught:
        WebhookNotifier("https://example.com/hook", Secret(""), None, attempts=1)  # type: ignore[arg-type]
    assert "whsec_" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        SlackNotifier(Secret(value), None, attempts=1)  # type: ignore[arg-type]
    assert value not in str(caught.value)


# --------------------------------------------------------------------------------------
# fan-out, background delivery, configuration, the timeline


async def test_a_slow_channel_never_slows_the_caller_and_aclose_waits(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    slow = await receiver(hang(0.5))
    recording = RecordingNotifier()
    recorded = Recorded()
    fanout = FanOut(
        recording,
        WebhookNotifier(slow.url, Secret(WEBHOOK_SECRET), http, attempts=1, timeout=5),
        record=recorded,
        background=True,
    )
    started = time.monotonic()
    await fanout.notify(TASK)
    assert time.monotonic() - started < 0.2
    assert recording.sent == [TASK], "local notifiers run inline"
    assert recorded.events == []
    await fanout.aclose()
    assert fanout.pending == 0
    assert [k for k, _, _ in recorded.events] == [SENT]


async def test_aclose_with_a_grace_cancels_and_records_what_is_stuck(
    receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    stuck = await receiver(hang(30))
    recorded = Recorded()
    fanout = FanOut(
        WebhookNotifier(stuck.url, Secret(WEBHOOK_SECRET), http, attempts=1, timeout=60),
        record=recorded,
        background=True,
    )
    await fanout.notify(DRIFT)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await fanout.aclose(grace=0.2)
    assert time.monotonic() - started < 2
    [(kind, case_id, outcome)] = recorded.events
    assert (kind, case_id, outcome["error"]) == (FAILED, "case-0003", "cancelled at shutdown")


async def test_an_unwritable_timeline_does_not_escape_deliver(
    receiver: ReceiverFactory, http: aiohttp.ClientSession, logs: io.StringIO
) -> None:
    rec = await receiver()

    async def broken(kind: str, case_id: str, outcome: dict[str, Any]) -> None:
        raise RuntimeError("store is down")

    await deliver(
        WebhookNotifier(rec.url, Secret(WEBHOOK_SECRET), http, attempts=1), TASK, record=broken
    )
    assert "notification_record_failed" in [line["event"] for line in log_lines(logs)]


async def test_notifier_from_config_fans_out_to_log_slack_and_each_webhook(
    receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slack_rec = await receiver(path=SLACK_PATH)
    first, second = await receiver(), await receiver(status(500))
    monkeypatch.setenv("NOTIFY_TEST_SLACK_URL", slack_rec.url)
    monkeypatch.setenv("NOTIFY_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
    secret = SecretRef(env="NOTIFY_TEST_WEBHOOK_SECRET")
    config = NotifiersConfig(
        slack=SlackConfig(webhook_url=SecretRef(env="NOTIFY_TEST_SLACK_URL")),
        webhooks=[
            WebhookNotifierConfig(url=first.url, secret=secret),
            WebhookNotifierConfig(url=second.url, secret=secret),
        ],
        attempts=1,
    )
    recorded = Recorded()
    fanout = notifier_from_config(config, http, record=recorded)
    assert isinstance(fanout.notifiers[0], LogNotifier)
    await deliver(fanout, TASK)
    await fanout.aclose()

    assert [len(r.requests) for r in (slack_rec, first, second)] == [1, 1, 1]
    outcomes = {o["channel"]: k for k, _, o in recorded.events}
    port1, port2 = first.url.split(":")[2].split("/")[0], second.url.split(":")[2].split("/")[0]
    assert outcomes == {
        "slack": SENT,
        f"webhooks[0]:127.0.0.1:{port1}": SENT,
        f"webhooks[1]:127.0.0.1:{port2}": FAILED,
    }
    assert "notification" in [line["event"] for line in log_lines(logs)]  # the log line


def test_notifier_from_config_without_channels_is_the_log_line(
    http: aiohttp.ClientSession,
) -> None:
    fanout = notifier_from_config(NotifiersConfig(), http)
    assert len(fanout.notifiers) == 1 and isinstance(fanout.notifiers[0], LogNotifier)


async def test_outcomes_land_in_the_case_timeline(
    receiver: ReceiverFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ok, failing = await receiver(), await receiver(status(500))
    store = SqliteStore(tmp_path / "offboard.db")
    await store.open()
    try:
        playbook = load_playbook(REPO / "playbooks" / "leaver.yaml")
        case, _ = await store.create_case(
            NewCase(
                playbook=playbook.name,
                subject="leaver@example.com",
                steps=playbook.steps,
                trigger={},
            ),
            SystemClock().now(),
        )
        fanout = FanOut(
            WebhookNotifier(ok.url, Secret(WEBHOOK_SECRET), http, attempts=1, channel="ok"),
            WebhookNotifier(failing.url, Secret(WEBHOOK_SECRET), http, attempts=2, backoff=0.01),
            record=record_in_timeline(store, SystemClock()),
            background=True,
        )
        await fanout.notify(
            Notification(kind="halted", case_id=case.id, subject=case.subject, title="t")
        )
        await fanout.aclose()
        events = {e.data["channel"]: e for e in await store.events(case.id) if "channel" in e.data}
    finally:
        await store.close()
    assert events["ok"].kind == SENT and events["ok"].data["attempts"] == 1
    assert events["ok"].data["delivery_id"] == ok.requests[0].headers["webhook-id"]
    failed = next(e for channel, e in events.items() if channel != "ok")
    assert failed.kind == FAILED and failed.data["attempts"] == 2
    assert failed.step_id is None
