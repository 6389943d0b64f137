"""`offboard bulk`: the CSV file is validated whole, every bad row is reported with its
line, and nothing is enqueued unless the bad rows are skipped on purpose."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from worker.bulk import BulkRow, parse_bulk_csv
from worker.cli import main

PROTECTED = ["breakglass-*@example.com"]


def parse(text: str) -> tuple[list[BulkRow], list[str], bool]:
    parsed = parse_bulk_csv(text.encode(), protected=PROTECTED)
    return list(parsed.rows), [str(p) for p in parsed.problems], parsed.unusable


def test_good_rows_are_read_with_their_line_numbers() -> None:
    rows, problems, unusable = parse(
        "\ufeffEmail, Reason ,effective_at,employee_id\n"  # Excel's BOM, loose header
        "ann@example.com,resigned,2025-01-31T17:00:00Z,E1\n"
        "\n"
        'bob@example.com,"moved on,\nto pastures new",,\n'
        "cy@example.com,,2025-02-01T09:00:00+01:00,\n"
    )

    assert problems == [] and not unusable
    assert rows == [
        BulkRow(
            line=2,
            email="ann@example.com",
            reason="resigned",
            effective_at=datetime(2025, 1, 31, 17, tzinfo=UTC),
            employee_id="E1",
        ),
        BulkRow(line=4, email="bob@example.com", reason="moved on,\nto pastures new"),
        BulkRow(
            line=6,
            email="cy@example.com",
            effective_at=datetime(2025, 2, 1, 8, tzinfo=UTC),
        ),
    ]


def test_every_bad_row_is_reported_with_its_line() -> None:
    rows, problems, unusable = parse(
        "email,reason,effective_at\n"
        "ann@example.com,,\n"  # 2: fine
        "not-an-email,,\n"  # 3
        "bob@example.com,,\n"  # 4: fine
        "ANN@example.com,again,\n"  # 5: duplicate of line 2 (logins ignore case)
        "breakglass-1@example.com,,\n"  # 6
        "cy@example.com,,31/01/2025\n"  # 7
        "dee@example.com,,2025-01-31T17:00:00\n"  # 8
        "eve@example.com,,2025-01-31\n"  # 9
        "fay@example.com,a reason, with a comma,\n"  # 10
        ",no email,\n"  # 11
        "gus@example.com,,\n"  # 12: fine
    )

    assert not unusable
    assert [r.email for r in rows] == ["ann@example.com", "bob@example.com", "gus@example.com"]
    assert problems == [
        "line 3: email 'not-an-email' is not a login (an email address)",
        "line 5: email ANN@example.com is also on line 2",
        "line 6: breakglass-1@example.com is a protected identity "
        "(matches 'breakglass-*@example.com'): never offboarded",
        "line 7: effective_at '31/01/2025' is not an ISO 8601 date-time "
        "(e.g. 2025-01-31T17:00:00Z)",
        "line 8: effective_at '2025-01-31T17:00:00' has no time zone "
        "(add Z or an offset: e.g. 2025-01-31T17:00:00Z)",
        "line 9: effective_at '2025-01-31' is a date without a time and zone "
        "(e.g. 2025-01-31T17:00:00Z)",
        "line 10: 4 fields, but the header has 3",
        "line 11: email is empty",
    ]


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("", ["line 1: the file is empty: a header row naming at least 'email' is needed"]),
        ("\n  \n", ["line 1: the file is empty: a header row naming at least 'email' is needed"]),
        ("email,reason\n", ["line 1: no rows after the header"]),
        (
            "ann@example.com,left\nbob@example.com,left\n",
            [
                "line 1: no header row: the first line must name the columns "
                "(email, reason, effective_at, employee_id)"
            ],
        ),
        (
            "email,department\nann@example.com,sales\n",
            [
                "line 1: unknown column 'department' "
                "(known: email, reason, effective_at, employee_id)"
            ],
        ),
        (
            "login,reason\nann@example.com,x\n",
            [
                "line 1: unknown column 'login' (known: email, reason, effective_at, employee_id)",
                "line 1: missing required column 'email'",
            ],
        ),
        ("email,email\nann@example.com,x\n", ["line 1: column 'email' appears twice"]),
        ("\nemail,\nann@example.com,x\n", ["line 2: column 2 has no name"]),
    ],
)
def test_a_bad_header_or_empty_file_makes_the_whole_file_unusable(
    text: str, problems: list[str]
) -> None:
    rows, found, unusable = parse(text)
    assert (rows, found, unusable) == ([], problems, True)


def test_a_file_that_is_not_utf8_names_the_line() -> None:
    parsed = parse_bulk_csv(b"email\nann@example.com\nb\xe9a@example.com\n", protected=[])
    assert parsed.unusable
    assert [str(p) for p in parsed.problems] == ["line 3: the file is not UTF-8 text"]


# --- the command: nothing changes when a row is bad -----------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration whose providers are never called: `--no-wait` only enqueues."""
    for name in ("T_OKTA", "T_SCIM"):
        monkeypatch.setenv(name, "dummy-secret-value-0123456789")
    data: dict[str, Any] = {
        "store": {"sqlite": str(tmp_path / "offboard.db")},
        "playbook_dirs": [str(REPO / "playbooks")],
        "idp": {"okta": {"org_url": "http://127.0.0.1:9", "token": {"env": "T_OKTA"}}},
        "identity_center": {
            "region": "us-east-1",
            "identity_store_id": "d-1234567890",
            "instance_arn": "arn:aws:sso:::instance/ssoins-1234567890123456",
            "endpoint_url": "http://127.0.0.1:9",
            "scim": {"url": "http://127.0.0.1:9/scim/v2", "token": {"env": "T_SCIM"}},
        },
        "protected_identities": PROTECTED,
    }
    path = tmp_path / "offboard.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_FILE = (
    "email,reason,effective_at\n"
    "ann@example.com,left,\n"
    "breakglass-1@example.com,oops,\n"
    "bob@example.com,left,2999-01-01T00:00:00Z\n"
    "nope,left,\n"
)


