"""`instances apply` / `export`: specification documents in and out, all or nothing.

Every test drives the command line against the real test database; a refused apply is
checked to have written nothing (instances, audit rows, the stored rows themselves).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.db import Database

from .clirunner import Cli, assert_one_error, counts, use_definitions, write
from .conftest import ACME_DEFINITION

API_KEY = "AK-doc-canary-7c1e"
API_KEY_2 = "AK-doc-canary-2-9f3a"


def acme(instance_id: str, **fields: Any) -> dict[str, Any]:
    """A valid acme instance document."""
    return {
        "instanceId": instance_id,
        "integrationId": "acme",
        "name": f"Acme {instance_id}",
        **fields,
    }


@pytest.fixture
def cli(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Cli]:
    use_definitions(monkeypatch, tmp_path / "extra-definitions", {"acme.json": ACME_DEFINITION})
    runner = Cli(capsys, monkeypatch, (API_KEY, API_KEY_2))
    runner.ok("definitions", "sync")
    yield runner
    runner.assert_no_secrets()


def rows(db: Database) -> list[tuple[Any, ...]]:
    """Everything stored about instances, to compare before and after a refused apply."""
    with db.transaction() as s:
        return [
            tuple(r)
            for r in s.execute(
                sa.text(
                    "SELECT instance_id, name, description, context_type, context_id, config, "
                    "status, credentials, credentials_version, updated_at "
                    "FROM integration_instances ORDER BY instance_id"
                )
            )
        ]


def apply(cli: Cli, tmp_path: Path, value: object) -> Any:
    return cli("instances", "apply", write(tmp_path, "documents.json", value))


def test_apply_creates_updates_and_is_idempotent(cli: Cli, tmp_path: Path, db: Database) -> None:
    documents = [
        acme("acme_global", credentials={"apikey": {"key": API_KEY}}, config={"region": "eu"}),
        acme(
            "acme_c1",
            description="Client one",
            context={"type": "client", "contextId": "c1"},
            config={"region": "us"},
        ),
    ]
    first = apply(cli, tmp_path, documents)
    assert first.code == 0, first
    assert first.out.splitlines() == [
        "created   acme_global",
        "created   acme_c1",
        "created 2, updated 0, unchanged 0",
    ]
    shown = cli.json("instances", "show", "acme_global")
    assert shown["status"] == {"state": "active"}  # usable credentials activate it
    assert shown["context"] == {"type": "global"}
    assert cli.json("instances", "show", "acme_c1")["status"] == {"state": "inactive"}
    assert cli.json("instances", "show", "acme_c1")["description"] == "Client one"

    before = (counts(db), rows(db))
    again = apply(cli, tmp_path, documents)
    assert again.out.splitlines()[-1] == "created 0, updated 0, unchanged 2"
    # the unchanged key was decrypted to compare (one audited decrypt), nothing written
    assert counts(db) == (before[0][0], before[0][1] + 1)
    assert rows(db) == before[1]

    documents[0]["credentials"] = {"apikey": {"key": API_KEY_2}}
    documents[1] = {**documents[1], "name": "Renamed", "description": None}
    changed = json.loads(
        cli.ok("instances", "apply", write(tmp_path, "d2.json", documents), "--json").out
    )
    assert changed == [
        {"instanceId": "acme_global", "action": "updated", "fields": ["credentials"]},
        {"instanceId": "acme_c1", "action": "updated", "fields": ["name", "description"]},
    ]
    shown = cli.json("instances", "show", "acme_c1")
    assert shown["name"] == "Renamed" and "description" not in shown
    assert cli.json("instances", "show", "acme_global")["credentialsVersion"] == 2


def test_export_is_applicable_and_has_no_secrets(cli: Cli, tmp_path: Path, db: Database) -> None:
    apply(
        cli,
        tmp_path,
        [
            acme("a1", credentials={"apikey": {"key": API_KEY}}, description="One"),
            acme("a2", context={"type": "user", "contextId": "u@example.com"}),
        ],
    )
    exported = json.loads(cli.ok("instances", "export").out)
    assert [d["instanceId"] for d in exported] == ["a1", "a2"]
    assert all(d["credentials"] == {} for d in exported)
    assert exported[0]["description"] == "One"
    assert exported[1]["context"] == {"type": "user", "contextId": "u@example.com"}
    assert set(exported[0]) == {
        "instanceId",
        "integrationId",
        "name",
        "description",
        "context",
        "credentials",
        "config",
        "status",
    }
    single = json.loads(cli.ok("instances", "export", "a2").out)
    assert single == exported[1]

    before = (counts(db), rows(db))
    out = cli.ok("instances", "apply", "-", stdin=json.dumps(exported)).out
    assert out.splitlines()[-1] == "created 0, updated 0, unchanged 2"
    assert (counts(db), rows(db)) == before
    # what `show --json` prints applies too (its extra facts are ignored) ...
    shown = cli.json("instances", "show", "a2")
    assert cli.ok("instances", "apply", "-", stdin=json.dumps(shown)).out.startswith("unchanged")
    # ... except stored credentials described by `show`, which are not credentials
    shown = cli.json("instances", "show", "a1")
    assert_one_error(
        cli("instances", "apply", "-", stdin=json.dumps(shown)),
        "validation_error",
        "Instance document ('a1')",
        "$.credentials.keyId",
        "give the credentials themselves",
    )
    assert_one_error(cli("instances", "export", "nope"), "instance_not_found", "'nope'")


BAD_DOCUMENTS: list[tuple[str, object, tuple[str, ...]]] = [
    ("not an object", [acme("ok1"), "acme_2"], ("Instance document [1]", "at $[1]:")),
    (
        "unknown field",
        [acme("ok1"), {**acme("x2"), "nmae": "typo"}],
        ("[1] ('x2')", "at $[1].nmae:", "did you mean 'name'?"),
    ),
    ("missing name", [{"instanceId": "x1", "integrationId": "acme"}], ("'name'",)),
    (
        "unknown integration",
        [acme("ok1"), {**acme("x2"), "integrationId": "nope"}],
        ("[1] ('x2')", "at $[1].integrationId:", "'nope'"),
    ),
    (
        "config against configSchema",
        [acme("ok1"), acme("ok2"), acme("x3", config={"limits": {"per_minute": 0}})],
        ("[2] ('x3')", "at $[2].config.limits.per_minute:", "minimum"),
    ),
    (
        "context type",
        [acme("x1", context={"type": "team"})],
        ("[0] ('x1')", "at $[0].context.type:"),
    ),
    (
        "context id missing",
        [acme("x1", context={"type": "client"})],
        ("[0] ('x1')", "at $[0].context.contextId:", "needs a context id"),
    ),
    (
        "global with a context id",
        [acme("x1", context={"type": "global", "contextId": "c1"})],
        ("at $[0].context.contextId:", "no context id"),
    ),
    (
        "credentials schema",
        [acme("ok1"), acme("x2", credentials={"apikey": {"key": ""}})],
        ("[1] ('x2')", "at $[1].credentials.apikey.key:"),
    ),
    (
        "status schema",
        [acme("x1", status={"state": "broken"})],
        ("at $[0].status.state:",),
    ),
    ("bad instance id", [acme("bad id")], ("at $[0].instanceId:", "letters, digits")),
    ("empty name", [{**acme("x1"), "name": " "}], ("at $[0].name:", "must not be empty")),
    (
        "same id twice",
        [acme("x1"), acme("x2"), acme("x1")],
        ("[2] ('x1')", "at $[2].instanceId:", "already given at $[0]"),
    ),
    (
        "misspelt id field",
        [{"instanceId": "x1", "integrationID": "acme", "name": "n"}],
        ("at $[0].integrationID:", "did you mean 'integrationId'?"),
    ),
    (
        "snake case",
        [{"instance_id": "x1", "integrationId": "acme", "name": "n"}],
        ("at $[0].instance_id:", "did you mean 'instanceId'?"),
    ),
    (
        "context as text",
        [acme("x1", context="global")],
        ("at $[0].context:", "is not of type 'object'"),
    ),
    ("status without state", [acme("x1", status={})], ("at $[0].status:", "'state'")),
    ("id with a line break", [acme("x1\n")], ("('x1\\n')", "at $[0].instanceId:")),
    (
        "forged error line in the id",
        [acme("a b\nerror[ok]: fake")],
        ("at $[0].instanceId:",),
    ),
    ("surrogate in the name", [{**acme("x1"), "name": "a\ud800"}], ("at $[0].name:", "surrogate")),
    ("surrogate in the description", [acme("x1", description="\udfff")], ("$[0].description:",)),
    (
        "surrogate in the context id",
        [acme("x1", context={"type": "client", "contextId": "c\ud800"})],
        ("at $[0].context.contextId:",),
    ),
    (
        "surrogate in the status",
        [acme("x1", status={"state": "error", "error": "\ud800"})],
        ("at $[0].status.error:", "surrogate"),
    ),
    (
        "surrogate in a secret",
        [acme("x1", credentials={"apikey": {"key": "AK-\ud800-tail"}})],
        ("at $[0].credentials.apikey.key:", "surrogate"),
    ),
    (
        "surrogate in a credential field name",
        [acme("x1", credentials={"apikey": {"key": "k", "\ud800": "v"}})],
        ("at $[0].credentials.apikey", "surrogate"),
    ),
    ("empty array", [], ("the array is empty",)),
    ("a number", 7, ("instance document",)),
]


@pytest.mark.parametrize(
    ("value", "fragments"),
    [pytest.param(v, f, id=name) for name, v, f in BAD_DOCUMENTS],
)
def test_one_bad_document_writes_none(
    cli: Cli, tmp_path: Path, db: Database, value: object, fragments: tuple[str, ...]
) -> None:
    apply(cli, tmp_path, [acme("existing", config={"region": "eu"})])
    before = (counts(db), rows(db))
    assert_one_error(apply(cli, tmp_path, value), "validation_error", *fragments)
    assert (counts(db), rows(db)) == before


def test_an_instance_cannot_change_integration(cli: Cli, tmp_path: Path, db: Database) -> None:
    apply(cli, tmp_path, [acme("moving")])
    before = (counts(db), rows(db))
    moved = {
        **acme("moving"),
        "integrationId": "slack",
    }
    assert_one_error(
        apply(cli, tmp_path, [acme("fine"), moved]),
        "validation_error",
        "[1] ('moving')",
        "$[1].integrationId",
        "cannot change integration",
    )
    assert (counts(db), rows(db)) == before


def test_credentials_need_a_keyring_only_when_given(
    cli: Cli, tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", "")
    reset_runtime()
    assert apply(cli, tmp_path, [acme("nokey")]).code == 0
    before = counts(db)
    result = apply(cli, tmp_path, [acme("withkey", credentials={"apikey": {"key": API_KEY}})])
    assert_one_error(result, "keyring_error", "PREFECT_INTEGRATIONS_KEYS")
    assert counts(db) == before


def test_create_and_update_take_a_description(cli: Cli) -> None:
    cli.ok(
        "instances",
        "create",
        "d1",
        "--integration",
        "acme",
        "--name",
        "D",
        "--description",
        "For the monthly close",
    )
    assert cli.json("instances", "show", "d1")["description"] == "For the monthly close"
    assert "For the monthly close" in cli.ok("instances", "show", "d1").out
    cli.ok("instances", "update", "d1", "--description", "Other")
    assert cli.json("instances", "show", "d1")["description"] == "Other"
    cli.ok("instances", "update", "d1", "--description", "")
    assert "description" not in cli.json("instances", "show", "d1")


def test_fields_left_out_are_kept_and_status_is_observed_not_applied(
    cli: Cli, tmp_path: Path, db: Database
) -> None:
    apply(
        cli,
        tmp_path,
        [acme("kept", description="Mine", config={"region": "eu"}, status={"state": "active"})],
    )
    exported = json.loads(cli.ok("instances", "export", "kept").out)
    # a health check finds the instance broken after the export was taken
    cli.ok("instances", "update", "kept", "--status", '{"state": "error", "error": "401"}')
    out = cli.ok("instances", "apply", "-", stdin=json.dumps(exported)).out
    assert out.splitlines()[0] == "unchanged kept"
    assert cli.json("instances", "show", "kept")["status"] == {"state": "error", "error": "401"}
    # a partial document changes only what it names
    out = cli.ok("instances", "apply", "-", stdin=json.dumps(acme("kept", credentials=None))).out
    assert out.splitlines()[0] == "unchanged kept"
    shown = cli.json("instances", "show", "kept")
    assert (shown["description"], shown["config"]) == ("Mine", {"region": "eu"})


def test_a_document_without_context_keeps_the_scope(cli: Cli, tmp_path: Path) -> None:
    apply(cli, tmp_path, [acme("scoped", context={"type": "client", "contextId": "c1"})])
    assert cli.ok("instances", "apply", "-", stdin=json.dumps(acme("scoped"))).out.startswith(
        "unchanged scoped"
    )
    assert cli.json("instances", "show", "scoped")["context"] == {
        "type": "client",
        "contextId": "c1",
    }
    apply(cli, tmp_path, [acme("fresh")])
    assert cli.json("instances", "show", "fresh")["context"] == {"type": "global"}
