"""OpenAPI descriptions (Swagger 2.0, OpenAPI 3.0 and 3.1) to integration definitions.

    from prefect_integrations.openapi import import_openapi

    result = import_openapi(Path("spec.yaml"), integration_id="acme", tags=["Widgets"])

- `source`: read, parse and validate a description (``openapi-spec-validator``), resolve
  its references (``referencing``).
- `operations`: the operations of either version, read into one shape.
- `convert`: Schema Objects to draft 2020-12 JSON Schema, and the `Report` of losses.
- `methods`: one operation to one method with its HTTP binding.
- `overlay`: hand-written changes merged by every import (`load_overlay`).
- `importer`: the whole definition (`import_openapi`).

Imports point down from ``importer``; the package sits above `prefect_integrations.definitions`
(its result is checked with `validate_document`) and knows nothing of HTTP or SQL.
"""

from prefect_integrations.openapi.convert import Note, Report
from prefect_integrations.openapi.importer import ImportResult, import_openapi
from prefect_integrations.openapi.methods import snake_case
from prefect_integrations.openapi.overlay import Overlay, load_overlay

__all__ = [
    "ImportResult",
    "Note",
    "Overlay",
    "Report",
    "import_openapi",
    "load_overlay",
    "snake_case",
]
