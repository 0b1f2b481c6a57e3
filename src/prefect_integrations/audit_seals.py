"""Signed checkpoints of the audit log, kept outside the database.

A checkpoint records each chain's head (last seq and hash), first seq and number of rows,
the rows of the log in all and the time, and is signed with HMAC-SHA256 under a subkey
(HKDF, `Keyring.subkey`) of a keyring key, named in it by id. It is JSON::

    {"format": "prefect-integrations.audit-checkpoint", "version": 1,
     "created_at": "2026-11-30T05:00:00.000000Z", "rows": 120, "sequence": 7,
     "database": "integrations@db.internal:5432",
     "previous": "<the previous checkpoint's signature>",
     "chains": [{"chain": 0, "first_seq": 1, "seq": 80, "head": "<sha256 hex>",
                 "rows": 80}, ...],
     "key_id": "k1", "signature": "<base64url>"}

The signature covers every other field, serialised canonically (sorted keys, no
spaces). Whoever holds the keyring can sign, so the database's owner alone cannot forge
one; `audit verify --checkpoint` then proves the log still holds each head unchanged and
every row before it that an authenticated cut did not archive.

Checkpoints form a chain. `take_checkpoint` signs only a log that verifies: given the
previous checkpoint, it checks the rows from its heads on (the log must still extend
it, `verify(..., from_heads=True)`) and numbers the new one ``sequence + 1`` with the
previous signature in ``previous``; without one, it verifies the whole log. So a cut
tail is never signed over by a later checkpoint, and a verifier choosing among stored
checkpoints takes the highest ``sequence`` (`newest`): replaying an old one gains nothing.
``database`` names the database (`database_label`: its name, host and port, from the
connection settings rather than from anything stored in it), so checkpoints of several
installations can share one Prefect server.

`sign_document`/`check_document` sign archive trailers the same way under their own
subkey, and `cut_mac`/`cut_is_authentic` the cuts `audit archive` writes into the log
(a third subkey): `verify` accepts a chain that starts late only under such a cut.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from prefect_integrations.exceptions import AuditChainBroken, ValidationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.store.audit_heads import chain_heads
from prefect_integrations.store.audit_verify import ChainHead, verify

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_PURPOSE",
    "CUT_PURPOSE",
    "Checkpoint",
    "canonical",
    "check_document",
    "cut_is_authentic",
    "cut_mac",
    "database_label",
    "loads_strict",
    "newest",
    "parse_checkpoint",
    "sign_document",
    "take_checkpoint",
]

CHECKPOINT_FORMAT = "prefect-integrations.audit-checkpoint"
_VERSION = 1
#: The purposes of the signing subkeys (HKDF ``info``).
CHECKPOINT_PURPOSE = b"prefect-integrations audit-checkpoint v1"
CUT_PURPOSE = b"prefect-integrations audit-cut v1"
#: The fields of a cut's details its MAC covers (with the chain).
CUT_FIELDS = ("before", "file_sha256", "first_seq", "rows", "through_hash", "through_seq")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def loads_strict(text: str | bytes, subject: str) -> Any:
    """JSON as signed documents need it: no duplicate keys, NaN or infinities.

    Two readers could otherwise see different values for one key. Errors name
    ``subject``.
    """
    try:
        return json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except RecursionError:
        raise ValidationError(subject, [], "not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise ValidationError(subject, [], f"not valid JSON ({exc})") from None


def canonical(payload: Mapping[str, Any]) -> bytes:
    """``payload`` as the bytes a signature covers: sorted keys, no spaces, ASCII."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_document(keyring: Keyring, purpose: bytes, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with ``key_id`` (the primary key's) and its ``signature`` added."""
    signed = {**payload, "key_id": keyring.primary_id}
    subkey = keyring.subkey(keyring.primary_id, purpose)
    assert subkey is not None  # the primary is in the keyring
    signed["signature"] = _b64(hmac.new(subkey, canonical(signed), hashlib.sha256).digest())
    return signed


