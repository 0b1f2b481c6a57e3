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

__all__ = ["CALL_EXTENSION", "Call", "as_inputs", "build_call", "read_response"]

#: The request extension holding the `Call` a request belongs to (see `Call.sending`).
CALL_EXTENSION: Final = "prefect_integrations.call"


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
    the response the call ended with (None without one).
    """

    definition: Definition
    method: Method
    request: httpx.Request
    context: RequestContext
    started: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    status: int | None = None
    _sent: httpx.Request | None = None

    @property
    def instance_id(self) -> str | None:
        """The instance the call is made for."""
        return self.context.instance_id

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
