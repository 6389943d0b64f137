"""Chaos harness: many leavers, flaky providers, and `offboard worker` processes
that are SIGKILLed and restarted at random, then a check of every promise.

    .venv/bin/python bench/chaos.py --backend postgres --workers 3 --cases 300 \\
        --kills 50 --fault-rate 0.2 --seed 7
    .venv/bin/python bench/chaos.py --backend sqlite --workers 1 --cases 30 --kills 5
    .venv/bin/python bench/chaos.py --backend postgres --workers 3 --cases 60 --kills 20 \
        --shared-incidents 16

`--shared-incidents N`: N of the cases are incidents whose people also share two
permission sets, opened at once, so their deny statements are merged into the same
inline policies concurrently (provisioning takes 0.3 s, one per account at a time);
the emulator keeps every revision of each policy and the harness reports any
statement a revision dropped other than by its own removal ("no deny statement
lost"), and counts mutations sent again with no read before them ("read before
every re-send": an unchanged SCIM PATCH, a second Okta deactivation, a session
revocation sent again that its evidence does not own as "no read can tell").

What it does, in one process (asyncio) plus K worker subprocesses:

1. starts the sandbox emulators (Okta, Identity Center) here, seeds N leavers and
   injects seeded faults on every endpoint the worker calls: throttles with a wait
   hint, 5xx, timeouts, connection resets, some latency, and on the mutations
   (okta.deactivate, okta.clear_sessions, scim.patch_user) timeouts and resets
   *after* the change was applied, so a mutation lands while the worker sees a failure
   (Okta's own per-minute budget is lifted, and the worker's Identity Center pace
   raised: the emulators do not enforce AWS's 20 TPS; injected throttles stand in);
2. starts a throwaway PostgreSQL 15 (tests/pg.py) or uses a SQLite file, writes a
   config (2 s lease, fast retries, a watchdog interval of a day, countdown caches
   of 5 s so the first two milestones fire during the chaos), and opens the N cases
   through worker.cases.open_case against the same store;
3. runs W `offboard worker` processes; at seeded random moments (a mean of
   --kill-every seconds apart) SIGKILLs a random one and starts it again, --kills
   times in all. It plays the operator meanwhile: when a case waits on its
   portal-sessions task it deletes the sessions through the emulator's console
   endpoint and confirms through worker.cases.confirm_task (--eager-operator:
   as soon as the task is open, before its case is released as waiting);
4. when every case is contained it moves the workers' clock (the
   OFFBOARD_TEST_CLOCK_OFFSET_FILE) 13 h on, keeps killing (a fifth of the kills are
   kept for this) until every case's access has lapsed, then SIGTERMs the workers;
5. checks, from the emulators' audit log, the store and the workers' own logs:
   completion, the providers' end state, order, no double mutation, no concurrent
   step execution, milestones exactly once, no confirmation left unresumed, kills
   done, clean shutdown (and warns of state changes missing from the timeline).
   Exit code 0 only if every check passes.

How "no step executed twice at once" is shown: the store's events give each step
attempt its start (step_started, with its attempt number) and its end (step_done,
step_deferred, operator_task_opened, case_halted); the workers' JSON logs name the
process that logged that (case, step, attempt), and the harness knows when it killed
each process. An attempt without an ending event ends, conservatively, when its
process logged its next ending line for the case or died. Two attempts of one case
that overlap in time are a violation. What cannot be shown: which process made a
given provider call (the emulators do not see the caller).

The seed fixes the fault draws, the kill schedule and the operator's delays; the
interleaving with real processes is not reproducible, so a seed shows a failure
often, not always. `--keep` (or any failure) leaves the run directory: the config,
every worker's log and report.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: tests.pg lives in the source tree
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from worker.cases import confirm_task, open_case  # noqa: E402
from worker.clock import OffsetClock  # noqa: E402
from worker.config import parse_config  # noqa: E402
from worker.domain import Case, CaseEvent, CaseStatus, OperatorTask, StepStatus, Timer  # noqa: E402
from worker.errors import StoreUnavailable  # noqa: E402
from worker.runtime import Runtime, open_runtime  # noqa: E402
from worker.sandbox import Sandbox, SeededUser  # noqa: E402
from worker.sandbox.common import FaultRule  # noqa: E402
from worker.store.base import is_milestone  # noqa: E402

DSN_ENV = "OFFBOARD_CHAOS_PG_DSN"
PORTAL_STEP = "portal-sessions"
STEP_ORDER = ("idp-deactivate", "idp-sessions", "ic-disable", PORTAL_STEP)
MILESTONES = ("new-sessions-end", "applications-lapse", "role-sessions-lapse", "all-lapsed")
#: the mutations of the deny step and its removal (incident cases)
DENY_MUTATIONS = (
    "sso-admin.PutInlinePolicyToPermissionSet",
    "sso-admin.DeleteInlinePolicyFromPermissionSet",
    "sso-admin.ProvisionPermissionSet",
)
#: the account the shared permission sets of --shared-incidents are assigned in
SHARED_ACCOUNT = "999900001111"
#: the endpoint families the worker calls (console.* is the operator's, not faulted)
FAULTED = ("okta.*", "identitystore.*", "sso-admin.*", "scim.*")
MUTATIONS = ("okta.deactivate", "okta.clear_sessions", "scim.patch_user")
#: store events that end a step attempt
TERMINAL_EVENTS = ("step_done", "step_deferred", "operator_task_opened", "case_halted")
#: worker log lines that name the step attempt a process made (a start whose answer
#: was lost may have committed one)
STARTED_LOGS = ("step_started", "step_start_unanswered")
#: worker log lines that end a step attempt in that process
TERMINAL_LOGS = (
    "step_done",
    "step_deferred",
    "case_waiting_for_operator",
    "case_released_to_run_again",
    "case_halted",
    "step_crashed",
    "case_run_failed",
    # the database went away under the step (--pg-restarts), or the lease lapsed meanwhile
    "case_run_cut_short",
    "lease_lost",
)
#: worker log lines written as a case is released on purpose
RELEASE_LOGS = (
    "case_contained",
    "case_waiting_for_operator",
    "case_released_to_run_again",
    "step_deferred",
    "case_halted",
)
#: beyond the 12 h role session of the seeded AdministratorAccess and the caches
CLOCK_JUMP_SECONDS = 13 * 3600 + 600
CASE_ID = re.compile(r"\bc-[0-9a-f]{16}\b")


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class Options:
    backend: str = "postgres"
    workers: int = 3
    cases: int = 300
    kills: int = 50
    fault_rate: float = 0.2
    seed: int = 7
    timeout: float = 900.0
    lease: float = 2.0
    concurrency: int = 16
    #: mean seconds between two kills
    kill_every: float = 1.0
    milestones: bool = True
    #: confirm as soon as the task is open (before the case is released as waiting)
    eager_operator: bool = False
    #: how many of the cases are incidents whose people share permission sets
    shared_incidents: int = 0
    keep: bool = False
    json_path: Path | None = None
    quiet: bool = False
    #: PostgreSQL killed (`kill -9` of the postmaster) and restarted this often mid-run
    pg_restarts: int = 0
    #: seconds PostgreSQL stays down each time
    pg_down: float = 3.0


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="bench/chaos.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs in total")
    p.add_argument("--fault-rate", type=float, default=0.2, help="share of calls that fail")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=900.0, help="give up after (seconds)")
    p.add_argument("--lease", type=float, default=2.0, help="worker.lease_seconds")
    p.add_argument("--concurrency", type=int, default=16, help="worker.concurrency")
    p.add_argument("--kill-every", type=float, default=1.0, help="mean seconds between kills")
    p.add_argument("--no-milestones", action="store_true", help="stop at contained; no clock jump")
    p.add_argument(
        "--eager-operator",
        action="store_true",
        help="confirm a task the moment it is open, before its case is released as waiting",
    )
    p.add_argument(
        "--shared-incidents",
        type=int,
        default=0,
        help="how many of the cases are incidents whose people share two permission sets",
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--json", type=Path, default=None, help="write the report here too")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--pg-restarts",
        type=int,
        default=0,
        help="kill -9 PostgreSQL's postmaster this often mid-run, and start it again",
    )
    p.add_argument("--pg-down", type=float, default=3.0, help="seconds PostgreSQL stays down")
    a = p.parse_args(argv)
    if a.workers < 1 or a.cases < 1 or a.kills < 0 or not 0 <= a.fault_rate < 1:
        p.error("need --workers >= 1, --cases >= 1, --kills >= 0, 0 <= --fault-rate < 1")
    if not 0 <= a.shared_incidents <= a.cases:
        p.error("need 0 <= --shared-incidents <= --cases")
    if a.pg_restarts and a.backend != "postgres":
        p.error("--pg-restarts needs --backend postgres")
    if a.backend == "sqlite" and a.workers != 1:
        p.error("SQLite is one process's store: --backend sqlite needs --workers 1")
    return Options(
        backend=a.backend,
        workers=a.workers,
        cases=a.cases,
        kills=a.kills,
        fault_rate=a.fault_rate,
        seed=a.seed,
        timeout=a.timeout,
        lease=a.lease,
        concurrency=a.concurrency,
        kill_every=a.kill_every,
        milestones=not a.no_milestones,
        eager_operator=a.eager_operator,
        shared_incidents=a.shared_incidents,
        keep=a.keep,
        json_path=a.json,
        quiet=a.quiet,
        pg_restarts=a.pg_restarts,
        pg_down=a.pg_down,
    )


# ----------------------------------------------------------------------------- faults


def install_faults(sandbox: Sandbox, rate: float, rng: random.Random) -> list[FaultRule]:
    """Seeded faults: mutations first (applied, then the client sees a failure), then
    every faulted endpoint family gets its share of throttles, 5xx, timeouts, resets."""
    if rate <= 0:
        return []
    rules: list[FaultRule] = []
    for endpoint in MUTATIONS:
        rules.append(
            FaultRule(endpoint=endpoint, kind="timeout", rate=rate * 0.3, delay=1.6, phase="after")
        )
        rules.append(FaultRule(endpoint=endpoint, kind="reset", rate=rate * 0.2, phase="after"))
    for family in FAULTED:
        hint = round(rng.uniform(0.1, 0.4), 2)
        rules += [
            FaultRule(endpoint=family, kind="throttle", rate=rate * 0.15, retry_after=hint),
            FaultRule(endpoint=family, kind="throttle", rate=rate * 0.1, retry_after=1.0),
            FaultRule(endpoint=family, kind="error", rate=rate * 0.15, status=500),
            FaultRule(endpoint=family, kind="error", rate=rate * 0.1, status=503),
            FaultRule(endpoint=family, kind="timeout", rate=rate * 0.15, delay=1.6),
            FaultRule(endpoint=family, kind="reset", rate=rate * 0.25),
            FaultRule(endpoint=family, kind="latency", rate=rate * 0.5, delay=0.15),
        ]
    for rule in rules:
        sandbox.faults.add(rule)
    return rules


# ----------------------------------------------------------------------------- config


def config_data(sandbox: Sandbox, opts: Options, run_dir: Path) -> dict[str, Any]:
    data = sandbox.config_data(sqlite_path=str(run_dir / "offboard.db"))
    if opts.backend == "postgres":
        data["store"] = {"postgres": {"env": DSN_ENV}}
    data["playbook_dirs"] = [str(REPO / "playbooks")]
    data["worker"] = {
        "lease_seconds": opts.lease,
        "verify_timeout_seconds": 5,
        "verify_interval_seconds": 0.05,
        "requeue_after_seconds": 0.2,
        "concurrency": opts.concurrency,
        "poll_seconds": 0.2,
    }
    data["retry"] = {
        "attempts": 8,
        "initial_seconds": 0.02,
        "maximum_seconds": 0.5,
        "give_up_after_seconds": 20,
    }
    # The client gives up before an injected timeout (1.6 s) answers.
    data["idp"]["okta"]["timeout_seconds"] = 1.0
    data["identity_center"]["timeout_seconds"] = 1.0
    data["identity_center"]["scim"]["timeout_seconds"] = 1.0
    # AWS's 20 TPS is not what is tested here (the emulator does not enforce it);
    # injected throttles are. Restarted workers re-read every watched case.
    data["limits"] = {"identity_center_per_second": 200, "identity_center_burst": 20}
    data["countdown"] = {
        "signin_cache": "PT5S",
        "cli_lag": "PT5S",
        "app_session_cache": "PT5S",
        "watchdog_interval": "PT24H",
    }
    return data


def worker_command() -> list[str]:
    script = Path(sys.executable).with_name("offboard")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "worker.cli"]


# ----------------------------------------------------------------------------- workers


@dataclass(kw_only=True)
class Incarnation:
    """One `offboard worker` process, from start to its end."""

    slot: int
    number: int
    process: asyncio.subprocess.Process
    log: Path
    started_wall: float
    started_clock: float
    worker_id: str
    ended_wall: float | None = None
    ended_clock: float | None = None
    #: "killed" (by us, SIGKILL), "terminated" (by us, SIGTERM), "exited" (on its own)
    end: str | None = None
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class Workers:
    def __init__(
        self,
        *,
        count: int,
        config: Path,
        env: dict[str, str],
        run_dir: Path,
        clock: OffsetClock,
    ) -> None:
        self.count = count
        self.config = config
        self.env = env
        self.run_dir = run_dir
        self.clock = clock
        self.current: dict[int, Incarnation] = {}
        self.all: list[Incarnation] = []
        self.kills = 0
        self.kills_while_starting = 0
        self.unexpected: list[Incarnation] = []
        self._busy: set[int] = set()
        self._files: list[IO[bytes]] = []

    async def start(self, slot: int) -> Incarnation:
        number = sum(1 for i in self.all if i.slot == slot) + 1
        log = self.run_dir / f"worker-{slot}-{number:03d}.log"
        handle = log.open("wb")
        self._files.append(handle)
        process = await asyncio.create_subprocess_exec(
            *worker_command(),
            "--config",
            str(self.config),
            "--log-level",
            "INFO",
            "worker",
            env=self.env,
            cwd=self.run_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=asyncio.subprocess.STDOUT,
        )
        inc = Incarnation(
            slot=slot,
            number=number,
            process=process,
            log=log,
            started_wall=time.time(),
            started_clock=self.clock.now().timestamp(),
            worker_id=f"{socket.gethostname()}:{process.pid}",
        )
        self.current[slot] = inc
        self.all.append(inc)
        return inc

    def _ended(self, inc: Incarnation, how: str) -> None:
        inc.ended_wall = time.time()
        inc.ended_clock = self.clock.now().timestamp()
        inc.end = how
        inc.returncode = inc.process.returncode

    async def kill_and_restart(self, slot: int, restart_after: float) -> None:
        self._busy.add(slot)
        try:
            inc = self.current[slot]
            if inc.process.returncode is None:
                if not self.started(inc):
                    self.kills_while_starting += 1
                inc.process.send_signal(signal.SIGKILL)
                await inc.process.wait()
                self._ended(inc, "killed")
                self.kills += 1
            else:  # it ended on its own just now: the reaper's business, not a kill
                await inc.process.wait()
                self._ended(inc, "exited")
                self.unexpected.append(inc)
            await asyncio.sleep(restart_after)
            await self.start(slot)
        finally:
            self._busy.discard(slot)

    async def reap(self) -> None:
        """Restart a worker that ended by itself (it should never)."""
        for slot, inc in list(self.current.items()):
            if slot in self._busy or inc.process.returncode is None or inc.end is not None:
                continue
            self._ended(inc, "exited")
            self.unexpected.append(inc)
            await self.start(slot)

    @staticmethod
    def started(inc: Incarnation) -> bool:
        """Has it installed its SIGTERM handler (logged worker_started)?"""
        try:
            return b'"worker_started"' in inc.log.read_bytes()
        except OSError:
            return False

    async def terminate_all(self, wait: float = 60.0) -> None:
        # A worker SIGTERMed while still starting dies of the signal (no handler yet):
        # let each one finish starting, so that the exit codes speak of the drain.
        for _ in range(300):
            if all(
                self.started(i) or i.process.returncode is not None for i in self.current.values()
            ):
                break
            await asyncio.sleep(0.1)
        for inc in self.current.values():
            if inc.process.returncode is None and inc.end is None:
                inc.process.send_signal(signal.SIGTERM)
        for inc in self.current.values():
            if inc.end is not None:
                continue
            try:
                await asyncio.wait_for(inc.process.wait(), wait)
                self._ended(inc, "terminated")
            except TimeoutError:
                inc.process.send_signal(signal.SIGKILL)
                await inc.process.wait()
                self._ended(inc, "terminated")
                inc.returncode = None  # did not stop on SIGTERM

    async def kill_everything(self) -> None:
        """On the way out after an error: no process of ours is left behind."""
        for inc in self.all:
            if inc.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    inc.process.send_signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await inc.process.wait()

    def close_files(self) -> None:
        for handle in self._files:
            handle.close()


# ----------------------------------------------------------------------------- the operator


@dataclass(kw_only=True)
class Operator:
    runtime: Runtime
    sandbox: Sandbox
    users: dict[str, SeededUser]
    rng: random.Random
    eager: bool
    http: aiohttp.ClientSession
    handled: set[str] = field(default_factory=set)
    confirmed_at: dict[str, float] = field(default_factory=dict)
    deletions: Counter[str] = field(default_factory=Counter)
    #: cases found waiting although their task was confirmed (a lost resume)
    lost_resumes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def look(self, cases: list[Case]) -> None:
        waiting = {c.id for c in cases if c.status is CaseStatus.WAITING}
        open_tasks = await self.runtime.store.open_tasks()
        open_ids = {t.case_id for t in open_tasks if t.step_id == PORTAL_STEP}
        for task in open_tasks:
            if task.step_id != PORTAL_STEP or task.case_id in self.handled:
                continue
            if not self.eager and task.case_id not in waiting:
                continue  # a human acts on the notification, sent once the case waits
            self.handled.add(task.case_id)
            delay = 0.0 if self.eager else self.rng.uniform(0.0, 0.6)
            job = asyncio.create_task(self._act(task, delay))
            self.tasks.add(job)
            job.add_done_callback(self.tasks.discard)
        now = time.monotonic()
        for case_id in waiting - open_ids:
            confirmed = self.confirmed_at.get(case_id)
            if confirmed is not None and now - confirmed > 3.0:
                # Confirmed, yet still waiting and no worker will ever resume it.
                events = await self.runtime.store.events(case_id)
                order = [
                    f"{e.kind}#{e.seq}"
                    for e in events
                    if e.kind in ("operator_confirmed", "operator_task_opened")
                ]
                self.lost_resumes.append(
                    {"case": case_id, "after_s": round(now - confirmed, 1), "timeline": order}
                )
                self.confirmed_at[case_id] = now
                with contextlib.suppress(Exception):
                    await confirm_task(self.runtime, case_id, PORTAL_STEP, "chaos-operator")

    async def eager_poll(self, stop: asyncio.Event) -> None:
        """--eager-operator: look for new tasks every few milliseconds, so that some
        confirmations land between the task's opening and its case's release."""
        while not stop.is_set():
            try:
                open_tasks = await self.runtime.store.open_tasks()
            except StoreUnavailable:  # --pg-restarts: look again once it is back
                open_tasks = []
            for task in open_tasks:
                if task.step_id == PORTAL_STEP and task.case_id not in self.handled:
                    self.handled.add(task.case_id)
                    job = asyncio.create_task(self._act(task, 0.0))
                    self.tasks.add(job)
                    job.add_done_callback(self.tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.005)

    async def _act(self, task: OperatorTask, delay: float) -> None:
        await asyncio.sleep(delay)
        user = self.users[task.subject]
        url = f"{self.sandbox.identity_center_url}/_console/users/{user.ic_user_id}/portal-sessions"
        for attempt in range(20):
            try:
                async with self.http.delete(url) as response:
                    response.raise_for_status()
                    await response.json()
                self.deletions[task.case_id] += 1
                break
            except aiohttp.ClientError as exc:
                self.errors.append(f"{task.case_id}: console delete attempt {attempt}: {exc}")
                await asyncio.sleep(0.2)
        # long enough to outlast a database restart (--pg-restarts)
        for attempt in range(100):
            try:
                await confirm_task(self.runtime, task.case_id, PORTAL_STEP, "chaos-operator")
                self.confirmed_at[task.case_id] = time.monotonic()
                return
            except Exception as exc:
                self.errors.append(f"{task.case_id}: confirm attempt {attempt}: {exc}")
                await asyncio.sleep(0.2)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


# ----------------------------------------------------------------------------- logs


@dataclass(frozen=True, kw_only=True)
class LogLine:
    wall: float
    #: its place in its process's log: order within one process, whatever the clock says
    index: int
    event: str
    case_id: str | None
    step: str | None
    attempt: int | None
    inc: Incarnation


def read_logs(incarnations: list[Incarnation]) -> list[LogLine]:
    lines: list[LogLine] = []
    for inc in incarnations:
        try:
            text = inc.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for index, raw in enumerate(text.splitlines()):
            if not raw.startswith("{"):
                continue
            try:
                rec = json.loads(raw)
                wall = datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by SIGKILL
            case_id = rec.get("case_id")
            if case_id is None and rec.get("event") == "case_run_failed":
                found = CASE_ID.search(str(rec.get("error", "")))
                case_id = found.group(0) if found else None
            attempt = rec.get("attempt")
            lines.append(
                LogLine(
                    wall=wall.timestamp(),
                    index=index,
                    event=str(rec.get("event")),
                    case_id=case_id,
                    step=rec.get("step"),
                    attempt=attempt if isinstance(attempt, int) else None,
                    inc=inc,
                )
            )
    return lines


# ----------------------------------------------------------------------------- checks


@dataclass(kw_only=True)
class Check:
    name: str
    ok: bool
    summary: str
    violations: list[str] = field(default_factory=list)
    warn: bool = False  # shown, but does not fail the run

    @property
    def label(self) -> str:
        if self.ok:
            return "PASS"
        return "WARN" if self.warn else "FAIL"


@dataclass(kw_only=True)
class CaseData:
    case: Case
    user: SeededUser
    steps: list[Any]
    events: list[CaseEvent]
    timers: list[Timer]
    task: OperatorTask | None
    #: the case's side-effect ledger entries still in intent
    intents: list[Any] = field(default_factory=list)


@dataclass(kw_only=True)
class Attempt:
    case_id: str
    step: str
    attempt: int
    start: float
    end: float | None = None
    end_how: str = ""
    inc: Incarnation | None = None
    log_index: int = -1


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


def _who(attempt: Attempt) -> str:
    return attempt.inc.worker_id if attempt.inc else "unknown worker"


def _ts(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


class OffsetHistory:
    """What the clock offset was when: turns a log line's wall time into the workers'
    (shifted) clock, in which the store's times are written."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, float]] = [(0.0, 0.0)]

    def set(self, wall: float, offset: float) -> None:
        self.changes.append((wall, offset))

    def to_clock(self, wall: float) -> float:
        offset = 0.0
        for since, value in self.changes:
            if wall >= since:
                offset = value
        return wall + offset


