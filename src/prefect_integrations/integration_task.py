"""The Prefect task class of the generated tasks: arguments checked before Prefect binds them.

Prefect binds a call's arguments to the task's signature (``inspect.Signature.bind``) when
the task is called, submitted or mapped, and reports a misspelt keyword as a
``ParameterBindError`` about the required parameter it did not get. `IntegrationTask`
checks the arguments first, against the same signature, and raises the package's
`ValidationError` naming the method and the keyword, with the closest parameter name:

    slack.post_message(chanel="#ops", text="hi")
    # ValidationError: Input of 'slack.post_message' is invalid at $.chanel:
    #   unknown parameter 'chanel'; did you mean 'channel'?

The generated tasks' default ``retry_condition_fn`` is `retry_condition`: a Prefect retry
is refused when the call's error says that sending it again could repeat a write
(``retry_safe`` is False: a method that is not idempotent, whose request the provider may
have processed).

In ``.map()``, a Prefect block passed as an argument (the ``instance``) is one value for
every mapped run, never iterated: Prefect maps over every iterable argument, and a block,
as any pydantic model, is iterable (over its fields). It is wrapped in Prefect's own
``unmapped`` before Prefect looks.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from prefect import Task, unmapped
from prefect.blocks.core import Block
from prefect.client.schemas.objects import State, TaskRun

from prefect_integrations.exceptions import IntegrationError, ValidationError
from prefect_integrations.pipeline import retry_logger

__all__ = ["IntegrationTask", "check_arguments", "retry_condition"]


def check_arguments(
    qualified_name: str,
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> None:
    """Raise `ValidationError` unless ``args`` and ``kwargs`` bind to ``signature``.

    An unknown keyword is named first, with the closest parameter names (``difflib``);
    then a positional argument and a missing required parameter. The subject is
    the method's input (``Input of 'slack.post_message'``), as for a value its schema
    refuses.
    """
    subject = f"Input of '{qualified_name}'"
    parameters = signature.parameters
    for name in kwargs:
        if name in parameters:
            continue
        close = difflib.get_close_matches(name, list(parameters), n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        else:
            hint = "expected one of " + ", ".join(f"'{p}'" for p in parameters)
        raise ValidationError(subject, [name], f"unknown parameter '{name}'; {hint}")
    if args:
        names = ", ".join(f"{name}=..." for name in parameters)
        raise ValidationError(
            subject,
            [],
            f"takes keyword arguments only ({names}); got {len(args)} positional argument(s)",
        )
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in kwargs:
            raise ValidationError(subject, [name], f"missing required parameter '{name}'")


def _unmapped_blocks(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every Prefect block wrapped in ``unmapped`` (one value for all runs)."""
    return {
        name: unmapped(value) if isinstance(value, Block) else value
        for name, value in kwargs.items()
    }


class IntegrationTask(Task[..., Any]):
    """A generated method task: arguments checked by `check_arguments` before Prefect binds them.

    Calling, ``submit``, ``map``, ``delay`` and ``apply_async`` all check first; ``map``
    never iterates a block argument. ``with_options`` keeps the class.
    """

    def _check(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        check_arguments(self.name, inspect.signature(self.fn), args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task (see `prefect.Task.__call__`), once its arguments are checked."""
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("return_state", "wait_for")}
        self._check(args, call_kwargs)
        return super().__call__(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the task (see `prefect.Task.submit`), once its arguments are checked."""
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("return_state", "wait_for")}
        self._check(args, call_kwargs)
        return super().submit(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """Map the task (see `prefect.Task.map`): arguments checked, blocks never iterated."""
        reserved = ("return_state", "wait_for", "deferred")
        call_kwargs = {k: v for k, v in kwargs.items() if k not in reserved}
        self._check(args, call_kwargs)
        options = {k: v for k, v in kwargs.items() if k in reserved}
        return super().map(*args, **_unmapped_blocks(call_kwargs), **options)

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        wait_for: Iterable[Any] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> Any:
        """Create a deferred run (see `prefect.Task.apply_async`), once checked."""
        self._check(tuple(args or ()), kwargs or {})
        return super().apply_async(args, kwargs, wait_for, dependencies)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        """A copy with other options (see `prefect.Task.with_options`), of this class."""
        copied = super().with_options(*args, **kwargs)
        copied.__class__ = type(self)  # Prefect builds a plain Task; the state is the same
        return copied


def retry_condition(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn`` of the generated tasks: no retry that could duplicate.

    False (the task run fails at once, whatever ``retries`` says) when the run failed with
    an error whose ``retry_safe`` is False: the provider may have processed a request
    that is not idempotent (a 5xx or a read timeout after a POST). The refusal is logged
    to the task run. True otherwise, so the task's retry policy applies.
    """
    error = state.data if isinstance(state.data, BaseException) else None
    if isinstance(error, IntegrationError) and not error.retry_safe:
        retry_logger().warning(
            "Task '%s' is not retried: the provider may have processed the request and the "
            "method is not idempotent, so running it again could repeat a write (%s)",
            task.name,
            error.code,
        )
        return False
    return True
