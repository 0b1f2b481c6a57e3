"""What a response says, read the same way for its output and for its error."""

from __future__ import annotations

import json
from typing import Any

import httpx

from prefect_integrations._templates import Scope
from prefect_integrations.definitions import RequestContext

__all__ = ["declares_json", "response_body", "response_scope"]


def response_body(response: httpx.Response) -> Any:
    """The parsed JSON body, or the text if it is not JSON, or None if empty."""
    content = response.content
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return response.text


def declares_json(response: httpx.Response) -> bool:
    """True when the response's content type is JSON (``application/json``, ``+json``)."""
    media = str(response.headers.get("content-type", "")).split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def response_scope(
    response: httpx.Response, body: Any, ctx: RequestContext | None, *, headers: bool
) -> Scope:
    """The template scope of a response.

    ``response`` (the body) and ``status``; ``headers`` when asked for, ``inputs`` and
    ``config`` with a request context.
    """
    variables: dict[str, Any] = {"response": body, "status": response.status_code}
    if headers:
        variables["headers"] = dict(response.headers.items())
    if ctx is not None:
        variables["inputs"] = ctx.inputs
        variables["config"] = ctx.config
    return Scope(variables)
