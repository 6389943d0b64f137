"""Configuration: one YAML file, validated by pydantic, secrets only by reference.

A secret is written as `{env: NAME}` or `{file: PATH}`, never inline, so the
config file itself can be committed and shown. Resolved secret values are kept
in `Secret` objects whose repr hides them, and registered with the log redactor.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from worker import yamlfile
from worker.countdown import SessionSettings, parse_iso_duration
from worker.errors import ConfigError
from worker.logging import register_secret
from worker.ratelimit import BudgetStore, Limits, RateLimiter, SharedBudget
from worker.retry import RetryPolicy

#: the shortest API token or shared secret accepted: 16 random characters are 64 (hex)
#: to 96 (base64) bits, beyond any online guessing, and a placeholder ("xxx", "changeme")
#: is refused before it guards anything; `openssl rand -hex 32` makes a good one
MIN_TOKEN_LENGTH = 16
#: the secrets that are tokens (sent to a provider or presented to us), by dotted path;
#: trigger sources' shared secrets are held to the same length by `triggers.adapter_for`
TOKEN_PATHS = ("idp.okta.token", "identity_center.scim.token", "server.api_tokens.*")


def is_token(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in TOKEN_PATHS)


def token_problem(value: str) -> str | None:
    """Why a token is unusable, or None; never quoting it."""
    if len(value) < MIN_TOKEN_LENGTH:
        return f"a token needs at least {MIN_TOKEN_LENGTH} characters (the value is not shown)"
    return None


def url_problem(value: str) -> str | None:
    """Why an address a token or a person's data is sent to is unusable, or None: it must
    be https://, or http:// to loopback only (the sandbox, a local proxy)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
    if host is None or parts.scheme not in ("https", "http"):
        return "not an absolute https:// URL"
    if parts.scheme == "http" and not _loopback(host):
        return (
            "http:// is only for loopback (127.0.0.0/8, ::1, localhost): "
            "tokens would cross the network in clear; use https://"
        )
    return None


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_url(value: str) -> str:
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


#: a provider's address: https://, or http:// on loopback
ProviderUrl = Annotated[str, AfterValidator(_checked_url)]


