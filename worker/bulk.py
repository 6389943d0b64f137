"""`offboard bulk`: offboard everyone in a CSV file, resumably.

Three phases:

1. validate the whole file first (`parse_bulk_csv`, pure): every bad row is reported
   with its line number, and nothing changes unless the caller skips the bad rows;
2. enqueue each row as a case at bulk priority (`enqueue`). Each row has a delivery
   key (playbook, person, effective time) recorded with its case, so running the
   same file again finds the cases it made: a person done by an earlier run counts
   as done and is not offboarded twice;
3. watch the cases until each is settled (`watch`), optionally while a worker runs
   them in this process, and summarise (`summary_text`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, TextIO

from worker.admission import (
    Admitted,
    Instruction,
    Outcome,
    ProtectedIdentity,
    is_login,
    protected_pattern,
    protected_reason,
)
from worker.clock import utc_iso
from worker.domain import PRIORITIES, Case, CaseStatus, OperatorTask
from worker.playbook import Playbook
from worker.runtime import Runtime
from worker.worker import Worker

COLUMNS = ("email", "reason", "effective_at", "employee_id")
REQUIRED = ("email",)

#: where a row's case stands: settled (nothing more happens without a human or a
#: date), or not yet
State = Literal[
    "contained", "access_lapsed", "waiting", "halted", "cancelled", "scheduled", "in_progress"
]
#: in the order of the summary table
STATE_LABELS: dict[State, str] = {
    "contained": "contained",
    "access_lapsed": "access lapsed",
    "waiting": "waiting on operator",
    "halted": "halted",
    "cancelled": "cancelled",
    "scheduled": "scheduled (effective later)",
    "in_progress": "not settled yet",
}


@dataclass(frozen=True, kw_only=True)
class BulkRow:
    line: int
    email: str
    reason: str | None = None
    effective_at: datetime | None = None
    employee_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class RowProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class BulkFile:
    rows: tuple[BulkRow, ...]
    problems: tuple[RowProblem, ...]
    #: the file as a whole is unusable (encoding, header, no rows): no row can be trusted
    unusable: bool = False


# --- phase 1: validate -----------------------------------------------------------------


def parse_bulk_csv(data: bytes, *, protected: Sequence[str]) -> BulkFile:
    """The valid rows and every problem found. Pure: reads nothing, changes nothing."""
    try:
        text = data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return _unusable(line, "the file is not UTF-8 text")
    if not text.strip():
        return _unusable(1, "the file is empty: a header row naming at least 'email' is needed")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    for record in reader:
        if any(cell.strip() for cell in record):
            header = [cell.strip().lower() for cell in record]
            break
    header_line = reader.line_num
    header_problems = _header_problems(header, header_line)
    if header_problems:
        return BulkFile(rows=(), problems=tuple(header_problems), unusable=True)
    rows: list[BulkRow] = []
    problems: list[RowProblem] = []
    first_line_of: dict[str, int] = {}
    last_line = reader.line_num
    for record in reader:
        line, last_line = last_line + 1, reader.line_num  # a quoted field may span lines
        if not any(cell.strip() for cell in record):
            continue
        row, row_problems = _row(line, header, record, protected, first_line_of)
        problems += row_problems
        if row is not None:
            rows.append(row)
    if not rows and not problems:
        return _unusable(header_line, "no rows after the header")
    return BulkFile(rows=tuple(rows), problems=tuple(problems))


def _unusable(line: int, message: str) -> BulkFile:
    return BulkFile(rows=(), problems=(RowProblem(line=line, message=message),), unusable=True)


def _header_problems(header: list[str], line: int) -> list[RowProblem]:
    known = ", ".join(COLUMNS)
    if any("@" in name for name in header):
        return [
            RowProblem(
                line=line,
                message=f"no header row: the first line must name the columns ({known})",
            )
        ]
    problems = []
    for index, name in enumerate(header, start=1):
        if not name:
            problems.append(RowProblem(line=line, message=f"column {index} has no name"))
        elif name not in COLUMNS:
            problems.append(
                RowProblem(line=line, message=f"unknown column {name!r} (known: {known})")
            )
        elif header.index(name) != index - 1:
            problems.append(RowProblem(line=line, message=f"column {name!r} appears twice"))
    for name in REQUIRED:
        if name not in header:
            problems.append(RowProblem(line=line, message=f"missing required column {name!r}"))
    return problems


def _row(
    line: int,
    header: list[str],
    record: list[str],
    protected: Sequence[str],
    first_line_of: dict[str, int],
) -> tuple[BulkRow | None, list[RowProblem]]:
    """One data row and its problems; `first_line_of` remembers emails already seen."""

    def problem(message: str) -> RowProblem:
        return RowProblem(line=line, message=message)

    if len(record) != len(header):
        # most often an unquoted comma in a reason: the columns would shift
        return None, [problem(f"{len(record)} fields, but the header has {len(header)}")]
    cells = {name: value.strip() for name, value in zip(header, record, strict=True)}
    problems: list[RowProblem] = []
    email = cells["email"]
    if not email:
        problems.append(problem("email is empty"))
    elif not is_login(email):
        problems.append(problem(f"email {email!r} is not a login (an email address)"))
    elif (first := first_line_of.setdefault(email.lower(), line)) != line:
        problems.append(problem(f"email {email} is also on line {first}"))
    elif (pattern := protected_pattern(email, list(protected))) is not None:
        problems.append(problem(protected_reason(email, pattern)))
    effective_at, date_problem = _effective_at(cells.get("effective_at", ""))
    if date_problem:
        problems.append(problem(date_problem))
    if problems:
        return None, problems
    row = BulkRow(
        line=line,
        email=email,
        reason=cells.get("reason") or None,
        effective_at=effective_at,
        employee_id=cells.get("employee_id") or None,
    )
    return row, []


def _effective_at(text: str) -> tuple[datetime | None, str | None]:
    if not text:
        return None, None
    example = "e.g. 2025-01-31T17:00:00Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None, f"effective_at {text!r} is not an ISO 8601 date-time ({example})"
    if "T" not in text.upper() and " " not in text:
        return None, f"effective_at {text!r} is a date without a time and zone ({example})"
    if parsed.tzinfo is None:
        return None, f"effective_at {text!r} has no time zone (add Z or an offset: {example})"
    return parsed, None


# --- phase 2: enqueue ------------------------------------------------------------------


#: what a row's admission did: "created" now; "existing" (the person's open case,
#: of any playbook, joined); "escalated" (their lower-priority case escalated in
#: place); "attached" (their case is halted: a human must retry it); "contained"
#: (their case is contained, its countdown runs)
Origin = Literal["created", "existing", "escalated", "attached", "contained"]
#: the one mapping of an admission's outcome to a row's
ORIGINS: dict[Outcome, Origin] = {
    Outcome.CREATED: "created",
    Outcome.EXISTING: "existing",
    Outcome.RESCHEDULED: "existing",
    Outcome.ESCALATED: "escalated",
    Outcome.ATTACHED: "attached",
    Outcome.CONTAINED: "contained",
}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One row and the case that offboards its person."""

    row: BulkRow
    case_id: str
    #: `Origin`, or "earlier-run" (this row was enqueued by an earlier run of the file)
    outcome: Literal[Origin, "earlier-run"]


