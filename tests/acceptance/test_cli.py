"""The `offboard` command as a user meets it."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import subprocess
from pathlib import Path
from typing import Any

from tests.acceptance import cli
from tests.conftest import REPO
from worker.sandbox import Sandbox, SeededUser


async def test_demo_prints_the_whole_timeline(tmp_path: Path) -> None:
    result = await cli.run(["demo"], cli.environment({}), REPO, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "status CONTAINED" in out
    for step in ("idp-deactivate", "idp-sessions", "ic-disable", "portal-sessions"):
        assert step in out
    assert "UserStatus DISABLED" in out
    assert "operator confirmation by demo-operator" in out
    # the providers' own record shows the order
    order = [out.index(a) for a in ("okta.deactivate", "okta.clear_sessions", "scim.patch_user")]
    assert order == sorted(order)
    assert "now: Okta DEPROVISIONED, 0 sessions; Identity Center DISABLED, 0 portal sessions" in out
    # piped: the log is JSON, one object a line, for a machine
    logged = [line for line in result.stderr.splitlines() if line.strip()]
    assert logged and all(json.loads(line)["event"] for line in logged)


def _on_a_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal, as a person at a shell does."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [cli.OFFBOARD, *args], stdin=follower, stdout=follower, stderr=follower, env=env, cwd=cwd
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        assert ready, "no output for 120 s"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_demo_on_a_terminal_shows_its_tables_not_the_log(tmp_path: Path) -> None:
    env = cli.environment({})
    del env["OFFBOARD_LOG_LEVEL"]  # as a person runs it: the default level
    code, screen = _on_a_terminal(["demo"], env, tmp_path)

    assert code == 0, screen
    assert "status CONTAINED" in screen
    assert "--- incident: mallory@example.com" in screen
    lines = re.sub(r"\x1b\[[0-9;]*m", "", screen).splitlines()  # colours off
    assert not [line for line in lines if line.lstrip().startswith('{"')], screen
    assert not [line for line in lines if "[info" in line or "[debug" in line], screen


async def test_dry_run_prints_the_plan_and_touches_nothing(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    result = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", leaver.login, "--dry-run"],
        cli.environment(sandbox.environment()),
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert "lifecycle/deactivate?sendEmail=false" in result.stdout
    assert "PATCH" in result.stdout and "/scim/v2/Users/{id} active=false" in result.stdout
    assert "operator task" in result.stdout
    # issue 14: the dry run reads (the resolve), and changes nothing anywhere
    assert sandbox.audit.entries() == []
    assert not (tmp_path / "offboard.db").exists()


async def test_playbook_with_identity_center_first_is_refused(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "backwards.yaml"
    bad.write_text(
        "name: backwards\n"
        "steps:\n"
        "  - id: ic-disable\n"
        "    action: identity_center.disable_user\n"
        "    verify: identity_center.user_status\n"
        "  - id: idp-deactivate\n"
        "    action: idp.deactivate_user\n"
        "    verify: idp.user_status\n",
        encoding="utf-8",
    )
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())

    result = await cli.run(
        ["--config", str(config), "run", str(bad), "--user", leaver.login], env, tmp_path
    )

    assert result.returncode == 2
    assert f"{bad}: step 1 (ic-disable) at line 3: rule idp-first" in result.stderr
    assert sum(sandbox.audit.calls.values()) == 0
    checked = await cli.run(["check", str(bad)], env, tmp_path)
    assert checked.returncode == 2 and "rule idp-first" in checked.stderr


async def test_bad_config_names_the_setting(tmp_path: Path) -> None:
    config = cli.write_config(
        tmp_path / "offboard.yaml",
        {
            "idp": {"okta": {"org_url": "https://x.okta.com", "token": {"env": "NOPE_TOKEN"}}},
            "identity_center": {
                "region": "us-east-1",
                "identity_store_id": "d-1234567890",
                "instance_arn": "arn:aws:sso:::instance/ssoins-1234567890123456",
                "scim": {"url": "https://scim.example", "token": {"env": "NOPE_SCIM"}},
                "colour": "blue",
            },
        },
    )
    result = await cli.run(["--config", str(config), "status"], cli.environment({}), tmp_path)
    assert result.returncode == 2
    assert "identity_center.colour: unknown key" in result.stderr

    del_colour = config.read_text().replace("  colour: blue\n", "")
    config.write_text(del_colour)
    result = await cli.run(["--config", str(config), "status"], cli.environment({}), tmp_path)
    assert result.returncode == 2
    assert "idp.okta.token: environment variable NOPE_TOKEN is not set" in result.stderr


async def test_confirm_unknown_step_is_a_clear_error(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    run = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", leaver.login], env, tmp_path
    )
    assert run.returncode == 3, run.stdout + run.stderr
    case_id = run.stdout.split("opened case ")[1].split()[0]
    assert (
        "WAITING since" in run.stdout
        and f"offboard confirm {case_id} portal-sessions" in run.stdout
    )

    wrong = await cli.run(["--config", str(config), "confirm", case_id, "portal"], env, tmp_path)
    assert wrong.returncode == 2
    assert "has no step 'portal'" in wrong.stderr

    status = await cli.run(["--config", str(config), "status", case_id], env, tmp_path)
    assert status.returncode == 3 and "status WAITING" in status.stdout
    # issue 14: the open portal task holds nothing back, and status says so
    assert "does not hold up automated steps" in status.stdout


async def test_evidence_export_and_verify_from_the_command_line(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    import json
    import sqlite3

    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    base = ["--config", str(config)]
    run = await cli.run([*base, "run", "leaver", "--user", leaver.login], env, tmp_path)
    case_id = run.stdout.split("opened case ")[1].split()[0]

    exported = await cli.run([*base, "evidence", case_id, "--format", "json"], env, tmp_path)
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["verification"]["chain_valid"] is True
    csv_out = tmp_path / "evidence.csv"
    as_csv = await cli.run(
        [*base, "evidence", case_id, "--format", "csv", "--output", str(csv_out)], env, tmp_path
    )
    assert as_csv.returncode == 0 and csv_out.read_text().startswith("seq,at,kind,step")
    ok = await cli.run([*base, "evidence", "--verify"], env, tmp_path)
    assert ok.returncode == 0 and "verifies" in ok.stdout

    # an attacker with the file: drop the append-only triggers, edit one record
    db = sqlite3.connect(config_data["store"]["sqlite"])
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE events SET data = '{}' WHERE case_id = ? AND seq = 2", (case_id,))
    db.commit()
    db.close()
    broken = await cli.run([*base, "evidence", "--verify"], env, tmp_path)
    assert broken.returncode == 1
    assert f"case {case_id}: event 2 was edited" in broken.stdout


async def test_run_with_a_non_ascii_address_exits_2_naming_what_is_wrong(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """issue 14: the address is canonicalised by admission; one that cannot be a login
    is refused with a message, exit 2, and nothing is changed anywhere."""
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    result = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", "jörg@example.com"],
        cli.environment(sandbox.environment()),
        tmp_path,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "non-ASCII character (U+00F6 at position 2)" in result.stderr
    assert "Traceback" not in result.stderr
    dry = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", "jörg@example.com", "--dry-run"],
        cli.environment(sandbox.environment()),
        tmp_path,
    )
    assert dry.returncode == 2 and "non-ASCII" in dry.stderr, dry.stdout + dry.stderr
    assert sum(sandbox.audit.calls.values()) == 0


async def test_a_second_confirm_answers_already_confirmed_and_records_nothing(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """issue 14: `confirm --no-resume` exits 0 on success; a second confirm answers
    "already confirmed by X at T" with exit 0 and records nothing."""
    import sqlite3

    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    base = ["--config", str(config)]
    run = await cli.run([*base, "run", "leaver", "--user", leaver.login], env, tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    case_id = run.stdout.split("opened case ")[1].split()[0]

    first = await cli.run(
        [*base, "confirm", case_id, "portal-sessions", "--by", "op-a", "--no-resume"],
        env,
        tmp_path,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"confirmed {case_id} portal-sessions by op-a at " in first.stdout

    def events() -> list[tuple[str]]:
        with sqlite3.connect(tmp_path / "offboard.db") as db:
            return db.execute("SELECT kind FROM events ORDER BY rowid").fetchall()

    before = events()
    second = await cli.run(
        [*base, "confirm", case_id, "portal-sessions", "--by", "op-b"], env, tmp_path
    )
    assert second.returncode == 0, second.stdout + second.stderr
    at = first.stdout.split(" at ")[1].split()[0]
    assert f"{case_id} portal-sessions already confirmed by op-a at {at}" in second.stdout
    assert events() == before


async def test_run_with_another_spelling_disables_the_identity_center_user(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """issue 14: `run incident --user Bob@Example.com` deactivated Bob at Okta (which
    matches logins case-insensitively), then halted at ic-disable because the Identity
    Center lookup was exact: IdP done, Identity Center untouched."""
    bob = sandbox.seed_leaver("Bob.Mixed@Example.com")
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())

    run = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", "  BOB.MIXED@example.COM "],
        env,
        tmp_path,
    )

    assert run.returncode == 3, run.stdout + run.stderr  # waiting for the operator only
    assert "status WAITING" in run.stdout and "HALTED" not in run.stdout
    assert sandbox.identity_center.user_status(bob.ic_user_id) == "DISABLED"


async def test_run_for_a_protected_identity_exits_2_without_naming_the_address(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """issue 15: no refusal of a protected identity repeats the address, the CLI's included."""
    config_data["protected_identities"] = ["root@example.com", "breakglass-*@example.com"]
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    for subject, dry in itertools.product(
        ("root@example.com", "breakglass-9@example.com", "r\u043eot@example.com"),
        ([], ["--dry-run"]),
    ):
        result = await cli.run(
            ["--config", str(config), "run", "leaver", "--user", subject, *dry],
            cli.environment(sandbox.environment()),
            tmp_path,
        )
        assert result.returncode == 2, (dry, result.stdout + result.stderr)
        assert "protected identity" in result.stderr
        assert subject not in result.stdout + result.stderr
    assert sum(sandbox.audit.calls.values()) == 0


