"""Playbook validation: each invariant rule, malformed files, and the shipped playbooks."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import PlaybookError
from worker.playbook import load_playbook, parse_playbook

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yaml"))
LEAVER = ROOT / "playbooks" / "leaver.yaml"

DEACTIVATE = "idp.deactivate_user"
REVOKE = "idp.revoke_sessions"
DISABLE = "identity_center.disable_user"
PORTAL = "identity_center.portal_sessions"
DENY = "identity_center.deny_role_sessions"
REMOVE = "identity_center.remove_access"
#: The one safe order, written out here rather than taken from worker.playbook.
CANONICAL = (DEACTIVATE, REVOKE, DISABLE, PORTAL)
#: Optional hardening: after every containment step, in any order, any number of times.
HARDENING = (DENY, REMOVE)
VERIFY = {
    DEACTIVATE: "idp.user_status",
    REVOKE: "idp.user_status",
    DISABLE: "identity_center.user_status",
    PORTAL: "operator.confirmation",
    DENY: "identity_center.deny_provisioned",
    REMOVE: "identity_center.access_removed",
}
ORDER_RULES = {
    "order",
    "idp-first",
    "deactivate-before-revoke",
    "identity-center-before-portal",
    "once-each",
    "unique-step-ids",
}

Step = dict[str, Any]


def step(step_id: str, action: str, verify: str | None = "default", **extra: Any) -> Step:
    """A step mapping; verify defaults to the right verification for the action."""
    out: Step = {"id": step_id, "action": action}
    if verify == "default":
        verify = VERIFY.get(action, "idp.user_status")
    if verify is not None:
        out["verify"] = verify
    out.update(extra)
    return out


def render(steps: list[Step], name: str = "test") -> tuple[str, list[int]]:
    """YAML text for a playbook and the 1-based line on which each step starts."""
    lines = [f"name: {name}", "priority: normal", "steps:"]
    starts = []
    for s in steps:
        starts.append(len(lines) + 1)
        for n, (key, value) in enumerate(s.items()):
            lines.append(f"{'  - ' if n == 0 else '    '}{key}: {value}")
    return "\n".join(lines) + "\n", starts


def refusal(text: str, source: str) -> str:
    with pytest.raises(PlaybookError) as info:
        parse_playbook(text, source)
    return str(info.value)


# Each rule of the invariant, broken by the smallest playbook that breaks it:
# (rule, steps, index of the step that must be named).
BROKEN: list[tuple[str, list[Step], int]] = [
    (
        "order",
        [step("deact", DEACTIVATE), step("disable", DISABLE), step("revoke", REVOKE)],
        2,
    ),
    ("idp-first", [step("disable", DISABLE), step("deact", DEACTIVATE)], 0),
    ("idp-first", [step("portal", PORTAL)], 0),
    (
        "identity-center-before-portal",
        [step("deact", DEACTIVATE), step("revoke", REVOKE), step("portal", PORTAL)],
        2,
    ),
    ("deactivate-before-revoke", [step("revoke", REVOKE), step("deact", DEACTIVATE)], 0),
    ("deactivate-before-revoke", [step("revoke", REVOKE)], 0),
    (
        "verified-containment",
        [step("deact", DEACTIVATE), step("disable", DISABLE, verify=None)],
        1,
    ),
    (
        "verified-containment",
        [step("deact", DEACTIVATE), step("disable", DISABLE, verify="idp.user_status")],
        1,
    ),
    (
        "verified-containment",
        [step("deact", DEACTIVATE), step("revoke", REVOKE, verify="operator.confirmation")],
        1,
    ),
    ("known-actions", [step("deact", DEACTIVATE), step("wipe", "idp.delete_user")], 1),
    (
        "once-each",
        [step("deact", DEACTIVATE), step("deact-again", DEACTIVATE)],
        1,
    ),
    (
        "unique-step-ids",
        [step("deact", DEACTIVATE), step("deact", REVOKE)],
        1,
    ),
]


@pytest.mark.parametrize(
    ("rule", "steps", "index"),
    BROKEN,
    ids=[f"{rule}-{n}" for n, (rule, _, _) in enumerate(BROKEN)],
)
def test_each_rule_refuses_a_playbook_that_breaks_it(
    rule: str, steps: list[Step], index: int
) -> None:
    text, starts = render(steps)
    source = f"playbooks/broken-{rule}.yaml"

    message = refusal(text, source)

    assert message.startswith(f"{source}: "), message
    assert f"step {index + 1} ({steps[index]['id']}) at line {starts[index]}" in message
    assert f"rule {rule}:" in message
    # Only the rule that is broken is named.
    others = re.findall(r"rule ([a-z-]+):", message)
    assert others == [rule], message


def test_verified_containment_missing_verify_names_the_verifications() -> None:
    text, starts = render([step("deact", DEACTIVATE, verify=None)])
    message = refusal(text, "pb.yaml")
    assert f"pb.yaml: step 1 (deact) at line {starts[0]}: rule verified-containment:" in message
    assert "verify" in message
    assert "idp.user_status" in message


def test_verified_containment_wrong_verify_names_both() -> None:
    text, _ = render(
        [step("deact", DEACTIVATE), step("disable", DISABLE, verify="operator.confirmation")]
    )
    message = refusal(text, "pb.yaml")
    assert "step 2 (disable)" in message
    assert "rule verified-containment" in message
    assert "operator.confirmation" in message
    assert "identity_center.user_status" in message


@pytest.mark.parametrize(
    ("action", "verify"),
    [
        (action, verify)
        for action in CANONICAL
        for verify in sorted({*VERIFY.values(), "none", "idp.sessions"})
        if verify != VERIFY[action]
    ],
)
def test_each_action_accepts_only_its_own_verification(action: str, verify: str) -> None:
    needed_before = {
        DEACTIVATE: [],
        REVOKE: [step("deact", DEACTIVATE)],
        DISABLE: [step("deact", DEACTIVATE)],
        PORTAL: [step("deact", DEACTIVATE), step("disable", DISABLE)],
    }[action]
    text, starts = render([*needed_before, step("x", action, verify)])
    message = refusal(text, "verify.yaml")
    n = len(needed_before)
    assert f"verify.yaml: step {n + 1} (x) at line {starts[n]}: rule verified-containment:" in (
        message
    )

    text, _ = render([*needed_before, step("x", action)])
    assert parse_playbook(text, "ok.yaml").steps[-1].verify == VERIFY[action]


def test_options_that_cannot_be_stored_are_refused_at_load() -> None:
    steps = [step("deact", DEACTIVATE)]
    text, _ = render(steps)
    text += "    options: {since: 2026-01-05, raw: !!binary aGVsbG8=}\n"
    try:
        playbook = parse_playbook(text, "opts.yaml")
    except PlaybookError as exc:
        assert "step 1 (deact)" in str(exc)
    else:
        json.dumps(playbook.steps[0].options)


def test_known_actions_names_the_unknown_action() -> None:
    text, _ = render([step("deact", DEACTIVATE), step("wipe", "idp.delete_user")])
    message = refusal(text, "pb.yaml")
    assert "step 2 (wipe)" in message
    assert "rule known-actions" in message
    assert "idp.delete_user" in message


def test_rule_message_without_line_numbers_still_names_the_step() -> None:
    # Flow style puts every step on line 1; the step is still named by number and id.
    text = (
        "{name: flow, steps: [{id: disable, action: identity_center.disable_user, "
        "verify: identity_center.user_status}]}"
    )
    message = refusal(text, "flow.yaml")
    assert message.startswith("flow.yaml: step 1 (disable)")
    assert "rule idp-first:" in message


# Malformed input


def test_yaml_syntax_error_names_the_line() -> None:
    text = (
        "name: leaver\n"  # 1
        "steps:\n"  # 2
        "  - id: idp-deactivate\n"  # 3
        "    action: idp.deactivate_user\n"  # 4
        "    verify: idp.user_status\n"  # 5
        "  - id: idp-sessions\n"  # 6
        "    action: idp.revoke_sessions: oops\n"  # 7
        "    verify: idp.user_status\n"  # 8
    )
    message = refusal(text, "playbooks/syntax.yaml")
    assert message.startswith("playbooks/syntax.yaml: YAML syntax error")
    assert re.search(r"\bline 7\b", message), message


def test_yaml_syntax_error_on_a_tab_names_the_line() -> None:
    text = "name: leaver\nsteps:\n  - id: a\n\taction: idp.deactivate_user\n"
    message = refusal(text, "tab.yaml")
    assert message.startswith("tab.yaml: YAML syntax error")
    assert re.search(r"\bline 4\b", message), message


@pytest.mark.parametrize(
    "text",
    ["- name: leaver\n- steps: []\n", "", "just a string\n", "42\n"],
    ids=["list", "empty", "string", "number"],
)
def test_a_playbook_must_be_a_mapping(text: str) -> None:
    message = refusal(text, "notamap.yaml")
    assert message.startswith("notamap.yaml: ")
    assert "mapping" in message


def test_unknown_top_level_field_is_refused() -> None:
    text, _ = render([step("deact", DEACTIVATE)])
    message = refusal(text + "stpes: []\n", "extra.yaml")
    assert message.startswith("extra.yaml: ")
    assert "stpes" in message
    assert "unknown field" in message


def test_unknown_step_field_names_the_step_and_the_field() -> None:
    steps = [step("idp-deactivate", DEACTIVATE), step("idp-sessions", REVOKE, verify=None)]
    steps[1]["verfy"] = "idp.user_status"
    text, starts = render(steps)
    message = refusal(text, "typo.yaml")
    assert message.startswith("typo.yaml: ")
    assert f"step 2 (idp-sessions) at line {starts[1]}" in message
    assert "'verfy'" in message
    assert "unknown field" in message


@pytest.mark.parametrize(
    "bad_id", ["Idp-Deactivate", "1-deactivate", "idp_deactivate", "-idp", "a" * 64, "idp.x"]
)
def test_bad_step_id_is_refused(bad_id: str) -> None:
    text, starts = render([step(bad_id, DEACTIVATE)])
    message = refusal(text, "ids.yaml")
    assert message.startswith("ids.yaml: ")
    assert f"step 1 ({bad_id}) at line {starts[0]}" in message
    assert "'id'" in message


def test_longest_allowed_step_id_loads() -> None:
    text, _ = render([step("a" * 63, DEACTIVATE)])
    # after the resolve step every playbook begins with
    assert parse_playbook(text, "long.yaml").steps[1].id == "a" * 63


def test_empty_steps_are_refused() -> None:
    message = refusal("name: nothing\nsteps: []\n", "empty.yaml")
    assert message.startswith("empty.yaml: ")
    assert "'steps'" in message


def test_missing_steps_are_refused() -> None:
    message = refusal("name: nothing\n", "nosteps.yaml")
    assert message.startswith("nosteps.yaml: ")
    assert "'steps'" in message


@pytest.mark.parametrize("priority", ["urgent", "1", "Incident", "[]"])
def test_bad_priority_is_refused(priority: str) -> None:
    text, _ = render([step("deact", DEACTIVATE)])
    text = text.replace("priority: normal", f"priority: {priority}")
    message = refusal(text, "prio.yaml")
    assert message.startswith("prio.yaml: ")
    assert "'priority'" in message


@pytest.mark.parametrize(("priority", "rank"), [("incident", 100), ("normal", 50), ("bulk", 10)])
def test_priorities_rank_incident_over_normal_over_bulk(priority: str, rank: int) -> None:
    text, _ = render([step("deact", DEACTIVATE)])
    text = text.replace("priority: normal", f"priority: {priority}")
    assert parse_playbook(text, "p.yaml").priority == rank


def test_load_playbook_names_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PlaybookError, match=re.escape(str(missing))):
        load_playbook(missing)


# The shipped playbooks


def test_there_are_shipped_playbooks() -> None:
    assert {p.name for p in PLAYBOOKS} >= {"leaver.yaml", "incident.yaml"}


@pytest.mark.parametrize("path", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_shipped_playbook_loads_and_keeps_the_order(path: Path) -> None:
    playbook = load_playbook(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))

    assert playbook.source == str(path)
    assert playbook.name == raw["name"] == path.stem
    assert [s.id for s in playbook.steps] == [s["id"] for s in raw["steps"]]
    # each lists the resolve step first (reads only), as every playbook begins
    assert playbook.steps[0].action == "person.resolve"
    actions = [s.action for s in playbook.steps[1:]]
    containment = actions[: len(CANONICAL)]
    assert respects_safe_order(containment), actions
    assert containment == list(CANONICAL)
    # anything after containment is hardening, never containment again
    assert not set(actions[len(CANONICAL) :]) & set(CANONICAL)
    for s in playbook.steps:
        if s.action in VERIFY:
            assert s.verify == VERIFY[s.action]


def test_incident_is_the_leaver_first_in_line_and_cutting_role_sessions() -> None:
    leaver = load_playbook(LEAVER)
    incident = load_playbook(ROOT / "playbooks" / "incident.yaml")
    assert incident.steps[: len(leaver.steps)] == leaver.steps
    assert [s.action for s in incident.steps[len(leaver.steps) :]] == [
        "identity_center.deny_role_sessions"
    ]
    assert incident.priority > leaver.priority


# The order, checked against an independent oracle


def respects_safe_order(actions: list[str]) -> bool:
    """IdP -> Identity Center -> portal sessions -> hardening, said directly.

    The IdP user is deactivated first of all; its sessions may be revoked only
    after that; the Identity Center user is disabled after the IdP steps; the
    portal sessions are revoked only after the Identity Center user is disabled.
    Each containment action at most once; any of revoke / disable / portal may be
    left out, except that portal sessions need the disable. Hardening comes after
    all of that, needs the disable too, and may repeat.
    """
    containment = [a for a in actions if a not in HARDENING]
    if actions[: len(containment)] != containment:
        return False
    if not containment or containment[0] != DEACTIVATE:
        return False
    if len(set(containment)) != len(containment):
        return False
    positions = [CANONICAL.index(a) for a in containment]
    if positions != sorted(positions):
        return False
    if PORTAL in containment and DISABLE not in containment:
        return False
    hardened = len(actions) > len(containment)
    return not (hardened and DISABLE not in containment)


def test_the_oracle_accepts_exactly_these() -> None:
    accepted = {
        arrangement
        for n in range(1, 5)
        for arrangement in itertools.permutations(CANONICAL, n)
        if respects_safe_order(list(arrangement))
    }
    assert accepted == {
        (DEACTIVATE,),
        (DEACTIVATE, REVOKE),
        (DEACTIVATE, DISABLE),
        (DEACTIVATE, REVOKE, DISABLE),
        (DEACTIVATE, DISABLE, PORTAL),
        (DEACTIVATE, REVOKE, DISABLE, PORTAL),
    }


LEAVER_STEPS: list[Step] = yaml.safe_load(LEAVER.read_text(encoding="utf-8"))["steps"]
LEAVER_BY_ACTION = {s["action"]: s for s in LEAVER_STEPS}
HARDENING_BY_ACTION = {
    DENY: step("deny-role-sessions", DENY),
    REMOVE: step("remove-access", REMOVE),
}


def check_against_oracle(actions: list[str], unverified: frozenset[int] = frozenset()) -> None:
    """parse_playbook loads the leaver's steps (and hardening steps) in this order iff
    the oracle accepts it, and a refusal names the first step at which the order went
    wrong. Hardening steps at the indices in `unverified` have no `verify`."""
    steps = []
    for n, action in enumerate(actions):
        leaver_step = dict({**LEAVER_BY_ACTION, **HARDENING_BY_ACTION}[action])
        if action in HARDENING and n in unverified:
            del leaver_step["verify"]
        if action in actions[:n]:
            # A repeated action gets its own id, so that once-each (not unique-step-ids)
            # is what must refuse it.
            leaver_step["id"] += f"-{n}"
        steps.append(leaver_step)
    text = yaml.safe_dump({"name": "leaver", "priority": "normal", "steps": steps}, sort_keys=False)
    expected = respects_safe_order(actions)
    try:
        playbook = parse_playbook(text, "permuted.yaml")
    except PlaybookError as exc:
        assert not expected, f"{actions} refused but respects the order: {exc}"
        message = str(exc)
        first_bad = next(
            i for i in range(len(actions)) if not respects_safe_order(actions[: i + 1])
        )
        assert message.startswith(f"permuted.yaml: step {first_bad + 1} ({steps[first_bad]['id']})")
        rules = re.findall(r"rule ([a-z-]+):", message)
        assert len(rules) == 1
        assert rules[0] in ORDER_RULES, message
    else:
        assert expected, f"{actions} loaded but breaks the order"
        # every playbook begins with the resolve step (reads only), added when not listed
        assert [s.action for s in playbook.steps] == ["person.resolve", *actions]
        assert [s.id for s in playbook.steps] == ["resolve", *[s["id"] for s in steps]]


def test_every_arrangement_of_the_leaver_steps_agrees_with_the_oracle() -> None:
    for n in range(1, 5):
        for arrangement in itertools.permutations(CANONICAL, n):
            check_against_oracle(list(arrangement))


arrangements = st.permutations(CANONICAL).flatmap(
    lambda p: st.integers(min_value=1, max_value=len(p)).map(lambda n: list(p[:n]))
)


@settings(max_examples=300, deadline=None, database=None)
@given(arrangements)
def test_random_subsets_and_permutations_agree_with_the_oracle(actions: list[str]) -> None:
    check_against_oracle(actions)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(CANONICAL), min_size=1, max_size=7))
def test_random_step_lists_with_repeats_agree_with_the_oracle(actions: list[str]) -> None:
    check_against_oracle(actions)


@settings(max_examples=400, deadline=None, database=None)
@given(
    st.lists(st.sampled_from(CANONICAL + HARDENING), min_size=1, max_size=8),
    st.frozensets(st.integers(min_value=0, max_value=7)),
)
def test_random_step_lists_with_hardening_agree_with_the_oracle(
    actions: list[str], unverified: frozenset[int]
) -> None:
    check_against_oracle(actions, unverified)


def test_hardening_follows_containment_and_may_repeat() -> None:
    check_against_oracle([DEACTIVATE, DISABLE, DENY, REMOVE, DENY], frozenset({3}))
    check_against_oracle([DEACTIVATE, REVOKE, DISABLE, PORTAL, REMOVE])
    for refused in (
        [DEACTIVATE, DENY],
        [DEACTIVATE, REVOKE, DENY, DISABLE],
        [DEACTIVATE, DISABLE, DENY, PORTAL],
        [DENY, DEACTIVATE, DISABLE],
    ):
        assert not respects_safe_order(refused)
        check_against_oracle(refused)


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    text = (
        "name: dup\n"
        "steps:\n"
        "  - id: idp-deactivate\n"
        "    action: idp.deactivate_user\n"
        "    action: identity_center.disable_user\n"
        "    verify: idp.user_status\n"
    )
    with pytest.raises(PlaybookError, match=r"line 5.*duplicate key 'action'"):
        parse_playbook(text, "dup.yaml")


def test_a_playbook_is_parsed_again_only_when_its_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "leaver.yaml"
    text = LEAVER.read_text()
    path.write_text(text)
    first = load_playbook(path)
    assert load_playbook(path) is first  # the same text: the parsed playbook is reused
    # an edit applies to the next load
    path.write_text(text.replace("description:", "description: edited", 1))
    edited = load_playbook(path)
    assert edited is not first and edited.description.startswith("edited")
    # so does one of the same size, however soon
    path.write_text(text.replace("description:", "description: EDITED", 1))
    assert load_playbook(path).description.startswith("EDITED")
    path.write_text("steps: [")
    with pytest.raises(PlaybookError):
        load_playbook(path)


# issue 14: an operator task never gates the automated steps after it


def test_the_portal_task_gates_nothing_and_check_and_the_plan_say_so() -> None:
    from worker.actions import ACTIONS
    from worker.playbook import gates_later_steps, operator_tasks_note
    from worker.report import plan_mark

    incident = load_playbook(ROOT / "playbooks" / "incident.yaml")
    # the order rules hold: the deny still comes after the portal task in the file ...
    ids = [s.id for s in incident.steps]
    assert ids.index("portal-sessions") < ids.index("deny-role-sessions")
    # ... but only the steps up to the Identity Center disable hold back what follows
    assert [gates_later_steps(s.action) for s in incident.steps] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    # every operator-task action a playbook can name from the portal on gates nothing
    assert all(
        not gates_later_steps(name)
        for name, spec in ACTIONS.items()
        if spec.operator_task and spec.phase >= ACTIONS["identity_center.portal_sessions"].phase
    )
    note = operator_tasks_note(incident)
    assert "portal-sessions opens and does not wait" in note
    assert "deny-role-sessions" in note
    marks = {s.id: plan_mark(s) for s in incident.steps}
    assert "opens; does not wait" in marks["portal-sessions"]
    assert marks["deny-role-sessions"] == ""


# issue 14: the person is resolved (reads only) before the first change


def test_every_playbook_begins_with_the_resolve_step() -> None:
    text, _ = render([step("idp-deactivate", DEACTIVATE)])
    playbook = parse_playbook(text, "plain.yaml")
    assert [(s.id, s.action, s.verify) for s in playbook.steps[:1]] == [
        ("resolve", "person.resolve", "person.found")
    ]
    listed, _ = render(
        [
            {"id": "find-them", "action": "person.resolve", "verify": "person.found"},
            step("idp-deactivate", DEACTIVATE),
        ]
    )
    # listed first, it is kept as it is, not added twice
    assert [s.id for s in parse_playbook(listed, "listed.yaml").steps] == [
        "find-them",
        "idp-deactivate",
    ]


def test_the_resolve_step_anywhere_but_first_is_refused() -> None:
    text, starts = render(
        [
            step("idp-deactivate", DEACTIVATE),
            {"id": "late", "action": "person.resolve", "verify": "person.found"},
        ]
    )
    message = refusal(text, "late.yaml")
    assert f"step 2 (late) at line {starts[1]}: rule resolve-first" in message
    taken, _ = render([step("resolve", DEACTIVATE)])
    assert "rule resolve-first" in refusal(taken, "taken.yaml")