def cases(db: Path) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT subject, priority, run_after FROM cases ORDER BY subject"
        ).fetchall()


def test_a_bad_row_stops_the_run_before_anything_changes(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "leavers.csv"
    csv_file.write_text(BAD_FILE)

    code = main(["--config", str(config_file), "bulk", str(csv_file), "--playbook", "leaver"])

    assert code == 2
    err = capsys.readouterr().err
    assert f"{csv_file}:3: breakglass-1@example.com is a protected identity" in err
    assert f"{csv_file}:5: email 'nope' is not a login" in err
    assert f"offboard: {csv_file}: nothing enqueued (fix them, or --skip-invalid)" in err
    assert not (tmp_path / "offboard.db").exists()


def test_skip_invalid_enqueues_the_good_rows_at_bulk_priority_once(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "leavers.csv"
    csv_file.write_text(BAD_FILE)
    args = ["--config", str(config_file), "bulk", str(csv_file), "--playbook", "leaver"]

    assert main([*args, "--skip-invalid", "--no-wait"]) == 0

    captured = capsys.readouterr()
    assert f"{csv_file}:3: breakglass-1@example.com is a protected identity" in captured.err
    assert f"{csv_file}: 2 rows enqueued (2 new cases, 2 problem(s) skipped)" in captured.out
    # bulk priority (10), below normal (50) and incident (100) work; a future date waits
    assert cases(tmp_path / "offboard.db") == [
        ("ann@example.com", 10, None),
        ("bob@example.com", 10, "2999-01-01T00:00:00.000Z"),
    ]

    assert main([*args, "--skip-invalid", "--no-wait"]) == 0  # the same file again

    assert f"{csv_file}: 2 rows enqueued (0 new cases" in capsys.readouterr().out
    assert len(cases(tmp_path / "offboard.db")) == 2
