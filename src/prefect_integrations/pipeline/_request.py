"""One method call: its request built from the binding, and its response read back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from prefect_integrations import binding
from prefect_integrations.definitions import Definition, Method, RequestContext
from prefect_integrations.exceptions import ProviderAuthError
from prefect_integrations.store.instances import Instance

__all__ = [
    "CALL_EXTENSION",
    "IDEMPOTENT_VERBS",
    "Call",
    "as_inputs",
    "build_call",
    "idempotent_request",
    "read_response",
]

#: The request extension holding the `Call` a request belongs to (see `Call.sending`).
CALL_EXTENSION: Final = "prefect_integrations.call"
#: HTTP verbs idempotent by their semantics (RFC 9110, section 9.2.2).
IDEMPOTENT_VERBS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def idempotent_request(request: httpx.Request) -> bool:
    """True when sending ``request`` twice has the effect of sending it once.

    A request carrying its method's idempotency key (``idempotencyKeyHeader``, non-empty)
    is; otherwise the method's ``idempotent`` decides when the definition declares it,
    and the HTTP verb when it does not (`IDEMPOTENT_VERBS`).
    """
    call = request.extensions.get(CALL_EXTENSION)
    if isinstance(call, Call):
        header = call.method.idempotency_key_header
        if header is not None and request.headers.get(header, "").strip():
            return True
        if call.method.idempotent is not None:
            return call.method.idempotent
    return request.method.upper() in IDEMPOTENT_VERBS


def as_inputs(inputs: object) -> Any:
    """A copy of a mapping of inputs (``{}`` for None); anything else as is, for validation.

    Validation then refuses what is not a JSON object with a `ValidationError` naming the
    method, instead of ``dict()`` failing on it.
    """
    if inputs is None:
        return {}
    return dict(inputs) if isinstance(inputs, Mapping) else inputs


@dataclass(slots=True, eq=False)
class Call:
    """A method call on its way through the pipeline: what was built, what happened.

    ``attempts`` and ``started`` describe the request last sent: a request sent again
    with fresh credentials after a refusal starts them over. ``status`` is the status of
    the response the call ended with (None without one); ``unsent`` tells, for a call
    that ended without a response, whether the request provably never reached the
    provider (a connection failure) or may have (a read timeout, a dropped connection).
    """

    definition: Definition
    method: Method
    request: httpx.Request
    context: RequestContext
    started: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    status: int | None = None
    unsent: bool | None = None
    _sent: httpx.Request | None = None

    @property
    def instance_id(self) -> str | None:
        """The instance the call is made for."""
        return self.context.instance_id

    @property
    def retry_safe(self) -> bool:
        """True when sending this call again cannot repeat a write the provider made.

        So it is when the request is idempotent (`idempotent_request`), was never sent,
        ended in a connection failure, or was answered with a 4xx (the provider refused
        it; 429 included). After a 5xx, a read timeout, a dropped connection or a 2xx
        whose body could not be read, the provider may have acted on a request that is
        not idempotent: sending it again could do that twice.
        """
        if self.attempts == 0 or idempotent_request(self._sent or self.request):
            return True
        if self.unsent is not None:
            return self.unsent
        return self.status is not None and 400 <= self.status < 500

    def sending(self, request: httpx.Request) -> None:
        """Count one attempt at sending ``request`` (called by the retry transport)."""
        if request is not self._sent:
            if self._sent is not None:
                self.attempts = 0
                self.started = time.perf_counter()
            self._sent = request
        self.attempts += 1

    def read(self, response: httpx.Response) -> Any:
        """The validated output of the call's response, or the error it amounts to."""
        self.status = response.status_code
        return read_response(self.definition, self.method, response, self.context)

    def refused(self, response: httpx.Response) -> bool:
        """True when ``response`` refuses the credentials, so renewing them may help.

        That is a 401, or a code the definition's ``errors.authCodes`` lists (only then is
        the response read for it). A 403 alone is not: it refuses the permission, not the
        credentials, and renewing on every one would force a token refresh per call.
        """
        if response.status_code == 401:
            return True
        errors = self.definition.binding.errors if self.definition.binding else None
        if errors is None or not errors.auth_codes:
            return False
        try:
            read_response(self.definition, self.method, response, self.context)
        except ProviderAuthError as exc:
            return exc.provider_code in errors.auth_codes
        except Exception:  # any other outcome is read again, and raised, by `read`
            return False
        return False


def build_call(
    definition: Definition,
    instance: Instance,
    method_id: str,
    inputs: Mapping[str, Any],
    *,
    timeout: httpx.Timeout,
) -> Call:
    """Validate the inputs and build the request of one method call (not yet authorized).

    Raises `MethodNotBound`, `ValidationError` (inputs, headers, URL) or `DefinitionError`
    before anything is sent.
    """
    method = definition.method(method_id)
    method.require_bound()
    method.validate_input(as_inputs(inputs))
    request, context = binding.prepare(
        definition, method, inputs, instance.config, instance_id=instance.instance_id
    )
    request.extensions["timeout"] = timeout.as_dict()
    call = Call(definition=definition, method=method, request=request, context=context)
    request.extensions[CALL_EXTENSION] = call
    return call


def read_response(
    definition: Definition,
    method: Method,
    response: httpx.Response,
    context: RequestContext,
) -> Any:
    """The validated output of a response, or the typed `ProviderError` it amounts to."""
    if not response.is_success:
        raise binding.provider_error(definition, method, response, instance_id=context.instance_id)
    output = binding.parse(definition, method, response, context)
    method.validate_output(output)
    return output
