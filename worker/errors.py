"""The few exception types the engine decides on."""

from __future__ import annotations


class OffboardError(Exception):
    """Base for errors that carry a message meant for a human."""


class ProviderError(OffboardError):
    def __init__(
        self, provider: str, message: str, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        #: the HTTP status the provider answered, when there was one
        self.status = status
        #: the provider's error code (AWS `Error.Code`), when there was one
        self.code = code


class TransientError(ProviderError):
    """Worth retrying: timeout, reset, throttling, 5xx. `retry_after` is the server's hint."""

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(provider, message, status=status, code=code)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """Retrying cannot help (401/403/404, validation): the case halts with this reason."""


class PlaybookError(OffboardError):
    """A playbook file that cannot be run; the message names the file, the step and the rule."""


class ConfigError(OffboardError):
    """Configuration that cannot be used; the message names the path of the bad setting."""


class StoreError(OffboardError):
    """The store refused or failed an operation."""


class StoreUnavailable(StoreError):
    """The database cannot be reached for now: connection refused or lost, the server
    shutting down or starting up, the pool closed under us. Nothing is wrong with the
    data; the worker pauses and tries again, the web answers 503 with Retry-After."""


class StoreCorrupt(StoreError):
    """The database file is damaged ("database disk image is malformed"): retrying
    cannot help, and running on could record a wrong timeline. Restore from a backup."""


class NotFound(StoreError):
    pass


class LeaseLost(StoreError):
    """A write for a claimed case by a worker that no longer holds it: another worker
    took the case over, and resumes it from the ledger."""


class CaseStarted(StoreError):
    """The case has begun containment: it can no longer be withdrawn or moved."""
