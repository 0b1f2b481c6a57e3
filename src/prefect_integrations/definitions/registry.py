"""The `Registry`: an immutable set of definitions looked up by integration id.

Built by `prefect_integrations.definitions.loader.load_registry` (or directly from
definitions); each definition carries its validators and bindings, compiled once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from prefect_integrations.definitions.model import Definition
from prefect_integrations.exceptions import DefinitionError, DefinitionProblem, UnknownIntegration

__all__ = ["Registry"]


class Registry:
    """An immutable set of definitions looked up by integration id.

    Iterating yields the definitions in id order.
    """

    __slots__ = ("_definitions",)

    def __init__(self, definitions: Iterable[Definition]) -> None:
        by_id: dict[str, Definition] = {}
        problems: list[DefinitionProblem] = []
        for definition in definitions:
            first = by_id.get(definition.id)
            if first is not None:
                problems.append(
                    DefinitionProblem(
                        source=definition.source,
                        path=("integrationId",),
                        message=(
                            f"duplicate integration id '{definition.id}', "
                            f"already defined in {first.source}"
                        ),
                    )
                )
                continue
            by_id[definition.id] = definition
        if problems:
            raise DefinitionError(problems)
        self._definitions: Mapping[str, Definition] = MappingProxyType(
            {key: by_id[key] for key in sorted(by_id)}
        )

    def get(self, integration_id: str) -> Definition:
        """Return the definition ``integration_id`` or raise `UnknownIntegration`."""
        try:
            return self._definitions[integration_id]
        except KeyError:
            raise UnknownIntegration(integration_id, known=list(self._definitions)) from None

    def ids(self) -> list[str]:
        """Integration ids in sorted order."""
        return list(self._definitions)

    def __contains__(self, integration_id: object) -> bool:
        return integration_id in self._definitions

    def __iter__(self) -> Iterator[Definition]:
        return iter(self._definitions.values())

    def __len__(self) -> int:
        return len(self._definitions)

    def __repr__(self) -> str:
        return f"Registry({self.ids()!r})"
