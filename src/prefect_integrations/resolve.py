"""Choose the instance to use for (integration, context), and explain the choice.

Rules:

1. An explicit instance id wins, but only if that instance is visible in the context;
   otherwise it is "not found" (other tenants' instances are never revealed).
2. Otherwise the candidates are the instances of the integration visible in the context:
   ``global``; ``client`` with the caller's client id; ``user`` with the caller's user id.
3. The most specific scope with an active instance wins: user, then client, then global.
   A scope whose instances are all ``inactive`` is skipped; when the most specific scope
   that has instances has one in ``error`` and none active, resolution raises instead of
   falling back to a wider scope.
4. Two or more active instances at the winning scope raise `AmbiguousInstance`.
5. `explain` returns the candidates considered and the rule that decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from prefect_integrations.exceptions import (
    AmbiguousInstance,
    InstanceError,
    InstanceNotFound,
    InstanceUnavailable,
    NoInstanceFound,
)
from prefect_integrations.scope import SCOPE_ORDER, Context
from prefect_integrations.store.instances import Instance, visible_instances

__all__ = ["Candidate", "Explanation", "explain", "resolve"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An instance that resolution looked at, and what it made of it."""

    instance_id: str
    scope: str
    state: str
    verdict: str

    def as_dict(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return {
            "instance_id": self.instance_id,
            "scope": self.scope,
            "state": self.state,
            "verdict": self.verdict,
        }


@dataclass(slots=True)
class Explanation:
    """Why resolution chose an instance, or why it could not."""

    integration_id: str
    context: Context
    requested: str | None
    candidates: list[Candidate] = field(default_factory=list)
    rule: str = ""
    chosen: Instance | None = None
    error: InstanceError | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "integration_id": self.integration_id,
            "context": {"client_id": self.context.client_id, "user_id": self.context.user_id},
            "requested": self.requested,
            "candidates": [c.as_dict() for c in self.candidates],
            "rule": self.rule,
            "chosen": self.chosen.instance_id if self.chosen else None,
            "error": str(self.error) if self.error else None,
            "error_code": self.error.code if self.error else None,
        }


def explain(
    session: Session,
    integration_id: str,
    context: Context,
    *,
    instance_id: str | None = None,
) -> Explanation:
    """Apply the resolution rules and report every step; never raises for a failed choice."""
    result = Explanation(integration_id=integration_id, context=context, requested=instance_id)
    found = visible_instances(
        session, context, integration_id=integration_id, instance_id=instance_id
    )

    if instance_id is not None:
        return _explain_explicit(result, found, instance_id, integration_id)

    by_scope: dict[str, list[Instance]] = {s: [] for s in SCOPE_ORDER}
    for inst in found:
        by_scope[inst.scope.context_type].append(inst)
    for scope in SCOPE_ORDER:
        group = by_scope[scope]
        if not group:
            continue
        active = [i for i in group if i.state == "active"]
        errored = [i for i in group if i.state == "error"]
        if result.rule or result.error:
            for inst in group:
                result.candidates.append(_candidate(inst, "not considered: narrower scope decided"))
            continue
        if len(active) == 1:
            chosen = active[0]
            result.chosen = chosen
            result.rule = f"the only active instance at the most specific scope ({scope})"
            for inst in group:
                verdict = "chosen" if inst is chosen else f"skipped: {inst.state}"
                result.candidates.append(_candidate(inst, verdict))
        elif len(active) > 1:
            result.rule = f"{len(active)} active instances at scope {scope}"
            result.error = AmbiguousInstance(integration_id, scope, [i.instance_id for i in active])
            for inst in group:
                verdict = "ambiguous" if inst in active else f"skipped: {inst.state}"
                result.candidates.append(_candidate(inst, verdict))
        elif errored:
            result.rule = f"the most specific scope ({scope}) has instances only in error"
            names = ", ".join(f"'{i.instance_id}'" for i in errored)
            reasons = "; ".join(
                f"'{i.instance_id}': {i.status.get('error') or 'no reason recorded'}"
                for i in errored
            )
            result.error = InstanceUnavailable(
                f"No active '{integration_id}' instance at scope '{scope}': {names} "
                f"in error ({reasons}); not falling back to a wider scope"
            )
            for inst in group:
                result.candidates.append(_candidate(inst, f"unusable: {inst.state}"))
        else:
            for inst in group:
                result.candidates.append(_candidate(inst, "skipped: inactive"))
    if not result.rule and not result.error:
        result.rule = "no active instance visible in the context"
        where = _describe(context)
        result.error = NoInstanceFound(
            f"No active '{integration_id}' instance is visible {where}"
            + (f" ({len(found)} inactive)" if found else "")
        )
    return result


def _explain_explicit(
    result: Explanation, found: list[Instance], instance_id: str, integration_id: str
) -> Explanation:
    if not found or found[0].integration_id != integration_id:
        result.rule = "explicit instance id not visible in the context"
        result.error = InstanceNotFound(instance_id)
        return result
    inst = found[0]
    if inst.state != "active":
        result.rule = "explicit instance id"
        result.error = inst.unavailable()
        result.candidates.append(_candidate(inst, f"unusable: {inst.state}"))
        return result
    result.rule = "explicit instance id"
    result.chosen = inst
    result.candidates.append(_candidate(inst, "chosen"))
    return result


def _candidate(inst: Instance, verdict: str) -> Candidate:
    return Candidate(
        instance_id=inst.instance_id, scope=str(inst.scope), state=inst.state, verdict=verdict
    )


def _describe(context: Context) -> str:
    parts = []
    if context.user_id is not None:
        parts.append(f"user '{context.user_id}'")
    if context.client_id is not None:
        parts.append(f"client '{context.client_id}'")
    return "for " + " and ".join(parts) if parts else "in the global context"


def resolve(
    session: Session,
    integration_id: str,
    context: Context,
    *,
    instance_id: str | None = None,
) -> Instance:
    """The instance to use; raises the error `explain` found."""
    result = explain(session, integration_id, context, instance_id=instance_id)
    if result.error is not None:
        raise result.error
    assert result.chosen is not None
    return result.chosen
