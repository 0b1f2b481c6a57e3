"""Keeping decrypted credentials out of log records.

httpx logs every request's URL at INFO (with its query string, where an API key may
travel, percent-encoded) and httpcore logs response headers at DEBUG (where a provider
may echo a credential back). The vault remembers the secret values of every credentials
it decrypts (process-wide, the most recent `MAX_REMEMBERED`, each also as it appears
percent-encoded in a URL). `install` wraps the log record factory so that records of the
loggers under `FILTERED_LOGGERS` (children included) have them replaced by ``********``
in their message when they are made, before any filter or handler sees them. Records
that are not made (the logger's level is above the call's) cost nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prefect_integrations.credentials import MASK
from prefect_integrations.masking import encoded_forms, secret_strings

__all__ = [
    "FILTERED_LOGGERS",
    "MAX_REMEMBERED",
    "install",
    "remember",
    "scrub",
]

#: Loggers whose records (and their children's) are scrubbed.
FILTERED_LOGGERS = ("httpx", "httpcore", "authlib", "prefect_integrations")
_PREFIXES = tuple(f"{name}." for name in FILTERED_LOGGERS)
#: How many secret values are remembered; the oldest are forgotten first.
MAX_REMEMBERED = 4096
#: Shorter values are not remembered: masking them would garble unrelated text.
_MIN_LENGTH = 6

_lock = threading.Lock()
#: Remembered secrets (oldest first), each with the forms it travels in.
_secrets: OrderedDict[str, frozenset[str]] = OrderedDict()
_pattern: re.Pattern[str] | None = None  # every remembered form, longest first; rebuilt lazily


def remember(values: Mapping[str, Any]) -> None:
    """Remember the secret strings of decrypted credential ``values`` for `scrub`."""
    global _pattern
    with _lock:
        for value in secret_strings(values, min_length=_MIN_LENGTH):
            if value not in _secrets:
                _secrets[value] = frozenset(encoded_forms(value))
                _pattern = None
            _secrets.move_to_end(value)
        while len(_secrets) > MAX_REMEMBERED:
            _secrets.popitem(last=False)
            _pattern = None


def scrub(text: str) -> str:
    """``text`` with every remembered secret, in each of its forms, replaced by ``********``."""
    global _pattern
    with _lock:
        if not _secrets:
            return text
        if _pattern is None:
            forms = {form for encoded in _secrets.values() for form in encoded}
            ordered = sorted(forms, key=len, reverse=True)  # a longer form masks first
            _pattern = re.compile("|".join(map(re.escape, ordered)))
        pattern = _pattern
    return pattern.sub(MASK, text)


def _scrub_record(record: logging.LogRecord) -> None:
    """Mask remembered secrets in the message of a record of a filtered logger."""
    name = record.name
    if not _secrets or not (name in FILTERED_LOGGERS or name.startswith(_PREFIXES)):
        return
    message = record.getMessage()
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, None


_installed = False


def install() -> None:
    """Wrap the process's log record factory with `_scrub_record` (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
