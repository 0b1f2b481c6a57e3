"""The exception tree of prefect-integrations.

Every error the package raises on purpose derives from `IntegrationError` and carries a
stable machine-readable ``code``. Messages name the object concerned and, where there is
one, the path inside it; they never contain credentials or keys.

    IntegrationError
    ├── ConfigurationError            settings, keyring or environment are unusable
    │   ├── KeyringError              keyring malformed or missing
    │   ├── PostgresNotFound          no PostgreSQL binaries for the embedded cluster
    │   └── WorkerMisconfigured       a maintenance worker's settings do not match the store
    ├── DatabaseError
    │   ├── DatabaseUnavailable       cannot connect to PostgreSQL
    │   └── PermissionDenied          the database role may not do this
    ├── DefinitionError               a definition file is malformed or invalid
    │   ├── UnknownIntegration        no definition with that id
    │   └── MethodNotBound            the method has no 'http' or 'handler' binding
    ├── ValidationError               config / credentials / status / input breaks its schema
    ├── InstanceError
    │   ├── InstanceNotFound          no such instance (or not visible in this context)
    │   ├── InstanceExists            duplicate instance id
    │   ├── InstanceUnavailable       the chosen instance is in error or inactive
    │   ├── AmbiguousInstance         several instances match at the winning scope
    │   └── NoInstanceFound           nothing matches the integration in this context
    ├── CredentialsError
    │   ├── NoCredentials             the instance has no stored credentials
    │   ├── DecryptionError           wrong key or corrupt ciphertext
    │   └── UnknownKeyId              the row's key id is not in the keyring
    ├── AuditError
    │   └── AuditChainBroken          `audit verify` found an altered or missing row
    ├── ProviderError                 the external service answered with an error
    │   ├── ProviderUnavailable       connection failures, timeouts, 429/5xx after retries
    │   ├── ProviderAuthError         401/403 from the provider
    │   └── ResponseTooLarge          the response body exceeds the size limit
    └── OAuthError                    an OAuth2 flow or token request failed
        ├── OAuthStateError           unknown, expired or reused authorization state
        ├── InvalidGrant              the authorization server refused the grant
        └── TokenEndpointUnavailable  the token endpoint kept failing (5xx, timeouts)

The module is over 450 lines because it is the one home of the whole tree above, so that
every code a caller can meet is found in one file.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AmbiguousInstance",
    "AuditChainBroken",
    "AuditError",
    "ConfigurationError",
    "CredentialsError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DecryptionError",
    "DefinitionError",
    "DefinitionProblem",
    "InstanceError",
    "InstanceExists",
    "InstanceNotFound",
    "InstanceUnavailable",
    "IntegrationError",
    "InvalidGrant",
    "KeyringError",
    "MethodNotBound",
    "NoCredentials",
    "NoInstanceFound",
    "OAuthError",
    "OAuthStateError",
    "PermissionDenied",
    "PostgresNotFound",
    "ProviderAuthError",
    "ProviderError",
    "ProviderUnavailable",
    "ResponseTooLarge",
    "TokenEndpointUnavailable",
    "UnknownIntegration",
    "UnknownKeyId",
    "ValidationError",
    "WorkerMisconfigured",
    "format_json_path",
    "quote",
]


def quote(text: str, *, limit: int = 100) -> str:
    """``'text'`` for a message: shortened past ``limit``, escaped (repr) unless printable.

    Names given by a caller (an instance id, an integration id) may hold line breaks or
    control characters; quoted this way, an error message stays one readable line.
    """
    shown = text if len(text) <= limit else text[:limit] + "..."
    return f"'{shown}'" if shown.isprintable() and "'" not in shown else repr(shown)


def format_json_path(path: Sequence[str | int]) -> str:
    """Render a JSON path as ``$.methods[0].inputSchema`` (``$`` alone for the root).

    Keys that are not identifiers are quoted (``$['a b']``), with unprintable characters
    escaped so that the path is always one line.
    """
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            if not escaped.isprintable():  # keep the path on one line: escape line breaks...
                escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)
            out += f"['{escaped}']"
    return out


class IntegrationError(Exception):
    """Base class of every error raised by prefect-integrations on purpose.

    ``retry_safe`` is False when the error ends a method call whose request the provider
    may have acted on (a 5xx, a read timeout) and the method is not idempotent: running
    the call again could repeat a write, so the generated tasks' Prefect retries refuse to.
    """

    code: str = "integration_error"
    retry_safe: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(IntegrationError):
    """Settings, the keyring or the environment cannot be used as they are."""

    code = "configuration_error"


class KeyringError(ConfigurationError):
    """The encryption keyring is missing or malformed."""

    code = "keyring_error"


class PostgresNotFound(ConfigurationError):
    """The PostgreSQL server binaries needed for the embedded cluster are not installed."""

    code = "postgres_not_found"


class WorkerMisconfigured(ConfigurationError):
    """A maintenance run cannot work with its own settings; no instance is blamed for it.

    ``setting`` names what to fix (a ``PREFECT_INTEGRATIONS_*`` variable).
    """

    code = "worker_misconfigured"

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class DatabaseError(IntegrationError):
    """A database operation failed for a reason the caller should see."""

    code = "database_error"


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached."""

    code = "database_unavailable"


