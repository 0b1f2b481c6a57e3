"""OAuth authorization states: single-use, expiring, stored server-side.

Only the SHA-256 of a state is stored, with the instance it belongs to, the exact
redirect URI sent to the provider, and the PKCE verifier encrypted like credentials.
Consuming a state deletes it in the same statement, so it can be used once.

Connect links (`prefect_integrations.oauth.links`) are recorded in the same table as
sessions: a row keyed by the SHA-256 of ``connect-link:`` and the link's nonce, so a link
can never be taken for a state and the other way round. Consuming a link deletes its row
in one statement too: across every process, a link opens one authorization.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.exceptions import OAuthStateError
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import oauth_states
from prefect_integrations.store.vault import PGP_OPTIONS

__all__ = [
    "STATE_TTL_SECONDS",
    "ConsumedState",
    "consume_link_session",
    "consume_state",
    "create_link_session",
    "create_state",
    "discard_states",
]

STATE_TTL_SECONDS = 600

_INSERT = sa.text(
    """
    INSERT INTO integration_oauth_states
           (state_hash, instance_id, redirect_uri, key_id, verifier, expires_at)
    VALUES (:hash, :iid, :redirect_uri, :kid,
            encode(pgp_sym_encrypt(CAST(:verifier AS text), CAST(:key AS text),
                                   CAST(:opts AS text)), 'base64'),
            now() + make_interval(secs => :ttl))
    """
)
_PURGE = sa.text("DELETE FROM integration_oauth_states WHERE expires_at < now() - interval '1 day'")
_CONSUME = sa.text(
    """
    DELETE FROM integration_oauth_states
     WHERE state_hash = :hash
    RETURNING instance_id, redirect_uri, expires_at < now() AS expired,
              integration_try_decrypt(
                decode(verifier, 'base64'),
                (CAST(:keys AS text[]))[array_position(CAST(:kids AS text[]), key_id)]
              ) AS verifier
    """
)


_CONSUME_LINK = sa.text(
    """
    DELETE FROM integration_oauth_states
     WHERE state_hash = :hash AND instance_id = :iid AND expires_at >= now()
    RETURNING instance_id
    """
)
_LINK_PREFIX = "connect-link:"


def _hash(state: str) -> bytes:
    return hashlib.sha256(state.encode()).digest()


@dataclass(frozen=True, slots=True)
class ConsumedState:
    """What a valid state stood for."""

    instance_id: str
    redirect_uri: str
    verifier: str = field(repr=False)


def create_state(
    session: Session,
    keyring: Keyring,
    *,
    instance_id: str,
    redirect_uri: str,
    verifier: str,
    ttl: int = STATE_TTL_SECONDS,
) -> str:
    """Store a new state for ``instance_id`` and return it (random, 256 bits)."""
    state = secrets.token_urlsafe(32)
    with translate_errors(f"start an authorization for instance '{instance_id}'"):
        session.execute(_PURGE)
        session.execute(
            _INSERT,
            {
                "hash": _hash(state),
                "iid": instance_id,
                "redirect_uri": redirect_uri,
                "kid": keyring.primary_id,
                "verifier": verifier,
                "key": keyring.primary.get_secret_value(),
                "opts": PGP_OPTIONS,
                "ttl": ttl,
            },
        )
    return state


def consume_state(session: Session, keyring: Keyring, state: str) -> ConsumedState:
    """Use a state once: `OAuthStateError` when unknown, already used or expired."""
    if not state or len(state) > 512:
        raise OAuthStateError(
            "The authorization state is missing or malformed", reason="state_missing"
        )
    with translate_errors("finish an authorization"):
        row = session.execute(
            _CONSUME,
            {
                "hash": _hash(state),
                "kids": keyring.ids,
                "keys": [key.get_secret_value() for _, key in keyring],
            },
        ).first()
    if row is None:
        raise OAuthStateError(
            "The authorization state is unknown or was already used", reason="state_unknown"
        )
    if row.expired:
        raise OAuthStateError(
            f"The authorization for instance '{row.instance_id}' expired; start it again",
            reason="state_expired",
        )
    if row.verifier is None:
        raise OAuthStateError(
            f"The authorization state of instance '{row.instance_id}' cannot be decrypted "
            "with the keyring",
            reason="state_undecryptable",
        )
    return ConsumedState(
        instance_id=row.instance_id, redirect_uri=row.redirect_uri, verifier=row.verifier
    )


def create_link_session(
    session: Session, keyring: Keyring, *, instance_id: str, nonce: str, redirect_uri: str, ttl: int
) -> None:
    """Record the connect link with ``nonce`` for ``instance_id``, valid ``ttl`` seconds."""
    with translate_errors(f"record a connect link for instance '{instance_id}'"):
        session.execute(_PURGE)
        session.execute(
            _INSERT,
            {
                "hash": _hash(_LINK_PREFIX + nonce),
                "iid": instance_id,
                "redirect_uri": redirect_uri,
                "kid": keyring.primary_id,
                "verifier": "",
                "key": keyring.primary.get_secret_value(),
                "opts": PGP_OPTIONS,
                "ttl": ttl,
            },
        )


def consume_link_session(session: Session, *, instance_id: str, nonce: str) -> bool:
    """Use the connect link with ``nonce`` once; False when it cannot be used.

    That is when it is unknown, used, expired or not for ``instance_id`` (a link for
    another instance is left as it was).
    """
    with translate_errors("open a connect link"):
        row = session.execute(
            _CONSUME_LINK, {"hash": _hash(_LINK_PREFIX + nonce), "iid": instance_id}
        ).first()
    return row is not None


def discard_states(session: Session, instance_id: str) -> int:
    """Spend every authorization state and connect link of ``instance_id``; how many.

    Called when an operator deactivates the instance: a flow under way can no longer
    complete, and an unused link no longer opens one.
    """
    with translate_errors(f"discard the authorizations of instance '{instance_id}'"):
        result = session.execute(
            sa.delete(oauth_states).where(oauth_states.c.instance_id == instance_id)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