def check_completion(data: list[CaseData], want: CaseStatus) -> Check:
    statuses = Counter(d.case.status.value for d in data)
    bad = [
        f"{d.case.id} ({d.user.login}) is {d.case.status.value}"
        for d in data
        if d.case.status is not want
    ]
    halted = [f"{d.case.id}: {d.case.halt_reason}" for d in data if d.case.halt_reason]
    shown = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    return Check(
        name="every case completed",
        ok=not bad,
        summary=f"{statuses.get(want.value, 0)}/{len(data)} {want.value} ({shown})",
        violations=bad + halted,
    )


def check_emulator_state(sandbox: Sandbox, data: list[CaseData]) -> Check:
    bad: list[str] = []
    for d in data:
        u = d.user
        okta, ic = (
            sandbox.okta.user_status(u.okta_id),
            sandbox.identity_center.user_status(u.ic_user_id),
        )
        live, portal = (
            sandbox.okta.live_sessions(u.okta_id),
            sandbox.identity_center.portal_sessions(u.ic_user_id),
        )
        if okta != "DEPROVISIONED" or live or ic != "DISABLED" or portal:
            bad.append(
                f"{u.login}: Okta {okta} ({live} sessions), Identity Center {ic} "
                f"({len(portal)} portal sessions)"
            )
    return Check(
        name="providers' end state",
        ok=not bad,
        summary=f"{len(data) - len(bad)}/{len(data)} users DEPROVISIONED, 0 Okta sessions, "
        "DISABLED, 0 portal sessions",
        violations=bad,
    )


