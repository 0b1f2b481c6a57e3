"""The one path a method call's request takes, built from httpx's extension points.

1. `build_call` validates the inputs and builds the request from the method's binding
   (a `Call`, which also counts its attempts);
2. `InstanceAuth` (an `httpx.Auth`) applies the instance's credentials and renews
   refused ones once (`refreshed` first refreshes an OAuth2 token that is due);
3. `RetryTransport` retries what `RetryPolicy` allows (a request that is not
   idempotent only when it provably was not processed), logging each retry;
   `SizeLimitTransport` reads each body, never more than the limit (`BodyTooLarge`);
4. `Pipeline` / `AsyncPipeline` drive that over an httpx client and read the response
   into the validated output, or raise the typed `ProviderError` (`provider_error`,
   scrubbed of credentials; `redact` and `redacted` for what else is raised).

The sync and async clients and the health check (without retries, without renewing
refused credentials) all send through it.
"""

from prefect_integrations.pipeline._auth import (
    Authorization,
    InstanceAuth,
    Renew,
    refresh_after,
    refreshed,
)
from prefect_integrations.pipeline._errors import (
    failure_reason,
    provider_error,
    redact,
    redacted,
    too_large,
    unavailable,
)
from prefect_integrations.pipeline._limit import (
    MAX_RESPONSE_BYTES,
    AsyncSizeLimitTransport,
    BodyTooLarge,
    SizeLimitTransport,
)
from prefect_integrations.pipeline._request import (
    CALL_EXTENSION,
    IDEMPOTENT_VERBS,
    Call,
    as_inputs,
    build_call,
    idempotent_request,
    read_response,
)
from prefect_integrations.pipeline._retry import (
    AsyncRetryTransport,
    Retry,
    RetryPolicy,
    RetryTransport,
    not_sent,
    retry_logger,
)
from prefect_integrations.pipeline._send import (
    AsyncClientTransport,
    AsyncPipeline,
    ClientTransport,
    Pipeline,
)

__all__ = [
    "CALL_EXTENSION",
    "IDEMPOTENT_VERBS",
    "MAX_RESPONSE_BYTES",
    "AsyncClientTransport",
    "AsyncPipeline",
    "AsyncRetryTransport",
    "AsyncSizeLimitTransport",
    "Authorization",
    "BodyTooLarge",
    "Call",
    "ClientTransport",
    "InstanceAuth",
    "Pipeline",
    "Renew",
    "Retry",
    "RetryPolicy",
    "RetryTransport",
    "SizeLimitTransport",
    "as_inputs",
    "build_call",
    "failure_reason",
    "idempotent_request",
    "not_sent",
    "provider_error",
    "read_response",
    "redact",
    "redacted",
    "refresh_after",
    "refreshed",
    "retry_logger",
    "too_large",
    "unavailable",
]