def delivery_key(playbook: str, row: BulkRow) -> str:
    """The same person, playbook and effective time is the same instruction: running
    the file again (or a corrected copy of it) finds the case, never makes another."""
    effective = utc_iso(row.effective_at) if row.effective_at else "now"
    return f"bulk:{playbook}:{row.email.lower()}:{effective}"


async def enqueue(
    runtime: Runtime, playbook: Playbook, rows: Sequence[BulkRow], *, file: str, by: str
) -> list[Entry]:
    admissions = runtime.admissions()
    # below normal and incident work, so a big file never delays an urgent case
    bulk = replace(playbook, priority=PRIORITIES["bulk"])
    entries: list[Entry] = []
    for row in rows:
        key = delivery_key(playbook.name, row)
        trigger: dict[str, Any] = {
            "source": "bulk",
            "by": by,
            "file": file,
            "line": row.line,
            "delivery": key,
            "reason": row.reason,
            "employee_id": row.employee_id,
            "effective_at": utc_iso(row.effective_at) if row.effective_at else None,
        }

        def recorded(admitted: Admitted, row: BulkRow = row) -> dict[str, Any]:
            assert admitted.case is not None  # a termination admitted has its case
            return {
                "outcome": _origin(admitted),
                "case_id": admitted.case.id,
                "file": file,
                "line": row.line,
            }

        # the key also goes on the case: a crash before the delivery is recorded finds
        # the same case on the next run, even if it has finished meanwhile
        admitted = await admissions.admit(
            Instruction(
                playbook=bulk,
                subject=row.email,
                trigger=trigger,
                effective_at=row.effective_at,
                key=key,
                case_key=key,
            ),
            recorded,
        )
        if admitted.outcome is Outcome.PROTECTED:  # the rows were checked: a new pattern
            raise ProtectedIdentity(admitted.detail)
        if admitted.outcome is Outcome.REPLAYED:
            assert admitted.delivery is not None and admitted.delivery.case_id is not None
            entries.append(Entry(row=row, case_id=admitted.delivery.case_id, outcome="earlier-run"))
            continue
        assert admitted.case is not None
        entries.append(Entry(row=row, case_id=admitted.case.id, outcome=_origin(admitted)))
    return entries


