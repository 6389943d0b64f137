"""The naive baseline: the script an admin writes in an afternoon (boto3 + requests,
one person after another), doing the leaver's automated steps against the same
emulators with the same latency and limits as bench/mass_offboard.py.

    .venv/bin/python -m bench.naive_baseline --people 1000   # scale 1: ~15 min

Per person: look the user up in Okta, deactivate unless already deprovisioned, clear
sessions; look the user up in Identity Center, PATCH active=false over SCIM, read
the status back; list group memberships and the assignments of the user and of each
group, describe each permission set (an afternoon's script caches nothing). A 429
from Okta waits until X-Rate-Limit-Reset; boto3's own retries handle AWS throttling.
What it does not do, and the worker does: a write-ahead ledger, verification with
retries, a durable record, the countdown, priorities, restarts.

Reported: its ratio to the bound the rate limits imply for its calls (per bucket, as
bench/mass_offboard.py computes it), and its time against the worker's from a
mass_offboard result (--worker-result), for the same N and scale. No client can be
much faster than the limits: at AWS's 20 TPS one near 1.5-2x this script is the most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config as BotoConfig

from bench.emulators import login_of, rate_bounds
from bench.harness import Emulators, Result, emulators, run_in_temporary_directory

PATCH_INACTIVE = {
    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    "Operations": [{"op": "replace", "path": "active", "value": False}],
}


def okta_call(session: requests.Session, method: str, url: str) -> requests.Response:
    while True:
        response = session.request(method, url, timeout=30)
        if response.status_code != 429:
            response.raise_for_status()
            return response
        reset = float(response.headers.get("X-Rate-Limit-Reset", time.time() + 1))
        time.sleep(max(0.0, reset - time.time()) + 0.1)


def offboard_everyone(ready: dict[str, Any], logins: list[str]) -> int:
    """The admin's loop; the number of people it finished."""
    config, env = ready["config"], ready["environment"]
    okta_url = config["idp"]["okta"]["org_url"]
    ic = config["identity_center"]
    okta = requests.Session()
    okta.headers["Authorization"] = f"SSWS {env['OFFBOARD_SANDBOX_OKTA_TOKEN']}"
    okta.headers["Accept"] = "application/json"
    scim = requests.Session()
    scim.headers["Authorization"] = f"Bearer {env['OFFBOARD_SANDBOX_SCIM_TOKEN']}"
    aws = {
        "region_name": ic["region"],
        "endpoint_url": ic["endpoint_url"],
        "aws_access_key_id": env["OFFBOARD_SANDBOX_AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["OFFBOARD_SANDBOX_AWS_SECRET_ACCESS_KEY"],
        "config": BotoConfig(retries={"mode": "standard", "max_attempts": 10}),
    }
    identitystore = boto3.client("identitystore", **aws)
    sso = boto3.client("sso-admin", **aws)
    store_id, instance = ic["identity_store_id"], ic["instance_arn"]
    done = 0
    for login in logins:
        user = okta_call(okta, "GET", f"{okta_url}/api/v1/users/{login}").json()
        if user["status"] != "DEPROVISIONED":
            okta_call(okta, "POST", f"{okta_url}/api/v1/users/{user['id']}/lifecycle/deactivate")
        okta_call(okta, "DELETE", f"{okta_url}/api/v1/users/{user['id']}/sessions?oauthTokens=true")
        user_id = identitystore.get_user_id(
            IdentityStoreId=store_id,
            AlternateIdentifier={
                "UniqueAttribute": {"AttributePath": "userName", "AttributeValue": login}
            },
        )["UserId"]
        scim.patch(
            f"{ic['scim']['url']}/Users/{user_id}", json=PATCH_INACTIVE, timeout=30
        ).raise_for_status()
        status = identitystore.describe_user(IdentityStoreId=store_id, UserId=user_id)
        if status.get("UserStatus") != "DISABLED":
            raise RuntimeError(f"{login} is not disabled")
        groups = identitystore.list_group_memberships_for_member(
            IdentityStoreId=store_id, MemberId={"UserId": user_id}
        )["GroupMemberships"]
        principals = [("USER", user_id)] + [("GROUP", g["GroupId"]) for g in groups]
        arns = set()
        for kind, principal in principals:
            listed = sso.list_account_assignments_for_principal(
                InstanceArn=instance, PrincipalType=kind, PrincipalId=principal
            )
            arns |= {a["PermissionSetArn"] for a in listed["AccountAssignments"]}
        for arn in arns:
            sso.describe_permission_set(InstanceArn=instance, PermissionSetArn=arn)
        done += 1
    return done


async def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    result = Result(
        "naive_baseline",
        {"people": args.people, "scale": args.scale, "latency_s": args.latency},
    )
    async with emulators(run_dir, people=args.people, latency=args.latency, scale=args.scale) as em:
        logins = [login_of("leaver", i) for i in range(args.people)]
        started = time.monotonic()
        done = await asyncio.to_thread(offboard_everyone, em.ready, logins)
        total = time.monotonic() - started
        stats = await Emulators.stats(em)
    bounds = rate_bounds(stats, args.scale)
    result.figures = {
        "total_seconds": round(total, 2),
        "bound_seconds": {k: round(v, 2) for k, v in bounds.items()},
        "ratio_to_bound": round(total / max(bounds.values()), 3),
        "people_per_second": round(done / total, 3),
        "calls": sum(stats["calls"].values()),
        "throttled": sum(stats["throttled"].values()),
    }
    if args.worker_result:
        worker = json.loads(Path(args.worker_result).read_text(encoding="utf-8"))
        worker_total = float(worker["figures"]["total_seconds"])
        same = worker["parameters"]["people"] == args.people and float(
            worker["parameters"]["scale"]
        ) == float(args.scale)
        result.figures["worker_total_seconds"] = worker_total
        result.figures["speedup"] = round(total / worker_total, 2)
        result.figures["same_n_and_scale"] = same
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--worker-result", help="a mass_offboard JSON result to compare with")
    parser.add_argument("--output", help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
