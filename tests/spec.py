"""The specification's examples and schema, held verbatim for the contract tests.

The specification (``integrations-spec.md``) lives outside the repository, in the
project's shared specifications. Its JSON examples and its tables are copied here as
they are written there; `spec_document` finds the file when it is present (beside a
checkout, as in CI) so a test can check that these copies still match it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

# "Example Integration Definition", verbatim.
EXAMPLE_DEFINITION = r"""
{
  "integrationId": "xero",
  "name": "Xero Accounting",
  "description": "Integration with Xero accounting software",
  "version": "1.0.0",
  "methods": [
    {
      "id": "create_invoice",
      "name": "Create Invoice",
      "description": "Creates a new invoice in Xero",
      "inputSchema": {
        "type": "object",
        "properties": {
          "contact_id": {
            "type": "string",
            "description": "Xero contact ID"
          },
          "line_items": {
            "type": "array",
            "items": {
              "type": "object",
              "properties": {
                "description": { "type": "string" },
                "quantity": { "type": "number" },
                "unit_amount": { "type": "number" }
              }
            }
          }
        },
        "required": ["contact_id", "line_items"]
      },
      "outputSchema": {
        "type": "object",
        "properties": {
          "invoice_id": { "type": "string" },
          "invoice_number": { "type": "string" },
          "status": { "type": "string" }
        }
      }
    }
  ],
  "configSchema": {
    "type": "object",
    "properties": {
      "tenant_id": {
        "type": "string",
        "description": "Xero tenant/organization ID"
      }
    }
  },
  "authType": "oauth2",
  "oauth2Config": {
    "authorizationUrl": "https://login.xero.com/identity/connect/authorize",
    "tokenUrl": "https://identity.xero.com/connect/token",
    "scopes": ["accounting.transactions", "accounting.contacts"]
  }
}
"""

# "Example Integration Instance", verbatim, with its one comment line
# ("// Encrypted in database") taken out so that it is JSON.
EXAMPLE_INSTANCE = r"""
{
  "instanceId": "xero_main",
  "integrationId": "xero",
  "name": "Main Xero Account",
  "description": "Primary Xero integration for company accounting",
  "context": {
    "type": "global"
  },
  "credentials": {
  },
  "config": {
    "tenant_id": "xyz123"
  },
  "status": {
    "state": "active",
    "lastChecked": "2024-03-15T10:00:00Z"
  }
}
"""

# The credentials document of the specification's credentials schema, for an oauth2
# instance (the values are the schema's, filled in).
EXAMPLE_OAUTH2_CREDENTIALS = r"""
{"oauth2": {"access_token": "AT-spec-example-1", "refresh_token": "RT-spec-example-1",
            "expires_at": "2030-01-01T00:00:00Z", "token_type": "Bearer"}}