def check_order(sandbox: Sandbox, data: list[CaseData]) -> Check:
    """IdP deactivated (verified) before the Identity Center user was disabled, which was
    before the portal-sessions task opened: in the audit log, in the step records, in the
    timeline, and across them (the audit's times against the store's)."""
    bad: list[str] = []
    missing_events: list[str] = []
    for d in data:
        u, cid = d.user, d.case.id
        deact = sandbox.audit.entries(action="okta.deactivate", target=u.okta_id)
        clears = sandbox.audit.entries(action="okta.clear_sessions", target=u.okta_id)
        patches = [
            e
            for e in sandbox.audit.entries(action="scim.patch_user", target=u.ic_user_id)
            if e.detail.get("changed")
        ]
        console = sandbox.audit.entries(
            action="console.delete_portal_sessions", target=u.ic_user_id
        )
        if not (deact and clears and patches and console):
            bad.append(
                f"{u.login}: audit lacks a mutation (deactivate {len(deact)}, clear "
                f"{len(clears)}, disable {len(patches)}, console {len(console)})"
            )
            continue
        # audit order: every session clear after the deactivation; disable after both
        seq = [deact[0].seq, min(c.seq for c in clears), patches[0].seq, console[0].seq]
        if seq != sorted(seq) or any(c.seq > patches[0].seq for c in clears):
            bad.append(f"{u.login}: audit order deactivate/clear/disable/console is {seq}")
        steps = {s.step_id: s for s in d.steps}
        # step records: each done before the next first started
        for before, after in itertools.pairwise(STEP_ORDER):
            b, a = steps.get(before), steps.get(after)
            if b is None or a is None or b.finished_at is None or a.started_at is None:
                bad.append(f"{cid}: step {before} or {after} never ran to the end")
                continue
            if b.finished_at > a.started_at:
                bad.append(
                    f"{cid}: {after} started {a.started_at} before {before} finished "
                    f"{b.finished_at}"
                )
        # across: the IC disable landed after the IdP step was verified, and the task
        # opened after the disable landed; the operator acted after the task opened
        idp_done = _ts(steps["idp-deactivate"].finished_at) if "idp-deactivate" in steps else None
        if idp_done is not None and patches[0].at.timestamp() < idp_done:
            bad.append(f"{cid}: SCIM disable at {patches[0].at} before the IdP step was verified")
        if d.task is None:
            bad.append(f"{cid}: no portal-sessions task")
        else:
            if d.task.opened_at < patches[0].at:
                bad.append(f"{cid}: task opened {d.task.opened_at} before disable {patches[0].at}")
            if console[0].at < d.task.opened_at:
                bad.append(f"{cid}: sessions deleted before the task opened")
        # the timeline: first step_done of each step before any start of the next
        first_done: dict[str, int] = {}
        first_start: dict[str, int] = {}
        first_task: int | None = None
        for e in d.events:
            if e.kind == "step_done" and e.step_id:
                first_done.setdefault(e.step_id, e.seq)
            if e.kind == "step_started" and e.step_id:
                first_start.setdefault(e.step_id, e.seq)
            if e.kind == "operator_task_opened" and first_task is None:
                first_task = e.seq
        for before, after in itertools.pairwise(STEP_ORDER):
            if before not in first_done:
                missing_events.append(f"{cid}: no step_done event for {before}")
                continue
            if after in first_start and first_start[after] < first_done[before]:
                bad.append(f"{cid}: timeline starts {after} before {before} is done")
        if (
            first_task is not None
            and "ic-disable" in first_done
            and first_task < first_done["ic-disable"]
        ):
            bad.append(f"{cid}: timeline opens the task before ic-disable is done")
    summary = (
        f"{len(data)} people: okta.deactivate < okta.clear_sessions < scim.patch_user "
        "< console deletion (audit seq); step records; timeline; audit times vs store times"
    )
    if missing_events:
        summary += f"; {len(missing_events)} step_done event(s) missing from timelines"
    return Check(name="containment order", ok=not bad, summary=summary, violations=bad)