class Secret:
    """A resolved secret: usable through `.reveal()`, invisible in repr and str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class SecretRef(BaseModel):
    """A secret by reference: `{env: NAME}` or `{file: PATH}`, exactly one; never inline."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # what the after-validator below enforces, for editors that read the JSON Schema
        json_schema_extra={"minProperties": 1, "maxProperties": 1},
    )

    env: str | None = Field(default=None, min_length=1, description="environment variable")
    file: str | None = Field(default=None, min_length=1, description="file holding the secret")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        # the value itself must never be echoed back: the message names only the fix
        if isinstance(data, str | int | float):
            raise ValueError("a secret is never written inline: use {env: NAME} or {file: PATH}")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret is {env: NAME} or {file: PATH}, exactly one")
        return self

    def resolve(self, path: str) -> Secret:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"{path}: environment variable {self.env} is not set")
            return Secret(value)
        assert self.file is not None
        try:
            value = Path(self.file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{path}: file {self.file} does not exist") from None
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read secret file {self.file}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:  # its message would quote the bytes
            raise ConfigError(f"{path}: secret file {self.file} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{path}: secret file {self.file} is empty")
        return Secret(value)

    def resolve_token(self, path: str) -> Secret:
        """`resolve`, for a token: refused when shorter than MIN_TOKEN_LENGTH."""
        secret = self.resolve(path)
        problem = token_problem(secret.reveal())
        if problem is not None:
            raise ConfigError(f"{path}: {problem}")
        return secret


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OktaConfig(_Model):
    org_url: ProviderUrl = Field(description="https://<org>.okta.com")
    token: SecretRef = Field(description="API token (sent as SSWS)")
    timeout_seconds: float = 10.0


class EntraConfig(_Model):
    tenant_id: str
    client_id: str
    #: a client secret, or a certificate (PEM private key + its certificate) for the assertion
    client_secret: SecretRef | None = None
    certificate_key: SecretRef | None = None
    certificate: SecretRef | None = None
    graph_url: ProviderUrl = "https://graph.microsoft.com/v1.0"
    login_url: ProviderUrl = "https://login.microsoftonline.com"
    timeout_seconds: float = 10.0

    @model_validator(mode="after")
    def _one_credential(self) -> EntraConfig:
        with_cert = self.certificate_key is not None and self.certificate is not None
        if (self.client_secret is None) == (not with_cert):
            raise ValueError("give client_secret, or certificate_key and certificate (not both)")
        return self


class GoogleConfig(_Model):
    #: the service account's JSON key file (domain-wide delegation)
    service_account: SecretRef
    #: the admin the service account acts as
    delegated_admin: str
    directory_url: ProviderUrl = "https://admin.googleapis.com/admin/directory/v1"
    token_url: ProviderUrl | None = None  # default: the key file's token_uri
    timeout_seconds: float = 10.0


class IdpConfig(_Model):
    okta: OktaConfig | None = None
    entra: EntraConfig | None = None
    google: GoogleConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> IdpConfig:
        configured = [n for n in ("okta", "entra", "google") if getattr(self, n) is not None]
        if len(configured) != 1:
            raise ValueError(
                "configure exactly one identity provider (okta, entra or google), "
                f"not {len(configured)}"
            )
        return self


class ScimConfig(_Model):
    url: ProviderUrl = Field(description="https://scim.<region>.amazonaws.com/<tenant>/scim/v2")
    token: SecretRef
    timeout_seconds: float = 10.0


class AwsCredentials(_Model):
    access_key_id: SecretRef
    secret_access_key: SecretRef


class IdentityCenterConfig(_Model):
    region: str
    identity_store_id: str = Field(pattern=r"^d-[0-9a-f]{10}$|^[0-9a-f-]{36}$")
    instance_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sso:::instance/")
    #: "scim": users come from an external IdP, disabled through SCIM;
    #: "directory": Identity Center's own directory, disabled only in the console.
    identity_source: Literal["scim", "directory"] = "scim"
    scim: ScimConfig | None = None
    #: only for the sandbox or a VPC endpoint; unset in production
    endpoint_url: ProviderUrl | None = None
    #: only when the default AWS credential chain should not be used
    credentials: AwsCredentials | None = None
    console_url: str = Field(
        default="https://{region}.console.aws.amazon.com/singlesignon/home?region={region}"
        "#!/instances/{instance_id}/users/user-details?user={user_id}",
        description="link an operator follows; {region} {instance_id} {user_id} are filled in",
    )
    timeout_seconds: float = 10.0
    #: how long one read of what many cases share (a group's assignments, a permission
    #: set's description, an application's configuration) answers the others (ISO-8601);
    #: the countdown's re-reads take only reads sent at or after their due time
    shared_read_ttl: str = "PT30S"

    @model_validator(mode="after")
    def _scim_when_needed(self) -> IdentityCenterConfig:
        if self.identity_source == "scim" and self.scim is None:
            raise ValueError("identity_source 'scim' needs a 'scim' section (url and token)")
        try:
            parse_iso_duration(self.shared_read_ttl)
        except ValueError as exc:
            raise ValueError(f"shared_read_ttl: {exc}") from None
        return self

    @property
    def shared_read_window(self) -> timedelta:
        return parse_iso_duration(self.shared_read_ttl)


class StoreConfig(_Model):
    """SQLite (one process, the default) or PostgreSQL (several replicas)."""

    sqlite: str = "var/offboard.db"
    #: a postgresql:// DSN; when set, PostgreSQL is used and `sqlite` is ignored
    postgres: SecretRef | None = None


class RetryConfig(_Model):
    attempts: int = Field(default=8, ge=1)
    initial_seconds: float = Field(default=0.2, gt=0)
    maximum_seconds: float = Field(default=30.0, gt=0)
    give_up_after_seconds: float = Field(default=120.0, gt=0)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.attempts,
            initial=self.initial_seconds,
            maximum=self.maximum_seconds,
            give_up_after=self.give_up_after_seconds,
        )


class WorkerConfig(_Model):
    lease_seconds: float = Field(default=60.0, gt=0)
    #: how long read-back may take to show a change (eventual consistency)
    verify_timeout_seconds: float = Field(default=120.0, gt=0)
    verify_interval_seconds: float = Field(default=1.0, gt=0)
    #: when a step keeps failing transiently, when to try the case again
    requeue_after_seconds: float = Field(default=30.0, gt=0)
    #: how many cases one process runs at once
    concurrency: int = Field(default=16, ge=1)
    #: slots beyond `concurrency` that only incident cases (priority >= 100) may take,
    #: so that an incident never waits for a bulk case to finish
    urgent_slots: int = Field(default=4, ge=0)
    #: how often an idle worker looks for new cases and due milestones
    poll_seconds: float = Field(default=0.5, gt=0)