def _origin(admitted: Admitted) -> Origin:
    return ORIGINS[admitted.outcome]


# --- phase 3: watch and summarise ------------------------------------------------------


#: the case statuses in which nothing more happens without a human
SETTLED: dict[CaseStatus, State] = {
    CaseStatus.CONTAINED: "contained",
    CaseStatus.ACCESS_LAPSED: "access_lapsed",
    CaseStatus.WAITING: "waiting",
    CaseStatus.HALTED: "halted",
    CaseStatus.CANCELLED: "cancelled",
}


def state_of(case: Case, row: BulkRow, now: datetime) -> State:
    if case.status is CaseStatus.PENDING and row.effective_at is not None:
        if row.effective_at > now:
            return "scheduled"  # the row says later: settled until then
    return SETTLED.get(case.status, "in_progress")


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Where every case of the file stands at one moment."""

    cases: dict[str, Case]
    states: dict[str, State]  # by case id

    @property
    def counts(self) -> Counter[State]:
        return Counter(self.states.values())

    @property
    def settled(self) -> int:
        return sum(1 for s in self.states.values() if s != "in_progress")

    @property
    def done(self) -> bool:
        return self.settled == len(self.states)


async def snapshot(runtime: Runtime, entries: Sequence[Entry]) -> Snapshot:
    wanted = {e.case_id: e.row for e in entries}
    # one query per look, however long the file (get_case per row would be N queries)
    cases = {c.id: c for c in await runtime.store.list_cases() if c.id in wanted}
    now = runtime.clock.now()
    return Snapshot(
        cases=cases, states={cid: state_of(cases[cid], row, now) for cid, row in wanted.items()}
    )


class Progress:
    """The live line: redrawn in place on a terminal, a plain line now and then off one."""

    def __init__(self, out: TextIO, *, total: int, plain_every: float) -> None:
        self.out = out
        self.total = total
        self.tty = out.isatty()
        self.plain_every = plain_every
        self.started = time.monotonic()
        self.settled_at_start: int | None = None
        self.last_plain = self.started

    def show(self, snap: Snapshot, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.settled_at_start is None:
            self.settled_at_start = snap.settled
        if self.tty:
            end = "\n" if final else ""
            self.out.write(f"\r{self.line(snap, now)}\x1b[K{end}")
            self.out.flush()
        elif final or now - self.last_plain >= self.plain_every:
            self.last_plain = now
            print(self.line(snap, now), file=self.out, flush=True)

    def line(self, snap: Snapshot, now: float) -> str:
        counts = snap.counts
        done = counts["contained"] + counts["access_lapsed"]
        elapsed = max(now - self.started, 1e-6)
        rate = (snap.settled - (self.settled_at_start or 0)) / elapsed
        left = self.total - snap.settled
        eta = "-" if left == 0 else (_duration(left / rate) if rate > 0 else "?")
        scheduled = f", {counts['scheduled']} scheduled" if counts["scheduled"] else ""
        return (
            f"bulk: {snap.settled}/{self.total} settled: {done} done, "
            f"{counts['waiting']} waiting on operator, {counts['halted']} failed{scheduled}"
            f" | {rate:.1f}/s, ETA {eta}"
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


async def run(
    runtime: Runtime,
    entries: Sequence[Entry],
    progress: Progress,
    *,
    run_worker: bool,
    stop: asyncio.Event,
) -> Snapshot:
    """Watch the cases until settled; with `run_worker`, a worker (the one `offboard
    worker` runs) works in this process meanwhile, on these cases and any other."""
    if not run_worker:
        return await watch(runtime, entries, progress, stop=stop)
    worker_stop = asyncio.Event()
    worker = asyncio.create_task(Worker(runtime).run(worker_stop))
    worker.add_done_callback(lambda _: stop.set())  # a worker that dies ends the watch
    try:
        return await watch(runtime, entries, progress, stop=stop)
    finally:
        worker_stop.set()  # cases in flight finish their step; the rest stay queued
        await worker


async def watch(
    runtime: Runtime,
    entries: Sequence[Entry],
    progress: Progress,
    *,
    stop: asyncio.Event,
    poll_seconds: float = 0.5,
) -> Snapshot:
    """Look at the cases until each is settled or `stop` is set; the last look."""
    while True:
        snap = await snapshot(runtime, entries)
        if snap.done or stop.is_set():
            progress.show(snap, final=True)
            return snap
        progress.show(snap)
        try:
            await asyncio.wait_for(stop.wait(), poll_seconds)
        except TimeoutError:
            pass


def summary_text(
    entries: Sequence[Entry],
    snap: Snapshot,
    tasks: Sequence[OperatorTask],
    *,
    playbook: str,
    skipped: int,
) -> str:
    """The table of final states, then the cases a human must look at, with why."""
    origins = Counter(e.outcome for e in entries)
    counts = snap.counts
    lines = [
        f"bulk {playbook}: {len(entries)} rows: {origins['created']} new case(s), "
        f"{origins['existing']} already open, {origins['earlier-run']} from an earlier run"
        + "".join(
            f", {origins[o]} {o}" for o in ("escalated", "attached", "contained") if origins[o]
        ),
        "",
        f"{'state':<30}{'cases':>6}",
    ]
    # "not settled yet" only appears after an interrupted run
    lines += [
        f"{label:<30}{counts[state]:>6}"
        for state, label in STATE_LABELS.items()
        if counts[state] or state != "in_progress"
    ]
    if skipped:
        lines.append(f"{'skipped (invalid rows)':<30}{skipped:>6}")
    open_task = {t.case_id: t for t in tasks}
    listings: tuple[tuple[State, str, Callable[[Case, OperatorTask | None], str]], ...] = (
        ("halted", "halted (fix the cause, then: offboard retry CASE):", _halt_reason),
        ("waiting", "waiting on an operator (then: offboard confirm CASE STEP):", _task_reason),
    )
    for state, heading, why in listings:
        listed = [e for e in entries if snap.states[e.case_id] == state]
        if not listed:
            continue
        lines += ["", heading, f"  {'line':<6}{'case':<20}{'subject':<32}reason"]
        for entry in listed:
            reason = why(snap.cases[entry.case_id], open_task.get(entry.case_id))
            lines.append(f"  {entry.row.line:<6}{entry.case_id:<20}{entry.row.email:<32}{reason}")
    return "\n".join(lines)


def _halt_reason(case: Case, _: OperatorTask | None) -> str:
    return case.halt_reason or "(no reason recorded)"


def _task_reason(case: Case, task: OperatorTask | None) -> str:
    return f"{task.step_id}: {task.title}" if task is not None else "an operator task is open"