def check_timeline_complete(data: list[CaseData]) -> Check:
    """A state change and its timeline event are written separately: is any missing?"""
    missing: list[str] = []
    for d in data:
        kinds = Counter(e.kind for e in d.events)
        done_events = {e.step_id for e in d.events if e.kind == "step_done"}
        for s in d.steps:
            if s.status is StepStatus.DONE and s.step_id not in done_events:
                missing.append(f"{d.case.id}: step {s.step_id} is done, no step_done event")
        if d.case.status in (CaseStatus.CONTAINED, CaseStatus.ACCESS_LAPSED) and not kinds.get(
            "case_contained"
        ):
            missing.append(f"{d.case.id}: contained, no case_contained event")
        if d.task is not None and d.task.confirmed_at and not kinds.get("operator_confirmed"):
            missing.append(f"{d.case.id}: task confirmed, no operator_confirmed event")
    return Check(
        name="timeline complete",
        ok=not missing,
        summary=f"{len(missing)} state change(s) without their timeline event",
        violations=missing,
        warn=True,
    )


def check_mutations_once(
    sandbox: Sandbox, data: list[CaseData], operator: Operator
) -> tuple[Check, dict[str, int]]:
    bad: list[str] = []
    counts: Counter[str] = Counter()
    repeats: Counter[str] = Counter()
    for d in data:
        u = d.user
        deact = sandbox.audit.entries(action="okta.deactivate", target=u.okta_id)
        changed = [
            e
            for e in sandbox.audit.entries(action="scim.patch_user", target=u.ic_user_id)
            if e.detail.get("changed")
        ]
        enabled = [
            e
            for e in sandbox.audit.entries(action="scim.patch_user", target=u.ic_user_id)
            if e.detail.get("active")
        ]
        console = sandbox.audit.entries(
            action="console.delete_portal_sessions", target=u.ic_user_id
        )
        clears = sandbox.audit.entries(action="okta.clear_sessions", target=u.okta_id)
        unchanged = sandbox.audit.entries(action="scim.patch_user", target=u.ic_user_id)
        counts["okta.deactivate"] += len(deact)
        counts["scim.patch_user changed"] += len(changed)
        counts["console.delete_portal_sessions"] += len(console)
        repeats["okta.clear_sessions"] += max(0, len(clears) - 1)
        repeats["scim.patch_user unchanged"] += len(unchanged) - len(changed)
        if len(deact) > 1:
            bad.append(f"{u.login}: okta.deactivate applied {len(deact)} times")
        if len(changed) > 1:
            bad.append(f"{u.login}: scim.patch_user changed the user {len(changed)} times")
        if enabled:
            bad.append(f"{u.login}: scim.patch_user set active=true {len(enabled)} time(s)")
        if len(console) > 1:
            bad.append(f"{u.login}: portal sessions deleted {len(console)} times")
        tasks_opened = sum(1 for e in d.events if e.kind == "operator_task_opened")
        if operator.deletions[d.case.id] > 1:
            bad.append(f"{d.case.id}: the operator was asked {operator.deletions[d.case.id]} times")
        repeats["operator_task_opened re-announced"] += max(0, tasks_opened - 1)
    others = [
        e.action
        for e in sandbox.audit.entries()
        if e.action not in ("okta.deactivate", "okta.clear_sessions", "scim.patch_user")
        and e.action != "console.delete_portal_sessions"
        and e.action not in DENY_MUTATIONS
    ]
    if others:
        bad.append(f"unexpected mutations: {dict(Counter(others))}")
    summary = (
        f"okta.deactivate {counts['okta.deactivate']}, scim.patch_user changed "
        f"{counts['scim.patch_user changed']}, console deletions "
        f"{counts['console.delete_portal_sessions']} for {len(data)} people (at most 1 each); "
        f"idempotent repeats: okta.clear_sessions +{repeats['okta.clear_sessions']}, "
        f"SCIM PATCH that changed nothing {repeats['scim.patch_user unchanged']}"
    )
    return Check(name="no mutation applied twice", ok=not bad, summary=summary, violations=bad), {
        **counts,
        **{f"repeat {k}": v for k, v in repeats.items()},
    }


def share_permission_sets(sandbox: Sandbox, people: list[SeededUser]) -> list[str]:
    """Two permission sets in one account, each person assigned one of them (and the
    sets of their own): the incidents' deny statements meet in the same policies.
    Provisioning takes a while, so overlapping ones answer ConflictException."""
    if not people:
        return []
    ic = sandbox.identity_center
    ic.provisioning_delay = 0.3
    shared = [ic.add_permission_set(f"Shared{n}", session_duration="PT8H") for n in range(2)]
    for n, person in enumerate(people):
        ic.add_account_assignment(
            account_id=SHARED_ACCOUNT,
            permission_set_arn=shared[n % 2],
            principal_type="USER",
            principal_id=person.ic_user_id,
        )
    return shared


def _statements(policy: str) -> dict[str, str]:
    """Sid -> the statement's JSON, of one revision's inline policy."""
    if not policy:
        return {}
    found = json.loads(policy).get("Statement", [])
    found = [found] if isinstance(found, dict) else found
    return {str(x.get("Sid")): json.dumps(x, sort_keys=True) for x in found if x.get("Sid")}


def lost_statements(revisions: list[tuple[int, str]]) -> list[str]:
    """Statements a revision dropped other than by a removal of that statement alone (a
    put that takes one statement off and changes nothing else, or the deletion of a
    policy that held only it): what a put built from a stale read does."""
    lost = []
    for (_, before), (revision, after) in itertools.pairwise(revisions):
        had, has = _statements(before), _statements(after)
        dropped = set(had) - set(has)
        added = set(has) - set(had)
        if dropped and (len(dropped) > 1 or added):
            lost += [f"revision {revision} dropped {sid}" for sid in sorted(dropped)]
    return lost


