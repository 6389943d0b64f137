"""`offboard config check`: everything a configuration needs before it can run.

Every problem is reported at once, one per line, each with its dotted path, and no
line ever holds a secret's value. The passes:

1. the YAML parses;
2. the structure validates (pydantic; unknown keys and inline secrets are errors);
3. every secret reference resolves (the variable is set, the file exists, is
   readable and not empty), and holds what its setting needs (a DSN, a key file,
   a Standard Webhooks secret), checked by the same code the runtime uses;
4. every referenced path exists: the configured playbook directories, the playbooks in
   them parse, and each trigger source's playbook is there (in them or among the
   playbooks that ship with offboard, which the runtime searches last).

Pass 3's content checks need a section's structure: they run for each top-level
section that validates on its own, so one broken section hides nothing elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from worker import yamlfile
from worker.bundled import playbooks_dir
from worker.config import (
    Config,
    IdpConfig,
    NotifiersConfig,
    Secret,
    SecretRef,
    ServerConfig,
    StoreConfig,
    is_token,
    secret_references,
    url_problem,
    validation_problems,
)
from worker.errors import ConfigError, PlaybookError
from worker.playbook import load_playbook
from worker.providers.google import ServiceAccountKey
from worker.providers.oauth import certificate_matches_key, load_certificate, load_rsa_private_key
from worker.triggers import adapter_for, standard_webhook

M = TypeVar("M", bound=BaseModel)

#: the playbook a trigger source runs when it names none (as the server does)
DEFAULT_PLAYBOOK = {"hr": "leaver", "incident": "incident"}


@dataclass(frozen=True, kw_only=True)
class ConfigReport:
    source: str
    #: the validated configuration, only when there is no problem at all
    config: Config | None
    problems: tuple[str, ...]
    #: file names (stems) of the playbooks found in playbook_dirs
    playbooks: tuple[str, ...] = ()


def check_config(path: Path, *, base_dir: Path) -> ConfigReport:
    """Check a configuration file; relative paths in it are taken from `base_dir`."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return _failed(source, f"{path}: cannot read config: {exc.strerror}")
    except UnicodeDecodeError:
        return _failed(source, f"{path}: not UTF-8 text")
    try:
        data = yamlfile.load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        return _failed(source, f"{path}: YAML syntax error{where}: {exc.problem}")
    return check_config_data(data, source, base_dir=base_dir)


def check_config_data(data: Any, source: str, *, base_dir: Path) -> ConfigReport:
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(exc)
    secrets: dict[str, Secret] = {}
    for where, raw in secret_references(data):
        try:
            ref = SecretRef.model_validate(raw)
        except ValidationError:
            continue  # the structural pass has reported it
        try:
            secrets[where] = ref.resolve_token(where) if is_token(where) else ref.resolve(where)
        except ConfigError as exc:
            problems.append(str(exc))
    sections = data if isinstance(data, dict) else {}
    problems += _content_problems(sections, secrets)
    playbooks, playbook_problems = _playbook_problems(sections, base_dir)
    problems += playbook_problems
    return ConfigReport(
        source=source,
        config=None if problems else config,
        problems=tuple(problems),
        playbooks=tuple(playbooks),
    )


def summary(report: ConfigReport) -> list[str]:
    """What the configuration sets up, in a few lines; names and references, no values."""
    config = report.config
    assert config is not None
    idp_kind = next(n for n in ("okta", "entra", "google") if getattr(config.idp, n) is not None)
    ic = config.identity_center
    postgres = config.store.postgres
    store = (
        f"postgresql (DSN from {_reference(postgres)})"
        if postgres is not None
        else f"sqlite {config.store.sqlite}"
    )
    sources = [
        f"{purpose} {name} ({source.kind}, {_count(len(source.secrets), 'secret')})"
        for purpose, by_name in (
            ("hr", config.server.hr_sources),
            ("incident", config.server.incident_sources),
        )
        for name, source in by_name.items()
    ]
    notifiers = [*(["slack"] if config.notifiers.slack else [])]
    if config.notifiers.webhooks:
        notifiers.append(_count(len(config.notifiers.webhooks), "webhook"))
    return [
        f"{report.source}: ok",
        f"  idp: {idp_kind}",
        f"  identity center: {ic.region}, {ic.identity_store_id}, "
        f"identity source {ic.identity_source}",
        f"  store: {store}",
        f"  playbooks: {', '.join(report.playbooks)} "
        f"(in {', '.join([*config.playbook_dirs, 'the ones shipped with offboard'])})",
        f"  sources: {'; '.join(sources) or 'none'}",
        f"  api tokens: {', '.join(config.server.api_tokens) or 'none'}",
        f"  notifiers: log{''.join(', ' + n for n in notifiers)}",
        f"  protected identities: {_count(len(config.protected_identities), 'pattern')}",
    ]


def _failed(source: str, problem: str) -> ConfigReport:
    return ConfigReport(source=source, config=None, problems=(problem,))


def _reference(ref: SecretRef) -> str:
    return f"env {ref.env}" if ref.env is not None else f"file {ref.file}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _section(sections: dict[Any, Any], name: str, model: type[M]) -> M | None:
    """One top-level section validated on its own; None if absent or invalid."""
    if name not in sections:
        return None
    try:
        return model.model_validate(sections[name])
    except ValidationError:
        return None


