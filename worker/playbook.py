"""Playbooks: YAML files naming the steps of a case, checked against the invariant on load.

The invariant (docs/architecture.md) is enforced here, before anything runs: the IdP user is
deactivated first, then the Identity Center user is disabled, then portal sessions
are revoked, then optional hardening; every containment step names its read-back
verification. A playbook that breaks a rule is refused with the file, the step and
the rule in the message.

An operator task never gates the automated steps after it: once the Identity Center
user is confirmed disabled, the portal-sessions task opens and the hardening steps
after it run at once (`gates_later_steps`); the order rules stay as they are.

Every playbook begins with the resolve step (`person.resolve`, reads only): a playbook
that does not list it first gets it added, one that lists it anywhere else is refused.
The person is found in every system, and the ids recorded, before the first change.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker import yamlfile
from worker.actions import (
    ACTIONS,
    DEACTIVATE_USER,
    DISABLE_USER,
    RESOLVE,
    RESOLVE_STEP_ID,
    REVOKE_SESSIONS,
    Phase,
)
from worker.domain import PRIORITIES, PlannedStep
from worker.errors import PlaybookError


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    action: str
    verify: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _plain_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Options are frozen into the case record as JSON: dates or binary would
        # load here and fail later, in the middle of opening a case.
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError("options must be plain data (strings, numbers, lists, maps)") from None
        return value


class PlaybookModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    description: str = ""
    priority: Literal["incident", "normal", "bulk"] = "normal"
    steps: list[StepSpec] = Field(min_length=1)


@dataclass(frozen=True, kw_only=True)
class Playbook:
    name: str
    description: str
    priority: int
    steps: tuple[PlannedStep, ...]
    source: str
    digest: str

    def step(self, step_id: str) -> PlannedStep:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def gates_later_steps(action_name: str) -> bool:
    """Whether a step left waiting for a human holds back the steps after it.

    Only steps before the portal sessions do (an Identity Center user disabled in the
    console must be confirmed before anything after it). From the portal sessions on,
    the Identity Center user is confirmed disabled: an operator task there opens and
    the automated steps after it run at once; the case is contained when all of them,
    the operator's confirmation included, are done.
    """
    return ACTIONS[action_name].phase < Phase.PORTAL_SESSIONS


def operator_tasks_note(playbook: Playbook) -> str:
    """What `offboard check` and the plan say about a playbook's operator tasks."""
    notes = []
    for index, step in enumerate(playbook.steps):
        if not ACTIONS[step.action].operator_task or gates_later_steps(step.action):
            continue
        later = [s.id for s in playbook.steps[index + 1 :]]
        runs = "no step after it"
        if later:
            runs = f"the steps after it run at once: {', '.join(later)}"
        notes.append(f"operator task {step.id} opens and does not wait ({runs})")
    return "; ".join(notes)


def parse_playbook(text: str, source: str) -> Playbook:
    """Parse and check a playbook; `source` names it in every error."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yamlfile.load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlaybookError(f"{source}: YAML syntax error{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PlaybookError(f"{source}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise PlaybookError(f"{source}: a playbook is a mapping with 'name' and 'steps'")
    step_lines = _step_lines(root)
    try:
        model = PlaybookModel.model_validate(data)
    except ValidationError as exc:
        raise PlaybookError(_describe_validation(source, exc, data, step_lines)) from None
    steps = tuple(
        PlannedStep(id=s.id, action=s.action, verify=s.verify, options=dict(s.options))
        for s in model.steps
    )
    _check_invariant(source, steps, step_lines)
    if steps[0].action != RESOLVE.name:
        resolve = PlannedStep(
            id=RESOLVE_STEP_ID, action=RESOLVE.name, verify=RESOLVE.verifications[0], options={}
        )
        if any(s.id == RESOLVE_STEP_ID for s in steps):
            raise PlaybookError(
                f"{source}: rule resolve-first: step id {RESOLVE_STEP_ID!r} is the resolve "
                "step every playbook begins with; name this step differently"
            )
        steps = (resolve, *steps)
    return Playbook(
        name=model.name,
        description=model.description,
        priority=PRIORITIES[model.priority],
        steps=steps,
        source=source,
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


@dataclass(frozen=True)
class _Parsed:
    stamp: tuple[int, int, int, int]
    text: str
    playbook: Playbook


#: The last playbook parsed from each path, with the file's identity and text.
_PARSED: dict[str, _Parsed] = {}
#: A file changed this recently may change again within its timestamps' resolution
#: with the same size: its text is compared, not only its identity ("racy git").
_RACY_NS = 2_000_000_000


def load_playbook(path: Path) -> Playbook:
    """The playbook in the file as it is now: an edited playbook applies to the next
    case. Parsed again only when the file changed: reading and parsing the YAML on
    every webhook was most of the intake's time."""
    try:
        info = path.stat()
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = _PARSED.get(str(path))
        settled = time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _RACY_NS
        if cached is not None and cached.stamp == stamp and settled:
            return cached.playbook
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlaybookError(f"{path}: cannot read playbook: {exc.strerror}") from None
    if cached is not None and cached.text == text:
        playbook = cached.playbook
    else:
        playbook = parse_playbook(text, str(path))
    if len(_PARSED) >= 256:  # a few playbooks in practice; never unbounded
        _PARSED.clear()
    _PARSED[str(path)] = _Parsed(stamp=stamp, text=text, playbook=playbook)
    return playbook


