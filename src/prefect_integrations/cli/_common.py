"""Shared plumbing of the CLI: input parsing and output."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect_integrations.cli._output import echo, json_text, safe_text
from prefect_integrations.exceptions import ValidationError, quote
from prefect_integrations.runtime import Runtime, reset_runtime, runtime
from prefect_integrations.scope import Context, Scope, check_context_id, parse_scope

__all__ = [
    "Runtime",
    "caller_context",
    "check_output_file",
    "echo",
    "echo_table",
    "emit_json",
    "parse_json_option",
    "read_json_file",
    "reset_runtime",
    "runtime",
    "scope_option",
]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _loads(text: str, subject: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            subject, [], f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise ValidationError(subject, [], f"not valid JSON ({exc})") from None
    except RecursionError:
        raise ValidationError(subject, [], "not valid JSON (nested too deeply)") from None


def parse_json_option(text: str, *, option: str) -> Any:
    """Parse a JSON command-line option; errors name the option and the position."""
    return _loads(text, option)


def read_json_file(path: str, *, what: str) -> Any:
    """Read JSON from a file (or a pipe), or from standard input when ``path`` is ``-``.

    Error messages give the position of a syntax error, never the content.
    """
    label = "standard input" if path == "-" else quote(path, limit=1000)
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            file = Path(path)
            if file.is_dir():
                raise ValidationError(f"{what} file {label}", [], "is a folder, not a file")
            if not file.exists():
                raise ValidationError(f"{what} file {label}", [], "no such file")
            # not only regular files: a pipe (`<(secrets-tool get ...)`) or a device too
            text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"{what} from {label}", [], f"not UTF-8 text (byte {exc.start})"
        ) from None
    except OSError as exc:
        raise ValidationError(f"{what} file {label}", [], exc.strerror or "unreadable") from None
    return _loads(text, f"{what} from {label}")


def check_output_file(path: Path, *, subject: str, force: bool, hint: str = "") -> None:
    """Refuse ``path`` as a file to write: a folder, or existing without ``force``.

    A name the system refuses (too long, a missing folder) is a clear error too.
    """
    try:
        if path.is_dir() or not path.name:
            raise ValidationError(subject, [], "is a folder, not a file")
        if not path.parent.is_dir():
            raise ValidationError(subject, [], f"no such folder: {path.parent}")
        if (path.exists() or path.is_symlink()) and not force:
            raise ValidationError(subject, [], "already exists" + (f" ({hint})" if hint else ""))
    except OSError as exc:
        raise ValidationError(subject, [], exc.strerror or "cannot be used") from None
    except ValueError:  # a NUL character
        raise ValidationError(subject, [], "not a usable file name") from None


def caller_context(client: str | None, user: str | None) -> Context:
    """The context of ``--client`` and ``--user``; an invalid id names its option."""
    if client is not None:
        check_context_id(client, field="--client")
    if user is not None:
        check_context_id(user, field="--user")
    return Context(client_id=client, user_id=user)


def scope_option(text: str, *, option: str = "--context") -> Scope:
    """Parse a ``global | client:ID | user:ID`` option; errors name the option."""
    return parse_scope(text, subject=f"Context ({option})")


def emit_json(value: Any) -> None:
    """Print a value as indented JSON (ASCII, control characters escaped)."""
    echo(json_text(value))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a plain aligned table; each cell is one line, terminal controls escaped."""
    cells = [[str(h) for h in headers]] + [
        ["" if v is None else safe_text(str(v), one_line=True) for v in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            echo("  ".join("-" * w for w in widths))
