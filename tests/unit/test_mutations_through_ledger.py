"""Issue 15: every provider mutation is sent through the side-effect ledger
(`Ledger.mutate`, which reads before every attempt, or `Ledger.once`, for what no read
can confirm), never called directly or through the plain retry of `Ledger.call`.

Every method of the provider protocols is sorted into reads and mutations here, so a
new one must be sorted too; then each call site of a mutation in the worker is found
in the source and must sit inside a `mutate(...)` or `once(...)` call."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from worker.providers.base import IdentityCenter, IdentityProvider

WORKER = Path(__file__).resolve().parents[2] / "worker"

MUTATIONS = {
    "deactivate_user",
    "revoke_sessions",
    "disable_user",
    "merge_deny",
    "remove_deny",
    "unassign",
    "leave_group",
    # re-applies the permission set as it stands; a repeat changes nothing, so it may
    # be retried blind (Ledger.call): checked separately below
    "provision",
}
READS = {
    "find_user",
    "find_user_by_external_id",
    "find_user_id",
    "get_user",
    "console_user_url",
    "group_memberships",
    "user_statuses",
    "assignments",
    "permission_set",
    "reachable_permission_sets",
    "reachable_applications",
    "deny_policy",
    "provisioned",
    "assignment_deleted",
    "plan",
}
#: the ledger's entry points that read before every attempt or record what they sent
THROUGH_LEDGER = {"mutate", "once"}


def protocol_methods(protocol: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(protocol)
        if not name.startswith("_") and inspect.isfunction(member)
    }


def test_every_provider_method_is_sorted_into_reads_or_mutations() -> None:
    methods = protocol_methods(IdentityProvider) | protocol_methods(IdentityCenter)
    assert methods - MUTATIONS - READS == set(), "sort the new provider method"
    assert MUTATIONS & READS == set()


def call_sites() -> list[tuple[str, int, str, list[str]]]:
    """(file, line, mutation, the names of the calls around it, innermost first)."""
    found = []
    for path in sorted(WORKER.rglob("*.py")):
        relative = path.relative_to(WORKER).as_posix()
        if relative.startswith(("providers/", "sandbox/")) or relative == "testing.py":
            continue  # the adapters themselves, the emulators, the test doubles
        tree = ast.parse(path.read_text(), str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and node.attr in MUTATIONS:
                name = node.attr
            if name is None:
                continue
            around = []
            up = parents.get(node)
            while up is not None:
                if isinstance(up, ast.Call) and up.func is not node:
                    func = up.func
                    if isinstance(func, ast.Attribute):
                        around.append(func.attr)
                    elif isinstance(func, ast.Name):
                        around.append(func.id)
                up = parents.get(up)
            found.append((relative, node.lineno, name, around))
    return found


def test_every_mutation_in_the_worker_goes_through_the_ledger() -> None:
    sites = call_sites()
    # each mutation is found where it is used: the search looks in the right places
    assert {name for _, _, name, _ in sites} == MUTATIONS
    direct = [
        f"{file}:{line} {name} (inside {around or 'nothing'})"
        for file, line, name, around in sites
        if name != "provision" and not THROUGH_LEDGER & set(around)
    ]
    assert direct == []
    blind = [
        f"{file}:{line} provision (inside {around or 'nothing'})"
        for file, line, name, around in sites
        if name == "provision" and not {"call", *THROUGH_LEDGER} & set(around)
    ]
    assert blind == []