def check_document(
    keyring: Keyring, purpose: bytes, document: Mapping[str, Any], *, subject: str
) -> None:
    """Raise `ValidationError` (naming ``subject``) unless ``document``'s signature holds."""
    key_id, signature = document.get("key_id"), document.get("signature")
    if not isinstance(key_id, str):
        raise ValidationError(subject, ["key_id"], "missing: the document is not signed")
    if not isinstance(signature, str):
        raise ValidationError(subject, ["signature"], "missing: the document is not signed")
    subkey = keyring.subkey(key_id, purpose)
    if subkey is None:
        raise ValidationError(
            subject,
            ["key_id"],
            f"signed with key {key_id!r}, which is not in the keyring (keep retired keys "
            "in the keyring while what they signed must be verified)",
        )
    body = {k: v for k, v in document.items() if k != "signature"}
    expected = _b64(hmac.new(subkey, canonical(body), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise ValidationError(
            subject,
            ["signature"],
            f"does not match the content (signed with key {key_id!r}): "
            "the document was changed or signed with another key",
        )


def _cut_body(chain: int, details: Mapping[str, Any]) -> bytes:
    return canonical({"chain": chain, **{k: details.get(k) for k in CUT_FIELDS}})


def cut_mac(keyring: Keyring, chain: int, details: Mapping[str, Any]) -> dict[str, str]:
    """The ``key_id`` and ``mac`` to add to a cut's details (primary key)."""
    subkey = keyring.subkey(keyring.primary_id, CUT_PURPOSE)
    assert subkey is not None  # the primary is in the keyring
    mac = _b64(hmac.new(subkey, _cut_body(chain, details), hashlib.sha256).digest())
    return {"key_id": keyring.primary_id, "mac": mac}


def cut_is_authentic(keyring: Keyring, chain: int, details: Mapping[str, Any]) -> bool:
    """True when a cut's details carry a MAC of a key in ``keyring`` over its fields."""
    key_id, mac = details.get("key_id"), details.get("mac")
    if not isinstance(key_id, str) or not isinstance(mac, str):
        return False
    subkey = keyring.subkey(key_id, CUT_PURPOSE)
    if subkey is None:
        return False
    expected = _b64(hmac.new(subkey, _cut_body(chain, details), hashlib.sha256).digest())
    return hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed record of the log's chains at a moment (see the module)."""

    created_at: str
    rows: int
    chains: tuple[ChainHead, ...]
    key_id: str
    signature: str
    #: 1 for the first checkpoint of a log, then one more than the previous one's
    sequence: int = 1
    #: the previous checkpoint's signature (None for the first)
    previous: str | None = None
    #: the database it covers (`database_label`)
    database: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint's JSON document."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": _VERSION,
            "created_at": self.created_at,
            "rows": self.rows,
            "sequence": self.sequence,
            "previous": self.previous,
            "database": self.database,
            "chains": [c.as_dict() for c in self.chains],
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def to_json(self) -> str:
        """The document as indented JSON (the signature does not depend on the layout)."""
        return json.dumps(self.as_dict(), indent=2) + "\n"


def database_label(url: str) -> str:
    """``name@host:port`` of a database URL (no user, no password)."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host", "local"))
    return f"{parsed.database or ''}@{host}:{parsed.port or 5432}"


def take_checkpoint(
    session: Session,
    keyring: Keyring,
    *,
    database: str,
    previous: Checkpoint | None = None,
    now: datetime | None = None,
) -> Checkpoint:
    """Verify the log, read the chains' heads (one snapshot) and sign them.

    With ``previous``, only the rows from its heads on are verified: the log must still
    extend it. Raises `AuditChainBroken` (and signs nothing) when it does not verify.
    """
    report = verify(
        session,
        previous.chains if previous else None,
        cut_check=lambda chain, details: cut_is_authentic(keyring, chain, details),
        from_heads=previous is not None,
    )
    if not report.ok:
        against = (
            f"checkpoint {previous.sequence} of {previous.created_at}" if previous else "itself"
        )
        problems = "; ".join(p.detail for p in report.problems[:3])
        raise AuditChainBroken(
            f"The audit log does not verify against {against}, so no checkpoint was signed: "
            f"{problems}" + (" ..." if len(report.problems) > 3 or report.more_problems else "")
        )
    rows, chains = chain_heads(session)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": _VERSION,
        "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "rows": rows,
        "sequence": previous.sequence + 1 if previous else 1,
        "previous": previous.signature if previous else None,
        "database": database,
        "chains": [c.as_dict() for c in chains],
    }
    signed = sign_document(keyring, CHECKPOINT_PURPOSE, payload)
    return Checkpoint(
        created_at=str(payload["created_at"]),
        rows=rows,
        chains=chains,
        key_id=signed["key_id"],
        signature=signed["signature"],
        sequence=int(payload["sequence"]),
        previous=payload["previous"],
        database=database,
    )


def newest(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint with the highest sequence (then the latest time), if any."""
    return max(checkpoints, key=lambda c: (c.sequence, c.created_at), default=None)


def _int(value: Any, subject: str, path: list[str | int]) -> int:
    if type(value) is not int or value < 0:
        raise ValidationError(subject, path, "must be a whole number, 0 or more")
    return value


def _chain(item: Any, subject: str, index: int) -> ChainHead:
    path: list[str | int] = ["chains", index]
    if not isinstance(item, dict):
        raise ValidationError(subject, path, "must be an object")
    head = item.get("head")
    if not (
        isinstance(head, str) and len(head) == 64 and all(c in "0123456789abcdef" for c in head)
    ):
        raise ValidationError(subject, [*path, "head"], "must be a SHA-256 hash in hex")
    return ChainHead(
        chain=_int(item.get("chain"), subject, [*path, "chain"]),
        seq=_int(item.get("seq"), subject, [*path, "seq"]),
        head=head,
        rows=_int(item.get("rows"), subject, [*path, "rows"]),
        first_seq=_int(item.get("first_seq"), subject, [*path, "first_seq"]),
    )


def parse_checkpoint(document: Any, keyring: Keyring, *, subject: str) -> Checkpoint:
    """A checkpoint from its parsed JSON, once its format and signature are checked.

    Errors name ``subject`` (the file or artifact) and the path inside the document.
    """
    if not isinstance(document, dict):
        raise ValidationError(subject, [], "must be a JSON object (an audit checkpoint)")
    if document.get("format") != CHECKPOINT_FORMAT:
        raise ValidationError(subject, ["format"], f"must be {CHECKPOINT_FORMAT!r}")
    if document.get("version") != _VERSION:
        raise ValidationError(subject, ["version"], f"must be {_VERSION}")
    check_document(keyring, CHECKPOINT_PURPOSE, document, subject=subject)
    created_at = document.get("created_at")
    if not isinstance(created_at, str):
        raise ValidationError(subject, ["created_at"], "must be a time (text)")
    chains = document.get("chains")
    if not isinstance(chains, list):
        raise ValidationError(subject, ["chains"], "must be a list")
    previous = document.get("previous")
    if previous is not None and not isinstance(previous, str):
        raise ValidationError(subject, ["previous"], "must be a signature (text) or null")
    database = document.get("database")
    if not isinstance(database, str):
        raise ValidationError(subject, ["database"], "must name a database (text)")
    return Checkpoint(
        created_at=created_at,
        rows=_int(document.get("rows"), subject, ["rows"]),
        chains=tuple(_chain(item, subject, i) for i, item in enumerate(chains)),
        key_id=str(document["key_id"]),
        signature=str(document["signature"]),
        sequence=_int(document.get("sequence"), subject, ["sequence"]),
        previous=previous,
        database=database,
    )
