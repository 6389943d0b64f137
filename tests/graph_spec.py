"""Microsoft's own definition of Graph v1.0, and checks of real exchanges against it —
as `tests/okta_spec.py` does for Okta.

The definition is `msgraph-sdk`: request builders generated from Graph's OpenAPI
description (one module per path, each with its URL template — path and the query
parameters it takes — and one method per HTTP verb it allows, typed with the models
it sends and returns) and the models' own JSON parsers (`kiota_serialization_json`).
A request is matched to its builder by walking the package as Kiota lays it out
(`users/item/revoke_sign_in_sessions/...`); a body parses into the builder's model
with nothing left over (an unknown or misspelt property lands in `additional_data`)
and survives a round trip (a wrong type does not); an error parses as `ODataError`;
a throttling answer carries the `Retry-After` Kiota's retry handler reads.

The token endpoint (Microsoft identity platform) is not part of Graph's definition:
`tests/integration/test_entra.py` checks it against RFC 6749/7523 instead.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgraph
import pytest
from kiota_abstractions.base_request_builder import BaseRequestBuilder
from kiota_abstractions.serialization import Parsable
from kiota_http.middleware.retry_handler import RetryHandler
from kiota_serialization_json.json_parse_node import JsonParseNode
from kiota_serialization_json.json_serialization_writer import JsonSerializationWriter
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from tests.wire import WireExchange, conformance, record_emulator
from worker.sandbox.entra import EntraEmulator

GENERATED = Path(msgraph.__file__).parent / "generated"
VERSION = "/v1.0"
#: Graph's documented form for a key that starts with `$`: `/users('$key')`
_PARENTHESISED = re.compile(r"^([A-Za-z]+)\('((?:[^']|'')*)'\)$")
#: OData annotations (`@odata.context`, `@odata.type`) are not properties
_ANNOTATION = "@"
#: a builder is made only to read its URL template; it never sends anything
_NO_ADAPTER: Any = object()


def snake(segment: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", segment).lower()


@dataclass(frozen=True)
class Builder:
    cls: type[BaseRequestBuilder]
    url_template: str

    @property
    def query_parameters(self) -> frozenset[str]:
        found = re.search(r"\{\?([^}]*)\}", self.url_template)
        if not found:
            return frozenset()
        return frozenset(unquote(name) for name in found.group(1).split(","))

    def allows(self, verb: str) -> bool:
        return inspect.iscoroutinefunction(getattr(self.cls, verb.lower(), None))

    def model(self, verb: str, role: str) -> type[Parsable] | None:
        """The model a verb sends (`role` "body") or returns ("return"), from the method's
        annotation, resolved through the module's own imports."""
        signature = inspect.signature(getattr(self.cls, verb.lower()))
        if role == "body":
            body = signature.parameters.get("body")
            if body is None:
                return None
            text = str(body.annotation)
        else:
            text = str(signature.return_annotation)
        name = re.sub(r"^Optional\[(.*)\]$", r"\1", text)
        if name in ("None", "bytes", "inspect._empty") or not name.isidentifier():
            return None
        source = inspect.getsource(inspect.getmodule(self.cls))  # type: ignore[arg-type]
        imported = re.search(rf"from (\.+[\w.]*) import {name}\b", source)
        if imported is None:
            return None
        package = self.cls.__module__.rpartition(".")[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(
                importlib.util.resolve_name(imported.group(1), package)
            )
        model: type[Parsable] = getattr(module, name)
        return model


def _builder_in(directory: Path) -> Builder:
    (file,) = directory.glob("*_request_builder.py")
    module_name = ".".join(file.relative_to(GENERATED.parent.parent).with_suffix("").parts)
    with warnings.catch_warnings():  # the SDK's own deprecations, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(module_name)
    (cls,) = (
        c
        for c in vars(module).values()
        if inspect.isclass(c) and issubclass(c, BaseRequestBuilder) and c.__module__ == module_name
    )
    instance = cls(_NO_ADAPTER, {})  # only the URL template is read
    return Builder(cls=cls, url_template=instance.url_template)


@functools.cache
def builder_for(path: str) -> tuple[Builder | None, str]:
    """The request builder of a Graph path (after /v1.0), or None and why not."""
    segments: list[str] = []
    for segment in path.strip("/").split("/"):
        keyed = _PARENTHESISED.match(segment)
        segments += [keyed.group(1), keyed.group(2)] if keyed else [segment]
    directory = GENERATED
    for segment in segments:
        named = directory / snake(segment)
        if named.is_dir() and segment != "item":
            directory = named
        elif (directory / "item").is_dir() and directory != GENERATED:
            directory = directory / "item"
        else:
            return None, f"no Graph v1.0 path has {segment!r} here ({path})"
    return _builder_in(directory), ""


def _parse(model: type[Parsable], value: Any) -> Parsable:
    parsed: Parsable = JsonParseNode(value).get_object_value(model)  # type: ignore[type-var]
    return parsed


def _serialised(model: Parsable) -> Any:
    writer = JsonSerializationWriter()
    writer.write_object_value(None, model)
    return json.loads(writer.get_serialized_content())


def model_errors(model: type[Parsable], value: Any, where: str) -> list[str]:
    """`value` as the model reads it: nothing unknown left over, nothing lost or changed
    on the way through the model (a wrong type reads as nothing)."""
    if not isinstance(value, dict):
        return [f"{where}: {value!r} is not a JSON object"]
    parsed = _parse(model, value)
    errors: list[str] = []
    left = getattr(parsed, "additional_data", {}) or {}
    unknown = sorted(k for k in left if not k.startswith(_ANNOTATION))
    if unknown:
        errors.append(f"{where}: not properties of {model.__name__}: {unknown}")
    again = _serialised(parsed)
    for name, sent in value.items():
        if name.startswith(_ANNOTATION) or name in unknown:
            continue
        if again.get(name) != sent:
            errors.append(
                f"{where}: {model.__name__}.{name} = {sent!r} reads back as {again.get(name)!r}"
            )
    return errors


def properties_of(model: type[Parsable]) -> frozenset[str]:
    return frozenset(model().get_field_deserializers())


class Graph:
    def request_errors(self, exchange: WireExchange) -> list[str]:
        what = f"{exchange.method} {exchange.path}"
        if not exchange.path.startswith(VERSION + "/"):
            return [f"{what}: not under {VERSION}"]
        builder, why = builder_for(exchange.path.removeprefix(VERSION))
        if builder is None:
            return [f"{what}: {why}"]
        if not builder.allows(exchange.method):
            return [f"{what}: {builder.cls.__name__} has no {exchange.method.lower()}"]
        errors = []
        for name, value in exchange.query:
            if name not in builder.query_parameters:
                errors.append(
                    f"{what}: {name!r} is not a query parameter of {builder.url_template}"
                )
            elif name == "$select":
                returned = builder.model(exchange.method, "return")
                known = properties_of(returned) if returned is not None else frozenset()
                wrong = sorted(set(value.split(",")) - known)
                if wrong:
                    errors.append(f"{what}: $select names no property: {wrong}")
        body = exchange.request_json()
        sends = builder.model(exchange.method, "body")
        if sends is None:
            if body is not None:
                errors.append(
                    f"{what}: {builder.cls.__name__}.{exchange.method.lower()} takes no body"
                )
        elif body is None:
            errors.append(f"{what}: needs a {sends.__name__} body")
        else:
            errors += model_errors(sends, body, what)
        return errors

    def response_errors(self, exchange: WireExchange) -> list[str]:
        what = f"{exchange.method} {exchange.path} -> {exchange.status}"
        if exchange.status >= 400:
            return self.error_errors(
                exchange.status, exchange.response_body, exchange.response_headers, what
            )
        body = exchange.response_json()
        if exchange.status == 204:
            return [] if body is None else [f"{what}: 204 with a body"]
        builder, why = builder_for(exchange.path.removeprefix(VERSION))
        if builder is None:
            return [f"{what}: {why}"]
        returns = builder.model(exchange.method, "return")
        if returns is None:
            return [f"{what}: {builder.cls.__name__} returns nothing, yet a body came"]
        if body is None:
            return [f"{what}: no {returns.__name__} in the answer"]
        return model_errors(returns, body, what)

    @staticmethod
    def error_errors(status: int, content: bytes, headers: Any, what: str) -> list[str]:
        try:
            body = json.loads(content)
        except ValueError:
            return [f"{what}: the error body is not JSON"]
        errors = model_errors(ODataError, body, what)
        parsed = _parse(ODataError, body)
        main = getattr(parsed, "error", None)
        if main is None or not main.code or not main.message:
            errors.append(f"{what}: ODataError without error.code and error.message")
        if status == 429:
            hint = headers.get("Retry-After")
            if hint is None or RetryHandler()._parse_retry_after(hint) is None:
                errors.append(f"{what}: 429 without a Retry-After Kiota can read ({hint!r})")
        return errors


#: the Microsoft identity platform's token endpoint, served by the same emulator
TOKEN = re.compile(r"^/[^/]+/oauth2/v2\.0/token$")
SANDBOX_PREFIX = "/_sandbox/"


def exchange_errors(exchange: WireExchange) -> list[str]:
    """What is not Graph's in one exchange (token endpoint and sandbox routes aside)."""
    if exchange.raw_path.startswith(SANDBOX_PREFIX) or TOKEN.match(exchange.raw_path):
        return []
    graph = Graph()
    return graph.request_errors(exchange) + graph.response_errors(exchange)


@pytest.fixture(autouse=True)
def graph_conformance(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WireExchange]]:
    """Every exchange of every Entra emulator any test in the suite starts, checked
    against Graph's definition when the test ends: a test fails on an exchange Graph
    would not make."""
    seen = record_emulator(monkeypatch, EntraEmulator)
    yield seen
    problems = conformance(seen, exchange_errors)
    assert not problems, "not Graph's:\n" + "\n".join(problems)
