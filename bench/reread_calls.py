"""Identity Center calls per person over a leaver's first hour: the containment, then the
countdown's re-reads and the watchdog, on a manual clock.

    .venv/bin/python -m bench.reread_calls --people 200

The people are seeded as bench/mass_offboard.py seeds them (bench.emulators: 40 groups,
8 permission sets, each person in 1-3 groups, 30 % with a direct assignment), all
offboarded through playbooks/leaver.yaml by one in-process worker; then the clock moves
a minute at a time through the hour after the disables while the worker fires its
timers (the re-reads every `reread_interval` and at new-sessions-end) and runs its
watchdog. The emulators share the clock and count every request. Rate limits are lifted:
this counts calls, it does not time them (bench/mass_offboard.py does that).

Reported per person: the containment's calls, the re-reads' (everything but the
watchdog's DescribeUser), the watchdog's, and the total over the first hour.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

from bench.emulators import Organisation, login_of
from bench.harness import Result
from worker.cases import open_case
from worker.clock import ManualClock
from worker.config import parse_config
from worker.domain import CaseStatus
from worker.runtime import open_runtime
from worker.sandbox import Sandbox
from worker.worker import Worker

IC_PREFIXES = ("identitystore.", "sso-admin.", "scim.")
#: the watchdog's own reads of the people's status (the re-reads never call them)
WATCHDOG_READS = ("identitystore.DescribeUser", "identitystore.ListUsers")


def identity_center(calls: Counter[str], before: Counter[str] | None = None) -> Counter[str]:
    added = calls - (before or Counter())
    return Counter({k: v for k, v in added.items() if k.startswith(IC_PREFIXES)})


async def measure(people: int, seed: int) -> dict[str, object]:
    clock = ManualClock()
    with tempfile.TemporaryDirectory() as tmp:
        async with Sandbox(clock=clock) as sandbox:
            os.environ.update(sandbox.environment())
            sandbox.okta.rate_limit_per_minute = 10**9  # counted here, not timed
            org = Organisation(sandbox, seed)
            logins = [login_of("leaver", i) for i in range(people)]
            for login in logins:
                org.add_person(login)
            data = sandbox.config_data(sqlite_path=str(Path(tmp) / "offboard.db"))
            data["limits"] = {"identity_center_per_second": 100000, "identity_center_burst": 1000}
            data["playbook_dirs"] = [str(Path(__file__).resolve().parent.parent / "playbooks")]
            config = parse_config(data, "bench")
            async with open_runtime(config, base_dir=Path(tmp), clock=clock) as runtime:
                playbook = runtime.playbook("leaver")
                for login in logins:
                    await open_case(runtime, playbook, login, {})
                worker = Worker(runtime)
                worker.concurrency = 50
                # the watchdog passes are made below, every 5 min of the manual clock
                worker.watchdog_interval = timedelta(days=365)
                while len(await runtime.store.list_cases((CaseStatus.WAITING,))) < people:
                    await worker.tick()
                    await asyncio.sleep(0.01)
                await worker.join()
                contained = identity_center(Counter(sandbox.audit.calls))
                before = Counter(sandbox.audit.calls)
                end = clock.now() + timedelta(hours=1, minutes=1)
                watchdog = timedelta(minutes=5)
                last_watch = clock.now()
                while clock.now() < end:
                    clock.advance(timedelta(minutes=1))
                    await worker.tick()
                    await worker.settle()
                    if clock.now() - last_watch >= watchdog:
                        await worker.watchdog_pass()
                        last_watch = clock.now()
                hour = identity_center(Counter(sandbox.audit.calls), before)
    watchdog_calls = sum(hour.pop(read, 0) for read in WATCHDOG_READS)

    def per(n: int) -> float:
        return round(n / people, 2)

    return {
        "containment_per_person": per(sum(contained.values())),
        "rereads_per_person_first_hour": per(sum(hour.values())),
        "watchdog_per_person_first_hour": per(watchdog_calls),
        "total_per_person_first_hour": per(
            sum(contained.values()) + sum(hour.values()) + watchdog_calls
        ),
        "containment_by_endpoint": dict(sorted(contained.items())),
        "rereads_by_endpoint": dict(sorted(hour.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", help="also write the JSON result here")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.people, args.seed))
    result = Result(
        bench="reread_calls",
        parameters={"people": args.people, "seed": args.seed},
        figures=figures,
        targets={
            "total_le_6.5_per_person": float(str(figures["total_per_person_first_hour"])) <= 6.5
        },
    )
    result.emit(args.output)


if __name__ == "__main__":
    main()
