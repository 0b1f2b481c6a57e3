"""The key registry: which key each key id stands for, so a worker cannot bring its own.

A keyring names its keys by id, and nothing in a key id says which key it is: a worker
configured with ``k2:<a key only it holds>,k1:<the operator's key>`` reads every row and
would re-encrypt them all to ``k2``, which the operator cannot read. The registry
(``integration_keys``) records, per key id, the key's fingerprint: ``HMAC-SHA256(key,
FINGERPRINT_LABEL)``. The keys are 32 random bytes, so the fingerprint neither reveals
the key nor lets anyone test guesses cheaply; it only tells two keys apart.

Keys are registered

- by the operator: ``keys rotate`` registers the primary key before re-encrypting, and
  ``keys register`` every key of the keyring not registered yet (`register`);
- on first use (`trust_on_first_use`), for an unregistered key id whose stored rows
  decrypt with the key (the key that wrote them), so existing installs need no manual
  step. A store with no credentials and no registered key trusts nothing yet and refuses
  nothing: the first credentials written, or ``keys register``, settle it.

`check_keyring` compares a keyring with the registry: key ids registered with another
key are ``conflicts``; a primary key that is neither registered nor trusted on first use
while other keys hold the credentials makes the keyring unfit to write
(``primary_unknown``). Registration never replaces a fingerprint: a key id registered with
another key is refused (`KeyringError`, naming the id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.exceptions import KeyringError
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import keys as keys_table
from prefect_integrations.store import audit, key_checks
from prefect_integrations.store.audit import AuditAction

__all__ = [
    "FINGERPRINT_LABEL",
    "KeyringCheck",
    "check_keyring",
    "fault_message",
    "fingerprint",
    "register",
    "registered",
    "registration",
    "trust_on_first_use",
]

#: The message the fingerprint authenticates (with the key as the HMAC key).
FINGERPRINT_LABEL = b"prefect-integrations key registry fingerprint v1"

_REGISTERED = sa.text(
    "SELECT key_id, fingerprint FROM integration_keys WHERE key_id = ANY(CAST(:kids AS text[]))"
)
_ANY_REGISTERED = sa.text("SELECT EXISTS (SELECT 1 FROM integration_keys)")
_INSERT = sa.text(
    """
    INSERT INTO integration_keys (key_id, fingerprint, registered_by)
    VALUES (:kid, :fp, :actor)
    ON CONFLICT (key_id) DO NOTHING
    RETURNING key_id
    """
)


def fingerprint(key: SecretStr) -> bytes:
    """``HMAC-SHA256(key, FINGERPRINT_LABEL)``: 32 bytes that tell keys apart."""
    raw = base64.b64decode(key.get_secret_value(), validate=True)
    return hmac.new(raw, FINGERPRINT_LABEL, hashlib.sha256).digest()


def registered(session: Session | Connection, key_ids: Sequence[str]) -> dict[str, bytes]:
    """The fingerprints registered for ``key_ids`` (ids not registered are missing)."""
    with translate_errors(f"read the key registry ({keys_table.name})"):
        rows = session.execute(_REGISTERED, {"kids": list(key_ids)}).all()
    return {str(r.key_id): bytes(r.fingerprint) for r in rows}


def registration(session: Session | Connection, keyring: Keyring) -> dict[str, str]:
    """Per key id of ``keyring``: ``yes`` (registered with this key), ``another key`` or ``no``."""
    known = registered(session, keyring.ids)
    out: dict[str, str] = {}
    for kid, key in keyring:
        if kid not in known:
            out[kid] = "no"
        else:
            same = hmac.compare_digest(known[kid], fingerprint(key))
            out[kid] = "yes" if same else "another key"
    return out


@dataclass(frozen=True, slots=True)
class KeyringCheck:
    """A keyring compared with the registry (key ids only, never a key or fingerprint).

    ``registered``: ids registered with this keyring's key. ``conflicts``: ids registered
    with another key. ``trusted``: unregistered ids whose stored rows decrypt with this
    keyring's key (registered on first use by `trust_on_first_use`). ``unproven``: the
    other unregistered ids. ``holders``: the key ids the stored credentials are under.
    ``empty``: no credentials stored and no key registered.
    """

    primary: str
    registered: tuple[str, ...]
    conflicts: tuple[str, ...]
    trusted: tuple[str, ...]
    unproven: tuple[str, ...]
    holders: tuple[str, ...]
    empty: bool

    @property
    def primary_unknown(self) -> bool:
        """True when the primary key is neither registered nor proven by stored rows.

        Such a keyring would write (refreshed tokens, rotated credentials, re-encrypted
        rows) under a key the operator may not hold. A store that is empty (no
        credentials, no registered key) has nothing to protect yet.
        """
        return self.primary in self.unproven and not self.empty

    @property
    def ok(self) -> bool:
        """True when the keyring may read and write the store."""
        return not self.conflicts and not self.primary_unknown


def check_keyring(
    session: Session | Connection,
    keyring: Keyring,
    *,
    probe: key_checks.KeyProbe | None = None,
) -> KeyringCheck:
    """Compare ``keyring`` with the registry and the stored credentials.

    ``probe`` is `key_checks.probe_keys` of the same keyring (made here when not given):
    an unregistered key id is ``trusted`` only when rows are stored under it and its key
    decrypts them.
    """
    if probe is None:
        probe = key_checks.probe_keys(session, keyring)
    counts = key_checks.count_keys(session, keyring)
    known = registered(session, keyring.ids)
    with translate_errors(f"read the key registry ({keys_table.name})"):
        any_registered = bool(session.execute(_ANY_REGISTERED).scalar())
    mine: list[str] = []
    conflicts: list[str] = []
    trusted: list[str] = []
    unproven: list[str] = []
    for kid, key in keyring:
        if kid in known:
            same = hmac.compare_digest(known[kid], fingerprint(key))
            (mine if same else conflicts).append(kid)
        elif counts.by_key.get(kid, 0) > 0 and kid not in probe.wrong:
            trusted.append(kid)
        else:
            unproven.append(kid)
    return KeyringCheck(
        primary=keyring.primary_id,
        registered=tuple(mine),
        conflicts=tuple(conflicts),
        trusted=tuple(trusted),
        unproven=tuple(unproven),
        holders=tuple(sorted(kid for kid, n in counts.by_key.items() if n > 0)),
        empty=counts.total == 0 and not any_registered,
    )


def register(
    session: Session | Connection,
    keyring: Keyring,
    key_ids: Sequence[str],
    *,
    actor: str,
    reason: str = "operator",
) -> list[str]:
    """Register ``key_ids`` of ``keyring`` with their fingerprints; audited, one row each.

    Ids already registered with the same key are left as they are; the ids newly
    registered are returned. Raises `KeyringError` naming the id when one is registered
    with another key (nothing is registered then: the caller's transaction rolls back),
    or when an id is not in the keyring. ``reason`` is ``operator`` or ``first_use``.
    """
    wanted: dict[str, bytes] = {}
    for kid in key_ids:
        key = keyring.get(kid)
        if key is None:
            raise KeyringError(f"Key id '{kid}' is not in the keyring")
        wanted[kid] = fingerprint(key)
    added: list[str] = []
    with translate_errors(f"register keys in the key registry ({keys_table.name})"):
        for kid, print_ in wanted.items():
            inserted = session.execute(_INSERT, {"kid": kid, "fp": print_, "actor": actor})
            if inserted.first() is not None:
                added.append(kid)
    known = registered(session, list(wanted))
    conflicts = [kid for kid, fp in wanted.items() if not hmac.compare_digest(known[kid], fp)]
    if conflicts:
        raise KeyringError(_conflict_message(conflicts))
    for kid in added:
        audit.record(
            session,
            action=AuditAction.KEYS_REGISTER,
            actor=actor,
            details={"key_id": kid, "reason": reason},
        )
    return added


def _conflict_message(conflicts: Sequence[str]) -> str:
    listed = ", ".join(f"'{k}'" for k in conflicts)
    return (
        f"Key id(s) {listed} are registered with another key: this keyring holds a "
        "different key under that id; use the operator's keyring "
        "(PREFECT_INTEGRATIONS_KEYS), or give the new key a new id"
    )


def fault_message(check: KeyringCheck, *, held: str, setting: str) -> str:
    """Why a worker with the keyring of ``check`` may not run, and what to do; ids only.

    ``held`` lists the keyring's ids; ``setting`` names the keyring's setting.
    """
    if check.conflicts:
        listed = ", ".join(f"'{k}'" for k in check.conflicts)
        return (
            f"This worker's key(s) {listed} differ from the key(s) registered under that id "
            f"(keyring ids {held}): set {setting} to the operator's keyring"
        )
    if check.holders:
        where = f"the stored credentials are under {', '.join(repr(k) for k in check.holders)}"
    else:
        where = "other keys are registered"
    return (
        f"This worker's primary key '{check.primary}' is not registered and no stored "
        f"credentials are under it ({where}): it would re-encrypt and "
        "write credentials under a key the operator may not hold. Run "
        "`prefect-integrations keys rotate` (or `keys register`) where the operator's "
        f"keyring is, or set {setting} to the operator's keyring"
    )


def trust_on_first_use(
    session: Session | Connection, keyring: Keyring, check: KeyringCheck, *, actor: str
) -> list[str]:
    """Register the ``trusted`` key ids of ``check`` (rows under them decrypt with them)."""
    if not check.trusted:
        return []
    return register(session, keyring, check.trusted, actor=actor, reason="first_use")
