"""The sandbox emulators in a process of their own, set up the way the benchmarks need:
realistic latency, the providers' real rate limits, and an organisation of N people.

    python -m bench.emulators --people 1000 --latency 0.05 --scale 1 --ready-file R.json

Running them in their own process keeps their CPU off the worker's measurements.
When ready it writes R.json: the worker configuration pointing at them (secrets by
env reference), the environment holding those secrets, and the control URL. The
control app answers `GET /stats`: calls and throttled responses per endpoint, and
the time of every applied mutation (for latency measurements); `POST /seed` adds
people while running.

Limits (multiplied by --scale):
- Identity Center: 20 TPS collective over identitystore, sso-admin and SCIM, as AWS
  documents it (a token bucket holding one second of requests);
- Okta: the emulator's per-endpoint budgets (Okta's documented defaults,
  `worker.sandbox.okta.RATE_LIMITS`) in fixed one-minute windows, each with its own
  X-Rate-Limit-* headers, and 75 requests in flight per org.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from worker.sandbox import Sandbox
from worker.sandbox.common import FaultRule, ServiceLimit, serve_on_loopback
from worker.sandbox.okta import CONCURRENCY_LIMIT, RATE_LIMITS

IC_TPS = 20.0
#: a realistic organisation: few permission sets, many groups, people in a handful
PERMISSION_SETS = (
    ("AdministratorAccess", "PT12H"),
    ("PowerUserAccess", "PT8H"),
    ("ReadOnlyAccess", "PT4H"),
    ("Billing", "PT1H"),
    ("DataScientist", "PT8H"),
    ("SecurityAudit", "PT4H"),
    ("DatabaseAdmin", "PT2H"),
    ("SupportUser", "PT1H"),
)
GROUPS = 40
ACCOUNTS = ("111122223333", "444455556666", "777788889999", "123456789012")


def login_of(kind: str, i: int) -> str:
    return f"{kind}{i:05d}@example.com"


class Organisation:
    """Seeds people into the emulators: each in 1-3 groups, some with a direct
    assignment, signed in to Okta and the AWS access portal."""

    def __init__(self, sandbox: Sandbox, seed: int) -> None:
        self.sandbox = sandbox
        self.rng = random.Random(seed)
        ic = sandbox.identity_center
        self.permission_sets = [
            ic.add_permission_set(name, session_duration=duration)
            for name, duration in PERMISSION_SETS
        ]
        self.groups = [ic.add_group(f"team-{g:02d}") for g in range(GROUPS)]
        for g, group in enumerate(self.groups):
            ic.add_account_assignment(
                account_id=ACCOUNTS[g % len(ACCOUNTS)],
                permission_set_arn=self.permission_sets[g % len(self.permission_sets)],
                principal_type="GROUP",
                principal_id=group,
            )

    def add_person(self, login: str) -> int:
        """Seed one person; the number of groups they are in."""
        sandbox, ic, rng = self.sandbox, self.sandbox.identity_center, self.rng
        first = login.partition("@")[0]
        sandbox.okta.add_user(login, first_name=first.capitalize(), last_name="Leaver", sessions=2)
        user_id = ic.add_user(login, display_name=first.capitalize(), email=login)
        groups = rng.sample(self.groups, rng.randint(1, 3))
        for group in groups:
            ic.add_membership(group, user_id)
        if rng.random() < 0.3:
            ic.add_account_assignment(
                account_id=rng.choice(ACCOUNTS),
                permission_set_arn=rng.choice(self.permission_sets),
                principal_type="USER",
                principal_id=user_id,
            )
        ic.open_portal_session(user_id)
        return len(groups)


def limit_sandbox(sandbox: Sandbox, *, latency: float, scale: float) -> None:
    if latency > 0:
        sandbox.faults.add(FaultRule(endpoint="*", kind="latency", rate=1.0, delay=latency))
    tps = IC_TPS * scale
    sandbox.faults.limit(
        ServiceLimit(
            endpoints=("identitystore.*", "sso-admin.*", "scim.*"),
            per_second=tps,
            burst=tps,
            retry_after=1.0,
        )
    )
    sandbox.okta.rate_limits = {k: int(v * scale) for k, v in okta_rate_limits().items()}
    sandbox.okta.concurrency_limit = int(CONCURRENCY_LIMIT * scale)


def okta_rate_limits() -> dict[str, int]:
    """Okta's per-minute budgets by endpoint group, at scale 1."""
    return dict(RATE_LIMITS)


def provider_of(endpoint: str) -> str:
    if endpoint.startswith("okta."):
        return "okta"
    if endpoint.startswith(("identitystore.", "sso-admin.", "scim.")):
        return "identity_center"
    return "other"


def by_provider(counts: dict[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for endpoint, n in counts.items():
        total[provider_of(endpoint)] += n
    return dict(total)


def rate_bounds(stats: dict[str, Any], scale: float) -> dict[str, float]:
    """The least time the limits allow for the calls a run made (answered ones), per
    bucket: Identity Center's (calls - burst) / TPS, a token bucket holding one
    second; each Okta endpoint group's C calls at B a minute, C / (B / 60)."""
    calls, throttled = by_provider(stats["calls"]), by_provider(stats["throttled"])
    tps = IC_TPS * scale
    ic = calls.get("identity_center", 0) - throttled.get("identity_center", 0)
    bounds = {"identity_center": max(0.0, ic - tps) / tps}
    for bucket, n in stats["okta_buckets"].items():
        bounds[f"okta:{bucket}"] = n / (int(RATE_LIMITS[bucket] * scale) / 60.0)
    return bounds


def stats(sandbox: Sandbox) -> dict[str, Any]:
    audit = sandbox.audit
    return {
        "calls": dict(audit.calls),
        "throttled": dict(audit.throttled),
        "mutations": [
            {"at": e.at.timestamp(), "action": e.action, "target": e.target}
            for e in audit.entries()
        ],
        "okta_ids": {u.login: u.id for u in sandbox.okta._users.values()},
        # Okta's calls by endpoint group, for the bound per bucket
        "okta_buckets": dict(sandbox.okta.calls_by_bucket),
    }


def control_app(sandbox: Sandbox, org: Organisation) -> web.Application:
    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats(sandbox))

    async def seed(request: web.Request) -> web.Response:
        body = await request.json()
        for login in body["logins"]:
            org.add_person(login)
        return web.json_response({"seeded": len(body["logins"])})

    async def deactivated(request: web.Request) -> web.Response:
        user = sandbox.okta._users.get(request.match_info["okta_id"])
        return web.json_response({"deactivated": user is not None and user.status != "ACTIVE"})

    app = web.Application()
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/deactivated/{okta_id}", deactivated)
    app.router.add_post("/seed", seed)
    return app


async def run(args: argparse.Namespace) -> None:
    sandbox = Sandbox(seed=args.seed)
    limit_sandbox(sandbox, latency=args.latency, scale=args.scale)
    await sandbox.start()
    org = Organisation(sandbox, args.seed)
    for i in range(args.people):
        org.add_person(login_of("leaver", i))
    control = await serve_on_loopback(control_app(sandbox, org))
    ready = {
        "config": sandbox.config_data(sqlite_path="offboard.db"),
        "environment": sandbox.environment(),
        "control_url": control.url,
        "okta_url": sandbox.okta_url,
    }
    path = Path(args.ready_file)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ready), encoding="utf-8")
    tmp.replace(path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await control.close()
    await sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ready-file", required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
