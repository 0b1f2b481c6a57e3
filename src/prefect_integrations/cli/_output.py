r"""What the CLI prints: text from outside made harmless for a terminal.

Provider messages, instance names and descriptions, definition problems and method
outputs come from outside; printed raw, an escape sequence or a carriage return could
rewrite what the terminal shows (a failed call's error line turned into "succeeded").
Every line the CLI prints goes through `echo`, which escapes C0 control characters (but
line feeds and tabs where text may span lines), DEL, C1 controls (so ANSI/OSC escape
sequences lose their introducer), bidi override characters and lone surrogates, as
``\r``, ``\x1b`` or ``\u202e``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import typer

__all__ = ["echo", "json_text", "safe_text"]

_UNSAFE_CHARS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff"  # not \t, \n
_UNSAFE_MULTILINE = re.compile(f"[{_UNSAFE_CHARS}]")
_UNSAFE_ONE_LINE = re.compile(f"[\t\n{_UNSAFE_CHARS}]")


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, *, one_line: bool = False) -> str:
    """``text`` with every character that could steer a terminal escaped.

    Line feeds and tabs are kept unless ``one_line`` (a table cell, an error line).
    """
    pattern = _UNSAFE_ONE_LINE if one_line else _UNSAFE_MULTILINE
    return pattern.sub(_escape, text)


def echo(message: object = "", *, err: bool = False, one_line: bool = False) -> None:
    """Print ``message`` (made safe by `safe_text`) and a line feed."""
    typer.echo(safe_text(str(message), one_line=one_line), err=err)


def json_text(value: Any) -> str:
    """``value`` as indented JSON, ASCII only with no raw control character (DEL included)."""
    text = json.dumps(value, indent=2, sort_keys=False, default=str)
    return text.replace("\x7f", "\\u007f")  # a JSON escape: the only place DEL can be is a string
