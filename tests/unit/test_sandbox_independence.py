"""The sandbox and the product know each other's protocols only from the vendors' documents.

- An emulator that imported an adapter's constant (a path, a status, a grant type) would
  be wrong exactly where the adapter is wrong, and no test would notice: nothing under
  `worker/sandbox/` imports a product module, except the clock it runs on.
- The product's runtime does not load the sandbox: only `worker/demo.py` (the demo) and
  function-local imports in the `demo` and `sandbox` commands may import it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import worker

PACKAGE = Path(worker.__file__).parent
SANDBOX = PACKAGE / "sandbox"
#: the demo is the sandbox's other side: it seeds the emulators and drives the product
SANDBOX_SIDE_MODULES = ("worker.sandbox", "worker.demo")
#: what the emulators may take from the product: a clock to run on, no protocol knowledge
ALLOWED_FROM_PRODUCT = {"worker.clock": frozenset({"Clock", "SystemClock", "ManualClock"})}
#: the CLI commands that may load the sandbox
SANDBOX_COMMANDS = ("demo", "sandbox")


@dataclass(frozen=True, kw_only=True)
class Found:
    """One import statement: the module it names and where it stands."""

    module: str
    names: tuple[str, ...]
    line: int
    #: enclosing function names, innermost last
    functions: tuple[str, ...]
    #: string constants in the tests of the `if` statements around it
    conditions: tuple[str, ...]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, *, is_package: bool = False) -> list[Found]:
    """Every import in `source` (module `module`), absolute or relative, at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Found] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, functions: tuple[str, ...], conditions: tuple[str, ...]) -> None:
        def add(module: str, names: tuple[str, ...] = ()) -> None:
            found.append(
                Found(
                    module=module,
                    names=names,
                    line=getattr(node, "lineno", 0),
                    functions=functions,
                    conditions=conditions,
                )
            )

        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            names = tuple(alias.name for alias in node.names)
            # `from worker import sandbox` imports the module worker.sandbox
            for module in [f"{base}.{name}" for name in names] if base == "worker" else [base]:
                add(module, names)
        elif isinstance(node, ast.Call):
            # importlib.import_module("...") and __import__("...") count as imports too
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                target = node.args[0] if node.args else None
                add(str(target.value) if isinstance(target, ast.Constant) else "<dynamic>")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions = (*functions, node.name)
        if isinstance(node, ast.If):
            said = tuple(
                c.value
                for c in ast.walk(node.test)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
            for statement in node.body:
                visit(statement, functions, (*conditions, *said))
            for statement in node.orelse:
                visit(statement, functions, conditions)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, functions, conditions)

    visit(ast.parse(source), (), ())
    return found


def _is_within(module: str, packages: tuple[str, ...] | str) -> bool:
    packages = (packages,) if isinstance(packages, str) else packages
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def sandbox_violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What a sandbox module takes from the product beyond a clock."""
    wrong = []
    for imp in imports(source, module, is_package=is_package):
        if imp.module == "<dynamic>":
            wrong.append(f"line {imp.line}: an import of a computed module name")
        elif not _is_within(imp.module, "worker") or _is_within(imp.module, "worker.sandbox"):
            continue
        elif imp.module in ALLOWED_FROM_PRODUCT and imp.names:
            extra = sorted(set(imp.names) - ALLOWED_FROM_PRODUCT[imp.module])
            if extra:
                wrong.append(f"line {imp.line}: {', '.join(extra)} from {imp.module}")
        else:
            wrong.append(f"line {imp.line}: {imp.module} {', '.join(imp.names)}".rstrip())
    return wrong


def runtime_violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Imports of the sandbox (or the demo) by a product module, other than function-local
    ones in the code of the `demo` and `sandbox` commands."""
    wrong = []
    for imp in imports(source, module, is_package=is_package):
        if imp.module == "<dynamic>":
            wrong.append(f"line {imp.line}: an import of a computed module name")
            continue
        if not _is_within(imp.module, SANDBOX_SIDE_MODULES):
            continue
        in_command = any(said in SANDBOX_COMMANDS for said in imp.conditions) or any(
            command in f for f in imp.functions for command in SANDBOX_COMMANDS
        )
        if not imp.functions:
            wrong.append(f"line {imp.line}: {imp.module} imported at module level")
        elif not in_command:
            wrong.append(f"line {imp.line}: {imp.module} imported outside the demo/sandbox code")
    return wrong


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _runtime_modules() -> list[Path]:
    return [
        p
        for p in _modules(PACKAGE)
        if not p.is_relative_to(SANDBOX) and not _is_within(module_name(p), "worker.demo")
    ]


