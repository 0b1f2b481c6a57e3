"""Masking secrets in text: the secret strings of credentials and every form they take.

`secret_strings` finds the secret values of spec-shaped credentials; `mask_secrets`
replaces each of them, in each of its `encoded_forms` (as is, percent-encoded,
form-encoded, base64), and the ``user:password`` pairs HTTP Basic encodes
(`basic_pairs`), with `~prefect_integrations.credentials.MASK`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus

from prefect_integrations.credentials import MASK, NON_SECRET_FIELDS

__all__ = ["basic_pairs", "encoded_forms", "mask_secrets", "secret_strings"]


def secret_strings(values: Mapping[str, Any], *, min_length: int) -> list[str]:
    """Every secret string of at least ``min_length`` characters in credential ``values``.

    Nested mappings and lists are walked. `NON_SECRET_FIELDS` are skipped at the top level
    and inside the ``oauth2`` section (the token type, scope and times are not secret;
    skipping them keeps timestamps readable). Used to mask secrets in text (shorter
    strings would garble unrelated text). The ``user:password`` pairs of `basic_pairs`
    are included, so that masking their encodings masks ``Basic`` headers.
    """
    found: list[str] = []
    stack: list[Any] = []
    for key, value in values.items():
        if key in NON_SECRET_FIELDS:
            continue
        if key == "oauth2" and isinstance(value, Mapping):
            stack.extend(v for k, v in value.items() if k not in NON_SECRET_FIELDS)
        else:
            stack.append(value)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if len(value) >= min_length:
                found.append(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found + [pair for pair in basic_pairs(values) if len(pair) >= min_length]


#: The (user, password) fields of each section that travel together as HTTP Basic
#: credentials: the OAuth client at the token endpoint, a key and its secret, a login.
_PAIRS: Final = (
    ("oauth2", "client_id", "client_secret"),
    ("apikey", "key", "secret"),
    ("custom", "username", "password"),
)


def encoded_forms(secret: str) -> set[str]:
    """The forms a secret travels in: as is, percent-encoded, form-encoded and base64.

    Percent-encoded as in a path or query (``quote``, with and without ``/`` kept),
    form-encoded (``quote_plus``), and standard and URL-safe base64 with and without
    padding (a token in a JWT or a ``Basic`` header).
    """
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    raw = secret.encode("utf-8", "surrogatepass")
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms |= {text, text.rstrip("=")}
    return {form for form in forms if form}


def basic_pairs(values: Mapping[str, Any]) -> list[str]:
    """``user:password`` strings that HTTP Basic would encode, from `_PAIRS`.

    Both as is and with each half form-encoded first (RFC 6749 section 2.3.1 asks for
    that at token endpoints); `encoded_forms` of each gives the ``Basic`` header value.
    """
    pairs: list[str] = []
    for section_name, user_field, password_field in _PAIRS:
        section = values.get(section_name)
        if not isinstance(section, Mapping):
            continue
        user, password = section.get(user_field), section.get(password_field)
        if isinstance(user, str) and isinstance(password, str) and password:
            pairs += [f"{user}:{password}", f"{quote_plus(user)}:{quote_plus(password)}"]
    return list(dict.fromkeys(pairs))


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets``, in each of its `encoded_forms`, masked.

    Longest first, so a secret that contains another is masked whole.
    """
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= encoded_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
