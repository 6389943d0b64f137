"""The OpenAPI 3.1 document of `offboard serve`, served at /openapi.json."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

OPENAPI: dict[str, Any] = json.loads(
    resources.files("worker.web").joinpath("openapi.json").read_text(encoding="utf-8")
)