"""

# Table "integration_definitions" and "integration_instances": name -> (data_type,
# character_maximum_length, is_nullable) as information_schema reports them. The
# specification's TIMESTAMP columns are `timestamp with time zone` (an instant, never a
# wall-clock time of an unknown zone).
SPEC_COLUMNS: dict[str, dict[str, tuple[str, int | None, str]]] = {
    "integration_definitions": {
        "id": ("uuid", None, "NO"),
        "integration_id": ("character varying", 255, "NO"),
        "name": ("character varying", 255, "NO"),
        "description": ("text", None, "YES"),
        "version": ("character varying", 50, "NO"),
        "methods": ("jsonb", None, "NO"),
        "config_schema": ("jsonb", None, "NO"),
        "auth_type": ("character varying", 50, "NO"),
        "oauth2_config": ("jsonb", None, "YES"),
        "created_at": ("timestamp with time zone", None, "YES"),
        "updated_at": ("timestamp with time zone", None, "YES"),
    },
    "integration_instances": {
        "id": ("uuid", None, "NO"),
        "instance_id": ("character varying", 255, "NO"),
        "integration_definition_id": ("uuid", None, "NO"),
        "name": ("character varying", 255, "NO"),
        "description": ("text", None, "YES"),
        "context_type": ("character varying", 50, "NO"),
        "context_id": ("character varying", 255, "YES"),
        "credentials": ("jsonb", None, "YES"),
        "config": ("jsonb", None, "NO"),
        "status": ("jsonb", None, "NO"),
        "created_at": ("timestamp with time zone", None, "YES"),
        "updated_at": ("timestamp with time zone", None, "YES"),
        "last_used_at": ("timestamp with time zone", None, "YES"),
    },
}

# The package's extra columns (key id, token expiry, compare-and-swap version, leases).
EXTRA_COLUMNS: dict[str, dict[str, tuple[str, int | None, str]]] = {
    "integration_definitions": {"extensions": ("jsonb", None, "NO")},
    "integration_instances": {
        "key_id": ("character varying", 64, "YES"),
        "token_expires_at": ("timestamp with time zone", None, "YES"),
        "credentials_version": ("bigint", None, "NO"),
        "refresh_lease_until": ("timestamp with time zone", None, "YES"),
        "last_checked_at": ("timestamp with time zone", None, "YES"),
        "maintenance_lease_until": ("timestamp with time zone", None, "YES"),
        "maintenance_lease_owner": ("text", None, "YES"),
    },
}

# The five indexes of the specification: name -> what `pg_indexes.indexdef` contains.
SPEC_INDEXES = {
    "integration_definitions_integration_id_idx": "UNIQUE INDEX "
    "integration_definitions_integration_id_idx ON public.integration_definitions "
    "USING btree (integration_id)",
    "integration_instances_instance_id_idx": "UNIQUE INDEX "
    "integration_instances_instance_id_idx ON public.integration_instances "
    "USING btree (instance_id)",
    "integration_instances_context_idx": "INDEX integration_instances_context_idx ON "
    "public.integration_instances USING btree (context_type, context_id)",
    "integration_instances_definition_idx": "INDEX integration_instances_definition_idx ON "
    "public.integration_instances USING btree (integration_definition_id)",
    "integration_instances_status_idx": "INDEX integration_instances_status_idx ON "
    "public.integration_instances USING gin (status)",
}

_SQL_TYPES = {
    "UUID": ("uuid", None),
    "TEXT": ("text", None),
    "JSONB": ("jsonb", None),
    "TIMESTAMP": ("timestamp with time zone", None),
}


def spec_document() -> str | None:
    """The text of `integrations-spec.md`: `$PREFECT_INTEGRATIONS_SPEC`, or beside the checkout."""
    named = os.environ.get("PREFECT_INTEGRATIONS_SPEC")
    root = Path(__file__).resolve().parent.parent
    candidates = [Path(named)] if named else []
    candidates += [
        base / "shared" / "specs" / "integrations-spec.md"
        for base in (root.parent, root.parent.parent)
    ]
    for path in candidates:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def json_blocks_after(text: str, heading: str) -> str:
    """The first fenced JSON block after ``heading`` in the specification."""
    start = text.index(heading)
    match = re.search(r"```json\n(.*?)```", text[start:], re.S)
    assert match is not None, heading
    return match.group(1)


def spec_tables(text: str) -> dict[str, dict[str, tuple[str, int | None]]]:
    """The specification's tables as ``{table: {column: (data_type, length)}}``."""
    tables: dict[str, dict[str, tuple[str, int | None]]] = {}
    for match in re.finditer(r"\*\*Table: (\w+)\*\*\n\n(.*?)\n\n", text, re.S):
        columns: dict[str, tuple[str, int | None]] = {}
        for line in match.group(2).splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            name, sql_type = cells[0], cells[1]
            varchar = re.fullmatch(r"VARCHAR\((\d+)\)", sql_type)
            columns[name] = (
                ("character varying", int(varchar.group(1))) if varchar else _SQL_TYPES[sql_type]
            )
        tables[match.group(1)] = columns
    return tables


def spec_index_names(text: str) -> list[str]:
    """The index names listed under the specification's "Indexes"."""
    section = text[text.index("**Indexes:**") :].split("\n\n")[0]
    return re.findall(r"^- `(\w+)`", section, re.M)


def strip_comments(block: str) -> str:
    """A specification JSON block without its ``// ...`` comment lines."""
    return "\n".join(line for line in block.splitlines() if not line.strip().startswith("//"))


def as_json(block: str) -> Any:
    """Parse one of the verbatim blocks above."""
    return json.loads(block)