class PermissionDenied(DatabaseError):
    """The connected database role is not allowed to perform the operation."""

    code = "permission_denied"


class DefinitionProblem:
    """One problem found in a definition file: where it is and what is wrong."""

    __slots__ = ("message", "path", "source")

    def __init__(self, *, source: str, path: Sequence[str | int], message: str) -> None:
        self.source = source
        self.path = tuple(path)
        self.message = message

    def __str__(self) -> str:
        source = self.source if self.source.isprintable() else repr(self.source)
        return f"{source}: {format_json_path(self.path)}: {self.message}"

    def __repr__(self) -> str:
        return f"DefinitionProblem({self!s})"


class DefinitionError(IntegrationError):
    """One or more definition files are malformed or break the meta-schema."""

    code = "definition_invalid"

    def __init__(self, problems: Sequence[DefinitionProblem] | str) -> None:
        if isinstance(problems, str):
            self.problems: tuple[DefinitionProblem, ...] = ()
            super().__init__(problems)
            return
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"Invalid definition: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems in definitions:\n{lines}"
        super().__init__(message)


class UnknownIntegration(DefinitionError):
    """No definition with the given integration id is known."""

    code = "unknown_integration"

    def __init__(self, integration_id: str, *, known: Sequence[str] = ()) -> None:
        self.integration_id = integration_id
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"Unknown integration {quote(integration_id)}{hint}")


class MethodNotBound(DefinitionError):
    """The method is defined (schemas, name) but has no ``http`` or ``handler`` binding."""

    code = "method_not_bound"

    def __init__(self, integration_id: str, method_id: str) -> None:
        self.integration_id = integration_id
        self.method_id = method_id
        super().__init__(
            f"Method '{integration_id}.{method_id}' is not callable: its definition gives it "
            "no 'http' binding or 'handler'"
        )


class ValidationError(IntegrationError):
    """A value breaks its JSON Schema (config, credentials, status, method input or output)."""

    code = "validation_error"

    def __init__(self, subject: str, path: Sequence[str | int], reason: str) -> None:
        self.subject = subject
        self.path = tuple(path)
        self.reason = reason
        super().__init__(f"{subject} is invalid at {format_json_path(self.path)}: {reason}")


class InstanceError(IntegrationError):
    """A problem with an integration instance."""

    code = "instance_error"


class InstanceNotFound(InstanceError):
    """No instance with that id exists, or it is not visible in the current context.

    ``block`` is the name of the Prefect block document that named the instance, if any.
    """

    code = "instance_not_found"

    def __init__(self, instance_id: str, *, block: str | None = None) -> None:
        self.instance_id = instance_id
        self.block = block
        message = f"Instance {quote(instance_id)} not found"
        if block is not None:
            message += (
                f" (named by the Prefect block {quote(block)}: correct the block's "
                "instance_id or create the instance)"
            )
        super().__init__(message)


class InstanceExists(InstanceError):
    """An instance with that id already exists."""

    code = "instance_exists"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"Instance {quote(instance_id)} already exists")


class InstanceUnavailable(InstanceError):
    """The instance that would be used is in `error` or `inactive` state."""

    code = "instance_unavailable"