def check_deny_statements_kept(sandbox: Sandbox, arns: list[str]) -> tuple[Check, dict[str, int]]:
    ic = sandbox.identity_center
    bad: list[str] = []
    revisions = 0
    for arn in arns:
        history = ic.policy_revisions(arn)
        revisions += len(history)
        bad += [f"{arn}: {lost}" for lost in lost_statements(history)]
    figures = {"shared_sets": len(arns), "revisions": revisions, "statements_lost": len(bad)}
    return Check(
        name="no deny statement lost",
        ok=not bad,
        summary=f"{len(bad)} statement(s) lost over {revisions} revisions of {len(arns)} "
        "shared permission set(s)",
        violations=bad,
    ), figures


def check_read_before_resend(
    sandbox: Sandbox, data: list[CaseData]
) -> tuple[Check, dict[str, int]]:
    """A mutation sent again with no read before it: an unchanged SCIM PATCH (the
    DescribeUser before it would have shown DISABLED), a second Okta deactivation; a
    session revocation sent again is owned by its evidence ("no read can tell") or blind."""
    bad: list[str] = []
    figures: Counter[str] = Counter()
    for d in data:
        u = d.user
        patches = sandbox.audit.entries(action="scim.patch_user", target=u.ic_user_id)
        unchanged = [e for e in patches if not e.detail.get("changed")]
        deact = sandbox.audit.entries(action="okta.deactivate", target=u.okta_id)
        clears = sandbox.audit.entries(action="okta.clear_sessions", target=u.okta_id)
        # each send that may repeat an applied one is in the timeline before it goes out
        owned = sum(
            1
            for e in d.events
            if e.kind == "mutation_sent_again"
            and str(e.data.get("operation", "")).endswith(".revoke_sessions")
        )
        extra_clears = max(0, len(clears) - 1)
        blind = {
            "scim.patch_user": len(unchanged),
            "okta.deactivate": max(0, len(deact) - 1),
            "okta.clear_sessions": max(0, extra_clears - owned),
        }
        figures["no_read_can_tell"] += min(extra_clears, owned)
        for endpoint, count in blind.items():
            figures[f"blind {endpoint}"] += count
            if count:
                bad.append(f"{d.case.id} ({u.login}): {endpoint} sent again {count}x unread")
    total_blind = sum(v for k, v in figures.items() if k.startswith("blind"))
    figures["blind"] = total_blind
    return Check(
        name="read before every re-send",
        ok=not bad,
        summary=f"{total_blind} mutation(s) sent again with no read before them; "
        f"{figures['no_read_can_tell']} session revocation(s) sent again, owned in the "
        "evidence as 'no read can tell'",
        violations=bad,
    ), dict(figures)


def check_no_intent_left(data: list[CaseData]) -> Check:
    """A closed case has no side effect left in intent (a call that may or may not
    have gone out, never resolved by a read)."""
    closed = (CaseStatus.ACCESS_LAPSED, CaseStatus.CANCELLED, CaseStatus.CONTAINED)
    bad = [
        f"{d.case.id} ({d.case.status.value}): {e.key} in intent since {e.requested_at}"
        for d in data
        if d.case.status in closed
        for e in d.intents
    ]
    return Check(
        name="no ledger entry left in intent",
        ok=not bad,
        summary=f"{len(bad)} entry(ies) in intent on finished cases",
        violations=bad,
    )


def step_attempts(
    data: list[CaseData],
    logs: list[LogLine],
    workers: Workers,
    offsets: OffsetHistory,
) -> tuple[Check, dict[str, int]]:
    """No step of a case executed by two workers (or twice by one) at the same time.

    An attempt runs from its step_started event to the event that ends it (done,
    deferred, task opened, halted). An attempt without one was abandoned; the worker
    that ran it is found by its log line `step_started` (case, step, attempt number;
    `step_start_unanswered` when the start's answer was lost),
    and the attempt ends when that process wrote its next ending line for the case or
    died. Two attempts of one case that overlap are a violation."""
    by_key: dict[tuple[str, str, int], LogLine] = {}
    endings: dict[tuple[int, str], list[LogLine]] = defaultdict(list)
    for line in logs:
        if line.event in STARTED_LOGS and line.case_id and line.step and line.attempt:
            by_key[(line.case_id, line.step, line.attempt)] = line
        if line.event in TERMINAL_LOGS and line.case_id:
            endings[(id(line.inc), line.case_id)].append(line)
    kill_clock = sorted(
        i.ended_clock for i in workers.all if i.end == "killed" and i.ended_clock is not None
    )
    figures: Counter[str] = Counter()
    bad: list[str] = []
    gaps_after_kill: list[float] = []
    for d in data:
        attempts: list[Attempt] = []
        current: Attempt | None = None
        for e in d.events:
            if e.kind == "step_started" and e.step_id:
                number = int(e.data.get("attempt", 0))
                current = Attempt(
                    case_id=d.case.id, step=e.step_id, attempt=number, start=e.at.timestamp()
                )
                started = by_key.get((d.case.id, e.step_id, number))
                current.inc = started.inc if started else None
                current.log_index = started.index if started else -1
                attempts.append(current)
            elif e.kind in TERMINAL_EVENTS and current is not None and e.step_id == current.step:
                if current.end is None:
                    current.end, current.end_how = e.at.timestamp(), e.kind
        for i, a in enumerate(attempts):
            figures["attempts"] += 1
            figures["attributed"] += a.inc is not None
            if a.end is not None:
                continue
            figures["abandoned"] += 1
            nxt = attempts[i + 1].start if i + 1 < len(attempts) else None
            if a.inc is not None:
                later = [
                    line.wall
                    for line in endings[(id(a.inc), a.case_id)]
                    if line.index > a.log_index
                ]
                if later:
                    a.end, a.end_how = offsets.to_clock(later[0]), "its worker logged the end"
                    figures["abandoned, ended in the log (worker lived on)"] += 1
                elif a.inc.ended_clock is not None:
                    a.end, a.end_how = a.inc.ended_clock, f"its worker {a.inc.end}"
                    figures[f"abandoned, worker {a.inc.end}"] += 1
                else:
                    a.end, a.end_how = float("inf"), "its worker never ended"
            else:
                # Killed between the event and its log line: some worker killed after
                # the start must explain it, before the next attempt began.
                kills = [k for k in kill_clock if k >= a.start and (nxt is None or k <= nxt)]
                figures["abandoned, unattributed"] += 1
                if nxt is not None and not kills:
                    bad.append(
                        f"{a.case_id}: attempt {a.attempt} of {a.step} at {_iso(a.start)} was "
                        "abandoned by an unknown worker and no worker was killed before the "
                        f"next attempt at {_iso(nxt)}"
                    )
                a.end = kills[0] if kills else (nxt if nxt is not None else a.start)
                a.end_how = "a kill (unattributed)"
        ordered = sorted(attempts, key=lambda x: x.start)
        for x, y in itertools.pairwise(ordered):
            if x.end_how == "its worker killed" and x.end is not None:
                gaps_after_kill.append(y.start - x.end)
        latest: Attempt | None = None  # of those begun so far, the one that ends last
        for y in ordered:
            if latest is not None and latest.end is not None and y.start < latest.end:
                x, x_end = latest, latest.end
                bad.append(
                    f"{d.case.id}: {x.step} attempt {x.attempt} ({_who(x)}, "
                    f"{_iso(x.start)}-{_iso(x_end)}, ended: {x.end_how}) overlaps {y.step} "
                    f"attempt {y.attempt} ({_who(y)}, from {_iso(y.start)}); "
                    f"{x_end - y.start:.3f} s together"
                )
            if latest is None or (y.end or 0) > (latest.end or 0):
                latest = y
    if gaps_after_kill:
        figures["next attempt after a killed one, min ms"] = int(min(gaps_after_kill) * 1000)
    # The heartbeat may beat once more after the case was released on purpose: such a
    # `lease_lost` sits right beside the release's own line and lost nothing.
    releases: dict[tuple[int, str], list[float]] = defaultdict(list)
    for line in logs:
        if line.event in RELEASE_LOGS and line.case_id:
            releases[(id(line.inc), line.case_id)].append(line.wall)
    lost = [line for line in logs if line.event == "lease_lost" and line.case_id]
    at_release = [
        line
        for line in lost
        if any(abs(w - line.wall) < 0.5 for w in releases[(id(line.inc), str(line.case_id))])
    ]
    lease_lost = len(lost) - len(at_release)
    figures["lease_lost log lines"] = len(lost)
    figures["lease_lost at the case's own release"] = len(at_release)
    figures["case_run_failed log lines"] = sum(1 for x in logs if x.event == "case_run_failed")
    summary = (
        f"{figures['attempts']} step attempts, {figures['attributed']} attributed to a worker "
        f"by its log; {figures['abandoned']} abandoned "
        f"({figures['abandoned, worker killed']} by a killed worker, "
        f"{figures['abandoned, unattributed']} killed before logging, "
        f"{figures['abandoned, ended in the log (worker lived on)']} by a worker that lived on); "
        f"0 overlaps needed, {len(bad)} found; after a kill the next attempt began "
        f"{figures.get('next attempt after a killed one, min ms', '-')} ms later at the "
        f"soonest; leases lost by live workers: {lease_lost} "
        f"(+{len(at_release)} lease_lost lines logged as the worker released the case itself)"
    )
    return Check(
        name="no step executed twice at once", ok=not bad, summary=summary, violations=bad
    ), dict(figures)


