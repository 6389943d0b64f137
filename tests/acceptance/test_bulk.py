"""`offboard bulk` as an operator runs it: a CSV file of leavers, the real command, the
emulators. Every case settles, the summary says what a human must do, and running the
same file again creates nothing and calls nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import cli
from worker.sandbox import Sandbox

PEOPLE = 30


def case_rows(db: str) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT subject, status, priority FROM cases ORDER BY subject"
        ).fetchall()


# beyond its own deadlines (240 s + 120 s), so that they speak first
@pytest.mark.timeout(420)
async def test_bulk_settles_every_row_and_a_rerun_changes_nothing(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    people = [sandbox.seed_leaver(f"leaver{i:02d}@example.com") for i in range(PEOPLE)]
    leavers = tmp_path / "leavers.csv"
    leavers.write_text(
        "email,reason,employee_id\n"
        + "".join(f"{p.login},resigned,E{i}\n" for i, p in enumerate(people))
        + "ghost@example.com,never existed,E999\n"  # not in Okta: halts, with the reason
    )
    # AWS's 20 TPS quota is not emulated: at 18 TPS, 30 people would take ~25 s here
    config_data["limits"] = {"identity_center_per_second": 1000, "identity_center_burst": 100}
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    command = ["--config", str(config), "bulk", str(leavers), "--playbook", "leaver"]

    first = await cli.run([*command, "--progress-every", "1"], env, tmp_path, timeout=240)

    # halted beats waiting: exit 1
    assert first.returncode == 1, first.stdout + first.stderr
    out = first.stdout
    assert f"{leavers}: {PEOPLE + 1} rows enqueued ({PEOPLE + 1} new cases" in out
    assert f"waiting on operator           {PEOPLE:>6}" in out
    assert f"halted                        {1:>6}" in out
    ghost = next(line for line in out.splitlines() if "ghost@example.com" in line)
    assert ghost.split()[0] == str(PEOPLE + 2)  # its line in the file
    assert "no Okta user with login 'ghost@example.com'" in ghost
    waiting = [line for line in out.splitlines() if "portal-sessions: Delete" in line]
    assert len(waiting) == PEOPLE
    # off a terminal, plain progress lines; the last one says where everything stands
    assert (
        f"bulk: {PEOPLE + 1}/{PEOPLE + 1} settled: 0 done, {PEOPLE} waiting on operator, 1 failed"
    ) in first.stderr
    # IdP first, then Identity Center, for every person in the file
    for person in people:
        assert sandbox.okta.user_status(person.login) == "DEPROVISIONED"
        assert sandbox.identity_center.user_status(person.ic_user_id) == "DISABLED"
    db = config_data["store"]["sqlite"]
    assert len(case_rows(db)) == PEOPLE + 1
    assert {priority for _, _, priority in case_rows(db)} == {10}  # bulk priority

    # an operator deletes one person's portal sessions and confirms
    first_case = waiting[0].split()[1]
    confirmed = await cli.run(
        ["--config", str(config), "confirm", first_case, "portal-sessions", "--by", "op"],
        env,
        tmp_path,
    )
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    calls_before = sum(sandbox.audit.calls.values())

    again = await cli.run(command, env, tmp_path, timeout=120)

    assert again.returncode == 1, again.stdout + again.stderr
    assert f"{leavers}: {PEOPLE + 1} rows enqueued (0 new cases" in again.stdout
    assert f"0 new case(s), 0 already open, {PEOPLE + 1} from an earlier run" in again.stdout
    assert f"contained                     {1:>6}" in again.stdout
    assert f"waiting on operator           {PEOPLE - 1:>6}" in again.stdout
    assert len(case_rows(db)) == PEOPLE + 1
    assert sum(sandbox.audit.calls.values()) == calls_before  # nothing was read or done again