class AmbiguousInstance(InstanceError):
    """Several instances match at the most specific scope."""

    code = "ambiguous_instance"

    def __init__(self, integration_id: str, scope: str, instance_ids: Sequence[str]) -> None:
        self.integration_id = integration_id
        self.scope = scope
        self.instance_ids = tuple(instance_ids)
        names = ", ".join(f"'{i}'" for i in self.instance_ids)
        super().__init__(
            f"{len(self.instance_ids)} active '{integration_id}' instances match at scope "
            f"'{scope}': {names}; pass an explicit instance id"
        )


class NoInstanceFound(InstanceError):
    """No usable instance of the integration is visible in the context."""

    code = "no_instance"


class CredentialsError(IntegrationError):
    """Stored credentials cannot be used."""

    code = "credentials_error"


class NoCredentials(CredentialsError):
    """The instance has no stored credentials."""

    code = "no_credentials"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"Instance '{instance_id}' has no stored credentials")


class DecryptionError(CredentialsError):
    """The credentials could not be decrypted (wrong key or corrupt data) or fail the binding."""

    code = "decryption_failed"


class UnknownKeyId(CredentialsError):
    """The key id recorded with the credentials is not in the keyring."""

    code = "unknown_key_id"

    def __init__(self, instance_id: str, key_id: str) -> None:
        self.instance_id = instance_id
        self.key_id = key_id
        super().__init__(
            f"Instance '{instance_id}' is encrypted with key '{key_id}', "
            "which is not in the keyring (PREFECT_INTEGRATIONS_KEYS)"
        )


class AuditError(IntegrationError):
    """The audit log cannot be written or read."""

    code = "audit_error"


class AuditChainBroken(AuditError):
    """`audit verify` found rows whose hash chain does not match their content."""

    code = "audit_chain_broken"


class ProviderError(IntegrationError):
    """The external service answered a call with an error.

    Carries the HTTP status, the provider's own error code and message (never request
    headers, tokens or input values).
    """

    code = "provider_error"

    def __init__(
        self,
        *,
        integration_id: str,
        method_id: str,
        status: int | None,
        provider_code: str | None = None,
        provider_message: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.integration_id = integration_id
        self.method_id = method_id
        self.status = status
        self.provider_code = provider_code
        self.provider_message = provider_message
        self.instance_id = instance_id
        where = f"'{integration_id}.{method_id}'"
        if instance_id:
            where += f" on instance '{instance_id}'"
        what = f"HTTP {status}" if status is not None else "no response"
        if provider_code:
            what += f" [{provider_code}]"
        if provider_message:
            what += f": {provider_message[:500]}"
        super().__init__(f"{where} failed: {what}")


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or kept failing (network, timeout, 429, 5xx)."""

    code = "provider_unavailable"


class ProviderAuthError(ProviderError):
    """The provider refused the credentials (HTTP 401 or 403)."""

    code = "provider_auth_failed"


class ResponseTooLarge(ProviderError):
    """The provider's response body is larger than the client accepts (never read whole)."""

    code = "provider_response_too_large"

    def __init__(
        self,
        *,
        integration_id: str,
        method_id: str,
        status: int | None,
        limit: int,
        instance_id: str | None = None,
    ) -> None:
        self.limit = limit
        super().__init__(
            integration_id=integration_id,
            method_id=method_id,
            status=status,
            provider_code="response_too_large",
            provider_message=f"the response body exceeds the limit of {limit} bytes",
            instance_id=instance_id,
        )


class OAuthError(IntegrationError):
    """An OAuth2 flow or token request failed; ``reason`` is a stable machine-readable word."""

    code = "oauth_error"

    def __init__(self, message: str, *, reason: str = "oauth_error") -> None:
        super().__init__(message)
        self.reason = reason


class OAuthStateError(OAuthError):
    """The authorization callback's ``state`` is unknown, expired or already used."""

    code = "oauth_state_invalid"


class InvalidGrant(OAuthError):
    """The authorization server refused the code or refresh token (``invalid_grant``)."""

    code = "invalid_grant"


class TokenEndpointUnavailable(OAuthError):
    """The token endpoint could not be reached or kept failing.

    ``retry_after`` is the wait, in seconds, the endpoint asked for (``Retry-After``).
    """

    code = "token_endpoint_unavailable"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "token_endpoint_unavailable",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after
