"""Keeping decrypted credentials out of the HTTP libraries' log records.

httpx logs every request's URL at INFO (with its query string, where an API key may
travel) and httpcore logs response headers at DEBUG (where a provider may echo a
credential back). The vault remembers the secret values of every credentials it decrypts
(process-wide, the most recent `MAX_REMEMBERED`); `SecretLogFilter`, installed on those
libraries' loggers and on this package's own, replaces them with ``********`` in a
record's message before any handler sees it. With those loggers below INFO/DEBUG (the
default), no record is made and the filter costs nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prefect_integrations.credentials import MASK, secret_strings

__all__ = [
    "FILTERED_LOGGERS",
    "MAX_REMEMBERED",
    "SecretLogFilter",
    "install",
    "remember",
    "scrub",
]

#: Loggers whose records are scrubbed (logger filters apply to records made there).
FILTERED_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "authlib",
    "prefect_integrations",
)
#: How many secret values are remembered; the oldest are forgotten first.
MAX_REMEMBERED = 4096
#: Shorter values are not remembered: masking them would garble unrelated text.
_MIN_LENGTH = 6

_lock = threading.Lock()
_secrets: OrderedDict[str, None] = OrderedDict()
_pattern: re.Pattern[str] | None = None  # all remembered secrets, longest first; rebuilt lazily


def remember(values: Mapping[str, Any]) -> None:
    """Remember the secret strings of decrypted credential ``values`` for `scrub`."""
    global _pattern
    with _lock:
        for secret in secret_strings(values, min_length=_MIN_LENGTH):
            if secret not in _secrets:
                _pattern = None
            _secrets[secret] = None
            _secrets.move_to_end(secret)
        while len(_secrets) > MAX_REMEMBERED:
            _secrets.popitem(last=False)
            _pattern = None


def scrub(text: str) -> str:
    """``text`` with every remembered secret replaced by ``********``."""
    global _pattern
    with _lock:
        if not _secrets:
            return text
        if _pattern is None:
            ordered = sorted(_secrets, key=len, reverse=True)  # a longer secret masks first
            _pattern = re.compile("|".join(map(re.escape, ordered)))
        pattern = _pattern
    return pattern.sub(MASK, text)


class SecretLogFilter(logging.Filter):
    """Masks remembered secrets in a record's message (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message if it contains a remembered secret."""
        if not _secrets:
            return True
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = SecretLogFilter()


def install() -> None:
    """Add the filter to every logger in `FILTERED_LOGGERS` (idempotent)."""
    for name in FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
