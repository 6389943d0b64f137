"""What ships inside the package: the playbooks and a commented starter configuration.

The repository's top-level `playbooks/` and `config/` are the one source; the wheel
carries them as `worker/playbooks/` and `worker/starter/` (pyproject.toml's
`package-dir`). An installed `offboard` finds them there, a checkout (or an editable
install) at the top level, so `offboard demo` and `offboard init` need no checkout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from worker.errors import OffboardError

_PACKAGE = Path(__file__).resolve().parent

#: the starter configuration `offboard init` writes, and the schema it points at
STARTER_CONFIG = "offboard.example.yaml"
STARTER_SCHEMA = "offboard.schema.json"


def _shipped(in_wheel: str, in_checkout: str) -> Path:
    installed = _PACKAGE / in_wheel
    return installed if installed.is_dir() else _PACKAGE.parent / in_checkout


def playbooks_dir() -> Path:
    """The playbooks that ship with offboard (leaver, incident): searched after any
    configured `playbook_dirs`, so a configured playbook of the same name wins."""
    return _shipped("playbooks", "playbooks")


def starter_dir() -> Path:
    """The commented example configuration and its JSON Schema."""
    return _shipped("starter", "config")


@dataclass(frozen=True)
class Written:
    config: Path
    playbooks: tuple[Path, ...]


def write_starter(directory: Path) -> Written:
    """`offboard init DIR`: DIR/offboard.yaml (the commented example), its schema, and
    DIR/playbooks/ with the shipped playbooks. Nothing that exists is overwritten."""
    config = directory / "offboard.yaml"
    playbooks = directory / "playbooks"
    sources = sorted(playbooks_dir().glob("*.yaml"))
    targets = [
        config,
        directory / STARTER_SCHEMA,
        *(playbooks / p.name for p in sources),
    ]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise OffboardError(
            f"init: {', '.join(existing)} already exist(s); nothing written "
            "(choose another directory, or move them away)"
        )
    try:
        playbooks.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(starter_dir() / STARTER_CONFIG, config)
        shutil.copyfile(starter_dir() / STARTER_SCHEMA, directory / STARTER_SCHEMA)
        for source in sources:
            shutil.copyfile(source, playbooks / source.name)
    except OSError as exc:
        raise OffboardError(f"init: cannot write to {directory}: {exc.strerror}") from None
    return Written(config=config, playbooks=tuple(playbooks / p.name for p in sources))
