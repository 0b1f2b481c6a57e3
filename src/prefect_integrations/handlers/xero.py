"""Xero: how its JSON writes dates.

Xero's Accounting API answers dates as ``/Date(1518685950940+0000)/``; the ``xero_date``
template filter turns them into ISO dates.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["iso_date"]

_XERO_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
_ISO_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ].*)?$")


def iso_date(value: str) -> str:
    """``/Date(1518685950940+0000)/`` (Xero's JSON dates) -> ``2018-02-15``.

    The milliseconds are since the Unix epoch; the optional offset is the time zone the date
    is expressed in. ISO strings (``2019-03-11T00:00:00``) are cut to their date; anything
    else is returned unchanged.
    """
    match = _XERO_DATE.match(value)
    if match is not None:
        offset = match.group(2) or "+0000"
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        moment = datetime.fromtimestamp(int(match.group(1)) / 1000, tz=UTC)
        return moment.astimezone(zone).date().isoformat()
    iso = _ISO_DATE.match(value)
    return iso.group(1) if iso is not None else value
