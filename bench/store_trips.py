"""Store trips on the hot path: how many statements go to aiosqlite's thread between a
case's commit and its IdP deactivation request, and which.

    .venv/bin/python -m bench.store_trips

Each trip waits for a thread switch (and on a busy machine for the thread to be
scheduled), so on an idle worker they are most of the overhead that bench/overhead.py
times. One in-process worker and the in-process emulators (no added latency); each of
`--cases` leavers is opened, the worker's round is started, and every statement sent
before the request is listed, up to the side-effect ledger's intent, the last one
before it (counted by wrapping aiosqlite's `Connection._execute`, the one door to its
thread).

Seven today: the claim, the loop's next claim (0 rows), the steps, the round's timer
check, two one-trip writes (`SqliteConnector._write_in_one_trip`: BEGIN IMMEDIATE,
the steps' UPDATEs and their events, COMMIT) -- resolve started; resolve done with
idp-deactivate started (`Store.finish_and_start`) -- then the ledger's intent, which
is also its read (`Ledger.mutate` given a fresh read short of the goal). Fourteen
before issue 16 (a trip per statement, the ledger read and intent apart), eight
before a step's finish carried the next one's start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite.core

from bench.harness import Result
from worker.cases import open_case
from worker.config import parse_config
from worker.runtime import open_runtime
from worker.sandbox import Sandbox
from worker.worker import Worker

DEACTIVATE = "okta.deactivate"
LEDGER_INTENT = "INSERT INTO side_effects"


async def measure(cases: int) -> dict[str, Any]:
    sent: list[tuple[float, str]] = []
    original = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str):
            statement = args[0]
        else:  # a write of several statements in one trip (SqliteConnector._write_in_one_trip)
            statement = getattr(fn, "__qualname__", "")
        sent.append((time.perf_counter(), " ".join(statement.split())[:70]))
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]
    trips: list[int] = []
    listing: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with Sandbox() as sandbox:
                os.environ.update(sandbox.environment())
                logins = [f"trips{i}@example.com" for i in range(cases)]
                for login in logins:
                    sandbox.seed_leaver(login)
                data = sandbox.config_data(sqlite_path=str(Path(tmp) / "offboard.db"))
                data["playbook_dirs"] = [str(Path(__file__).resolve().parent.parent / "playbooks")]
                async with open_runtime(parse_config(data, "bench"), base_dir=Path(tmp)) as rt:
                    worker = Worker(rt)
                    for login in logins:
                        await open_case(rt, rt.playbook("leaver"), login, {})
                        done = sandbox.audit.calls.get(DEACTIVATE, 0)
                        sent.clear()
                        round_ = asyncio.create_task(worker.tick())
                        # the audit log has no event to wait on
                        while sandbox.audit.calls.get(DEACTIVATE, 0) == done:  # noqa: ASYNC110
                            await asyncio.sleep(0.0002)
                        arrived = time.perf_counter()
                        before = [statement for at, statement in sent if at <= arrived]
                        # the ledger's intent is the last statement before the request
                        # (what this loop saw after it happened on the way back)
                        intent = next(
                            i for i, s in enumerate(before) if s.startswith(LEDGER_INTENT)
                        )
                        before = before[: intent + 1]
                        trips.append(len(before))
                        listing = before
                        await round_
                        await worker.join()
    finally:
        aiosqlite.core.Connection._execute = original  # type: ignore[method-assign]
    return {"trips_per_case": trips, "last_case_statements": listing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--output", help="also write the JSON result here")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.cases))
    Result(bench="store_trips", parameters={"cases": args.cases}, figures=figures).emit(args.output)


if __name__ == "__main__":
    main()