def check_milestones(data: list[CaseData], logs: list[LogLine], expect_all: bool) -> Check:
    bad: list[str] = []
    timers = fired = events = 0
    logged: Counter[str] = Counter(
        line.case_id for line in logs if line.event == "milestone_reached" and line.case_id
    )
    for d in data:
        reached = Counter(
            (str(e.data.get("milestone")), int(e.data.get("epoch", -1)))
            for e in d.events
            if e.kind == "milestone_reached"
        )
        events += sum(reached.values())
        for key, n in reached.items():
            if n > 1:
                bad.append(f"{d.case.id}: milestone {key[0]} epoch {key[1]} fired {n} times")
        # the countdown's milestones; work timers (re-reads, deny-removable) fire as
        # `timer_fired` and are not milestones
        milestones = [t for t in d.timers if is_milestone(t.name)]
        known = {(t.name, t.epoch) for t in milestones}
        for t in milestones:
            timers += 1
            if t.fired_at is not None:
                fired += 1
                if reached[(t.name, t.epoch)] != 1:
                    bad.append(
                        f"{d.case.id}: timer {t.name} fired, event count "
                        f"{reached[(t.name, t.epoch)]}"
                    )
            elif expect_all:
                bad.append(f"{d.case.id}: timer {t.name} epoch {t.epoch} never fired")
        for key in reached:
            if key not in known:
                bad.append(f"{d.case.id}: milestone event {key} without a timer")
        names = {t.name for t in milestones}
        if expect_all and names != set(MILESTONES):
            bad.append(f"{d.case.id}: timers {sorted(names)}, expected {list(MILESTONES)}")
        lapsed = sum(1 for e in d.events if e.kind == "case_access_lapsed")
        if lapsed > 1 or (expect_all and lapsed != 1):
            bad.append(f"{d.case.id}: case_access_lapsed recorded {lapsed} times")
        epochs = {t.epoch for t in d.timers}
        if epochs - {0}:
            bad.append(f"{d.case.id}: countdown epochs {sorted(epochs)} (drift without cause)")
        if any(e.kind == "drift_detected" for e in d.events):
            bad.append(f"{d.case.id}: drift detected, but nobody re-enabled the user")
    for case_id, n in logged.items():
        if n > len(MILESTONES):
            bad.append(f"{case_id}: {n} milestone_reached log lines")
    return Check(
        name="milestones fired exactly once",
        ok=not bad,
        summary=f"{timers} timers, {fired} fired, {events} milestone_reached events "
        f"(one per case, milestone and epoch: {'yes' if not bad else 'no'}); "
        f"{sum(logged.values())} notifications logged (at most once: a kill may lose one)",
        violations=bad,
    )


def longest_stall(
    data: list[CaseData], sandbox: Sandbox, workers: Workers, began_clock: float
) -> dict[str, Any]:
    """The longest time in which no step started anywhere before every case was
    contained, and what the providers were asked meanwhile: the containment's
    latency under chaos, and where it went."""
    starts = sorted(e.at.timestamp() for d in data for e in d.events if e.kind == "step_started")
    if len(starts) < 2:
        return {}
    gap, since = max((b - a, a) for a, b in itertools.pairwise(starts))
    until = since + gap
    asked = Counter(
        endpoint for at, endpoint, _ in sandbox.audit.requests if since <= at.timestamp() <= until
    )
    return {
        "seconds": round(gap, 1),
        "from_s": round(since - began_clock, 1),
        "kills_during": sum(
            1
            for i in workers.all
            if i.end == "killed" and i.ended_clock and since <= i.ended_clock <= until
        ),
        "workers_started_just_before_or_during": sum(
            1 for i in workers.all if since - 10 <= i.started_clock <= until
        ),
        "provider_requests_during": dict(asked.most_common(6)),
    }


@dataclass(kw_only=True)
class Outage:
    """One `kill -9` of PostgreSQL, in harness seconds (monotonic, from the start)."""

    killed_s: float
    restarted_s: float
    #: the wall clock (the store's timestamps) at the kill and at the restart
    killed_wall: float
    restarted_wall: float

    def as_json(self, data: list[CaseData], began_clock: float) -> dict[str, Any]:
        """The outage, and how long after the restart the first step started."""
        after = sorted(
            e.at.timestamp()
            for d in data
            for e in d.events
            if e.kind == "step_started" and e.at.timestamp() >= self.killed_wall
        )
        first = next(iter(after), None)
        return {
            "killed_at_s": round(self.killed_s, 1),
            "down_s": round(self.restarted_s - self.killed_s, 1),
            "first_step_started_after_restart_s": (
                None if first is None else round(first - self.restarted_wall, 2)
            ),
            "no_step_started_for_s": None if first is None else round(first - self.killed_wall, 2),
        }


async def restart_database(
    cluster: Any,
    workers: Workers,
    opts: Options,
    rng: random.Random,
    outages: list[Outage],
    began: float,
) -> None:
    """--pg-restarts: `kill -9` of the postmaster at seeded moments while the workers
    run, down --pg-down seconds each time, then started again on its port."""
    from tests.pg import kill_cluster, restart_cluster

    for _ in range(opts.pg_restarts):
        # mid-run: every worker up and at work (a worker that cannot reach its database
        # when it starts exits 2 by design: that is a configuration error to show)
        while not all(Workers.started(i) for i in workers.current.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        killed_wall, killed = time.time(), time.monotonic() - began
        pid = await asyncio.to_thread(kill_cluster, cluster)
        _say(opts, f"  {killed:6.1f}s PostgreSQL (pid {pid}) killed with SIGKILL")
        await asyncio.sleep(opts.pg_down)
        await asyncio.to_thread(restart_cluster, cluster)
        restarted = time.monotonic() - began
        _say(opts, f"  {restarted:6.1f}s PostgreSQL started again")
        outages.append(
            Outage(
                killed_s=killed,
                restarted_s=restarted,
                killed_wall=killed_wall,
                restarted_wall=time.time(),
            )
        )


def check_database_restarts(opts: Options, outages: list[Outage], workers: Workers) -> Check:
    bad = [
        f"worker slot {i.slot} #{i.number} (pid {i.pid}) exited by itself with "
        f"{i.returncode}; log {i.log}"
        for i in workers.unexpected
    ]
    if len(outages) != opts.pg_restarts:
        bad.append(f"{len(outages)} PostgreSQL restarts done, {opts.pg_restarts} asked")
    down = sum(o.restarted_s - o.killed_s for o in outages)
    return Check(
        name="database restarts ridden out",
        ok=not bad,
        summary=f"PostgreSQL killed (SIGKILL) and restarted {len(outages)} times, "
        f"{down:.1f} s down in all; {len(workers.unexpected)} worker(s) exited by themselves",
        violations=bad,
    )


async def check_corruption_refused(
    run_dir: Path, data: dict[str, Any], env: dict[str, str]
) -> Check:
    """A SQLite file with a damaged page: `offboard worker` refuses it at start (exit 2,
    the file named, what to do, no traceback), whatever backend the run used."""
    path = run_dir / "damaged.db"
    data = {**data, "store": {"sqlite": str(path)}}
    config = run_dir / "damaged.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    env = {k: v for k, v in env.items() if k != DSN_ENV}

    async def offboard(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *worker_command(),
            "--config",
            str(config),
            *args,
            env=env,
            cwd=run_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return int(process.returncode or 0), out.decode(errors="replace")

    await offboard("cases")  # creates the file and its schema
    with path.open("r+b") as file:  # garbage over its third page, as a bad disk leaves it
        file.seek(2 * 4096)
        file.write(b"\xa5" * 4096)
    code, out = await offboard("worker")
    bad = []
    if code != 2:
        bad.append(f"offboard worker on a damaged file exited {code}, not 2")
    if str(path) not in out or "backup" not in out:
        bad.append(f"the refusal does not name the file and what to do: {out[-400:]!r}")
    if "Traceback" in out:
        bad.append("a traceback instead of a message")
    return Check(
        name="SQLite corruption refused at start",
        ok=not bad,
        summary=f"offboard worker on a damaged SQLite file: exit {code}: "
        + (out.strip().splitlines() or [""])[-1][:160],
        violations=bad,
    )


def check_kills(workers: Workers, opts: Options) -> Check:
    bad = [
        f"worker slot {i.slot} #{i.number} (pid {i.pid}) exited by itself with "
        f"{i.returncode}; log {i.log}"
        for i in workers.unexpected
    ]
    if workers.kills != opts.kills:
        bad.append(f"{workers.kills} kills done, {opts.kills} asked")
    return Check(
        name="kills and restarts",
        ok=not bad,
        summary=f"{workers.kills}/{opts.kills} SIGKILLs ({workers.kills_while_starting} of a "
        f"worker still starting), {len(workers.all)} worker processes in all, "
        f"{len(workers.unexpected)} ended by themselves",
        violations=bad,
    )


def check_shutdown(workers: Workers) -> Check:
    last = list(workers.current.values())
    bad = [
        f"worker slot {i.slot} (pid {i.pid}) ended {i.end} with {i.returncode}"
        for i in last
        if i.end != "terminated" or i.returncode != 0
    ]
    return Check(
        name="clean shutdown",
        ok=not bad,
        summary=f"{len(last) - len(bad)}/{len(last)} workers exited 0 on SIGTERM",
        violations=bad,
    )


def check_lost_resumes(operator: Operator) -> Check:
    return Check(
        name="every confirmation resumed its case",
        ok=not operator.lost_resumes,
        summary=f"{len(operator.confirmed_at)} confirmations, "
        f"{len(operator.lost_resumes)} left the case waiting for good (nudged by re-confirming)",
        violations=[
            f"{x['case']}: still waiting {x['after_s']} s after its task was confirmed "
            f"(timeline: {', '.join(x['timeline'])})"
            for x in operator.lost_resumes
        ],
    )


# ----------------------------------------------------------------------------- the run


@dataclass(kw_only=True)
class Report:
    opts: Options
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok or c.warn for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.opts.seed,
            "options": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.opts).items()
            },
            "checks": [
                {
                    "name": c.name,
                    "result": c.label,
                    "summary": c.summary,
                    "violations": c.violations[:200],
                    "violation_count": len(c.violations),
                }
                for c in self.checks
            ],
            "violations": [v for c in self.checks if not c.ok and not c.warn for v in c.violations],
            "figures": self.figures,
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }


def _say(opts: Options, text: str) -> None:
    if not opts.quiet:
        print(text, flush=True)


async def run(opts: Options) -> Report:
    report = Report(opts=opts)
    rng = random.Random(opts.seed)
    fault_seed = rng.randrange(2**32)
    kill_rng = random.Random(rng.random())
    op_rng = random.Random(rng.random())
    run_dir = Path(tempfile.mkdtemp(prefix="offboard-chaos-"))
    report.run_dir = run_dir
    offset_file = run_dir / "clock-offset"
    offset_file.write_text("0", encoding="utf-8")
    offsets = OffsetHistory()
    clock = OffsetClock(str(offset_file))
    began = time.monotonic()
    began_clock = clock.now().timestamp()
    deadline = began + opts.timeout
    print(
        f"chaos: backend={opts.backend} workers={opts.workers} cases={opts.cases} "
        f"kills={opts.kills} fault_rate={opts.fault_rate} seed={opts.seed} "
        f"lease={opts.lease}s run_dir={run_dir}",
        flush=True,
    )
    sandbox = Sandbox(clock=clock, seed=fault_seed)
    cluster: Any = None
    workers: Workers | None = None
    outages: list[Outage] = []
    try:
        await sandbox.start()
        # The org's own per-minute budget is not under test; injected throttles are.
        sandbox.okta.rate_limit_per_minute = 10_000_000
        users = [sandbox.seed_leaver(f"leaver{i:04d}@example.com") for i in range(opts.cases)]
        by_login = {u.login: u for u in users}
        incidents = {u.login for u in users[opts.cases - opts.shared_incidents :]}
        shared_sets = share_permission_sets(sandbox, [by_login[login] for login in incidents])
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFBOARD_")}
        env.update(sandbox.environment())
        env["OFFBOARD_TEST_CLOCK_OFFSET_FILE"] = str(offset_file)
        os.environ.update(sandbox.environment())
        if opts.backend == "postgres":
            from tests.pg import start_cluster

            # killed by --pg-restarts: a commit acknowledged must survive, as in production
            cluster = await asyncio.to_thread(start_cluster, durable=opts.pg_restarts > 0)
            env[DSN_ENV] = os.environ[DSN_ENV] = cluster.dsn()
            _say(opts, f"postgres: {cluster.dsn()} (started in {cluster.startup_seconds:.1f} s)")
        data = config_data(sandbox, opts, run_dir)
        config_path = run_dir / "offboard.yaml"
        config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        config = parse_config(data, str(config_path))
        async with (
            open_runtime(config, base_dir=REPO, clock=clock, worker_id="chaos-harness") as rt,
            aiohttp.ClientSession() as http,
        ):
            playbook = rt.playbook("leaver")
            incident = rt.playbook("incident")

            async def open_for(u: SeededUser) -> None:
                chosen = incident if u.login in incidents else playbook
                await open_case(rt, chosen, u.login, {"source": "chaos"})

            # half the cases before the workers start, the rest while they run
            first = opts.cases // 2
            for u in users[:first]:
                await open_for(u)
            rules = install_faults(sandbox, opts.fault_rate, random.Random(fault_seed))
            workers = Workers(
                count=opts.workers, config=config_path, env=env, run_dir=run_dir, clock=clock
            )
            for slot in range(opts.workers):
                await workers.start(slot)
            for u in users[first:]:
                await open_for(u)
                if u.login not in incidents:
                    await asyncio.sleep(0.01)  # the incidents come in one burst
            operator = Operator(
                runtime=rt,
                sandbox=sandbox,
                users=by_login,
                rng=op_rng,
                eager=opts.eager_operator,
                http=http,
            )
            phase2_kills = opts.kills // 5 if opts.milestones and opts.kills > 1 else 0
            phase1_kills = opts.kills - phase2_kills
            contained_at: float | None = None
            lapsed_at: float | None = None

            async def killer(count: int, mean_gap: float, stop: asyncio.Event) -> None:
                """Kill and restart; a kill under way is never cut short by `stop`."""
                assert workers is not None
                for _ in range(count):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), kill_rng.uniform(0.2, 1.8) * mean_gap)
                    if stop.is_set():
                        return
                    slot = kill_rng.randrange(opts.workers)
                    await workers.kill_and_restart(slot, kill_rng.uniform(0.0, 0.4))

            async def watch(until: Any, label: str) -> bool:
                assert workers is not None
                last_print = 0.0
                while time.monotonic() < deadline:
                    await workers.reap()
                    try:
                        cases = await rt.store.list_cases()
                        await operator.look(cases)
                    except StoreUnavailable:  # --pg-restarts: the harness waits too
                        await asyncio.sleep(0.2)
                        continue
                    statuses = Counter(c.status.value for c in cases)
                    if time.monotonic() - last_print > 5:
                        last_print = time.monotonic()
                        _say(
                            opts,
                            f"  {time.monotonic() - began:6.1f}s {label}: "
                            + " ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
                            + f" | kills {workers.kills}/{opts.kills}",
                        )
                    if await until(cases):
                        return True
                    await asyncio.sleep(0.2)
                return False

            async def all_contained(cases: list[Case]) -> bool:
                final = (CaseStatus.CONTAINED, CaseStatus.ACCESS_LAPSED)
                if not restarts.done():
                    return False
                return len(cases) == opts.cases and all(c.status in final for c in cases)

            stop1, stop2, stop_eager = asyncio.Event(), asyncio.Event(), asyncio.Event()
            eager = (
                asyncio.create_task(operator.eager_poll(stop_eager))
                if opts.eager_operator
                else None
            )
            kills1 = asyncio.create_task(killer(phase1_kills, opts.kill_every, stop1))
            restarts = asyncio.create_task(
                restart_database(cluster, workers, opts, kill_rng, outages, began)
            )
            done = await watch(all_contained, "containing")
            await restarts
            stop_eager.set()
            if eager is not None:
                await eager
            if done:
                contained_at = time.monotonic() - began
                _say(opts, f"  {contained_at:6.1f}s every case contained")
            # kills not done yet (the work was quicker) are left for the next phase
            stop1.set()
            await kills1
            left = opts.kills - workers.kills
            if done and opts.milestones:
                offset_file.write_text(str(CLOCK_JUMP_SECONDS), encoding="utf-8")
                offsets.set(time.time(), CLOCK_JUMP_SECONDS)
                _say(opts, f"  clock moved {CLOCK_JUMP_SECONDS / 3600:.1f} h on; {left} kills left")
                kills2 = asyncio.create_task(killer(left, 0.5, stop2))

                async def all_lapsed(cases: list[Case]) -> bool:
                    if not kills2.done():
                        return False
                    lapsed = all(c.status is CaseStatus.ACCESS_LAPSED for c in cases)
                    return lapsed and await rt.store.next_timer_due() is None

                if await watch(all_lapsed, "lapsing"):
                    lapsed_at = time.monotonic() - began
                    _say(opts, f"  {lapsed_at:6.1f}s every case's access lapsed")
                stop2.set()
                await kills2
            elif done and left:
                await killer(left, 0.5, stop2)
            await operator.drain()
            _say(opts, "  stopping the workers (SIGTERM)")
            await workers.terminate_all()
            stopped_at = time.monotonic() - began

            # -- the evidence
            all_data: list[CaseData] = []
            for case in await rt.store.list_cases():
                all_data.append(
                    CaseData(
                        case=case,
                        user=by_login[case.subject],
                        steps=await rt.store.steps(case.id),
                        events=await rt.store.events(case.id),
                        timers=await rt.store.timers(case.id),
                        task=await rt.store.get_task(case.id, PORTAL_STEP),
                        intents=await rt.store.ledger_intents(case.id),
                    )
                )
            logs = read_logs(workers.all)
            want = CaseStatus.ACCESS_LAPSED if opts.milestones else CaseStatus.CONTAINED
            completion = check_completion(all_data, want)
            if len(all_data) != opts.cases:
                completion.ok = False
                completion.violations.append(f"{len(all_data)} cases in the store")
            report.checks.append(completion)
            report.checks.append(check_emulator_state(sandbox, all_data))
            report.checks.append(check_order(sandbox, all_data))
            mutation_check, mutation_figures = check_mutations_once(sandbox, all_data, operator)
            report.checks.append(mutation_check)
            overlap_check, attempt_figures = step_attempts(all_data, logs, workers, offsets)
            report.checks.append(overlap_check)
            report.checks.append(check_milestones(all_data, logs, expect_all=opts.milestones))
            report.checks.append(check_lost_resumes(operator))
            report.checks.append(check_kills(workers, opts))
            report.checks.append(check_shutdown(workers))
            report.checks.append(check_timeline_complete(all_data))
            lost_check, lost_figures = check_deny_statements_kept(sandbox, shared_sets)
            report.checks.append(lost_check)
            resend_check, resend_figures = check_read_before_resend(sandbox, all_data)
            report.checks.append(resend_check)
            report.checks.append(check_no_intent_left(all_data))
            if opts.pg_restarts:
                report.checks.append(check_database_restarts(opts, outages, workers))
            damaged = await check_corruption_refused(
                run_dir, config_data(sandbox, opts, run_dir), env
            )
            report.checks.append(damaged)
            outcomes = Counter(outcome for _, _, outcome in sandbox.audit.requests)
            requests = sum(outcomes.values())
            report.figures = {
                "seconds_total": round(time.monotonic() - began, 1),
                "seconds_to_contained": None if contained_at is None else round(contained_at, 1),
                "seconds_to_lapsed": None if lapsed_at is None else round(lapsed_at, 1),
                "seconds_to_stopped": round(stopped_at, 1),
                "worker_processes": len(workers.all),
                "kills": workers.kills,
                "kills_while_starting": workers.kills_while_starting,
                "provider_requests": requests,
                "injected": {k: v for k, v in outcomes.items() if k != "ok"},
                "injected_share": round(1 - outcomes.get("ok", 0) / max(1, requests), 3),
                "after_phase_faults_fired": sum(r.fired for r in rules if r.phase == "after"),
                "latency_faults_fired": sum(r.fired for r in rules if r.kind == "latency"),
                "calls_by_endpoint": dict(sorted(sandbox.audit.calls.items())),
                "mutations": mutation_figures,
                "deny_statements": lost_figures,
                "repeated_mutations": resend_figures,
                "attempts": attempt_figures,
                "operator": {
                    "confirmed": len(operator.confirmed_at),
                    "lost_resumes": len(operator.lost_resumes),
                    "errors": operator.errors[:20],
                },
                "step_deferred_events": sum(
                    1 for d in all_data for e in d.events if e.kind == "step_deferred"
                ),
                "provider_call_retry_log_lines": sum(
                    1 for line in logs if line.event == "provider_call_retry"
                ),
                "longest_time_no_step_started": longest_stall(
                    all_data, sandbox, workers, began_clock
                ),
                "database_outages": [o.as_json(all_data, began_clock) for o in outages],
            }
    finally:
        if workers is not None:
            await workers.kill_everything()
            workers.close_files()
        await sandbox.stop()
        if cluster is not None:
            from tests.pg import stop_cluster

            await asyncio.to_thread(stop_cluster, cluster)
    return report


