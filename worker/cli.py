"""The `offboard` command.

Exit codes: 0 done (or contained), 1 halted or failed, 2 bad input or configuration,
3 waiting for an operator.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.admission import Instruction, Outcome, protected_detail, protected_pattern
from worker.bundled import playbooks_dir, write_starter
from worker.cases import confirm_task, drive_case, remove_deny_statements, retry_case
from worker.clock import Clock, OffsetClock, SystemClock, parse_iso, utc_iso
from worker.config import Config, load_config
from worker.domain import CaseStatus, canonical_subject, subject_key
from worker.errors import CaseStarted, ConfigError, OffboardError
from worker.logging import configure_logging
from worker.playbook import find_playbook, gates_later_steps, load_playbook, operator_tasks_note
from worker.report import (
    case_header,
    countdown_text,
    remaining,
    scheduled_text,
    step_table,
    task_text,
    timeline,
)
from worker.runtime import STARTUP_STORE_WAIT_SECONDS, Runtime, open_runtime, playbook_search

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WAITING = 0, 1, 2, 3
DEFAULT_CONFIG = "config/offboard.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offboard",
        description="Offboard a person: IdP first, then Identity Center, then portal sessions.",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("OFFBOARD_CONFIG", DEFAULT_CONFIG),
        help=f"configuration file (default: $OFFBOARD_CONFIG or {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("OFFBOARD_LOG_LEVEL"),
        help="DEBUG, INFO, WARNING... (default: $OFFBOARD_LOG_LEVEL or INFO; "
        "WARNING for bulk and demo on a terminal, where their own output says it)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a playbook for one person")
    run.add_argument("playbook", help="playbook name (leaver, incident) or path to a YAML file")
    run.add_argument("--user", required=True, help="the person's login (email)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the person and show their state, the plan and the countdown with reads "
        "only; change nothing (read-only credentials suffice)",
    )
    run.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    run.add_argument(
        "--new",
        action="store_true",
        help="open a new case even though the person's case is contained (needs --reason)",
    )
    run.add_argument("--reason", default=None, help="why --new: recorded with the new case")

    cancel = commands.add_parser(
        "cancel", help="cancel a case that has not begun containment (nothing has run yet)"
    )
    cancel.add_argument("case")
    cancel.add_argument("--reason", required=True, help="why: recorded on the case")
    cancel.add_argument("--by", default=None, help="who cancels (default: your user name)")

    status = commands.add_parser("status", help="show one case, or all cases")
    status.add_argument("case", nargs="?")

    confirm = commands.add_parser("confirm", help="confirm an operator task and resume the case")
    confirm.add_argument("case")
    confirm.add_argument("step", help="the step id, e.g. portal-sessions")
    confirm.add_argument("--by", default=None, help="who confirms (default: your user name)")
    confirm.add_argument(
        "--no-resume", action="store_true", help="record only; let a worker resume"
    )

    retry = commands.add_parser("retry", help="run a halted case again from its failed step")
    retry.add_argument("case")
    retry.add_argument("--by", default=None, help="who decided to retry (default: your user name)")

    evidence = commands.add_parser(
        "evidence",
        help="export a case's hash-chained evidence for an auditor, or verify the chains",
    )
    evidence.add_argument("case", nargs="?", help="the case (with --verify: omit for all)")
    evidence.add_argument("--format", choices=("json", "csv"), default="json")
    evidence.add_argument("--output", default=None, help="write to this file, not stdout")
    evidence.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain of CASE, or of every case; exit 1 if one is broken",
    )

    check = commands.add_parser("check", help="validate playbook files")
    check.add_argument("playbooks", nargs="+")

    config = commands.add_parser("config", help="check a configuration file, or print its schema")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_check = config_commands.add_parser(
        "check",
        help="validate a configuration, resolve its secrets and paths; every problem at once",
    )
    config_check.add_argument("file", nargs="?", help="the file (default: --config)")
    config_commands.add_parser("schema", help="print the configuration's JSON Schema")

    bulk = commands.add_parser(
        "bulk", help="offboard everyone in a CSV file (email[,reason,effective_at,employee_id])"
    )
    bulk.add_argument("file", help="CSV with a header row; 'email' is required")
    bulk.add_argument("--playbook", required=True, help="playbook name or path, e.g. leaver")
    bulk.add_argument(
        "--skip-invalid", action="store_true", help="skip bad rows (reported) instead of stopping"
    )
    bulk.add_argument(
        "--enqueue-only",
        action="store_true",
        help="run no worker here: other workers (offboard serve/worker) run the cases; watch them",
    )
    bulk.add_argument(
        "--no-wait", action="store_true", help="exit once enqueued (implies --enqueue-only)"
    )
    bulk.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, print a progress line this often (default 10)",
    )
    bulk.add_argument("--by", default=None, help="who runs it (default: your user name)")

    serve = commands.add_parser(
        "serve", help="take webhooks and API calls, and run the worker, until SIGTERM"
    )
    serve.add_argument("--host", default=None, help="override server.host")
    serve.add_argument("--port", type=int, default=None, help="override server.port")
    cases = commands.add_parser(
        "cases",
        help="open cases (not cancelled, access not yet lapsed) with their next milestone "
        "or, if scheduled, when they run",
    )
    cases.add_argument(
        "--all", action="store_true", help="every case, cancelled and lapsed ones included"
    )
    commands.add_parser(
        "worker", help="run cases, fire countdown milestones and watch for drift until stopped"
    )
    commands.add_parser("cleanup", help="remove deny statements of cases whose access has lapsed")
    commands.add_parser(
        "demo",
        help="run the leaver and incident playbooks against the sandbox emulators",
    )
    init = commands.add_parser(
        "init",
        help="write a commented configuration (offboard.yaml) and a playbooks folder to start from",
    )
    init.add_argument("dir", nargs="?", default=".", help="where (default: here)")
    sandbox = commands.add_parser(
        "sandbox",
        help="run the emulators of an identity provider and Identity Center on loopback "
        "until stopped",
    )
    sandbox.add_argument(
        "--idp",
        choices=("okta", "entra", "google"),
        default="okta",
        help="the identity provider people are seeded in (default okta); its configuration: "
        "config/sandbox.yaml, config/sandbox-entra.yaml, config/sandbox-google.yaml",
    )
    sandbox.add_argument("--idp-port", "--okta-port", dest="idp_port", type=int, default=18080)
    sandbox.add_argument("--identity-center-port", type=int, default=18081)
    sandbox.add_argument(
        "--seed", action="append", default=None, help="a person to seed (repeatable)"
    )
    sandbox.add_argument(
        "--env-file", default="var/sandbox.env", help="where to write the sandbox's secrets"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # on a terminal, bulk's progress line and the demo's tables are the output
    quiet = args.command in ("bulk", "demo") and sys.stderr.isatty()
    configure_logging(level=(args.log_level or ("WARNING" if quiet else "INFO")).upper())
    try:
        code = asyncio.run(_dispatch(args))
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # as a filter does: stop quietly; stdout to /dev/null so the exit's flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OffboardError as exc:
        print(f"offboard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    base_dir = Path.cwd()
    if args.command == "demo":
        from worker.demo import run_demo

        return await run_demo(sys.stdout, base_dir=base_dir)
    if args.command == "sandbox":
        from worker.sandbox.run import run_sandbox

        return await run_sandbox(
            idp=args.idp,
            idp_port=args.idp_port,
            identity_center_port=args.identity_center_port,
            seed=args.seed or ["alice@example.com", "bob@example.com"],
            env_file=Path(args.env_file),
        )
    if args.command == "init":
        return _init(Path(args.dir))
    if args.command == "check":
        for name in args.playbooks:
            playbook = load_playbook(find_playbook(name, [base_dir / "playbooks", playbooks_dir()]))
            note = operator_tasks_note(playbook)
            print(
                f"{playbook.source}: ok ({len(playbook.steps)} steps, order holds)"
                + (f"; {note}" if note else "")
            )
        return EXIT_OK
    if args.command == "config":
        return _config_command(args, base_dir)
    config = load_config(Path(args.config))
    if args.command == "bulk":
        return await _bulk(config, args, base_dir)
    if args.command == "run" and args.json and not args.dry_run:
        print("offboard: --json goes with --dry-run", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "run" and args.new and not (args.reason or "").strip():
        print(
            "offboard: run --new needs --reason: why another case for this person", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    if args.command == "cancel" and not args.reason.strip():
        print("offboard: cancel needs a --reason that says why", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "run" and args.dry_run:
        return await _dry_run(config, args, base_dir)
    # the long-running commands ride out a database restart at start too
    wait = STARTUP_STORE_WAIT_SECONDS if args.command in ("worker", "serve") else 0.0
    async with open_runtime(
        config, base_dir=base_dir, clock=_clock(), wait_for_store=wait
    ) as runtime:
        if args.command == "worker":
            return await _run_worker(runtime)
        if args.command == "serve":
            return await _serve(runtime, args.host, args.port)
        if args.command == "cases":
            return await _print_cases(runtime, every=args.all)
        if args.command == "evidence":
            return await _evidence(runtime, args)
        if args.command == "cleanup":
            return await _cleanup(runtime)
        if args.command == "run":
            return await _run(runtime, args)
        if args.command == "cancel":
            return await _cancel(runtime, args)
        if args.command == "status":
            if args.case:
                return await _print_case(runtime, args.case)
            now = runtime.clock.now()
            for case in await runtime.store.list_cases():
                print(case_header(case, now))
            return EXIT_OK
        if args.command == "confirm":
            by = args.by or getpass.getuser()
            confirmation = await confirm_task(runtime, args.case, args.step, by)
            print(confirmation.message)
            if confirmation.already:
                return EXIT_OK  # nothing recorded, nothing resumed: the first one stands
            if args.no_resume:
                await _print_case(runtime, args.case)
                return EXIT_OK  # the confirmation is recorded; the case runs later
            await drive_case(runtime, args.case)
            return await _print_case(runtime, args.case)
        if args.command == "retry":
            await retry_case(runtime, args.case, args.by or getpass.getuser())
            await drive_case(runtime, args.case)
            return await _print_case(runtime, args.case)
    raise AssertionError(args.command)


async def _run(runtime: Runtime, args: argparse.Namespace) -> int:
    """Open the person's case, or join (escalate, attach to) their open one, and drive it.
    A contained case is answered with its countdown, not started again."""
    playbook = runtime.playbook(args.playbook)
    trigger = {"source": "cli", "by": getpass.getuser()}
    new_reason = args.reason.strip() if args.new else None
    admitted = await runtime.admissions().admit(
        Instruction(playbook=playbook, subject=args.user, trigger=trigger, new_reason=new_reason)
    )
    if admitted.outcome is Outcome.PROTECTED:
        print(f"offboard: {admitted.detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    case = admitted.case
    assert case is not None  # an unkeyed termination admitted has its case
    print(f"{RUN_VERBS[admitted.outcome]} case {case.id} ({case.playbook}, {case.subject})")
    if admitted.outcome is Outcome.CONTAINED:
        # nothing to start: the case and its countdown (--new --reason opens another)
        await _print_case(runtime, case.id)
        return EXIT_OK
    if admitted.outcome is Outcome.ATTACHED:
        print(
            f"the case is halted: {case.halt_reason}; fix the cause, then: offboard retry {case.id}"
        )
        return await _print_case(runtime, case.id)
    await drive_case(runtime, case.id)
    return await _print_case(runtime, case.id)


#: what `offboard run` says it did, by outcome (the one mapping for the CLI)
RUN_VERBS = {
    Outcome.CREATED: "opened",
    Outcome.EXISTING: "resuming",
    Outcome.RESCHEDULED: "resuming",
    Outcome.ESCALATED: "escalated",
    Outcome.ATTACHED: "attached to halted",
    Outcome.CONTAINED: "already contained:",
}


async def _cancel(runtime: Runtime, args: argparse.Namespace) -> int:
    """Withdraw a case before containment began; a started one is refused (exit 1)."""
    by = args.by or getpass.getuser()
    try:
        case = await runtime.store.cancel_case(
            args.case, runtime.clock.now(), f"cancelled by {by}: {args.reason.strip()}"
        )
    except CaseStarted as exc:
        print(f"offboard: not cancelled: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"cancelled case {case.id} ({case.playbook}, {case.subject}): {case.halt_reason}")
    return EXIT_OK


def _init(directory: Path) -> int:
    written = write_starter(directory)
    print(f"wrote {written.config} (commented: fill in your IdP, Identity Center and store)")
    print(f"wrote {directory / 'playbooks'}/: {', '.join(p.name for p in written.playbooks)}")
    print("next:")
    print(f"  offboard config check {written.config}   # names each setting and secret missing")
    print(f"  offboard --config {written.config} run leaver --user someone@example.com --dry-run")
    return EXIT_OK


def _config_command(args: argparse.Namespace, base_dir: Path) -> int:
    from worker.config import config_json_schema
    from worker.configcheck import check_config, summary

    if args.config_command == "schema":
        print(json.dumps(config_json_schema(), indent=2))
        return EXIT_OK
    report = check_config(Path(args.file or args.config), base_dir=base_dir)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if report.problems:
        print(f"offboard: {report.source}: {len(report.problems)} problem(s)", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(summary(report)))
    return EXIT_OK


async def _bulk(config: Config, args: argparse.Namespace, base_dir: Path) -> int:
    """Validate the whole file, then enqueue, then watch (and run) until settled."""
    from worker import bulk

    path = Path(args.file)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise OffboardError(f"{path}: cannot read: {exc.strerror}") from None
    parsed = bulk.parse_bulk_csv(data, protected=config.protected_identities)
    for problem in parsed.problems:
        print(f"{path}:{problem.line}: {problem.message}", file=sys.stderr)
    if parsed.unusable or (parsed.problems and not args.skip_invalid):
        hint = "" if parsed.unusable else " (fix them, or --skip-invalid)"
        print(f"offboard: {path}: nothing enqueued{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not parsed.rows:
        print(f"offboard: {path}: no valid row to enqueue", file=sys.stderr)
        return EXIT_BAD_INPUT
    # before the store is opened: a missing playbook changes nothing either
    load_playbook(find_playbook(args.playbook, playbook_search(config, base_dir)))
    # the long-running commands ride out a database restart at start too
    wait = STARTUP_STORE_WAIT_SECONDS if args.command in ("worker", "serve") else 0.0
    async with open_runtime(
        config, base_dir=base_dir, clock=_clock(), wait_for_store=wait
    ) as runtime:
        playbook = runtime.playbook(args.playbook)
        entries = await bulk.enqueue(
            runtime, playbook, parsed.rows, file=str(path), by=args.by or getpass.getuser()
        )
        new = sum(1 for e in entries if e.outcome == "created")
        print(
            f"{path}: {len(entries)} rows enqueued ({new} new cases, "
            f"{len(parsed.problems)} problem(s) skipped)",
            flush=True,
        )
        if args.no_wait:
            return EXIT_OK
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        progress = bulk.Progress(sys.stderr, total=len(entries), plain_every=args.progress_every)
        snap = await bulk.run(
            runtime, entries, progress, run_worker=not args.enqueue_only, stop=stop
        )
        tasks = await runtime.store.open_tasks()
    skipped = len({p.line for p in parsed.problems})
    print(bulk.summary_text(entries, snap, tasks, playbook=playbook.name, skipped=skipped))
    counts = snap.counts
    if counts["in_progress"]:
        print(
            f"offboard: stopped with {counts['in_progress']} case(s) not settled; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if counts["halted"]:
        return EXIT_FAILED
    return EXIT_WAITING if counts["waiting"] else EXIT_OK


async def _print_case(runtime: Runtime, case_id: str) -> int:
    store = runtime.store
    case = await store.get_case(case_id)
    print(case_header(case, runtime.clock.now()))
    steps = await store.steps(case_id)
    print(step_table(steps))
    actions = {s.step_id: s.action for s in steps}
    for task in await store.open_tasks():
        if task.case_id == case_id:
            print(task_text(task, gates=gates_later_steps(actions[task.step_id])))
    print(countdown_text(case.countdown, runtime.clock.now()))
    print("timeline:")
    print(timeline(await store.events(case_id)))
    return {
        CaseStatus.CONTAINED: EXIT_OK,
        CaseStatus.ACCESS_LAPSED: EXIT_OK,
        CaseStatus.WAITING: EXIT_WAITING,
        CaseStatus.HALTED: EXIT_FAILED,
    }.get(case.status, EXIT_FAILED)


async def _evidence(runtime: Runtime, args: argparse.Namespace) -> int:
    """`--verify`: the problems found, exit 1 if any. Otherwise the export of CASE, to
    stdout or --output; exit 1 (after writing it) if its chain does not verify."""
    from worker.evidence import export, verify

    if args.verify:
        problems = await verify(runtime.store, args.case)
        for problem in problems:
            print(problem)
        if not problems:
            print(f"evidence of {f'case {args.case}' if args.case else 'every case'} verifies")
        return EXIT_FAILED if problems else EXIT_OK
    if args.case is None:
        print("offboard: evidence needs a CASE to export (or --verify)", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = await export(runtime.store, args.case, args.format, exported_at=runtime.clock.now())
    if args.output:
        # newline="": a CSV export keeps its \r\n row ends as they are
        await asyncio.to_thread(Path(args.output).write_text, text, "utf-8", newline="")
    else:
        sys.stdout.write(text)
    problems = await verify(runtime.store, args.case)
    for problem in problems:
        print(f"offboard: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


async def _dry_run(config: Config, args: argparse.Namespace, base_dir: Path) -> int:
    """Resolve the person and read what they reach, without opening the store or
    calling any mutating API (worker/dryrun.py)."""
    import aiohttp

    from worker.dryrun import dry_run
    from worker.providers import identity_provider
    from worker.providers.identity_center import AwsIdentityCenter

    playbook = load_playbook(find_playbook(args.playbook, playbook_search(config, base_dir)))
    # refused as the run would be (look-alikes folded), and as unechoed
    if (pattern := protected_pattern(args.user, config.protected_identities)) is not None:
        print(f"offboard: {protected_detail(pattern)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # the same canonical subject admission would make (InvalidSubject: exit 2)
    subject = subject_key(canonical_subject(args.user))
    clock = SystemClock()
    limits = config.limits.limits()
    ic_config = config.identity_center
    if ic_config.scim is not None:
        try:
            ic_config.scim.token.resolve("identity_center.scim.token")
        except ConfigError as exc:
            # the SCIM token only writes: a dry run with read-only credentials needs none
            print(f"note: {exc}: not needed for a dry run, which never writes")
            ic_config = ic_config.model_copy(update={"scim": None})
    async with aiohttp.ClientSession() as http:
        idp = identity_provider(config.idp, http, limits, clock)
        async with AwsIdentityCenter(ic_config, http, limits["identity-center"]) as ic:
            result = await dry_run(
                playbook,
                subject,
                idp=idp,
                ic=ic,
                policy=config.retry.policy(),
                clock=clock,
                sessions=config.countdown.settings(),
            )
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(result.text())
    return EXIT_FAILED if result.halts else EXIT_OK


async def _cleanup(runtime: Runtime) -> int:
    """Say per case what was taken off and what stays, and until when."""
    results = await remove_deny_statements(runtime)
    for r in results:
        if r.kept:
            until = utc_iso(r.kept_until) if r.kept_until else "its countdown is known"
            print(
                f"{r.case_id}: deny statement kept on {len(r.kept)} permission set(s) until "
                f"at least {until} ({r.reason}): " + ", ".join(r.kept)
            )
        else:
            print(
                f"{r.case_id}: deny statement removed from {len(r.removed)} permission set(s)"
                + (": " + ", ".join(r.removed) if r.removed else "")
            )
    if not results:
        print("no deny statement to remove or keep")
    return EXIT_OK


async def _run_worker(runtime: Runtime) -> int:
    from worker.worker import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Worker(runtime).run(stop)
    return EXIT_OK


async def _serve(runtime: Runtime, host: str | None, port: int | None) -> int:
    from aiohttp import web

    from worker.web.app import build_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(build_app(runtime), access_log=None, shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(
        runner,
        host or runtime.config.server.host,
        port if port is not None else runtime.config.server.port,
    )
    await site.start()
    # the real address, also when port 0 asked for any free one
    address = runner.addresses[0]
    print(f"offboard serving on http://{address[0]}:{address[1]}", flush=True)
    await stop.wait()
    await runner.cleanup()  # stops taking requests, then drains the worker
    return EXIT_OK


#: what `offboard cases` leaves out unless --all: nothing more happens to these
_CLOSED = (CaseStatus.ACCESS_LAPSED, CaseStatus.CANCELLED)


async def _print_cases(runtime: Runtime, *, every: bool) -> int:
    now = runtime.clock.now()
    listed = [c for c in await runtime.store.list_cases() if every or c.status not in _CLOSED]
    print(f"{'case':<20} {'status':<13} {'playbook':<10} {'subject':<28} next")
    for case in listed:
        upcoming = [
            m for m in (case.countdown or {}).get("milestones", []) if parse_iso(m["at"]) > now
        ]
        nxt = "all passed" if case.countdown else scheduled_text(case, now) or "-"
        if upcoming:
            first = upcoming[0]
            nxt = f"{first['name']} at {first['at']} ({remaining(parse_iso(first['at']), now)})"
        print(f"{case.id:<20} {case.status.value:<13} {case.playbook:<10} {case.subject:<28} {nxt}")
    return EXIT_OK


def _clock() -> Clock:
    """The system clock; acceptance tests may shift it through a file they control."""
    offset_file = os.environ.get("OFFBOARD_TEST_CLOCK_OFFSET_FILE")
    return OffsetClock(offset_file) if offset_file else SystemClock()


if __name__ == "__main__":
    sys.exit(main())