def _content_problems(sections: dict[Any, Any], secrets: dict[str, Secret]) -> list[str]:
    """What the resolved secrets hold, checked by the code that will use them.
    Each message says what is wrong with a value, never the value."""
    problems: list[str] = []
    store = _section(sections, "store", StoreConfig)
    if store is not None and (dsn := secrets.get("store.postgres")) is not None:
        if urlsplit(dsn.reveal()).scheme not in ("postgresql", "postgres"):
            problems.append("store.postgres: not a postgresql:// DSN (the value is not shown)")
    idp = _section(sections, "idp", IdpConfig)
    if idp is not None:
        problems += _idp_problems(secrets)
    server = _section(sections, "server", ServerConfig)
    if server is not None:
        problems += _source_problems(server, secrets)
    notifiers = _section(sections, "notifiers", NotifiersConfig)
    if notifiers is not None:
        slack = secrets.get("notifiers.slack.webhook_url")
        if slack is not None and (problem := url_problem(slack.reveal())) is not None:
            problems.append(f"notifiers.slack.webhook_url: {problem} (the value is not shown)")
        for i, _ in enumerate(notifiers.webhooks):
            secret = secrets.get(f"notifiers.webhooks.{i}.secret")
            try:
                if secret is not None:
                    standard_webhook(secret.reveal())
            except ValueError as exc:  # never echoes the value
                problems.append(f"notifiers.webhooks.{i}.secret: {exc}")
    return problems


def _idp_problems(secrets: dict[str, Secret]) -> list[str]:
    problems: list[str] = []
    where = "idp.google.service_account"
    if (key_file := secrets.get(where)) is not None:
        try:
            ServiceAccountKey(key_file, where)
        except ConfigError as exc:
            problems.append(str(exc))
    key = certificate = None
    try:
        if (pem := secrets.get("idp.entra.certificate_key")) is not None:
            key = load_rsa_private_key(pem.reveal(), "idp.entra.certificate_key")
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        if (pem := secrets.get("idp.entra.certificate")) is not None:
            certificate = load_certificate(pem.reveal(), "idp.entra.certificate")
    except ConfigError as exc:
        problems.append(str(exc))
    if (
        key is not None
        and certificate is not None
        and not certificate_matches_key(certificate, key)
    ):
        problems.append(
            "idp.entra.certificate: its public key does not belong to idp.entra.certificate_key"
        )
    return problems


def _source_problems(server: ServerConfig, secrets: dict[str, Secret]) -> list[str]:
    problems: list[str] = []
    purposes: tuple[tuple[Literal["hr", "incident"], dict[str, Any]], ...] = (
        ("hr", server.hr_sources),
        ("incident", server.incident_sources),
    )
    for purpose, sources in purposes:
        for name, source in sources.items():
            where = f"server.{purpose}_sources.{name}"
            values = [secrets.get(f"{where}.secrets.{i}") for i in range(len(source.secrets))]
            if any(v is None for v in values):
                continue  # a reference that did not resolve is reported already
            try:
                adapter_for(
                    source.kind,
                    secrets=[v.reveal() for v in values if v is not None],
                    tolerance=timedelta(seconds=source.tolerance_seconds),
                    purpose=purpose,
                )
            except ValueError as exc:  # adapter_for never echoes a secret
                problems.append(f"{where}: {exc}")
    return problems


def _playbook_problems(sections: dict[Any, Any], base_dir: Path) -> tuple[list[str], list[str]]:
    """(the playbooks found, the problems): each directory exists, each playbook in it
    parses, and each trigger source's playbook is among them."""
    configured = "playbook_dirs" in sections
    dirs = sections.get("playbook_dirs", ["playbooks"])
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        return [], []  # the structural pass has reported it
    # the shipped playbooks are searched last, as the runtime does (worker/runtime.py)
    found: list[str] = [p.stem for p in playbooks_dir().glob("*.yaml")]
    problems: list[str] = []
    for i, name in enumerate(dirs):
        directory = Path(name) if Path(name).is_absolute() else base_dir / name
        if not directory.is_dir():
            if configured:  # the default ./playbooks may be absent: the shipped ones serve
                problems.append(f"playbook_dirs.{i}: directory {directory} does not exist")
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                load_playbook(path)
                found.append(path.stem)
            except PlaybookError as exc:
                problems.append(f"playbook_dirs.{i}: {exc}")
    server = _section(sections, "server", ServerConfig)
    if server is not None and found:
        for purpose, sources in (("hr", server.hr_sources), ("incident", server.incident_sources)):
            for name, source in sources.items():
                wanted = source.playbook or DEFAULT_PLAYBOOK[purpose]
                given = Path(wanted)
                if given.suffix in (".yaml", ".yml") or given.parent != Path("."):
                    continue  # a path: it is loaded (and checked) when a trigger arrives
                if wanted not in found:
                    where = f"server.{purpose}_sources.{name}.playbook"
                    problems.append(f"{where}: playbook {wanted!r} not found in playbook_dirs")
    return sorted(set(found)), problems
