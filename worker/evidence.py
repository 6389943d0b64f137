"""Evidence for auditors: every case's events form an append-only, hash-chained record.

Each event stored carries ``prev_hash`` and ``hash`` (`worker.store.base.event_hash`:
SHA-256 over the canonical JSON of case id, seq, stored time, kind, step, data and
``prev_hash``); the first links to a genesis value derived from the case id, and the
case row keeps the head (hash of the last event, and how many were appended), moved
in the transaction that inserts. So an event edited in place, one deleted from the
middle, and one deleted from the end are each told apart:

- `verify` checks the chains in the store: ``[]`` when every one holds;
- `export` writes one case for an auditor, as JSON (the case, a per-step summary with
  timestamps, the countdown's milestones, every event with its hashes, and a
  verification block) or CSV (one row per event);
- `verify_export` checks a JSON export offline, without the database: the chain, and
  that what the export summarises (per-step timestamps, attempts, who verified or
  confirmed, the trigger, the milestones reached) is what its events say.

What a chain cannot show: someone able to write the database can rewrite a case's
chain from the edited event on, head included, or remove a whole case. Keep the heads
somewhere else as well (the `verification` block of exports handed to auditors, a
log) to pin them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from worker.clock import utc_iso
from worker.domain import Case, StepRecord
from worker.store.base import (
    CHAIN_VERSION,
    EvidenceRecord,
    Store,
    canonical_json,
    event_hash,
    genesis_hash,
)

#: What a JSON export says it is; `verify_export` refuses anything else.
EXPORT_FORMAT = "offboard-evidence-export"
EXPORT_VERSION = 1

#: The columns of a CSV export, in order.
CSV_COLUMNS = ("seq", "at", "kind", "step", "summary", "prev_hash", "hash")

#: The fields of a step summary that are derived from the chained events alone (and
#: so checked by `verify_export`); the others come from the step's current record.
CHAINED_STEP_FIELDS = (
    "started_at",
    "finished_at",
    "attempts",
    "verified_by",
    "confirmed_by",
    "confirmed_at",
)

#: a spreadsheet runs a cell that starts with one of these as a formula
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# checking a chain


def check_chain(
    case_id: str, records: Sequence[EvidenceRecord], head: str, count: int
) -> list[str]:
    """What is wrong with one case's chain, as sentences; [] if it holds.

    `records` are the case's events in the order read (seq order); `head` and `count`
    what the case row says the last event's hash is and how many were appended.
    Each event is checked on its own (its hash recomputed from its fields) and
    against the one before it (its `prev_hash`, its seq), so one edited event is
    reported once, not as a break of everything after it.
    """
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(f"case {case_id}: {text}")

    prev_hash, prev_seq = genesis_hash(case_id), 0
    for record in records:
        seq = record.seq
        if record.case_id != case_id:
            problem(f"event {seq} belongs to case {record.case_id}")
        if seq <= prev_seq:
            problem(f"event {seq} is out of order or repeated (it follows event {prev_seq})")
        elif seq > prev_seq + 1:
            missing = (
                f"event {prev_seq + 1}"
                if seq == prev_seq + 2
                else f"events {prev_seq + 1} to {seq - 1}"
            )
            problem(f"{missing} missing (sequence gap)")
        elif record.prev_hash != prev_hash:
            if prev_seq == 0:
                problem(f"event {seq} does not start the chain (prev_hash is not the genesis)")
            else:
                problem(f"event {seq} does not follow event {prev_seq} (prev_hash mismatch)")
        recomputed = event_hash(
            case_id, seq, record.at, record.kind, record.step_id, record.data, record.prev_hash
        )
        if recomputed != record.hash:
            problem(f"event {seq} was edited (hash mismatch)")
        # Go on from the stored hash: the next event is checked against what is there.
        prev_hash, prev_seq = record.hash, max(seq, prev_seq)

    last_seq = records[-1].seq if records else 0
    last_hash = records[-1].hash if records else genesis_hash(case_id)
    if count > last_seq:
        problem(f"last event(s) deleted (head {head}, count {count}; the events end at {last_seq})")
    elif count < last_seq:
        problem(
            f"events after the chain head (head {head}, count {count}; events run to {last_seq})"
        )
    elif head != last_hash:
        problem(f"the chain head is not event {last_seq} (head {head}, count {count})")
    return problems


async def _read_chain(store: Store, case_id: str) -> tuple[list[EvidenceRecord], str, int]:
    """The case's events and its head, read so that they agree: an event appended
    between the two reads would otherwise look like a deleted one."""
    for _ in range(10):
        head = await store.evidence_head(case_id)
        records = await store.evidence(case_id)
        if await store.evidence_head(case_id) == head:
            break
    return records, head[0], head[1]


async def verify(store: Store, case_id: str | None = None) -> list[str]:
    """Check the chain of one case, or of every case (None): the problems found, as
    sentences naming the case and the event; [] when all hold. NotFound for an
    unknown case."""
    case_ids = [case_id] if case_id is not None else [c.id for c in await store.list_cases()]
    problems: list[str] = []
    for cid in case_ids:
        records, head, count = await _read_chain(store, cid)
        problems += check_chain(cid, records, head, count)
    return problems


# what the chained events say


def _no_step() -> dict[str, Any]:
    """The chained fields of a step no event mentions."""
    return {**dict.fromkeys(CHAINED_STEP_FIELDS), "attempts": 0}


def _chained_steps(records: Sequence[EvidenceRecord]) -> dict[str, dict[str, Any]]:
    """Per step id, the `CHAINED_STEP_FIELDS` as the events tell them."""
    steps: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.step_id is None:
            continue
        step = steps.setdefault(r.step_id, _no_step())
        if r.kind == "step_started":
            step["attempts"] += 1
            if step["started_at"] is None:
                step["started_at"] = r.at
            step["finished_at"] = None  # a new attempt: not finished until it ends
        elif r.kind in ("step_done", "case_halted"):
            step["finished_at"] = r.at
            if r.kind == "step_done":
                step["verified_by"] = r.data.get("verified_by")
        elif r.kind == "operator_confirmed":
            step["confirmed_by"] = r.data.get("confirmed_by")
            step["confirmed_at"] = r.at
    return steps


def _reached(records: Sequence[EvidenceRecord], epoch: Any) -> dict[str, str]:
    """When each milestone of this countdown epoch was reached, by its event."""
    return {
        str(r.data.get("milestone")): r.at
        for r in records
        if r.kind == "milestone_reached" and r.data.get("epoch") == epoch
    }


def _created(records: Sequence[EvidenceRecord]) -> EvidenceRecord | None:
    first = records[0] if records else None
    return first if first is not None and first.seq == 1 and first.kind == "case_created" else None


# export


async def export(
    store: Store,
    case_id: str,
    fmt: Literal["json", "csv"],
    *,
    exported_at: datetime | None = None,
) -> str:
    """One case's evidence for an auditor, as JSON or CSV text.

    JSON: ``case`` (id, subject, playbook, trigger, status, created_at, ...),
    ``steps`` (per step: id, action, status, attempts, started_at, finished_at,
    verified_by, confirmed_by and confirmed_at, the timestamps being those of the
    chained events, as stored), ``countdown`` (its milestones, and when each was
    reached; its reasons, what it does not cover, when the deny may come off) or
    null, ``events`` (every event with seq, at, kind, step_id, data, prev_hash and
    hash) and ``verification`` (chain_valid, head, count, problems).
    The same store gives the same text; `exported_at`, if given, is recorded too.

    CSV: a header and one row per event (`CSV_COLUMNS`); a cell a spreadsheet would
    run as a formula starts with a ``'``.
    """
    if fmt not in ("json", "csv"):
        raise ValueError(f"unknown evidence format {fmt!r}: json or csv")
    case = await store.get_case(case_id)
    records, head, count = await _read_chain(store, case_id)
    if fmt == "csv":
        return _csv(records)
    problems = check_chain(case_id, records, head, count)
    document = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        **({"exported_at": utc_iso(exported_at)} if exported_at is not None else {}),
        "case": _case_json(case, records),
        "steps": await _steps_json(store, case_id, records),
        "countdown": _countdown_json(case, records),
        "events": [
            {
                "seq": r.seq,
                "at": r.at,
                "kind": r.kind,
                "step_id": r.step_id,
                "data": r.data,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in records
        ],
        "verification": {
            "chain_valid": not problems,
            "head": head,
            "count": count,
            "problems": problems,
            "genesis": genesis_hash(case_id),
            "algorithm": (
                f"{CHAIN_VERSION}: hash = SHA-256 hex of the ASCII canonical JSON (keys "
                'sorted, no whitespace, non-ASCII as \\u escapes) of ["'
                f'{CHAIN_VERSION}", case id, seq, at, kind, step_id, canonical JSON of '
                "data, prev_hash]; the first prev_hash is the genesis, SHA-256 hex of "
                f'the canonical JSON of ["{CHAIN_VERSION}", "genesis", case id]'
            ),
            "chained_fields": (
                "events; case.created_at, case.trigger, case.subject, case.playbook (from "
                "event 1); steps[].{" + ", ".join(CHAINED_STEP_FIELDS) + "}; "
                "countdown.milestones[].reached_at"
            ),
        },
    }
    return json.dumps(document, indent=2, ensure_ascii=True) + "\n"


def _case_json(case: Case, records: Sequence[EvidenceRecord]) -> dict[str, Any]:
    created = _created(records)
    return {
        "id": case.id,
        "subject": case.subject,
        "playbook": case.playbook,
        "trigger": case.trigger,
        "status": case.status.value,
        # the chained time of its creation when there is one (same instant, as stored)
        "created_at": created.at if created is not None else utc_iso(case.created_at),
        "updated_at": utc_iso(case.updated_at),
        "halt_reason": case.halt_reason,
    }


async def _steps_json(
    store: Store, case_id: str, records: Sequence[EvidenceRecord]
) -> list[dict[str, Any]]:
    chained = _chained_steps(records)
    steps: list[StepRecord] = await store.steps(case_id)
    return [
        {
            "index": s.index,
            "step_id": s.step_id,
            "action": s.action,
            "status": s.status.value,
            **{field: chained.get(s.step_id, _no_step())[field] for field in CHAINED_STEP_FIELDS},
            "error": s.error,
        }
        for s in steps
    ]


def _countdown_json(case: Case, records: Sequence[EvidenceRecord]) -> dict[str, Any] | None:
    countdown = case.countdown
    if not countdown:
        return None
    epoch = countdown.get("epoch", 0)
    reached = _reached(records, epoch)
    return {
        "epoch": epoch,
        "milestones": [
            {
                "name": m.get("name"),
                "at": m.get("at"),
                "meaning": m.get("meaning"),
                "reached_at": reached.get(str(m.get("name"))),
            }
            for m in countdown.get("milestones", [])
        ],
        "reasons": countdown.get("reasons", []),
        "not_covered": countdown.get("out_of_model", []),
        "deny_removable_at": countdown.get("deny_removable_at"),
    }


def describe(record: EvidenceRecord) -> str:
    """One line saying what the event records, for people (the CSV's summary)."""
    d = record.data

    def text(key: str) -> str:
        return str(d.get(key, ""))

    match record.kind:
        case "case_created":
            who = f" for {text('subject')}" if "subject" in d else ""
            return f"case opened{who}; trigger {canonical_json(d.get('trigger'))}"
        case "step_started":
            return f"attempt {text('attempt')}"
        case "step_done":
            return f"done, verified by {text('verified_by')}" if "verified_by" in d else "done"
        case "step_deferred":
            return f"deferred: {text('reason')}"
        case "case_halted":
            return f"halted: {text('reason')}"
        case "operator_task_opened":
            return f"operator task opened: {text('title')} ({text('console_url')})"
        case "operator_confirmed":
            return f"confirmed by {text('confirmed_by')}"
        case "case_contained":
            return "every step done and verified"
        case "countdown_computed":
            return f"all access lapsed by {text('all_lapsed')}"
        case "milestone_reached":
            return f"milestone {text('milestone')} (due {text('due_at')}, epoch {text('epoch')})"
        case "case_access_lapsed":
            return "no access can remain"
        case "drift_detected" | "recontained":
            return text("summary")
        case "case_cancelled":
            return f"cancelled: {text('reason')}"
        case "case_rescheduled":
            by = f" by {canonical_json(d['by'])}" if d.get("by") else ""
            return f"rescheduled to {text('run_after')}{by}"
        case "case_retried":
            return f"retried by {text('retried_by')} after: {text('halt_reason')}"
        case "mutation_sent_again":
            return f"{text('operation')} {text('why')}"
        case "deny_removed":
            sets = d.get("permission_sets") or []
            return f"deny statement removed from {len(sets)} permission set(s)"
        case "deny_extended":
            sets = d.get("permission_sets") or []
            return f"deny statement provisioned on {len(sets)} permission set(s) found later"
        case "timer_fired":
            return f"timer {text('milestone')} (due {text('due_at')}, epoch {text('epoch')})"
        case "inventory_read":
            apps = d.get("applications")
            return (
                f"inventory read again: {len(d.get('permission_sets') or [])} permission "
                "set(s), "
                + ("applications unreadable" if apps is None else f"{len(apps)} application(s)")
            )
        case "countdown_extended":
            reasons = "; ".join(str(r) for r in d.get("reasons") or [])
            return f"countdown extended to {text('all_lapsed')}: {reasons}"
        case "notification_sent":
            return f"{text('notification')} notification sent via {text('channel')}"
        case "notification_failed":
            return (
                f"{text('notification')} notification via {text('channel')} failed: {text('error')}"
            )
    return canonical_json(d) if d else ""


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv(records: Sequence[EvidenceRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow(
            [
                r.seq,
                r.at,
                _cell(r.kind),
                _cell(r.step_id or ""),
                _cell(describe(r)),
                r.prev_hash,
                r.hash,
            ]
        )
    return out.getvalue()


# checking an export offline


class _Malformed(ValueError):
    pass


def _need(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Malformed(f"{where} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def verify_export(text: str) -> list[str]:
    """Check a JSON export without the database: its chain (from the genesis of its
    case to the head its verification block records) and that its case, step and
    milestone summaries say what its events say. [] when everything holds."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        return [f"not a JSON evidence export: {exc}"]
    try:
        return _verify_document(document)
    except _Malformed as exc:
        return [f"malformed evidence export: {exc}"]


def _verify_document(document: Any) -> list[str]:
    _need(document, dict, "the document")
    if document.get("format") != EXPORT_FORMAT or document.get("version") != EXPORT_VERSION:
        raise _Malformed(f"not format {EXPORT_FORMAT!r} version {EXPORT_VERSION}")
    case = _need(document.get("case"), dict, "case")
    case_id = _need(case.get("id"), str, "case.id")
    records = []
    for n, event in enumerate(_need(document.get("events"), list, "events"), start=1):
        where = f"events[{n}]"
        _need(event, dict, where)
        step_id = event.get("step_id")
        if step_id is not None:
            _need(step_id, str, f"{where}.step_id")
        records.append(
            EvidenceRecord(
                case_id=case_id,
                seq=_need(event.get("seq"), int, f"{where}.seq"),
                at=_need(event.get("at"), str, f"{where}.at"),
                kind=_need(event.get("kind"), str, f"{where}.kind"),
                step_id=step_id,
                data=_need(event.get("data"), dict, f"{where}.data"),
                prev_hash=_need(event.get("prev_hash"), str, f"{where}.prev_hash"),
                hash=_need(event.get("hash"), str, f"{where}.hash"),
            )
        )
    verification = _need(document.get("verification"), dict, "verification")
    head = _need(verification.get("head"), str, "verification.head")
    count = _need(verification.get("count"), int, "verification.count")
    chain = check_chain(case_id, records, head, count)

    problems = list(chain)

    def problem(text: str) -> None:
        problems.append(f"case {case_id}: {text}")

    claimed = verification.get("chain_valid")
    if claimed is not (not chain):
        problem(f"the export says chain_valid {claimed!r}, but its events say {not chain}")
    if verification.get("genesis", genesis_hash(case_id)) != genesis_hash(case_id):
        problem("verification.genesis is not the genesis of this case")

    created = _created(records)
    if created is not None:
        if case.get("created_at") != created.at:
            problem(f"case.created_at {case.get('created_at')!r} is not event 1's {created.at!r}")
        for key in ("trigger", "subject", "playbook"):
            if key in created.data and case.get(key) != created.data[key]:
                problem(f"case.{key} is not what event 1 records")

    chained = _chained_steps(records)
    for n, step in enumerate(_need(document.get("steps"), list, "steps"), start=1):
        _need(step, dict, f"steps[{n}]")
        step_id = step.get("step_id")
        derived = chained.get(step_id, _no_step()) if isinstance(step_id, str) else _no_step()
        for field in CHAINED_STEP_FIELDS:
            if step.get(field) != derived[field]:
                problem(
                    f"step {step_id}: {field} {step.get(field)!r} is not what the events "
                    f"say ({derived[field]!r})"
                )

    countdown = document.get("countdown")
    if countdown is not None:
        _need(countdown, dict, "countdown")
        reached = _reached(records, countdown.get("epoch"))
        for n, milestone in enumerate(
            _need(countdown.get("milestones"), list, "countdown.milestones"), start=1
        ):
            _need(milestone, dict, f"countdown.milestones[{n}]")
            expected = reached.get(str(milestone.get("name")))
            if milestone.get("reached_at") != expected:
                problem(
                    f"milestone {milestone.get('name')}: reached_at "
                    f"{milestone.get('reached_at')!r} is not what the events say ({expected!r})"
                )
    return problems
