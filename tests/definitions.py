"""Definitions of providers served by the tests (tests/provider.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ITEM_OUTPUT = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["id", "name"],
}
ECHO: dict[str, Any] = {
    "integrationId": "echo",
    "name": "Echo",
    "description": "A provider served by the tests.",
    "version": "1.0.0",
    "authType": "apikey",
    "baseUrl": "https://echo.invalid/v1",
    "auth": {"apikey": {"in": "header", "name": "X-Api-Key"}},
    "configSchema": {
        "type": "object",
        "properties": {"base_url": {"type": "string", "format": "uri"}},
        "additionalProperties": False,
    },
    "errors": {"code": "{{ response.error.code }}", "message": "{{ response.error.message }}"},
    "healthCheck": {"method": "get_item", "input": {"item_id": 1}},
    "methods": [
        {
            "id": "get_item",
            "name": "Get item",
            "description": "Read one item.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "item_id": {"type": "integer", "minimum": 1},
                    "verbose": {"type": "boolean"},
                },
                "required": ["item_id"],
                "additionalProperties": False,
            },
            "outputSchema": ITEM_OUTPUT,
            "http": {
                "method": "GET",
                "path": "/items/{{ inputs.item_id }}",
                "query": {"verbose": "{{ inputs.verbose }}"},
                "output": {"id": "{{ response.id }}", "name": "{{ response.name }}"},
            },
        },
        {
            "id": "create_item",
            "name": "Create item",
            "description": "Create one item.",
            "inputSchema": {
                "type": "object",
                "properties": {"name": {"type": "string", "minLength": 1}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "outputSchema": ITEM_OUTPUT,
            "http": {
                "method": "POST",
                "path": "/items",
                "body": {"json": {"name": "{{ inputs.name }}"}},
                "output": {"id": "{{ response.id }}", "name": "{{ response.name }}"},
            },
        },
    ],
}


def _variant(new_id: str, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(ECHO)
    doc["integrationId"] = new_id
    doc.update(changes)
    return doc


ITEMS_API: dict[str, Any] = {
    "integrationId": "authsrv",
    "name": "Items API",
    "description": "An API protected by the test OAuth 2.0 server (tests/oauth_server).",
    "version": "1.0.0",
    "authType": "oauth2",
    "baseUrl": "https://items.invalid",
    "oauth2Config": {
        "authorizationUrl": "https://items.invalid/auth",
        "tokenUrl": "https://items.invalid/token",
        "scopes": ["openid", "offline_access", "items.read"],
        "additionalParameters": {"prompt": "consent"},
        "tokenEndpointAuthMethod": "client_secret_post",
    },
    "configSchema": {
        "type": "object",
        "properties": {
            "base_url": {"type": "string", "format": "uri"},
            "authorization_url": {"type": "string", "format": "uri"},
            "token_url": {"type": "string", "format": "uri"},
        },
        "additionalProperties": False,
    },
    "methods": [
        {
            "id": "list_items",
            "name": "List items",
            "description": "The items visible to the token.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
            "outputSchema": {
                "type": "object",
                "properties": {"items": {"type": "array"}, "client_id": {"type": "string"}},
                "required": ["items"],
            },
            "http": {
                "method": "GET",
                "path": "/api/items",
                "output": {
                    "items": "{{ response['items'] }}",
                    "client_id": "{{ response.client_id }}",
                },
            },
        }
    ],
}


KEY_OUTPUT = {
    "type": "object",
    "properties": {"api_key": {"type": "string"}, "key_id": {"type": "string"}},
    "required": ["api_key", "key_id"],
}


def _rotating() -> dict[str, Any]:
    doc = _variant("echo_rotating")
    doc["credentialRotation"] = {"create": "create_key", "revoke": "revoke_key"}
    doc["methods"] = [
        *doc["methods"],
        {
            "id": "create_key",
            "name": "Create key",
            "description": "Mint a new API key.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
            "outputSchema": KEY_OUTPUT,
            "http": {
                "method": "POST",
                "path": "/keys",
                "output": {"api_key": "{{ response.secret }}", "key_id": "{{ response.id }}"},
            },
        },
        {
            "id": "revoke_key",
            "name": "Revoke key",
            "description": "Revoke an API key.",
            "inputSchema": {
                "type": "object",
                "properties": {"key_id": {"type": "string"}},
                "required": ["key_id"],
                "additionalProperties": False,
            },
            "outputSchema": {"type": "object"},
            "http": {"method": "DELETE", "path": "/keys/{{ inputs.key_id }}", "output": {}},
        },
    ]
    return doc


def write_echo_definitions(folder: Path) -> Path:
    """Write the echo definitions (one per auth placement and scheme) into ``folder``."""
    docs = [
        ECHO,
        _variant("echo_query", auth={"apikey": {"in": "query", "name": "key"}}),
        _variant("echo_basic", auth={"apikey": {"in": "basic"}}),
        _variant(
            "echo_oauth",
            authType="oauth2",
            auth=None,
            oauth2Config={
                "authorizationUrl": "https://echo.invalid/authorize",
                "tokenUrl": "https://echo.invalid/token",
                "scopes": ["items"],
            },
        ),
        _variant("echo_userpass", authType="custom", auth={"custom": {"scheme": "basic"}}),
        _variant("echo_hmac", authType="custom", auth={"custom": {"scheme": "hmac_sha256"}}),
        {k: v for k, v in _variant("echo_nohealth").items() if k != "healthCheck"},
        _rotating(),
        ITEMS_API,
        {
            **ITEMS_API,
            "integrationId": "authsrv_m2m",
            "oauth2Config": {
                **ITEMS_API["oauth2Config"],
                "grantType": "client_credentials",
                "scopes": ["items.read"],
                "tokenEndpointAuthMethod": "client_secret_basic",
                "additionalParameters": {},
            },
        },
    ]
    for doc in docs:
        clean = {k: v for k, v in doc.items() if v is not None}
        (folder / f"{doc['integrationId']}.json").write_text(json.dumps(clean))
    return folder
