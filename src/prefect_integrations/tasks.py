"""Generated Prefect tasks: one per definition method.

    from prefect_integrations.tasks import xero

    @flow
    def bill(contact_id: str) -> None:
        with integration_context(client_id="acme"):
            xero.create_invoice(contact_id=contact_id, line_items=[...])

Each task has a real signature built from the method's ``inputSchema`` (keyword-only
parameters, schema defaults, annotations from the JSON types) plus an optional
``instance`` parameter (an instance id or an `IntegrationInstance` block). Without it, the
instance is resolved from the current `integration_context`. Tasks are named
``<integration>.<method>``, tagged ``integration:<id>``, and use ``NO_CACHE``: generated
tasks share their source code, so caching by source would mix results. Errors raised are
the package's own, already redacted of every secret.
"""

from __future__ import annotations

import inspect
import keyword
import re
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE

from prefect_integrations.blocks import naming_block
from prefect_integrations.context import current_context
from prefect_integrations.definitions import Definition, Method
from prefect_integrations.integration_task import IntegrationTask, retry_condition
from prefect_integrations.method_docs import method_doc
from prefect_integrations.runtime import runtime

__all__ = ["IntegrationTasks", "build_task", "call_method", "tasks_for"]

_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
    "null": type(None),
}
_OMITTED = object()


def _annotation(schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    if isinstance(kind, list):
        members = [_JSON_TYPES[k] for k in kind if k in _JSON_TYPES]
        if members:
            union = members[0]
            for member in members[1:]:
                union = union | member
            return union
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return str
    return Any


def _parameter_name(prop: str) -> str | None:
    name = re.sub(r"\W", "_", prop)
    if not name.isidentifier():
        return None
    return f"{name}_" if keyword.iskeyword(name) or name == "instance" else name


def method_signature(method: Method) -> tuple[inspect.Signature, dict[str, str]]:
    """The task signature of a method and the map from parameter to input property."""
    schema = method.input_schema
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    params: list[inspect.Parameter] = []
    names: dict[str, str] = {}
    for prop in sorted(properties, key=lambda p: (p not in required, 0)):
        name = _parameter_name(prop)
        if name is None or name in names:
            continue
        names[name] = prop
        sub = properties[prop] if isinstance(properties[prop], Mapping) else {}
        annotation = _annotation(sub)
        if prop in required:
            default: Any = inspect.Parameter.empty
        elif "default" in sub:
            default = sub["default"]
        else:
            default = None
            annotation = annotation | None if annotation is not Any else Any
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    params.append(
        inspect.Parameter("instance", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Any)
    )
    return inspect.Signature(params, return_annotation=Any), names


def call_method(
    integration_id: str, method_id: str, inputs: Mapping[str, Any], instance: object = None
) -> Any:
    """Resolve the instance (explicit or from the context) and call the method."""
    rt = runtime()
    explicit = getattr(instance, "instance_id", instance)
    if explicit is not None and not isinstance(explicit, str):
        raise TypeError("instance must be an instance id or an IntegrationInstance block")
    with naming_block(instance):  # a block naming a missing instance is named in the error
        chosen = rt.resolve(integration_id, current_context(), explicit)
        return rt.client(chosen).call(method_id, inputs)


def _task_function(definition: Definition, method: Method) -> Callable[..., Any]:
    signature, names = method_signature(method)
    integration_id, method_id = definition.id, method.id

    def run(**kwargs: Any) -> Any:
        instance = kwargs.pop("instance", None)
        # An unknown keyword is passed on under its own name, so that input validation
        # refuses it (naming it) instead of it being dropped without a word.
        inputs = {
            names.get(name, name): value
            for name, value in kwargs.items()
            if value is not None and value is not _OMITTED
        }
        return call_method(integration_id, method_id, inputs, instance)

    qualified = f"{integration_id}_{method_id}"
    run.__name__ = qualified
    run.__qualname__ = qualified
    run.__module__ = f"{__name__}.{integration_id}"
    run.__doc__ = method_doc(integration_id, method.raw)  # what help() shows
    run.__signature__ = signature  # type: ignore[attr-defined]
    return run


def build_task(
    definition: Definition,
    method: Method,
    *,
    retries: int = 0,
    retry_delay_seconds: float = 10.0,
) -> Task[..., Any]:
    """Build the Prefect task of one method."""
    return IntegrationTask(
        _task_function(definition, method),
        name=f"{definition.id}.{method.id}",
        description=method.description,
        tags={f"integration:{definition.id}"},
        cache_policy=NO_CACHE,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=retry_condition,
    )


class IntegrationTasks(types.SimpleNamespace):
    """The generated tasks of one integration, one attribute per method."""

    def __init__(
        self, definition: Definition, *, retries: int = 0, retry_delay_seconds: float = 10.0
    ) -> None:
        super().__init__(
            **{
                method.id: build_task(
                    definition, method, retries=retries, retry_delay_seconds=retry_delay_seconds
                )
                for method in definition.methods.values()
            }
        )
        self.__integration_id = definition.id

    def __repr__(self) -> str:
        return f"IntegrationTasks({self.__integration_id!r})"


_cache: dict[str, IntegrationTasks] = {}
_cache_lock = threading.Lock()


def tasks_for(
    integration_id: str, *, retries: int = 0, retry_delay_seconds: float = 10.0
) -> IntegrationTasks:
    """The generated tasks of an integration, with Prefect-level retries if asked."""
    definition = runtime().registry.get(integration_id)
    if retries:
        return IntegrationTasks(
            definition, retries=retries, retry_delay_seconds=retry_delay_seconds
        )
    with _cache_lock:
        found = _cache.get(integration_id)
        if found is None:
            found = _cache[integration_id] = IntegrationTasks(definition)
        return found


def __getattr__(name: str) -> IntegrationTasks:
    if name.startswith("__"):
        raise AttributeError(name)
    from prefect_integrations.exceptions import UnknownIntegration

    try:
        return tasks_for(name)
    except UnknownIntegration as exc:
        raise AttributeError(str(exc)) from None
