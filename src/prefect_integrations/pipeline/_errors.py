"""Provider errors and scrubbing: what a failed call raises, and what it never shows.

- `provider_error` reads the `ProviderError` an error response amounts to (the provider's
  own code and message, through the definition's ``errors`` templates or common shapes),
  with every credential of the request scrubbed;
- `unavailable` and `too_large` are the errors of a call without a usable response;
- `redact` and `redacted` clean text and raised errors of every secret of an instance;
- `failure_reason` names a failure in the exceptions' own vocabulary (their ``code``),
  the one the health check records.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx

from prefect_integrations import logfilter
from prefect_integrations._templates import CompiledTemplate, Scope, is_omitted, to_text
from prefect_integrations.credentials import Credentials
from prefect_integrations.definitions import Definition, Method
from prefect_integrations.exceptions import (
    IntegrationError,
    InvalidGrant,
    OAuthError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ResponseTooLarge,
)
from prefect_integrations.masking import mask_secrets, secret_strings
from prefect_integrations.pipeline._response import response_body, response_scope

__all__ = [
    "CONFIG_INVALID",
    "NETWORK",
    "RATE_LIMITED",
    "error_from_body",
    "failure_reason",
    "provider_error",
    "redact",
    "redacted",
    "too_large",
    "unavailable",
]

_MESSAGE_LIMIT: Final = 500

# --------------------------------------------------------------------------------------
# Reading provider errors
# --------------------------------------------------------------------------------------

_SENSITIVE_WORDS: Final = (
    "auth",
    "token",
    "key",
    "secret",
    "cookie",
    "signature",
    "password",
    "session",
    "credential",
)


def _sensitive(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in _SENSITIVE_WORDS)


def _request_secrets(response: httpx.Response) -> list[str]:
    """Credential-like values of the request that produced ``response`` (to scrub)."""
    try:
        request = response.request
    except RuntimeError:
        return []
    secrets: list[str] = []
    for name, value in request.headers.multi_items():
        if not _sensitive(name):
            continue
        secrets.append(value)
        scheme, _, credentials = value.partition(" ")
        if credentials:
            secrets.append(credentials.strip())
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(credentials.strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    continue
                user, _, password = decoded.partition(":")
                secrets.extend([decoded, user, password])
    for name, value in request.url.params.multi_items():
        if _sensitive(name):
            secrets.append(value)
    return sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)


def _scrub(text: str | None, secrets: Sequence[str]) -> str | None:
    """Mask the request's ``secrets`` and every secret this process decrypted.

    Each in all its encodings, and before the text is ever shortened, so no part of one
    survives a cut.
    """
    if text is None:
        return None
    return logfilter.scrub(mask_secrets(text, secrets))


def _text(value: Any) -> str | None:
    """A rendered or found code/message as text; None when absent or empty."""
    if is_omitted(value) or isinstance(value, dict | list):
        return None
    text = to_text(value).strip()
    return text or None


def _first(body: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        text = _text(body.get(key))
        if text is not None:
            return text
    return None


def _xero_validation_messages(body: Mapping[str, Any]) -> str | None:
    elements = body.get("Elements")
    if not isinstance(elements, list):
        return None
    messages: list[str] = []
    for element in elements:
        errors = element.get("ValidationErrors") if isinstance(element, Mapping) else None
        for error in errors if isinstance(errors, list) else ():
            message = _text(error.get("Message")) if isinstance(error, Mapping) else None
            if message is not None and message not in messages:
                messages.append(message)
    return "; ".join(messages) or None


def _common_shape(body: Any) -> tuple[str | None, str | None]:
    """Code and message from the error shapes most APIs use."""
    if isinstance(body, str):
        text = body.strip()
        looks_like_html = text[:1] == "<"
        return None, (text or None) if not looks_like_html else None
    if not isinstance(body, Mapping):
        return None, None
    code: str | None = None
    message: str | None = None
    error = body.get("error")
    if isinstance(error, Mapping):  # Google: {"error": {"code", "message", "status"}}
        code = _first(error, "status", "code")
        message = _first(error, "message")
    elif isinstance(error, str):  # Slack, OAuth: {"error": "...", "error_description": ...}
        code = _text(error)
    code = code or _first(body, "code", "errorCode", "error_code", "Type", "type")
    message = (
        message
        or _xero_validation_messages(body)
        or _first(
            body,
            "error_description",
            "message",
            "Message",
            "detail",
            "Detail",
            "title",
            "Title",
        )
    )
    return code, message


def provider_error(
    definition: Definition,
    method: Method,
    response: httpx.Response,
    *,
    instance_id: str | None = None,
) -> ProviderError:
    """The `ProviderError` describing an error ``response`` (returned, not raised).

    `ProviderAuthError` for 401/403 (or a code listed in ``errors.authCodes``),
    `ProviderUnavailable` for 429/5xx (or a code in ``errors.unavailableCodes``),
    `ProviderError` otherwise. The provider's code and message come from the definition's
    ``errors.code``/``errors.message`` when they render to something, else from common
    shapes (``error``, ``error.message``, ``error_description``, ``message``, ``Message``,
    Xero's ``Elements[].ValidationErrors[].Message``...). Credentials of the request
    (authorization, key, token... headers and query parameters) are replaced by ``********``
    in both, and the message is cut to 500 characters.
    """
    return error_from_body(definition, method, response, response_body(response), instance_id)


def error_from_body(
    definition: Definition,
    method: Method,
    response: httpx.Response,
    body: Any,
    instance_id: str | None,
) -> ProviderError:
    """`provider_error` of a response whose ``body`` is already parsed."""
    status = response.status_code
    code: str | None = None
    message: str | None = None
    binding = definition.binding
    errors = binding.errors if binding is not None else None
    if errors is not None and (errors.code is not None or errors.message is not None):
        scope = response_scope(response, body, None, headers=errors.uses_headers)
        code = _render_text(errors.code, scope)
        message = _render_text(errors.message, scope)
    if code is None or message is None:
        common_code, common_message = _common_shape(body)
        code = code or common_code
        message = message or common_message
    secrets = _request_secrets(response)
    code = _scrub(code, secrets)
    message = _scrub(message, secrets)
    if code is not None:
        code = code[:100]
    if message is not None and len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 3] + "..."

    auth_codes = errors.auth_codes if errors is not None else frozenset()
    unavailable_codes = errors.unavailable_codes if errors is not None else frozenset()
    cls: type[ProviderError]
    if status in (401, 403):
        cls = ProviderAuthError
    elif status == 429 or status >= 500:
        cls = ProviderUnavailable
    elif code is not None and code in auth_codes:
        cls = ProviderAuthError
    elif code is not None and code in unavailable_codes:
        cls = ProviderUnavailable
    else:
        cls = ProviderError
    return cls(
        integration_id=definition.id,
        method_id=method.id,
        status=status,
        provider_code=code,
        provider_message=message,
        instance_id=instance_id,
    )


def _render_text(template: CompiledTemplate | None, scope: Scope) -> str | None:
    if template is None:
        return None
    try:
        return _text(template.render(scope))
    except Exception:  # a broken error template must not hide the provider's error
        return None


# --------------------------------------------------------------------------------------
# Calls without a usable response
# --------------------------------------------------------------------------------------


def unavailable(
    error: Exception, *, integration_id: str, method_id: str, instance_id: str | None
) -> ProviderUnavailable:
    """The error of a call the provider never answered (connection failure, timeout...)."""
    return ProviderUnavailable(
        integration_id=integration_id,
        method_id=method_id,
        status=None,
        provider_code=type(error).__name__,
        # Not the library's text: it can quote what was being sent (h11 quotes a header
        # value it refuses, with escapes no mask recognises).
        provider_message=None,
        instance_id=instance_id,
    )


def too_large(
    status: int | None, limit: int, *, integration_id: str, method_id: str, instance_id: str | None
) -> ResponseTooLarge:
    """The error of a call whose response body exceeds ``limit`` bytes (never read whole)."""
    return ResponseTooLarge(
        integration_id=integration_id,
        method_id=method_id,
        status=status,
        limit=limit,
        instance_id=instance_id,
    )


# --------------------------------------------------------------------------------------
# Scrubbing
# --------------------------------------------------------------------------------------


def redact(text: str, credentials: Credentials | None) -> str:
    """Replace every secret value of ``credentials`` found in ``text`` with a mask."""
    if credentials is None or not text:
        return text
    return mask_secrets(text, secret_strings(credentials.reveal(), min_length=4))


def redacted(exc: IntegrationError, credentials: Credentials | None) -> IntegrationError:
    """Redact ``exc`` in place: its message and, for a `ProviderError`, every provider field.

    Exceptions are pickled with their attributes (Prefect result storage), so the
    provider's code and message are cleaned too, not only the text of the message.
    """
    clean = redact(exc.message, credentials)
    if clean != exc.message:
        exc.message = clean
        exc.args = (clean,)
    if isinstance(exc, ProviderError):
        if exc.provider_message:
            exc.provider_message = redact(exc.provider_message, credentials)
        if exc.provider_code:
            exc.provider_code = redact(exc.provider_code, credentials)
    return exc


# --------------------------------------------------------------------------------------
# One vocabulary for failures
# --------------------------------------------------------------------------------------

#: A `ProviderUnavailable` answered 429: the credentials work, the provider says wait.
RATE_LIMITED: Final = "rate_limited"
#: A `ProviderUnavailable` without any response (connection failure, timeout).
NETWORK: Final = "network"
#: The instance's own credentials, config or definition cannot make a call.
CONFIG_INVALID: Final = "config_invalid"


def failure_reason(error: BaseException) -> str:
    """The name of a failed call or check: the ``code`` of the exception that says it.

    `InvalidGrant`, `ProviderAuthError` (also for any other `OAuthError`: the credentials
    cannot be made to work), `ResponseTooLarge` and `ProviderUnavailable` are named by
    their code; a `ProviderUnavailable` is refined into `RATE_LIMITED` (429) and `NETWORK`
    (no response), which a health check treats differently; a plain `ProviderError` is
    named by its status; anything else is `CONFIG_INVALID`.
    """
    if isinstance(error, InvalidGrant | ProviderAuthError | ResponseTooLarge):
        return error.code
    if isinstance(error, ProviderUnavailable):
        if error.status == 429:
            return RATE_LIMITED
        return NETWORK if error.status is None else error.code
    if isinstance(error, ProviderError):
        if error.status in (401, 403):
            return ProviderAuthError.code
        return ProviderUnavailable.code if (error.status or 0) >= 500 else CONFIG_INVALID
    if isinstance(error, httpx.TransportError):
        return NETWORK
    if isinstance(error, OAuthError):
        return ProviderAuthError.code
    return CONFIG_INVALID