def print_report(report: Report) -> None:
    opts = report.opts
    print()
    for c in report.checks:
        print(f"{c.label}  {c.name}: {c.summary}")
        for v in c.violations[:10]:
            print(f"        - {v}")
        if len(c.violations) > 10:
            print(f"        ... and {len(c.violations) - 10} more")
    f = report.figures
    if f:
        injected = ", ".join(f"{k} {v}" for k, v in sorted(f["injected"].items()))
        print(
            f"INFO  faults: {f['provider_requests']} provider requests, "
            f"{f['injected_share']:.1%} failed by injection ({injected}); "
            f"{f['after_phase_faults_fired']} of them after the change was applied; "
            f"{f['latency_faults_fired']} delayed; {f['step_deferred_events']} steps deferred"
        )
        print(
            f"INFO  timing: contained after {f['seconds_to_contained']} s, lapsed after "
            f"{f['seconds_to_lapsed']} s, total {f['seconds_total']} s; "
            f"{f['worker_processes']} worker processes"
        )
        stall = f.get("longest_time_no_step_started") or {}
        if stall:
            asked = ", ".join(f"{k} {v}" for k, v in stall["provider_requests_during"].items())
            print(
                f"INFO  longest time in which no step started anywhere: {stall['seconds']} s "
                f"from +{stall['from_s']} s ({stall['kills_during']} kills in it, "
                f"{stall['workers_started_just_before_or_during']} workers started within "
                f"10 s before or in it); provider requests meanwhile: {asked or 'none'}"
            )
    print(
        "NOTE  proven from the store and the workers' logs: step attempts of one case never "
        "overlap; an attempt a kill cut short ends, conservatively, when its process died. "
        "Not provable here: which worker made a given provider call (the emulators do not see "
        "the caller), and an attempt whose log line a kill swallowed is bounded only by the "
        "next kill."
    )
    passed = sum(1 for c in report.checks if c.ok)
    failed = [c.name for c in report.checks if not c.ok and not c.warn]
    warned = [c.name for c in report.checks if not c.ok and c.warn]
    verdict = "PASS" if report.ok else "FAIL"
    print(
        f"SUMMARY {verdict}: {passed}/{len(report.checks)} checks passed"
        + (f" (failed: {', '.join(failed)})" if failed else "")
        + (f" (warning: {', '.join(warned)})" if warned else "")
        + f"; backend {opts.backend}, {opts.workers} workers, {opts.cases} cases, "
        f"{f.get('kills', 0) if f else 0} kills, fault rate {opts.fault_rate}, "
        f"{f.get('seconds_total', '?') if f else '?'} s; seed {opts.seed}"
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # An injected connection reset is an exception in the emulator's handler, which
    # aiohttp logs with its traceback: expected here, thousands of times.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with _sigterm_as_interrupt():
        report = asyncio.run(run(opts))
    print_report(report)
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(report.as_json(), indent=2), encoding="utf-8")
    if report.run_dir is not None:
        (report.run_dir / "report.json").write_text(
            json.dumps(report.as_json(), indent=2), encoding="utf-8"
        )
        if report.ok and not opts.keep:
            shutil.rmtree(report.run_dir, ignore_errors=True)
        else:
            print(f"run directory kept: {report.run_dir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
