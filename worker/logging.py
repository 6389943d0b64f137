"""structlog set-up: JSON off a TTY, readable on one, and secrets scrubbed from every line.

Secrets are never passed to a log call in the first place; the redactor is the
second line of defence for a value that slips into an exception message. A DSN's
password is kept out of messages with `describe_dsn` and `dsn_secrets`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from structlog.typing import EventDict, WrappedLogger

_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def register_secret(value: str) -> None:
    # Very short values would redact ordinary words; real credentials are long.
    if len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return redact(str(value))
    return value


def scrub_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return {key: _scrub(value) for key, value in event_dict.items()}


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: scheme, user, hosts and database, no secrets."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("postgresql", "postgres"):
        return "<a DSN that is not a postgresql:// URL>"
    user = parts.username
    hosts = parts.netloc.rpartition("@")[2]
    where = f"{parts.scheme or 'postgresql'}://{unquote(user) + '@' if user else ''}{hosts}"
    where += parts.path
    socket_hosts = parse_qs(parts.query).get("host")
    if socket_hosts:
        where += f"?host={socket_hosts[0]}"
    return where


def dsn_secrets(dsn: str) -> list[str]:
    """The DSN's password, as written and decoded, to be scrubbed from any message."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme in ("postgresql", "postgres"):
        password = parts.netloc.rpartition("@")[0].partition(":")[2]
        candidates = [password, *parse_qs(parts.query).get("password", [])]
    else:
        # a libpq keyword DSN (host=... password=...) is refused, but must not show either
        candidates = re.findall(r"password\s*=\s*'?([^'\s]+)", dsn)
    secrets = {text for candidate in candidates for text in (candidate, unquote(candidate))}
    return sorted((s for s in secrets if s), key=len, reverse=True)


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # sys.stderr as it is when the line is written, not when logging was configured:
    # whoever swapped it since (a test's capture, a daemon) may have closed the old one.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(*, level: str = "INFO", stream: TextIO | None = None) -> None:
    renderer: structlog.typing.Processor
    if (stream or sys.stderr).isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream) if stream else _stderr_logger,
        cache_logger_on_first_use=False,
    )