def find_playbook(name_or_path: str, search: list[Path]) -> Path:
    """A path as given, or `NAME` / `NAME.yaml` in the playbook directories."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml") or given.parent != Path("."):
        return given
    for directory in search:
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    places = ", ".join(str(d) for d in search) or "(no playbook directory)"
    raise PlaybookError(f"playbook {name_or_path!r} not found in {places}")


def _step_lines(root: yaml.Node | None) -> dict[int, int]:
    """Line number (1-based) of each step in the file, for error messages."""
    if not isinstance(root, yaml.MappingNode):
        return {}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "steps":
            if isinstance(value, yaml.SequenceNode):
                return {i: node.start_mark.line + 1 for i, node in enumerate(value.value)}
    return {}


def _step_name(index: int, data: dict[str, Any], step_lines: dict[int, int]) -> str:
    steps = data.get("steps")
    step_id = None
    if isinstance(steps, list) and index < len(steps) and isinstance(steps[index], dict):
        step_id = steps[index].get("id")
    line = step_lines.get(index)
    label = f"step {index + 1}"
    if step_id:
        label += f" ({step_id})"
    if line:
        label += f" at line {line}"
    return label


def _describe_validation(
    source: str, exc: ValidationError, data: dict[str, Any], step_lines: dict[int, int]
) -> str:
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = "playbook"
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            where = _step_name(loc[1], data, step_lines)
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")
    return f"{source}: " + "; ".join(problems)


def _check_invariant(source: str, steps: tuple[PlannedStep, ...], lines: dict[int, int]) -> None:
    def refuse(index: int, rule: str, message: str) -> PlaybookError:
        step = steps[index]
        where = f"step {index + 1} ({step.id})"
        if index in lines:
            where += f" at line {lines[index]}"
        return PlaybookError(f"{source}: {where}: rule {rule}: {message}")

    seen_ids: set[str] = set()
    seen_actions: dict[str, int] = {}
    highest_phase = Phase.RESOLVE
    for index, step in enumerate(steps):
        if step.id in seen_ids:
            raise refuse(index, "unique-step-ids", f"step id {step.id!r} is used twice")
        seen_ids.add(step.id)
        spec = ACTIONS.get(step.action)
        if spec is None:
            known = ", ".join(sorted(ACTIONS))
            raise refuse(index, "known-actions", f"unknown action {step.action!r} (known: {known})")
        if spec is RESOLVE and index > 0:
            raise refuse(
                index,
                "resolve-first",
                f"{RESOLVE.name} reads only and comes first, before anything changes "
                "(every playbook begins with it; listing it is optional)",
            )
        if spec.containment and step.action in seen_actions:
            raise refuse(index, "once-each", f"containment action {step.action} appears twice")
        if step.verify is None and spec.containment:
            raise refuse(
                index,
                "verified-containment",
                f"containment step {step.action} needs 'verify' "
                f"(one of: {', '.join(spec.verifications)})",
            )
        if step.verify is not None and step.verify not in spec.verifications:
            raise refuse(
                index,
                "verified-containment",
                f"{step.action} cannot be verified by {step.verify!r} "
                f"(one of: {', '.join(spec.verifications)})",
            )
        if spec.phase < highest_phase:
            raise refuse(
                index,
                "order",
                f"{step.action} ({spec.phase.name}) may not come after a "
                f"{highest_phase.name} step: the order is IdP -> Identity Center -> "
                "portal sessions -> hardening",
            )
        if spec.phase >= Phase.IDENTITY_CENTER and DEACTIVATE_USER.name not in seen_actions:
            raise refuse(
                index,
                "idp-first",
                f"{step.action} needs an earlier {DEACTIVATE_USER.name} step: the IdP user must be "
                "deactivated and confirmed first, or the IdP's SCIM sync can re-enable the user",
            )
        if spec is REVOKE_SESSIONS and DEACTIVATE_USER.name not in seen_actions:
            raise refuse(
                index,
                "deactivate-before-revoke",
                f"{REVOKE_SESSIONS.name} needs an earlier {DEACTIVATE_USER.name} step, "
                "or the user can sign in again after the revocation",
            )
        if spec.phase >= Phase.PORTAL_SESSIONS and DISABLE_USER.name not in seen_actions:
            raise refuse(
                index,
                "identity-center-before-portal",
                f"{step.action} needs an earlier {DISABLE_USER.name} step",
            )
        highest_phase = max(highest_phase, spec.phase)
        seen_actions[step.action] = index


@dataclass(frozen=True, kw_only=True)
class Escalation:
    """What escalating a case with a playbook adds: the steps appended, in the
    playbook's order, and those left out with the rule that forbids them."""

    added: tuple[PlannedStep, ...]
    #: (step id, why not)
    left_out: tuple[tuple[str, str], ...]


def escalation_steps(case_steps: Sequence[PlannedStep], playbook: Playbook) -> Escalation:
    """The playbook's steps a case lacks, appended after its own without breaking the
    order rules: a step is appended only if the merged list still passes every rule
    (`_check_invariant`), so a step of an earlier phase than the case's last one (an IdP
    step after an Identity Center step) is left out, never run out of order. A step
    whose id or containment action the case has already is not repeated."""
    have_ids = {s.id for s in case_steps}
    have_actions = {s.action for s in case_steps}
    merged = list(case_steps)
    added: list[PlannedStep] = []
    left_out: list[tuple[str, str]] = []
    for step in playbook.steps:
        spec = ACTIONS[step.action]
        if step.id in have_ids or (spec.containment and step.action in have_actions):
            continue
        try:
            _check_invariant(f"escalation by {playbook.name}", (*merged, step), {})
        except PlaybookError as exc:
            left_out.append((step.id, str(exc).partition(": rule ")[2] or str(exc)))
            continue
        merged.append(step)
        added.append(step)
    return Escalation(added=tuple(added), left_out=tuple(left_out))