async def test_a_dry_run_reads_the_person_and_writes_nothing(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """issue 14: the dry run resolves the person with reads only (the emulators' request
    counts show no mutating call), shows their state, what they reach and the countdown
    that would start, and records nothing."""
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    result = await cli.run(
        ["--config", str(config), "run", "incident", "--user", leaver.login.upper(), "--dry-run"],
        env,
        tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    print(out)
    assert f"user {leaver.okta_id} ({leaver.login}), ACTIVE" in out
    assert f"Identity Center: user {leaver.ic_user_id} ({leaver.login}), ENABLED" in out
    assert "permission set AdministratorAccess (session PT12H): accounts 111122223333" in out
    assert "permission set ReadOnly (session PT4H): accounts 444455556666" in out
    assert "residual-access countdown" in out and "all-lapsed" in out
    assert "deny statement provisioned" in out
    # reads only, every one of them: no emulator saw a mutating request
    called = set(sandbox.audit.calls)
    assert {"okta.get_user", "identitystore.GetUserId", "identitystore.DescribeUser"} <= called
    for endpoint in called:
        service, _, operation = endpoint.partition(".")
        assert endpoint == "okta.get_user" or (
            service in ("identitystore", "sso-admin")
            and operation.startswith(("Get", "List", "Describe"))
        ), endpoint
    assert sandbox.audit.entries() == []
    assert not (tmp_path / "offboard.db").exists()

    as_json = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", leaver.login, "--dry-run", "--json"],
        env,
        tmp_path,
    )
    assert as_json.returncode == 0, as_json.stderr
    import json

    plan = json.loads(as_json.stdout)
    assert plan["person"]["ic_user_id"] == leaver.ic_user_id
    assert plan["steps"][0]["step"].startswith("1. resolve: person.resolve")
    assert not any(c["mutates"] for c in plan["steps"][0]["calls"])


async def test_a_dry_run_says_the_resolve_would_halt_on_two_matches(
    sandbox: Sandbox, config_data: dict[str, Any], tmp_path: Path
) -> None:
    sandbox.okta.add_user("frank@example.com")
    sandbox.identity_center.add_user("Frank@example.com")
    sandbox.identity_center.add_user("FRANK@example.com")
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    result = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", "frank@example.com", "--dry-run"],
        cli.environment(sandbox.environment()),
        tmp_path,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "would HALT at the resolve step, before any change" in result.stdout
    assert "ambiguous" in result.stdout
    assert sandbox.audit.entries() == []


async def test_a_dry_run_needs_no_write_credential(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """Read-only credentials: without the SCIM token (it only writes) the dry run still
    resolves the person and reads what they reach."""
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment(sandbox.environment())
    scim_token = config_data["identity_center"]["scim"]["token"]["env"]
    env.pop(scim_token)
    result = await cli.run(
        ["--config", str(config), "run", "leaver", "--user", leaver.login, "--dry-run"],
        env,
        tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "not needed for a dry run" in result.stdout
    assert "WRITE PATCH (SCIM endpoint)/Users/{id} active=false" in result.stdout
    assert f"Identity Center: user {leaver.ic_user_id}" in result.stdout
    assert sandbox.audit.entries() == []
