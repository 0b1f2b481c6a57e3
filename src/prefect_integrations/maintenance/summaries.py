"""The maintenance runs' summaries as one line of text, for logs, artifacts and terminals.

The flows return their summaries as dicts (JSON-ready, for machines and ``--json``);
people read them through these functions instead of a Python ``repr``::

    checked 5 instances: 3 ok, 2 provider_auth_failed; no outage; 1 degraded (xero_b)

Each function takes the dict its run returns, so a summary read back from a flow run's
result reads the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "SUMMARY_TEXTS",
    "credential_rotation_text",
    "health_text",
    "key_counts_text",
    "key_rotation_text",
    "refresh_text",
    "summary_text",
]

_LISTED = 5  # ids named in a line before "and N more"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _counts(counts: Mapping[str, int]) -> str:
    """``3 ok, 2 provider_auth_failed``: the largest first, ties by name."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{n} {what}" for what, n in ordered)


def _ids(ids: Iterable[str]) -> str:
    """``a, b, c`` (at most a few, then ``and N more``)."""
    found = list(ids)
    shown = ", ".join(found[:_LISTED])
    return f"{shown} and {len(found) - _LISTED} more" if len(found) > _LISTED else shown


def health_text(summary: Mapping[str, Any]) -> str:
    """A health sweep (`HealthReport.summary`) in one line."""
    checked = int(summary.get("checked", 0))
    if not checked:
        return "checked 0 instances (none due)"
    parts = [f"checked {_plural(checked, 'instance')}: {_counts(summary.get('results', {}))}"]
    outages: Mapping[str, str] = summary.get("outages") or {}
    if outages:
        parts.append(
            "provider outage: "
            + ", ".join(f"{i} ({reason})" for i, reason in sorted(outages.items()))
        )
    else:
        parts.append("no outage")
    for key in ("degraded", "recovered"):
        ids = summary.get(key) or []
        if ids:
            parts.append(f"{len(ids)} {key} ({_ids(ids)})")
    return "; ".join(parts)


def refresh_text(summary: Mapping[str, Any]) -> str:
    """A token refresh run (`RefreshReport.summary`) in one line."""
    candidates = int(summary.get("candidates", 0))
    if not candidates:
        return "no token expiring"
    text = f"{_plural(candidates, 'token')} expiring: {_counts(summary.get('results', {}))}"
    failed: Mapping[str, str] = summary.get("failed") or {}
    if failed:
        text += "; failed: " + _ids(f"{i} ({reason})" for i, reason in sorted(failed.items()))
    return text


def key_counts_text(counts: Mapping[str, int]) -> str:
    """Instances per key id, ``k2 5, k1 0``; ``none`` when nothing is stored."""
    return ", ".join(f"{kid} {n}" for kid, n in sorted(counts.items())) or "none"


def _failed(failed: Any) -> dict[str, str]:
    """Failures as ``{instance: reason}``, from a dict or ``[{instance_id, reason}]``."""
    if isinstance(failed, Mapping):
        return {str(i): str(r) for i, r in failed.items()}
    return {str(f["instance_id"]): str(f["reason"]) for f in failed or []}


def key_rotation_text(keys: Mapping[str, Any]) -> str:
    """Key re-encryption in one line.

    ``keys`` is the ``keys`` part of the rotation flow's summary or
    `RotationReport.as_dict`.
    """
    failed = _failed(keys.get("failed"))
    text = (
        f"{keys.get('rotated', 0)} re-encrypted, {len(failed)} failed; per key id "
        f"{key_counts_text(keys.get('before') or {})} -> {key_counts_text(keys.get('after') or {})}"
    )
    if failed:
        text += "; failed: " + _ids(f"{i} ({reason})" for i, reason in sorted(failed.items()))
    return text


def credential_rotation_text(summary: Mapping[str, Any]) -> str:
    """A credential rotation run (keys, then provider credentials) in one line."""
    text = "keys: " + key_rotation_text(summary.get("keys") or {})
    provider: Mapping[str, str] = summary.get("provider") or {}
    counts: dict[str, int] = {}
    for result in provider.values():
        counts[result] = counts.get(result, 0) + 1
    return f"{text}; provider credentials: {_counts(counts) or 'none'}"


#: The text of each maintenance run's summary, by deployment name.
SUMMARY_TEXTS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "health-check": health_text,
    "refresh-tokens": refresh_text,
    "rotate-credentials": credential_rotation_text,
}


def summary_text(name: str, summary: Mapping[str, Any]) -> str:
    """The summary of the run named ``name`` (a deployment name) in one line."""
    return SUMMARY_TEXTS[name](summary)