class CountdownConfig(_Model):
    """AWS's documented durations (ISO-8601), and how often the watchdog re-reads."""

    signin_cache: str = "PT1H"
    cli_lag: str = "PT1H"
    app_session_cache: str = "PT1H"
    unassign_propagation: str = "PT15M"
    deny_propagation: str = "PT15M"
    max_role_session: str = "PT12H"
    #: user background sessions' lifetime: AWS's default (an instance setting, 15 min to
    #: 90 days, that no API reads: set yours)
    background_session: str = "P7D"
    #: how often the reachable permission sets are read again until new sessions end
    reread_interval: str = "PT5M"
    watchdog_interval: str = "PT5M"

    @model_validator(mode="after")
    def _durations(self) -> CountdownConfig:
        for name in type(self).model_fields:
            try:
                parse_iso_duration(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return self

    def settings(self) -> SessionSettings:
        return SessionSettings(
            signin_cache=parse_iso_duration(self.signin_cache),
            cli_lag=parse_iso_duration(self.cli_lag),
            app_session_cache=parse_iso_duration(self.app_session_cache),
            unassign_propagation=parse_iso_duration(self.unassign_propagation),
            deny_propagation=parse_iso_duration(self.deny_propagation),
            max_role_session=parse_iso_duration(self.max_role_session),
            background_session=parse_iso_duration(self.background_session),
            reread_interval=parse_iso_duration(self.reread_interval),
        )


#: Okta's per-minute budgets by endpoint group, from Okta's management rate-limit page
#: (Workforce Identity; they vary by plan, Integrator free orgs have 100 on most):
#: `worker.providers.okta.okta_bucket` says which group a request counts in.
OKTA_BUCKETS = {
    "users": 600,  # GET/POST /api/v1/users
    "user-write": 600,  # POST/PUT/DELETE /api/v1/users/{id}, its lifecycle operations
    "user-read": 2000,  # GET /api/v1/users/{idOrLogin}
    "logs": 120,  # /api/v1/logs
    "other": 1200,  # every other /api/v1 endpoint (user sessions among them)
}


class LimitsConfig(_Model):
    """Client-side limits, below the providers' documented ones."""

    #: AWS: 20 TPS collective across identitystore, sso-admin and SCIM, not adjustable
    identity_center_per_second: float = Field(default=18.0, gt=0)
    identity_center_burst: int = Field(default=4, ge=1)
    #: Okta: 75 concurrent requests per org (split among replicas); the per-minute
    #: budgets are `okta_buckets`, and read from the headers too
    okta_concurrency: int = Field(default=70, ge=1)
    okta_buckets: dict[str, int] = Field(default_factory=lambda: dict(OKTA_BUCKETS))
    #: the last calls of each Okta window are kept for incident cases (priority >= 100)
    okta_urgent_reserve: int = Field(default=15, ge=0)
    okta_per_second: float | None = Field(default=None, gt=0)
    entra_per_second: float | None = Field(default=None, gt=0)
    google_per_second: float | None = Field(default=None, gt=0)
    #: replicas sharing a PostgreSQL store lease this many calls of a budget at a time
    shared_chunk: int = Field(default=5, ge=1)
    #: a replica's lease on a shared budget (its share of Okta's concurrency, its
    #: waiting urgent calls) lapses this long after its last renewal
    shared_lease_seconds: float = Field(default=5.0, gt=0)
    #: Identity Center's TPS is shared in windows this short, so that the calls of
    #: two windows back to back never exceed AWS's one-second bucket
    identity_center_window: float = Field(default=0.25, gt=0, le=1)

    @model_validator(mode="after")
    def _buckets(self) -> LimitsConfig:
        unknown = set(self.okta_buckets) - set(OKTA_BUCKETS)
        if unknown:
            raise ValueError(
                f"okta_buckets: unknown {sorted(unknown)}; known: {sorted(OKTA_BUCKETS)}"
            )
        if any(n < 1 for n in self.okta_buckets.values()):
            raise ValueError("okta_buckets: every budget is at least 1 call a minute")
        return self

    def limits(self, store: BudgetStore | None = None, holder: str = "") -> Limits:
        """The limiters of one process; with `store`, those of a replica sharing each
        provider's budget with the others through it (PostgreSQL)."""

        def shared(bucket: str, **kw: Any) -> SharedBudget | None:
            if store is None:
                return None
            return SharedBudget(
                store=store,
                holder=holder,
                bucket=bucket,
                chunk=self.shared_chunk,
                ttl=self.shared_lease_seconds,
                **kw,
            )

        ic_window = self.identity_center_window
        limiters = {
            "identity-center": RateLimiter(
                "identity-center",
                per_second=self.identity_center_per_second,
                burst=self.identity_center_burst,
                shared=shared(
                    "identity-center",
                    window=ic_window,
                    limit=max(1, round(self.identity_center_per_second * ic_window)),
                ),
            ),
            "okta": RateLimiter(
                "okta",
                per_second=self.okta_per_second,
                concurrency=self.okta_concurrency,
                shared=shared("okta", concurrency=self.okta_concurrency),
            ),
            "entra": RateLimiter("entra", per_second=self.entra_per_second),
            "google": RateLimiter("google", per_second=self.google_per_second),
        }
        buckets = OKTA_BUCKETS | self.okta_buckets
        for bucket, per_minute in buckets.items():
            name = f"okta:{bucket}"
            limiters[name] = RateLimiter(
                name,
                urgent_reserve=min(self.okta_urgent_reserve, per_minute // 4),
                shared=shared(name, window=60.0, limit=per_minute),
            )
        return Limits(limiters)


class TriggerSource(_Model):
    """One configured sender of webhooks, e.g. `bamboohr-prod`."""

    kind: Literal["standard-webhooks", "bamboohr", "hibob", "pagerduty", "bearer"]
    #: several during a rotation: a delivery verified by any of them is accepted
    secrets: list[SecretRef] = Field(min_length=1)
    #: default: leaver for HR sources, incident for incident sources
    playbook: str | None = None
    tolerance_seconds: float = Field(default=300, gt=0)

    def tolerance(self) -> timedelta:
        return timedelta(seconds=self.tolerance_seconds)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: bearer tokens of the manual API, by name (the name is recorded as who acted)
    api_tokens: dict[str, SecretRef] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    #: the address browsers use for this server (behind a proxy, the proxy's): the origin
    #: the status page's forms must come from; unset, the Host each request names
    public_url: ProviderUrl | None = None
    hr_sources: dict[str, TriggerSource] = Field(default_factory=dict)
    incident_sources: dict[str, TriggerSource] = Field(default_factory=dict)


class SlackConfig(_Model):
    #: the incoming-webhook URL is itself a secret
    webhook_url: SecretRef


class WebhookNotifierConfig(_Model):
    url: ProviderUrl
    #: Standard Webhooks secret (whsec_<base64>) the deliveries are signed with
    secret: SecretRef


class NotifiersConfig(_Model):
    slack: SlackConfig | None = None
    webhooks: list[WebhookNotifierConfig] = Field(default_factory=list)
    #: attempts per delivery before it is recorded as failed
    attempts: int = Field(default=5, ge=1)


class Config(_Model):
    store: StoreConfig = StoreConfig()
    playbook_dirs: list[str] = Field(default_factory=lambda: ["playbooks"])
    idp: IdpConfig
    identity_center: IdentityCenterConfig
    retry: RetryConfig = RetryConfig()
    worker: WorkerConfig = WorkerConfig()
    countdown: CountdownConfig = CountdownConfig()
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    notifiers: NotifiersConfig = NotifiersConfig()
    #: break-glass and service identities no trigger may offboard (exact or glob, any case)
    protected_identities: list[str] = Field(default_factory=list)


def validation_problems(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    """One `dotted.path: message` per error. Only pydantic's message is used, never
    the input it quotes: that input may be a secret written inline."""
    problems = []
    for error in exc.errors():
        path = ".".join(str(p) for p in (*prefix, *error["loc"]))
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            message = error["msg"].removeprefix("Value error, ")
        else:
            message = error["msg"]
        problems.append(f"{path or '(top level)'}: {message}")
    return problems


def parse_config(data: Any, source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(validation_problems(exc))) from None


#: the JSON Schema dialect pydantic generates
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, for editors and CI linters.

    It carries the structure (keys, types, patterns); the cross-field rules (exactly
    one identity provider, a secret's one source) are checked by `offboard config check`.
    """
    schema = Config.model_json_schema()
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "offboard configuration"}


def secret_references(
    data: Any, model: type[BaseModel] = Config, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any]]:
    """(dotted path, raw value) of every place in raw configuration data where the
    model expects a SecretRef, following the model's field types; it works on data
    that does not validate, so every reference can be checked at once."""
    if not isinstance(data, dict):
        return
    for name, field in model.model_fields.items():
        if name in data:
            yield from _references_in(field.annotation, data[name], (*path, name))


def _references_in(annotation: Any, value: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is SecretRef:
        yield ".".join(path), value
    elif origin in (Union, types.UnionType):
        for arg in args:
            yield from _references_in(arg, value, path)
    elif origin is list and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _references_in(args[0], item, (*path, str(index)))
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            yield from _references_in(args[1], item, (*path, str(key)))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from secret_references(value, annotation, path)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yamlfile.load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {exc.problem}") from None
    return parse_config(data, str(path))
