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

from worker.actions import ACTIONS, Role
from worker.admission import Instruction, Outcome
from worker.cases import confirm_task, drive_case, remove_deny_statements, retry_case
from worker.clock import Clock, OffsetClock, SystemClock, parse_iso, utc_iso
from worker.config import Config, load_config
from worker.domain import CaseStatus, canonical_subject, subject_key
from worker.errors import NotFound, OffboardError
from worker.logging import configure_logging
from worker.playbook import find_playbook, load_playbook, operator_tasks_note
from worker.report import (
    case_header,
    countdown_text,
    plan_mark,
    remaining,
    step_table,
    task_text,
    timeline,
)
from worker.runtime import STARTUP_STORE_WAIT_SECONDS, Runtime, open_runtime

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
        "WARNING for bulk on a terminal, where the progress line is the output)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a playbook for one person")
    run.add_argument("playbook", help="playbook name (leaver, incident) or path to a YAML file")
    run.add_argument("--user", required=True, help="the person's login (email)")
    run.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")

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
    commands.add_parser("cases", help="open cases with their next countdown milestone")
    commands.add_parser(
        "worker", help="run cases, fire countdown milestones and watch for drift until stopped"
    )
    commands.add_parser("cleanup", help="remove deny statements of cases whose access has lapsed")
    commands.add_parser("demo", help="run the leaver playbook against the sandbox emulators")
    sandbox = commands.add_parser(
        "sandbox", help="run the Okta and Identity Center emulators on loopback until stopped"
    )
    sandbox.add_argument("--okta-port", type=int, default=18080)
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
    quiet = args.command == "bulk" and sys.stderr.isatty()
    configure_logging(level=(args.log_level or ("WARNING" if quiet else "INFO")).upper())
    try:
        return asyncio.run(_dispatch(args))
    except NotFound as exc:
        print(f"offboard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OffboardError as exc:
        print(f"offboard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    base_dir = Path.cwd()
    if args.command == "demo":
        from worker.demo import run_demo

        return await run_demo(sys.stdout, base_dir=_project_dir())
    if args.command == "sandbox":
        from worker.sandbox.run import run_sandbox

        return await run_sandbox(
            okta_port=args.okta_port,
            identity_center_port=args.identity_center_port,
            seed=args.seed or ["alice@example.com", "bob@example.com"],
            env_file=Path(args.env_file),
        )
    if args.command == "check":
        for name in args.playbooks:
            playbook = load_playbook(find_playbook(name, [base_dir / "playbooks"]))
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
            return await _print_cases(runtime)
        if args.command == "evidence":
            return await _evidence(runtime, args)
        if args.command == "cleanup":
            return await _cleanup(runtime)
        if args.command == "run":
            return await _run(runtime, args)
        if args.command == "status":
            if args.case:
                return await _print_case(runtime, args.case)
            for case in await runtime.store.list_cases():
                print(case_header(case))
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
    """Open the person's case (or resume the open one) and drive it."""
    playbook = runtime.playbook(args.playbook)
    trigger = {"source": "cli", "by": getpass.getuser()}
    admitted = await runtime.admissions().admit(
        Instruction(playbook=playbook, subject=args.user, trigger=trigger)
    )
    if admitted.outcome is Outcome.PROTECTED:
        print(f"offboard: {admitted.detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    case = admitted.case
    assert case is not None  # an unkeyed termination admitted has its case
    verb = "opened" if admitted.created else "resuming"
    print(f"{verb} case {case.id} ({playbook.name}, {case.subject})")
    await drive_case(runtime, case.id)
    return await _print_case(runtime, case.id)


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
    load_playbook(find_playbook(args.playbook, [base_dir / d for d in config.playbook_dirs]))
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
    print(case_header(case))
    print(step_table(await store.steps(case_id)))
    for task in await store.open_tasks():
        if task.case_id == case_id:
            print(task_text(task))
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
    """The plan, built without opening the store or calling anything."""
    import aiohttp

    from worker.providers import identity_provider
    from worker.providers.identity_center import AwsIdentityCenter

    dirs = [base_dir / d for d in config.playbook_dirs]
    playbook = load_playbook(find_playbook(args.playbook, dirs))
    # the same canonical subject admission would make (InvalidSubject: exit 2)
    subject = subject_key(canonical_subject(args.user))
    async with aiohttp.ClientSession() as http:
        idp = identity_provider(config.idp, http, config.limits.limits(), SystemClock())
        ic = AwsIdentityCenter(config.identity_center, http)
        print(f"dry run: playbook {playbook.name} ({playbook.source}) for {args.user}")
        print("nothing is read or changed; the calls each step would make:")
        for number, step in enumerate(playbook.steps, start=1):
            provider = idp if ACTIONS[step.action].role is Role.IDP else ic
            print(f"{number}. {step.id}: {step.action} (verify: {step.verify}){plan_mark(step)}")
            for call in provider.plan(step.action, subject):
                kind = "WRITE" if call.mutates else "read "
                print(f"     {kind} {call.method} {call.target}")
    return EXIT_OK


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


async def _print_cases(runtime: Runtime) -> int:
    now = runtime.clock.now()
    open_cases = [
        c for c in await runtime.store.list_cases() if c.status is not CaseStatus.ACCESS_LAPSED
    ]
    print(f"{'case':<20} {'status':<10} {'playbook':<10} {'subject':<28} next milestone")
    for case in open_cases:
        upcoming = [
            m for m in (case.countdown or {}).get("milestones", []) if parse_iso(m["at"]) > now
        ]
        nxt = "all passed" if case.countdown else "-"
        if upcoming:
            first = upcoming[0]
            nxt = f"{first['name']} at {first['at']} ({remaining(parse_iso(first['at']), now)})"
        print(f"{case.id:<20} {case.status.value:<10} {case.playbook:<10} {case.subject:<28} {nxt}")
    return EXIT_OK


def _clock() -> Clock:
    """The system clock; acceptance tests may shift it through a file they control."""
    offset_file = os.environ.get("OFFBOARD_TEST_CLOCK_OFFSET_FILE")
    return OffsetClock(offset_file) if offset_file else SystemClock()


def _project_dir() -> Path:
    """Where playbooks/ lives: the working directory if it has one, else the source tree."""
    if (Path.cwd() / "playbooks").is_dir():
        return Path.cwd()
    return Path(__file__).resolve().parent.parent


if __name__ == "__main__":
    sys.exit(main())
