"""Values and filters of the binding templates.

How rendered values read as text and JSON (`is_omitted`, `to_text`, `dumps`) and the
filters the templates may use beyond Jinja's built-ins (`FILTERS`): ``tojson``,
``b64encode``, ``b64url``, ``urlquote``, ``xero_date``, ``pick`` and ``rename``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

from jinja2 import Undefined

from prefect_integrations.handlers.xero import iso_date

__all__ = ["FILTERS", "OMIT", "dumps", "is_omitted", "to_text"]

OMIT: Final = None
"""What an omitted value renders to."""


def is_omitted(value: object) -> bool:
    """Whether a rendered value means "leave this out" (None or undefined)."""
    return value is None or isinstance(value, Undefined)


def to_text(value: object) -> str:
    """Text of a rendered scalar in a string context: None/undefined -> '', bools lowercase."""
    if value is None or isinstance(value, Undefined):
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        return dumps(value)
    return str(value)


def _json_default(value: object) -> object:
    if isinstance(value, Undefined):  # e.g. inside a list built by {{ [inputs.a, inputs.b] }}
        return None
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: object) -> str:
    """Compact JSON text (UTF-8, no NaN); undefined values nested in it become null."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
    )


# --------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------


def _tojson(value: Any) -> Any:
    """JSON text of ``value`` (compact, UTF-8, not HTML-escaped); undefined stays omitted."""
    if is_omitted(value):
        return None
    return dumps(value)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else to_text(value).encode("utf-8")


def _b64encode(value: Any) -> Any:
    """Standard base64 (RFC 4648 section 4) of the UTF-8 text or bytes."""
    if is_omitted(value):
        return None
    return base64.b64encode(_as_bytes(value)).decode("ascii")


def _b64url(value: Any) -> Any:
    """URL-safe base64 (RFC 4648 section 5, padding kept) of the UTF-8 text or bytes."""
    if is_omitted(value):
        return None
    return base64.urlsafe_b64encode(_as_bytes(value)).decode("ascii")


def _urlquote(value: Any) -> Any:
    """Percent-encode everything but unreserved characters (for one URL component)."""
    if is_omitted(value):
        return None
    return quote(to_text(value), safe="-._~")


def _xero_date(value: Any) -> Any:
    """Xero's JSON dates to ISO dates (see `prefect_integrations.handlers.xero.iso_date`)."""
    if not isinstance(value, str):
        return None if is_omitted(value) else value
    return iso_date(value)


def _each(value: Any, transform: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Any:
    if is_omitted(value):
        return None
    if isinstance(value, Mapping):
        return transform(value)
    if isinstance(value, list | tuple):
        return [transform(item) for item in value if isinstance(item, Mapping)]
    return value


def _pick(value: Any, *keys: str) -> Any:
    """Keep only ``keys`` of an object (or of each object of a list); None values dropped."""
    return _each(
        value, lambda item: {k: item[k] for k in keys if k in item and item[k] is not None}
    )


def _rename(value: Any, mapping: Mapping[str, str]) -> Any:
    """Keep the keys named in ``mapping``, renamed to its values; None values dropped.

    Applies to an object or to each object of a list:
    ``{{ response.Contacts | rename({'ContactID': 'contact_id', 'Name': 'name'}) }}``.
    """
    return _each(
        value,
        lambda item: {
            new: item[old] for old, new in mapping.items() if old in item and item[old] is not None
        },
    )


FILTERS: Final[Mapping[str, Callable[..., Any]]] = {
    "tojson": _tojson,
    "b64encode": _b64encode,
    "b64url": _b64url,
    "urlquote": _urlquote,
    "xero_date": _xero_date,
    "pick": _pick,
    "rename": _rename,
}
