"""Signed checkpoints of the audit log, kept outside the database.

A checkpoint records each chain's head (last seq and hash), first seq and number of rows,
the rows of the log in all and the time, and is signed with HMAC-SHA256 under a subkey
(HKDF, `Keyring.subkey`) of a keyring key, named in it by id. It is JSON::

    {"format": "prefect-integrations.audit-checkpoint", "version": 1,
     "created_at": "2026-11-30T05:00:00.000000Z", "rows": 120,
     "chains": [{"chain": 0, "first_seq": 1, "seq": 80, "head": "<sha256 hex>",
                 "rows": 80}, ...],
     "key_id": "k1", "signature": "<base64url>"}

The signature covers every other field, serialised canonically (sorted keys, no
spaces). Whoever holds the keyring can sign, so the database's owner alone cannot forge
one; `audit verify --checkpoint` then proves the log still holds each head unchanged and
every row before it that no recorded cut archived. `sign_document`/`check_document`
sign the archive files the same way, under their own subkey.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from prefect_integrations.exceptions import ValidationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.store.audit_heads import chain_heads
from prefect_integrations.store.audit_verify import ChainHead

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_PURPOSE",
    "Checkpoint",
    "canonical",
    "check_document",
    "parse_checkpoint",
    "sign_document",
    "take_checkpoint",
]

CHECKPOINT_FORMAT = "prefect-integrations.audit-checkpoint"
_VERSION = 1
#: The purposes of the signing subkeys (HKDF ``info``).
CHECKPOINT_PURPOSE = b"prefect-integrations audit-checkpoint v1"


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
            subject, ["key_id"], f"signed with key {key_id!r}, which is not in the keyring"
        )
    body = {k: v for k, v in document.items() if k != "signature"}
    expected = hmac.new(subkey, canonical(body), hashlib.sha256).digest()
    try:
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        given = b""
    if not hmac.compare_digest(expected, given):
        raise ValidationError(
            subject,
            ["signature"],
            f"does not match the content (signed with key {key_id!r}): "
            "the document was changed or signed with another key",
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed record of the log's chains at a moment (see the module)."""

    created_at: str
    rows: int
    chains: tuple[ChainHead, ...]
    key_id: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint's JSON document."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": _VERSION,
            "created_at": self.created_at,
            "rows": self.rows,
            "chains": [c.as_dict() for c in self.chains],
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def to_json(self) -> str:
        """The document as indented JSON (the signature does not depend on the layout)."""
        return json.dumps(self.as_dict(), indent=2) + "\n"


def take_checkpoint(
    session: Session, keyring: Keyring, *, now: datetime | None = None
) -> Checkpoint:
    """Read the chains' heads (one snapshot) and sign them with the primary key."""
    rows, chains = chain_heads(session)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": _VERSION,
        "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "rows": rows,
        "chains": [c.as_dict() for c in chains],
    }
    signed = sign_document(keyring, CHECKPOINT_PURPOSE, payload)
    return Checkpoint(
        created_at=str(payload["created_at"]),
        rows=rows,
        chains=chains,
        key_id=signed["key_id"],
        signature=signed["signature"],
    )


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
    return Checkpoint(
        created_at=created_at,
        rows=_int(document.get("rows"), subject, ["rows"]),
        chains=tuple(_chain(item, subject, i) for i, item in enumerate(chains)),
        key_id=str(document["key_id"]),
        signature=str(document["signature"]),
    )