def test_the_emulators_import_no_product_module_but_the_clock() -> None:
    checked = _modules(SANDBOX)
    assert len(checked) >= 8  # okta, entra, google, identity_center, sessions, common, ...
    wrong = {
        str(p.relative_to(PACKAGE.parent)): found
        for p in checked
        if (
            found := sandbox_violations(
                p.read_text(encoding="utf-8"), module_name(p), is_package=p.name == "__init__.py"
            )
        )
    }
    assert wrong == {}


def test_the_runtime_imports_the_sandbox_only_in_the_demo_and_sandbox_commands() -> None:
    checked = _runtime_modules()
    assert PACKAGE / "cli.py" in checked and PACKAGE / "demo.py" not in checked
    wrong = {
        str(p.relative_to(PACKAGE.parent)): found
        for p in checked
        if (
            found := runtime_violations(
                p.read_text(encoding="utf-8"), module_name(p), is_package=p.name == "__init__.py"
            )
        )
    }
    assert wrong == {}


def test_loading_every_runtime_module_loads_no_sandbox_module() -> None:
    """What the parse cannot see: a product module that imports one that imports the sandbox."""
    names = [module_name(p) for p in _runtime_modules()]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        f"{[m.split('.') for m in SANDBOX_SIDE_MODULES]!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- the checks themselves catch what they are for ---------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "from worker.providers.oauth import JWT_BEARER_GRANT",
        "import worker.providers.okta",
        "from worker.clock import utc_iso",
        "from worker.clock import Clock, parse_iso",
        "from worker import config",
        "from ..providers import identity_center",
        "from ...worker.steps import x",
        "def f():\n    from worker.steps import DENY_SID",
        "import importlib\nimportlib.import_module('worker.providers.http')",
        "import importlib\nimportlib.import_module(name)",
    ],
)
def test_the_sandbox_check_finds_product_imports(source: str) -> None:
    assert sandbox_violations(source, "worker.sandbox.okta") != []


@pytest.mark.parametrize(
    "source",
    [
        "from worker.clock import Clock, SystemClock",
        "from worker.sandbox.common import AuditLog",
        "from . import common",
        "from .common import wire_time",
        "import json\nfrom aiohttp import web",
    ],
)
def test_the_sandbox_check_lets_the_clock_and_the_sandbox_through(source: str) -> None:
    assert sandbox_violations(source, "worker.sandbox.okta") == []


@pytest.mark.parametrize(
    "source",
    [
        "from worker.sandbox import Sandbox",
        "from worker.demo import run_demo",
        "import worker.sandbox.okta",
        "from worker import sandbox",
        "from .sandbox.okta import OktaEmulator",
        "def _run(args):\n    from worker.sandbox import Sandbox",
        "async def _dispatch(args):\n"
        "    if args.command == 'run':\n"
        "        from worker.sandbox.run import run_sandbox",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from worker.sandbox import Sandbox",
    ],
)
def test_the_runtime_check_finds_sandbox_imports(source: str) -> None:
    assert runtime_violations(source, "worker.cli") != []


@pytest.mark.parametrize(
    "source",
    [
        "async def _dispatch(args):\n"
        "    if args.command == 'demo':\n"
        "        from worker.demo import run_demo\n"
        "    if args.command == 'sandbox':\n"
        "        from worker.sandbox.run import run_sandbox",
        "async def _sandbox_command(args):\n    from worker.sandbox.run import run_sandbox",
        "from worker.providers.okta import Okta",
    ],
)
def test_the_runtime_check_lets_the_commands_through(source: str) -> None:
    assert runtime_violations(source, "worker.cli") == []
