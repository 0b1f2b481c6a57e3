"""End-to-end tests of the ``prefect-integrations`` command line.

Every test calls `prefect_integrations.cli.run` with real arguments against the real test
PostgreSQL database of `conftest.py` and reads what the command printed. Nothing is
mocked except standard input.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations import db as dbmod
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.db import Database
from prefect_integrations.definitions import load_registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import RUNTIME_ROLE
from prefect_integrations.store import vault

from .clirunner import Cli, Result, assert_one_error, counts, use_definitions, write
from .conftest import ACME_DEFINITION
from .factories import make_echo
from .provider import FakeProvider, Reply

# --------------------------------------------------------------------------------------
# Canaries: secrets that must never be printed by any command
# --------------------------------------------------------------------------------------

ACCESS_TOKEN = "AT-canary-4d1f0c2b"
REFRESH_TOKEN = "RT-canary-9e8a7b6c"
CLIENT_SECRET = "CS-canary-5a4b3c2d"
API_KEY = "AK-canary-1f2e3d4c"
CANARIES = (ACCESS_TOKEN, REFRESH_TOKEN, CLIENT_SECRET, API_KEY)

XERO_CREDENTIALS: dict[str, Any] = {
    "oauth2": {
        "access_token": ACCESS_TOKEN,
        "refresh_token": REFRESH_TOKEN,
        "token_type": "Bearer",
        "scope": "accounting.transactions",
        "client_id": "client-id-public",
        "client_secret": CLIENT_SECRET,
    }
}
ACME_CREDENTIALS: dict[str, Any] = {"apikey": {"key": API_KEY}}
XERO_CONFIG = '{"tenant_id": "tenant-1"}'
SHIPPED = ["gmail", "slack", "xero"]
DOWN_URL = "postgresql+psycopg://x@/nope?host=/nonexistent-dir&port=5432"
DOWN_URL_WITH_PASSWORD = (
    "postgresql+psycopg://x:PW-canary-77aa@/nope?host=/nonexistent-dir&port=5432"
)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def cli_counts(cli: Cli) -> tuple[int, int]:
    """(instances, audit rows), as the CLI reports them."""
    return len(cli.json("instances", "list")), len(cli.json("audit", "tail", "-n", "10000"))


def use_database(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DATABASE_URL", url)
    reset_runtime()


def create_xero(cli: Cli, instance_id: str, creds_file: str, *extra: str) -> Result:
    return cli.ok(
        "instances",
        "create",
        instance_id,
        "--integration",
        "xero",
        "--name",
        instance_id,
        "--config",
        XERO_CONFIG,
        "--credentials-file",
        creds_file,
        *extra,
    )


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture
def cli(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    """A CLI runner against the fresh (migrated, not yet synced) test database."""
    runner = Cli(capsys, monkeypatch, CANARIES)
    yield runner
    runner.assert_no_secrets()


@pytest.fixture
def acme(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI with the test definition ``acme`` (apikey) in its registry."""
    use_definitions(monkeypatch, tmp_path / "extra-definitions", {"acme.json": ACME_DEFINITION})
    return cli


@pytest.fixture
def store(acme: Cli, tmp_path: Path) -> Cli:
    """Definitions (shipped plus acme) synced and one instance ``existing`` with credentials."""
    assert acme.ok("definitions", "sync").out.startswith("created 4,")
    acme.ok(
        "instances",
        "create",
        "existing",
        "--integration",
        "acme",
        "--name",
        "Existing",
        "--credentials-file",
        write(tmp_path, "existing.json", ACME_CREDENTIALS),
    )
    return acme


@pytest.fixture
def xero_creds(tmp_path: Path) -> str:
    return write(tmp_path, "xero-credentials.json", XERO_CREDENTIALS)


# --------------------------------------------------------------------------------------
# db
# --------------------------------------------------------------------------------------


def test_db_upgrade_is_idempotent_and_current_is_at_head(cli: Cli, db: Database) -> None:
    head = dbmod.head_revision()
    before = counts(db)
    for _ in range(2):
        assert cli.ok("db", "upgrade").out.strip() == f"Database at revision {head}"
    current = cli.ok("db", "current")
    assert current.out.splitlines() == [f"current: {head}", f"head:    {head}"]
    assert current.err == ""
    assert counts(db) == before


def test_db_current_below_head_exits_3_until_upgraded(cli: Cli) -> None:
    head = dbmod.head_revision()
    assert cli.ok("db", "downgrade", "base").out.strip() == "Database at revision base"
    below = cli("db", "current")
    assert below.code == 3
    assert "current: base (no migrations applied)" in below.out
    assert f"head:    {head}" in below.out
    cli.ok("db", "upgrade")
    cli.ok("db", "current")
    assert cli.ok("definitions", "sync").out.startswith("created 3,")


def test_db_start_and_stop_refuse_an_external_database(cli: Cli) -> None:
    for command in ("start", "stop"):
        assert_one_error(
            cli("db", command),
            "configuration_error",
            f"`db {command}`",
            "PREFECT_INTEGRATIONS_DATABASE_URL",
        )


def test_db_status_and_url_hide_the_password(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    use_database(monkeypatch, DOWN_URL_WITH_PASSWORD)
    cli.secrets.append("PW-canary-77aa")
    status = cli.ok("db", "status")
    assert status.out.startswith("External database: postgresql+psycopg://x:***@/nope")
    assert cli.ok("db", "url").out.startswith("postgresql+psycopg://x:***@/nope")


# --------------------------------------------------------------------------------------
# definitions
# --------------------------------------------------------------------------------------


def test_definitions_sync_creates_then_is_unchanged(cli: Cli, db: Database) -> None:
    first = cli.ok("definitions", "sync")
    assert first.out.strip() == "created 3, updated 0, unchanged 0, removed 0"
    assert first.err == ""
    again = cli.ok("definitions", "sync")
    assert again.out.strip() == "created 0, updated 0, unchanged 3, removed 0"
    rows = cli.json("audit", "tail")
    assert [(r["action"], r["integration_id"]) for r in rows] == [
        ("definition.create", i) for i in SHIPPED
    ]
    stored = cli.json("definitions", "stored")
    assert [(d["integrationId"], d["instances"]) for d in stored] == [(i, 0) for i in SHIPPED]
    assert {d["authType"] for d in stored} == {"oauth2"}
    assert counts(db) == (0, 3)


def test_definitions_list_table_and_json(cli: Cli) -> None:
    table = cli.ok("definitions", "list").out.splitlines()
    assert table[0].split() == ["ID", "NAME", "VERSION", "AUTH", "METHODS", "NOT", "CALLABLE"]
    assert set(table[1]) <= {"-", " "}
    assert [line.split()[0] for line in table[2:]] == SHIPPED
    assert all(" oauth2 " in line and line.endswith(" -") for line in table[2:])
    listed = cli.json("definitions", "list")
    assert [d["integrationId"] for d in listed] == SHIPPED
    xero = listed[2]
    assert xero["name"] == "Xero" and xero["authType"] == "oauth2"
    create = next(m for m in xero["methods"] if m["id"] == "create_invoice")
    assert create == {"id": "create_invoice", "name": "Create invoice", "callable": True}
    assert xero["source"].endswith("xero.json")


def test_definitions_list_includes_configured_folder(acme: Cli) -> None:
    listed = {d["integrationId"]: d for d in acme.json("definitions", "list")}
    assert sorted(listed) == ["acme", *SHIPPED]
    assert listed["acme"]["authType"] == "apikey"
    assert listed["acme"]["version"] == "1.2.3"
    assert acme.ok("definitions", "sync").out.startswith("created 4,")


def test_definitions_validate_shipped(cli: Cli) -> None:
    result = cli.ok("definitions", "validate")
    assert result.out.strip() == "3 definition(s) valid: gmail, slack, xero"
    assert result.err == ""


def test_definitions_validate_lists_every_problem(cli: Cli, tmp_path: Path, db: Database) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    broken = json.loads(ACME_DEFINITION)
    broken["authType"] = "magic"
    broken["configSchema"]["properties"]["limits"]["properties"]["per_minute"]["type"] = "int"
    acme_file = write(folder, "acme.json", broken)
    malformed = write(folder, "zeta.json", '{\n  "integrationId": "zeta",\n  "name": }')
    before = counts(db)

    result = cli("definitions", "validate", str(folder))

    assert result.code != 0
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines[-1] == f"{len(lines) - 1} problem(s) in definitions"
    problems = lines[:-1]
    assert f"{acme_file}: $.authType: 'magic' is not one of ['oauth2', 'apikey', 'custom']" in (
        problems
    )
    assert any(
        p.startswith(f"{acme_file}: $.configSchema.properties.limits.properties.per_minute.type: ")
        and "'int'" in p
        for p in problems
    ), problems
    assert any(
        p.startswith(f"{malformed}: $: malformed JSON") and "line 3, column 11" in p
        for p in problems
    ), problems
    assert len(problems) == 3, problems
    assert counts(db) == before


def test_definitions_validate_refuses_an_unregistered_handler_without_importing_it(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "handlers"
    folder.mkdir()
    (tmp_path / "probe_handler_module.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    document = json.loads(ACME_DEFINITION)
    document["methods"][0].pop("http")
    document["methods"][0]["handler"] = "probe_handler_module:Handler"
    acme_file = write(folder, "acme.json", document)

    result = cli("definitions", "validate", str(folder))

    assert result.code == 1
    assert result.err.splitlines() == [
        f"{acme_file}: $.methods[0].handler: handler 'probe_handler_module:Handler' of "
        "definition 'acme' is not registered (registered handlers: gmail.send_message); a "
        "handler must be registered in the 'prefect_integrations.handlers' entry-point group",
        "1 problem(s) in definitions",
    ]


def test_unsafe_url_override_is_one_clear_error(store: Cli, db: Database) -> None:
    before = counts(db)
    for config, fragment in (
        ('{"base_url": "http://api.acme.example/v1"}', "must be https"),
        ('{"base_url": "https://169.254.169.254/"}', "points at a cloud metadata service"),
    ):
        result = store("instances", "update", "existing", "--config", config)
        assert_one_error(
            result, "validation_error", "Instance 'existing' is invalid at $.config.base_url: "
        )
        assert fragment in result.err
    assert counts(db) == before
    store.ok("instances", "update", "existing", "--config", '{"base_url": "https://a.example"}')
    row = store.json("audit", "tail", "-n", "1")[-1]
    assert row["details"]["url_overrides"] == {
        "base_url": {"old": None, "new": "https://a.example"}
    }


# --------------------------------------------------------------------------------------
# instances: the happy path
# --------------------------------------------------------------------------------------


def test_instance_lifecycle(cli: Cli, db: Database, xero_creds: str, tmp_path: Path) -> None:
    cli.ok("definitions", "sync")
    created = cli.ok(
        "instances",
        "create",
        "xero_main",
        "--integration",
        "xero",
        "--name",
        "Main Xero",
        "--context",
        "global",
        "--config",
        XERO_CONFIG,
        "--credentials-file",
        xero_creds,
    )
    assert created.out.strip() == "Created instance 'xero_main' (xero, global, active)"
    assert counts(db) == (1, 4)

    table = cli.ok("instances", "list").out.splitlines()
    assert table[0].split() == [
        "INSTANCE",
        "INTEGRATION",
        "CONTEXT",
        "STATE",
        "REASON",
        "LAST",
        "CHECK",
        "CREDENTIALS",
    ]
    # not checked yet: no reason, no last check
    assert table[2].split() == ["xero_main", "xero", "global", "active", "stored", "(k1)"]
    listed = cli.json("instances", "list")
    assert len(listed) == 1
    entry = listed[0]
    assert entry["instanceId"] == "xero_main" and entry["name"] == "Main Xero"
    assert entry["integrationId"] == "xero" and "description" not in entry
    assert entry["config"] == {"tenant_id": "tenant-1"}
    assert entry["status"] == {"state": "active"}
    assert entry["context"] == {"type": "global"}
    assert entry["credentials"]["keyId"] == entry["keyId"] == "k1"
    assert entry["credentials"]["oauth2"]["fields"] == sorted(XERO_CREDENTIALS["oauth2"])
    assert entry["credentials"]["oauth2"]["has_refresh_token"] is True
    assert entry["credentials"]["oauth2"]["oauth2_client"] == ["client_id", "client_secret"]
    assert entry["credentials"]["oauth2"]["scope"] == "accounting.transactions"
    assert entry["credentialsVersion"] == 1

    shown = cli.ok("instances", "show", "xero_main").out
    assert re.search(r"^instance_id\s+xero_main$", shown, re.M)
    assert re.search(r"^name\s+Main Xero$", shown, re.M)
    assert "oauth2.access_token=********" in shown and "oauth2.refresh_token=********" in shown
    assert "oauth2.scope=accounting.transactions" in shown  # a non-secret fact, as in --json
    assert "(key k1)" in shown
    assert cli.json("instances", "show", "xero_main") == entry

    updated = cli.ok(
        "instances",
        "update",
        "xero_main",
        "--name",
        "Renamed",
        "--config",
        '{"tenant_id": "tenant-2"}',
        "--status",
        '{"state": "error", "error": "token revoked"}',
        "--context",
        "client:c1",
    )
    assert updated.out.strip() == "Updated instance 'xero_main' (client:c1, error)"
    after = cli.json("instances", "show", "xero_main")
    assert after["name"] == "Renamed"
    assert after["config"] == {"tenant_id": "tenant-2"}
    assert after["status"] == {"state": "error", "error": "token revoked"}
    assert after["context"] == {"type": "client", "contextId": "c1"}

    new_creds = write(tmp_path, "new.json", {"oauth2": {"access_token": ACCESS_TOKEN + "-2"}})
    cli.secrets.append(ACCESS_TOKEN + "-2")
    stored = cli.ok("instances", "set-credentials", "xero_main", "--credentials-file", new_creds)
    assert stored.out.strip() == "Stored credentials of 'xero_main' under key 'k1' (version 2)"
    after = cli.json("instances", "show", "xero_main")
    assert after["credentialsVersion"] == 2
    assert after["credentials"]["oauth2"]["fields"] == ["access_token"]
    assert after["credentials"]["oauth2"]["has_refresh_token"] is False
    assert after["status"]["state"] == "error"  # only inactive instances are activated

    deleted = cli.ok("instances", "delete", "xero_main", "--yes")
    assert deleted.out.strip() == "Deleted instance 'xero_main'"
    assert cli.json("instances", "list") == []
    assert_one_error(cli("instances", "show", "xero_main"), "instance_not_found", "'xero_main'")

    rows = cli.json("audit", "tail")
    assert [(r["action"], r["instance_id"]) for r in rows] == [
        ("definition.create", None),
        ("definition.create", None),
        ("definition.create", None),
        ("instance.create", "xero_main"),
        ("instance.update", "xero_main"),
        ("credentials.set", "xero_main"),
        ("instance.delete", "xero_main"),
    ]
    assert {r["actor"] for r in rows} == {"cli-tests"}
    assert {r["outcome"] for r in rows} == {"success"}
    assert rows[3]["details"]["credentials_fields"] == [
        f"oauth2.{name}" for name in sorted(XERO_CREDENTIALS["oauth2"])
    ]
    assert rows[4]["details"]["fields"] == [
        "config",
        "context_id",
        "context_type",
        "name",
        "status",
    ]
    assert rows[5]["details"]["credentials_version"] == 2
    assert [
        r["action"]
        for r in cli.json("audit", "tail", "--instance", "xero_main", "--action", "instance.update")
    ] == ["instance.update"]
    assert len(cli.json("audit", "tail", "-n", "2")) == 2

    text = cli.ok("audit", "tail").out
    assert "instance.delete" in text and "xero_main" in text

    assert re.fullmatch(
        r"sealed 7 rows into chain 0: seq 7, head [0-9a-f]{64}\n", cli.ok("audit", "seal").out
    )
    verified = cli.ok("audit", "verify")
    assert re.fullmatch(
        r"audit log intact: 7 rows in 1 chain\n(chain \d+: seq \d+, head [0-9a-f]{64}\n)+",
        verified.out,
    )
    assert counts(db) == (0, 7)


def test_create_reads_credentials_from_stdin(cli: Cli) -> None:
    cli.ok("definitions", "sync")
    created = cli.ok(
        "instances",
        "create",
        "xero_stdin",
        "--integration",
        "xero",
        "--name",
        "From stdin",
        "--config",
        XERO_CONFIG,
        "--credentials-file",
        "-",
        stdin=json.dumps(XERO_CREDENTIALS),
    )
    assert created.out.strip() == "Created instance 'xero_stdin' (xero, global, active)"
    shown = cli.json("instances", "show", "xero_stdin")
    assert shown["credentials"]["oauth2"]["fields"] == sorted(XERO_CREDENTIALS["oauth2"])


def test_create_reads_credentials_from_a_pipe(cli: Cli, tmp_path: Path) -> None:
    """``--credentials-file <(secrets-tool get ...)``: a named pipe, not a regular file."""
    cli.ok("definitions", "sync")
    pipe = tmp_path / "credentials.pipe"
    os.mkfifo(pipe, 0o600)

    def feed() -> None:
        with pipe.open("w") as writer:
            writer.write(json.dumps(XERO_CREDENTIALS))

    writer = threading.Thread(target=feed)
    writer.start()
    created = cli.ok(
        "instances",
        "create",
        "xero_pipe",
        "--integration",
        "xero",
        "--name",
        "From a pipe",
        "--config",
        XERO_CONFIG,
        "--credentials-file",
        str(pipe),
    )
    writer.join(timeout=30)
    assert created.out.strip() == "Created instance 'xero_pipe' (xero, global, active)"


def test_set_credentials_from_stdin_activates_an_inactive_instance(acme: Cli) -> None:
    acme.ok("definitions", "sync")
    created = acme.ok("instances", "create", "acme_1", "--integration", "acme", "--name", "A")
    assert created.out.strip() == "Created instance 'acme_1' (acme, global, inactive)"
    assert acme.json("instances", "show", "acme_1")["credentials"] == {}
    stored = acme.ok("instances", "set-credentials", "acme_1", stdin=json.dumps(ACME_CREDENTIALS))
    assert "(version 1)" in stored.out
    shown = acme.json("instances", "show", "acme_1")
    assert shown["status"]["state"] == "active"
    assert shown["credentials"] == {"keyId": "k1", "apikey": {"fields": ["key"]}}


def test_text_postgresql_cannot_store_is_refused_and_keeps_what_is_stored(
    store: Cli, db: Database, keyring: Keyring, tmp_path: Path
) -> None:
    """A lone surrogate or NUL in any input: one error naming the path, nothing written."""
    before = counts(db)
    lone, nul = '"\\ud800abc"', '"a\\u0000b"'
    for text in (lone, nul):
        result = store(
            "instances", "set-credentials", "existing", stdin=f'{{"apikey": {{"key": {text}}}}}'
        )
        assert_one_error(result, "validation_error", "existing", "$.apikey.key")
        document = (
            '{"instanceId": "existing", "integrationId": "acme", "name": "E", '
            f'"credentials": {{"apikey": {{"key": {text}}}}}}}'
        )
        result = store("instances", "apply", write(tmp_path, "doc.json", document))
        assert_one_error(result, "validation_error", "$.credentials.apikey.key")
        result = store("instances", "update", "existing", "--config", f'{{"region": {text}}}')
        assert_one_error(result, "validation_error", "$.region")
    for option in ("--name", "--description"):
        result = store("instances", "update", "existing", option, "a\x00")
        assert_one_error(result, "validation_error", "existing", "NUL")
        result = store("instances", "update", "existing", option, "a\ud800")
        assert_one_error(result, "validation_error", "not UTF-8")  # refused as an argument
    assert counts(db) == before
    with db.transaction() as s:
        creds = vault.fetch_credentials(s, keyring, "existing", actor="t", purpose="test")
    assert creds.reveal() == ACME_CREDENTIALS


def test_delete_asks_for_confirmation(cli: Cli, xero_creds: str, db: Database) -> None:
    cli.ok("definitions", "sync")
    create_xero(cli, "xero_main", xero_creds)
    before = counts(db)

    refused = cli("instances", "delete", "xero_main", stdin="n\n")

    assert refused.code == 1
    assert "Traceback" not in refused.out + refused.err
    assert counts(db) == before
    assert refused.err.strip() == "Aborted.", refused.err

    confirmed = cli.ok("instances", "delete", "xero_main", stdin="y\n")
    assert "Deleted instance 'xero_main'" in confirmed.out
    assert counts(db) == (0, before[1] + 1)


def test_resolve_most_specific_scope_wins(cli: Cli, xero_creds: str) -> None:
    cli.ok("definitions", "sync")
    create_xero(cli, "xero_global", xero_creds)
    create_xero(cli, "xero_client", xero_creds, "--context", "client:c1")
    create_xero(cli, "xero_user", xero_creds, "--context", "user:u1")

    def chosen(*options: str) -> Any:
        return cli.json("instances", "resolve", "xero", *options)["chosen"]

    assert chosen() == "xero_global"
    assert chosen("--client", "c1") == "xero_client"
    assert chosen("--client", "c2") == "xero_global"
    assert chosen("--user", "u1") == "xero_user"
    assert chosen("--user", "u1", "--client", "c1") == "xero_user"
    assert chosen("--user", "u2", "--client", "c1") == "xero_client"
    assert chosen("--instance", "xero_global", "--client", "c1") == "xero_global"

    full = cli.json("instances", "resolve", "xero", "--client", "c1", "--user", "u1")
    assert full["rule"] == "the only active instance at the most specific scope (user)"
    assert full["context"] == {"client_id": "c1", "user_id": "u1"}
    assert full["error"] is None and full["error_code"] is None
    verdicts = {c["instance_id"]: c["verdict"] for c in full["candidates"]}
    assert verdicts["xero_user"] == "chosen"
    assert verdicts["xero_client"].startswith("not considered")
    assert verdicts["xero_global"].startswith("not considered")

    text = cli.ok("instances", "resolve", "xero", "--client", "c1").out
    assert text.splitlines()[-1] == "chosen: xero_client"
    assert "rule: the only active instance at the most specific scope (client)" in text


def test_resolve_failures(cli: Cli, xero_creds: str) -> None:
    cli.ok("definitions", "sync")
    none = cli("instances", "resolve", "slack")
    assert none.code == 1
    assert "rule: no active instance visible in the context" in none.out
    assert_one_error(none, "no_instance", "'slack'")
    as_json = cli("instances", "resolve", "slack", "--json")
    assert as_json.code == 1 and as_json.err == ""
    assert json.loads(as_json.out)["error_code"] == "no_instance"

    create_xero(cli, "xero_a", xero_creds)
    create_xero(cli, "xero_b", xero_creds)
    assert_one_error(
        cli("instances", "resolve", "xero"), "ambiguous_instance", "'xero_a'", "'xero_b'"
    )
    hidden = cli("instances", "resolve", "xero", "--instance", "nope")
    assert_one_error(hidden, "instance_not_found", "'nope'")
    assert_one_error(
        cli("instances", "resolve", "nope"),
        "unknown_integration",
        "'nope'",
        "known: gmail, slack, xero",
    )


# --------------------------------------------------------------------------------------
# Secrets never printed
# --------------------------------------------------------------------------------------


def test_canaries_never_printed(store: Cli, tmp_path: Path, xero_creds: str) -> None:
    cli = store
    create_xero(cli, "xero_main", xero_creds)
    cli.ok(
        "instances",
        "create",
        "acme_user",
        "--integration",
        "acme",
        "--name",
        "A",
        "--context",
        "user:u1",
        "--credentials-file",
        "-",
        stdin=json.dumps(ACME_CREDENTIALS),
    )
    for args in (
        ("instances", "list"),
        ("instances", "list", "--json"),
        ("instances", "show", "xero_main"),
        ("instances", "show", "xero_main", "--json"),
        ("instances", "show", "acme_user"),
        ("instances", "show", "acme_user", "--json"),
        ("instances", "resolve", "xero"),
        ("instances", "resolve", "xero", "--json"),
        ("instances", "resolve", "acme", "--user", "u1", "--json"),
        ("audit", "tail"),
        ("audit", "tail", "--json"),
        ("audit", "verify"),
        ("definitions", "stored"),
    ):
        cli.ok(*args)
    cli.ok("instances", "set-credentials", "xero_main", "--credentials-file", xero_creds)
    cli.ok("instances", "set-credentials", "acme_user", stdin=json.dumps(ACME_CREDENTIALS))

    # Rejected credentials full of secrets: the errors describe rules, not values.
    rejected: list[object] = [
        {
            "oauth2": {
                "access_token": ACCESS_TOKEN,
                "refresh_token": REFRESH_TOKEN,
                "bogus": CLIENT_SECRET,
            }
        },
        {"oauth2": {"refresh_token": REFRESH_TOKEN}},
        {"oauth2": {"access_token": ACCESS_TOKEN, "client_secret": CLIENT_SECRET}},
        {"oauth2": {"client_id": "x", "client_secret": 7, "other": CLIENT_SECRET}},
        {"oauth2": {"access_token": ACCESS_TOKEN + "x" * 16384}},
        {"oauth2": {"access_token": ACCESS_TOKEN, "token_type": 5}},
        {"oauth2": {"access_token": ACCESS_TOKEN}, "bogus": CLIENT_SECRET},
        {"oauth2": {"access_token": ACCESS_TOKEN, "expires_at": CLIENT_SECRET}},
        {"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN},
        {"apikey": {"key": API_KEY}},
        [ACCESS_TOKEN],
        ACCESS_TOKEN,
    ]
    for index, body in enumerate(rejected):
        path = write(tmp_path, f"rejected-{index}.json", json.dumps(body))
        assert_one_error(
            cli("instances", "set-credentials", "xero_main", "--credentials-file", path),
            "validation_error",
            "Credentials",
        )
    malformed = write(
        tmp_path, "malformed.json", f'{{"oauth2": {{"access_token": "{ACCESS_TOKEN}" "x"}}}}'
    )
    assert_one_error(
        cli("instances", "set-credentials", "xero_main", "--credentials-file", malformed),
        "validation_error",
        "line 1, column",
    )
    assert_one_error(
        cli(
            "instances",
            "set-credentials",
            "acme_user",
            stdin=json.dumps({"apikey": {"key": API_KEY, "extra": 5}}),
        ),
        "validation_error",
        "$.apikey.extra",
    )
    assert_one_error(
        cli(
            "instances",
            "create",
            "xero_main",
            "--integration",
            "xero",
            "--name",
            "Dup",
            "--config",
            XERO_CONFIG,
            "--credentials-file",
            xero_creds,
        ),
        "instance_exists",
        "'xero_main'",
    )
    cli.ok("audit", "tail", "--json", "-n", "10000")
    cli.assert_no_secrets()


# --------------------------------------------------------------------------------------
# Bad input: one clear line, nothing written
# --------------------------------------------------------------------------------------

CREATE = ("instances", "create", "x1", "--name", "X")
CREATE_XERO = (*CREATE, "--integration", "xero")
CREATE_ACME = (*CREATE, "--integration", "acme")

# fmt: off
BAD_INPUT: list[tuple[str, tuple[str, ...], object, str, tuple[str, ...]]] = [
    # id, arguments, content of CREDS (None: no file), error code, fragments of the message
    ("config-malformed-json", (*CREATE_XERO, "--config", '{"tenant_id": '), None,
     "validation_error", ("--config", "not valid JSON", "line 1, column 15")),
    ("config-not-an-object", (*CREATE_XERO, "--config", "[1]"), None,
     "validation_error", ("--config", "must be a JSON object")),
    ("xero-config-without-tenant", (*CREATE_XERO, "--config", "{}"), None,
     "validation_error", ("Config of instance 'x1'", "at $:", "'tenant_id'", "required")),
    ("xero-config-no-config", CREATE_XERO, None,
     "validation_error", ("Config of instance 'x1'", "at $:", "'tenant_id'")),
    ("xero-tenant-wrong-type", (*CREATE_XERO, "--config", '{"tenant_id": 5}'), None,
     "validation_error", ("Config of instance 'x1'", "at $.tenant_id:")),
    ("xero-extra-config", (*CREATE_XERO, "--config", '{"tenant_id": "t", "colour": "red"}'),
     None, "validation_error", ("Config of instance 'x1'", "at $:", "'colour'")),
    ("xero-base-url-not-uri",
     (*CREATE_XERO, "--config", '{"tenant_id": "t", "base_url": "not a uri"}'), None,
     "validation_error", ("Config of instance 'x1'", "at $.base_url:", "uri")),
    ("acme-region-mars", (*CREATE_ACME, "--config", '{"region": "mars"}'), None,
     "validation_error", ("Config of instance 'x1'", "at $.region:", "'mars'")),
    ("acme-nested-limit", (*CREATE_ACME, "--config", '{"limits": {"per_minute": 0}}'), None,
     "validation_error", ("Config of instance 'x1'", "at $.limits.per_minute:")),
    ("unknown-integration", (*CREATE, "--integration", "nope"), None,
     "unknown_integration", ("'nope'", "known: acme, gmail, slack, xero")),
    ("credentials-malformed-json", (*CREATE_XERO, "--config", XERO_CONFIG),
     f'{{"access_token": "{ACCESS_TOKEN}",\n  "refresh_token": }}',
     "validation_error", ("Credentials from ", "not valid JSON", "line 2, column 20")),
    ("credentials-empty-token", (*CREATE_XERO, "--config", XERO_CONFIG),
     {"oauth2": {"access_token": ""}}, "validation_error",
     ("Credentials of instance 'x1'", "at $.oauth2.access_token:", "minLength")),
    ("credentials-refresh-without-access", (*CREATE_XERO, "--config", XERO_CONFIG),
     {"oauth2": {"refresh_token": REFRESH_TOKEN}}, "validation_error",
     ("Credentials of instance 'x1'",)),
    ("credentials-client-without-id", (*CREATE_XERO, "--config", XERO_CONFIG),
     {"oauth2": {"client_secret": CLIENT_SECRET}}, "validation_error",
     ("Credentials of instance 'x1'", "at $.oauth2:")),
    ("credentials-old-flat-oauth2", (*CREATE_XERO, "--config", XERO_CONFIG),
     {"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN}, "validation_error",
     ("Credentials of instance 'x1'", "at $.access_token:", '{"oauth2": {"access_token"')),
    ("credentials-old-flat-apikey", CREATE_ACME, {"api_key": API_KEY}, "validation_error",
     ("Credentials of instance 'x1'", "at $.api_key:", '{"apikey": {"key": ...')),
    ("credentials-not-an-object", (*CREATE_XERO, "--config", XERO_CONFIG), [ACCESS_TOKEN],
     "validation_error", ("Credentials", "must be a JSON object")),
    ("apikey-credentials-for-oauth2", (*CREATE_XERO, "--config", XERO_CONFIG),
     ACME_CREDENTIALS, "validation_error",
     ("Credentials of instance 'x1'", "apikey credentials", "'xero'", "'oauth2'")),
    ("oauth2-credentials-for-apikey", CREATE_ACME, {"oauth2": {"access_token": ACCESS_TOKEN}},
     "validation_error", ("Credentials of instance 'x1'", "oauth2 credentials", "'acme'")),
    ("apikey-extra-not-a-string", CREATE_ACME, {"apikey": {"key": API_KEY, "n": 5}},
     "validation_error", ("Credentials of instance 'x1'", "at $.apikey.n:")),
    ("duplicate-instance-id", ("instances", "create", "existing", "--name", "Again",
                               "--integration", "acme"), ACME_CREDENTIALS,
     "instance_exists", ("Instance 'existing' already exists",)),
    ("unknown-context-type", (*CREATE_XERO, "--config", XERO_CONFIG, "--context", "tenant:1"),
     None, "validation_error", ("Context", "$.context_type", "'tenant'")),
    ("client-without-id", (*CREATE_XERO, "--config", XERO_CONFIG, "--context", "client"),
     None, "validation_error", ("Context", "$.context_id", "client:ID")),
    ("user-with-empty-id", (*CREATE_XERO, "--config", XERO_CONFIG, "--context", "user:"),
     None, "validation_error", ("Context", "$.context_id", "user:ID")),
    ("global-with-id", (*CREATE_XERO, "--config", XERO_CONFIG, "--context", "global:x"),
     None, "validation_error", ("Context", "$.context_id", "global instance has no context id")),
    ("blank-name", ("instances", "create", "x1", "--name", "  ", "--integration", "acme"),
     None, "validation_error", ("Instance 'x1'", "$.name")),
    ("bad-instance-id", ("instances", "create", "bad id", "--name", "X", "--integration",
                         "acme"), None, "validation_error", ("Instance id", "'bad id'")),
    ("update-bad-config", ("instances", "update", "existing", "--config",
                           '{"region": "mars"}'), None,
     "validation_error", ("Config of instance 'existing'", "at $.region:")),
    ("update-bad-status", ("instances", "update", "existing", "--status",
                           '{"state": "broken"}'), None,
     "validation_error", ("Status of instance 'existing'", "at $.state:")),
    ("update-status-malformed", ("instances", "update", "existing", "--status", "{"), None,
     "validation_error", ("--status", "not valid JSON")),
    ("update-bad-context", ("instances", "update", "existing", "--context", "client"), None,
     "validation_error", ("Context", "$.context_id")),
    ("update-unknown-instance", ("instances", "update", "nope", "--name", "N"), None,
     "instance_not_found", ("'nope'",)),
    ("set-credentials-bad", ("instances", "set-credentials", "existing"), {"apikey": {"key": ""}},
     "validation_error", ("Credentials of instance 'existing'", "at $.apikey.key:")),
    ("set-credentials-unknown-instance", ("instances", "set-credentials", "nope"),
     ACME_CREDENTIALS, "instance_not_found", ("'nope'",)),
    ("delete-unknown-instance", ("instances", "delete", "nope", "--yes"), None,
     "instance_not_found", ("'nope'",)),
]
# fmt: on


@pytest.mark.parametrize(
    ("arguments", "credentials", "code", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    store: Cli,
    db: Database,
    tmp_path: Path,
    arguments: tuple[str, ...],
    credentials: object,
    code: str,
    fragments: tuple[str, ...],
) -> None:
    args = list(arguments)
    if credentials is not None:
        args += ["--credentials-file", write(tmp_path, "creds.json", credentials)]
    before, shown_before = counts(db), cli_counts(store)

    line = assert_one_error(store(*args), code, *fragments)

    assert store.transcript[-1][1].out == ""
    assert counts(db) == before
    assert cli_counts(store) == shown_before
    assert store.json("instances", "show", "existing")["name"] == "Existing"
    assert "Traceback" not in line


def test_missing_credentials_file(store: Cli, db: Database, tmp_path: Path) -> None:
    before = counts(db)
    missing = str(tmp_path / "missing.json")
    assert_one_error(
        store(*CREATE_ACME, "--credentials-file", missing),
        "validation_error",
        f"Credentials file '{missing}'",
        "no such file",
    )
    assert counts(db) == before


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        # Each of these inputs currently ends in `error[unexpected]`: see the report.
        pytest.param(b"\xff\xfe{}", ("Credentials",), id="credentials-file-not-utf8"),
        pytest.param(
            json.dumps({"oauth2": {"access_token": ACCESS_TOKEN, "expires_at": 1e300}}).encode(),
            ("Credentials", "expires_at"),
            id="expires-at-out-of-range",
        ),
        pytest.param(
            f'{{"oauth2": {{"access_token": "{ACCESS_TOKEN}", "expires_at": NaN}}}}'.encode(),
            ("Credentials",),
            id="expires-at-nan",
        ),
    ],
)
def test_unusual_credentials_are_a_clear_validation_error(
    store: Cli, db: Database, tmp_path: Path, content: bytes, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "creds.json"
    path.write_bytes(content)
    before = counts(db)
    result = store(*CREATE_XERO, "--config", XERO_CONFIG, "--credentials-file", str(path))
    assert_one_error(result, "validation_error", *fragments)
    assert counts(db) == before


def test_nul_character_in_config_is_a_clear_error(store: Cli, db: Database) -> None:
    # JSON allows "\u0000"; PostgreSQL jsonb does not. The CLI must still print one line.
    before = counts(db)
    result = store(*CREATE_XERO, "--config", '{"tenant_id": "t\\u0000"}')
    line = assert_one_error(result, "validation_error", "Config of instance 'x1'")
    assert "SQL" not in line and "INSERT" not in result.err
    assert counts(db) == before


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        pytest.param(
            ("instances", "create", "x1"), "Missing option '--integration'", id="missing-option"
        ),
        pytest.param(("oauth", "refresh"), "Missing argument 'instance_id'", id="missing-argument"),
        pytest.param(
            ("instances", "list", "--bogus"), "No such option: --bogus", id="unknown-option"
        ),
        pytest.param(("audit", "tail", "-n", "0"), "'-n'", id="option-out-of-range"),
        pytest.param(("serve", "--oauth-port", "99999"), "'--oauth-port'", id="port-range"),
        pytest.param(("oauth", "serve", "--port", "99999"), "'--port'", id="oauth-port-range"),
        pytest.param(
            ("serve", "--once", "--prefect-port", "0"), "'--prefect-port'", id="prefect-port"
        ),
        pytest.param(
            ("instances", "frobnicate"), "No such command 'frobnicate'", id="unknown-command"
        ),
    ],
)
def test_usage_errors_are_one_line_in_the_error_format(
    cli: Cli, arguments: tuple[str, ...], fragment: str
) -> None:
    result = cli(*arguments)
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error[usage]: "), lines
    assert fragment in lines[0]
    values = ("x1", "0", "99999")
    command = " ".join(a for a in arguments if not a.startswith("-") and a not in values)
    if arguments[-1] == "frobnicate":
        command = "instances"
    assert lines[0].endswith(f"(see `prefect-integrations {command} --help`)"), lines


def test_no_command_prints_help_and_exits_2(cli: Cli) -> None:
    result = cli()
    assert result.code == 2 and "Usage: prefect-integrations [OPTIONS] COMMAND" in result.out


# --------------------------------------------------------------------------------------
# Keys and keyring
# --------------------------------------------------------------------------------------


def test_keys_generate(cli: Cli) -> None:
    first = cli.ok("keys", "generate").out.strip()
    second = cli.ok("keys", "generate").out.strip()
    for entry in (first, second):
        kid, _, material = entry.partition(":")
        assert kid == "k1"
        assert len(base64.b64decode(material, validate=True)) == 32
    assert first != second
    named = cli.ok("keys", "generate", "--kid", "k2025-01").out.strip()
    assert re.fullmatch(r"k2025-01:[A-Za-z0-9+/]{43}=", named)
    assert_one_error(cli("keys", "generate", "--kid", "bad kid"), "keyring_error", "key id")


def test_generated_key_is_usable_and_new_writes_use_it(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, xero_creds: str, cli_env: dict[str, str]
) -> None:
    cli.ok("definitions", "sync")
    create_xero(cli, "xero_main", xero_creds)
    old_key = cli_env["PREFECT_INTEGRATIONS_KEYS"]
    entry = cli.ok("keys", "generate", "--kid", "k2").out.strip()
    generated = len(cli.transcript)
    # The new key first (primary), the old one kept after it.
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", f"{entry},{old_key}")
    reset_runtime()
    cli.secrets.append(old_key.partition(":")[2])

    stored = cli.ok("instances", "set-credentials", "xero_main", "--credentials-file", xero_creds)
    assert stored.out.strip() == "Stored credentials of 'xero_main' under key 'k2' (version 2)"
    assert cli.json("instances", "show", "xero_main")["credentials"]["keyId"] == "k2"
    assert "stored (k2)" in cli.ok("instances", "list").out
    details = cli.json("audit", "tail", "--action", "credentials.set")[-1]["details"]
    assert details["key_id"] == "k2"
    for _, result in cli.transcript[generated:]:
        assert entry.partition(":")[2] not in result.out + result.err


def test_missing_keyring_with_external_database(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, db: Database, xero_creds: str
) -> None:
    cli.ok("definitions", "sync")
    create_xero(cli, "xero_main", xero_creds)
    monkeypatch.delenv("PREFECT_INTEGRATIONS_KEYS")
    reset_runtime()
    before = counts(db)

    assert_one_error(
        cli(
            "instances",
            "create",
            "x2",
            "--integration",
            "xero",
            "--name",
            "X",
            "--config",
            XERO_CONFIG,
            "--credentials-file",
            xero_creds,
        ),
        "keyring_error",
        "PREFECT_INTEGRATIONS_KEYS",
    )
    assert_one_error(
        cli("instances", "set-credentials", "xero_main", "--credentials-file", xero_creds),
        "keyring_error",
        "PREFECT_INTEGRATIONS_KEYS",
    )
    assert counts(db) == before
    assert cli.json("instances", "show", "xero_main")["credentialsVersion"] == 1
    # Without credentials no key is needed.
    created = cli.ok(
        "instances", "create", "x3", "--integration", "xero", "--name", "X", "--config", XERO_CONFIG
    )
    assert "inactive" in created.out


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        pytest.param("k1:KEY-canary-not-base64!", "not valid base64", id="not-base64"),
        pytest.param(
            f"k1:{base64.b64encode(b'KEY-canary-16byt').decode()}", "16 bytes", id="too-short"
        ),
        pytest.param("KEY-canary-no-colon", "no ':'", id="no-colon"),
    ],
)
def test_malformed_keyring_never_echoes_the_key(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    xero_creds: str,
    db: Database,
    keys: str,
    fragment: str,
) -> None:
    cli.ok("definitions", "sync")
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", keys)
    reset_runtime()
    cli.secrets.append(keys.partition(":")[2] or keys)
    before = counts(db)
    result = cli(
        "instances",
        "create",
        "x1",
        "--integration",
        "xero",
        "--name",
        "X",
        "--config",
        XERO_CONFIG,
        "--credentials-file",
        xero_creds,
    )
    assert_one_error(result, "keyring_error", "PREFECT_INTEGRATIONS_KEYS entry 1", fragment)
    assert "KEY-canary" not in result.err
    assert counts(db) == before


# --------------------------------------------------------------------------------------
# Database unavailable
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [DOWN_URL, DOWN_URL_WITH_PASSWORD], ids=["no-password", "password"])
def test_database_down(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, xero_creds: str, url: str
) -> None:
    use_database(monkeypatch, url)
    cli.secrets.append("PW-canary-77aa")
    commands: list[tuple[tuple[str, ...], str]] = [
        (("db", "upgrade"), "migrate the database"),
        (("db", "current"), "read the schema revision"),
        (("definitions", "sync"), "sync definitions"),
        (("instances", "list"), "list instances"),
        (("instances", "show", "x1"), "instance 'x1'"),
        (
            (
                "instances",
                "create",
                "x1",
                "--integration",
                "xero",
                "--name",
                "X",
                "--config",
                XERO_CONFIG,
                "--credentials-file",
                xero_creds,
            ),
            "instance 'x1'",
        ),
        (("instances", "delete", "x1", "--yes"), "delete instance 'x1'"),
        (("audit", "tail"), "read the audit log"),
        (("audit", "verify"), "verify the audit log"),
    ]
    for args, operation in commands:
        line = assert_one_error(
            cli(*args), "database_unavailable", "Cannot ", operation, "unavailable"
        )
        assert "PW-canary" not in line


# --------------------------------------------------------------------------------------
# Access control
# --------------------------------------------------------------------------------------


def test_runtime_role_cannot_create_or_delete(
    cli: Cli,
    cluster: EmbeddedCluster,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    xero_creds: str,
) -> None:
    cli.ok("definitions", "sync")
    create_xero(cli, "xero_main", xero_creds)
    name = sa.engine.make_url(db.url).database
    assert name is not None
    use_database(monkeypatch, cluster.url(database=name, user=RUNTIME_ROLE))
    before = counts(db)

    assert_one_error(
        cli(
            "instances",
            "create",
            "x2",
            "--integration",
            "xero",
            "--name",
            "X",
            "--config",
            XERO_CONFIG,
        ),
        "permission_denied",
        "not allowed to create instance 'x2'",
    )
    assert_one_error(
        cli(
            "instances",
            "create",
            "x3",
            "--integration",
            "xero",
            "--name",
            "X",
            "--config",
            XERO_CONFIG,
            "--credentials-file",
            xero_creds,
        ),
        "permission_denied",
        "not allowed to create instance 'x3'",
    )
    assert_one_error(
        cli("instances", "delete", "xero_main", "--yes"),
        "permission_denied",
        "not allowed to delete instance 'xero_main'",
    )
    assert_one_error(
        cli("instances", "update", "xero_main", "--name", "Renamed"),
        "permission_denied",
        "not allowed to update instance 'xero_main'",
    )
    assert_one_error(cli("definitions", "sync"), "permission_denied", "sync definitions")
    assert counts(db) == before

    listed = cli.json("instances", "list")
    assert [i["instanceId"] for i in listed] == ["xero_main"]
    assert listed[0]["name"] == "xero_main"
    assert cli.json("instances", "resolve", "xero")["chosen"] == "xero_main"
    cli.ok("audit", "verify")


# --------------------------------------------------------------------------------------
# oauth
# --------------------------------------------------------------------------------------


def test_oauth_connect_prints_a_single_use_link(cli: Cli, xero_creds: str, tmp_path: Path) -> None:
    cli.ok("definitions", "sync")
    create_xero(cli, "xero_main", xero_creds)  # has tokens: active
    client_only = {"oauth2": {"client_id": "client-id-public", "client_secret": CLIENT_SECRET}}
    create_xero(cli, "xero_new", write(tmp_path, "client.json", client_only))

    link = cli.ok("oauth", "connect", "xero_new", "--ttl", "120").out.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:8765/connect/xero_new\?link=[\w-]+\.[\w-]+", link)
    assert "client-id-public" not in link

    refused = cli("oauth", "connect", "xero_main")
    assert_one_error(refused, "oauth_error", "'xero_main' is active", "--reconnect")
    again = cli.ok("oauth", "connect", "xero_main", "--reconnect").out.strip()
    assert again.startswith("http://127.0.0.1:8765/connect/xero_main?link=")
    assert cli("oauth", "connect", "xero_new", "--ttl", "0").code != 0
    assert_one_error(cli("oauth", "connect", "nope"), "instance_not_found", "'nope'")


def test_instances_test_checks_now_and_says_why(cli: Cli) -> None:
    cli.ok("definitions", "sync")
    cli.ok(
        "instances",
        "create",
        "xero_main",
        "--integration",
        "xero",
        "--name",
        "Main Xero",
        "--config",
        XERO_CONFIG,
        "--credentials-file",
        "-",
        stdin=json.dumps(XERO_CREDENTIALS),
    )
    failed = cli("instances", "test", "xero_main", "--json")  # Xero is out of reach here
    assert failed.code == 1 and "Traceback" not in failed.err
    result = json.loads(failed.out)
    assert result["instanceId"] == "xero_main" and result["passed"] is False
    assert result["reason"] and result["durationMs"] >= 0 and result["previousState"] == "active"
    text = cli("instances", "test", "xero_main")
    assert text.code == 1 and text.out.startswith(f"xero_main: {result['reason']} (")
    table = cli.ok("instances", "list").out.splitlines()
    assert result["reason"] in table[2].split()
    shown = cli.ok("instances", "show", "xero_main").out
    assert re.search(rf"^reason\s+{result['reason']}$", shown, re.M)
    assert re.search(r"^last_checked\s+\d{4}-", shown, re.M)
    missing = cli("instances", "test", "nope")
    assert_one_error(missing, "instance_not_found", "'nope'")


def test_instances_test_checks_several_or_all_with_progress(
    cli: Cli,
    db: Database,
    keyring: Keyring,
    echo_dir: Path,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(echo_dir))
    reset_runtime()
    cli.ok("definitions", "sync")
    registry = load_registry([echo_dir])
    for instance_id, reply in {
        "one": Reply(200, {"id": 1, "name": "one"}),
        "two": Reply(200, {"id": 1, "name": "one"}),
        "sick": Reply(401, {}),
    }.items():
        make_echo(db, registry, keyring, provider.url, instance_id)
        provider.reply("GET", f"/{instance_id}/items/1", reply)

    both = cli.ok("instances", "test", "one", "two").out.splitlines()
    assert [line.split(":")[0] for line in both[:2]] == ["one", "two"]
    assert both[-1] == "tested 2 instance(s): 2 ok"

    every = cli("instances", "test", "--all", "--json")
    assert every.code == 1 and every.err == ""
    rows = {r["instanceId"]: r for r in json.loads(every.out)}
    assert sorted(rows) == ["one", "sick", "two"]
    assert rows["sick"]["reason"] == "provider_auth_failed" and not rows["sick"]["passed"]
    assert rows["sick"]["state"] == "error"

    provider.reply("GET", "/sick/items/1", Reply(200, {"id": 1, "name": "one"}))  # fixed
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = cli.ok("instances", "test", "--all", "--integration", "echo")
    assert "testing connections" in shown.err and "3/3" in shown.err
    assert "sick: ok" in shown.out and "state active (was error)" in shown.out

    unknown = cli("instances", "test", "--all", "--integration", "nope")
    assert_one_error(unknown, "unknown_integration", "'nope'")
    tail = cli.ok("audit", "tail", "-n", "1", "--action", "health.check").out
    assert "result=ok" in tail and "{'" not in tail  # readable, not a dict repr
    assert cli("instances", "test").code == 2  # nothing to test is a usage error
    assert cli("instances", "test", "one", "--all").code == 2
    assert_one_error(cli("instances", "test", "one", "nope"), "instance_not_found", "'nope'")


def test_oauth_serve_on_a_port_in_use_is_one_clear_error(cli: Cli) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = cli("oauth", "serve", "--port", str(port))
    assert_one_error(result, "configuration_error", f"127.0.0.1:{port}")


def test_serve_with_its_connect_port_in_use_fails_before_starting_anything(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # serve would start a server
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = cli("serve", "--oauth-port", str(port))
    assert_one_error(result, "configuration_error", f"127.0.0.1:{port}")
    assert "Prefect" not in result.out  # no local Prefect server was started


def test_oauth_refresh_without_a_refresh_token_says_it_cannot(cli: Cli, tmp_path: Path) -> None:
    cli.ok("definitions", "sync")
    no_refresh = {k: v for k, v in XERO_CREDENTIALS["oauth2"].items() if k != "refresh_token"}
    create_xero(cli, "xero_main", write(tmp_path, "creds.json", {"oauth2": no_refresh}))
    forced = cli("oauth", "refresh", "xero_main", "--force")
    line = assert_one_error(forced, "oauth_error", "'xero_main' cannot be refreshed")
    assert "no refresh token" in line
    assert line.endswith("`prefect-integrations oauth connect xero_main --reconnect`")
    assert forced.out == ""
    # a token without an expiry needs no refresh: that is not an error
    fine = cli.ok("oauth", "refresh", "xero_main").out
    assert fine.startswith("xero_main: not_needed (no_expiry)")
    # one that expires soon, without a refresh token: cannot, and says so
    expiring = {**no_refresh, "expires_at": "2000-01-01T00:00:00Z"}
    cli.ok(
        "instances",
        "set-credentials",
        "xero_main",
        "--credentials-file",
        write(tmp_path, "expiring.json", {"oauth2": expiring}),
    )
    due = cli("oauth", "refresh", "xero_main")
    assert_one_error(due, "oauth_error", "expiring_without_refresh_token", "--reconnect")


def test_apply_shows_progress_only_on_a_terminal(
    store: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = [
        {"instanceId": f"acme_{i}", "integrationId": "acme", "name": f"Acme {i}"} for i in range(12)
    ]
    path = write(tmp_path, "many.json", documents)
    piped = store.ok("instances", "apply", path)  # standard error is not a terminal here
    assert piped.err == "" and piped.out.splitlines()[-1] == "created 12, updated 0, unchanged 0"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = store.ok("instances", "apply", path)
    assert "applying" in shown.err and "12/12" in shown.err
    assert shown.out.splitlines()[-1] == "created 0, updated 0, unchanged 12"
    as_json = store.ok("instances", "apply", path, "--json")  # never with --json
    assert as_json.err == "" and len(json.loads(as_json.out)) == 12


def test_up_says_what_to_do_next_when_there_is_no_instance(cli: Cli, xero_creds: str) -> None:
    out = cli.ok("up").out.splitlines()
    assert "instances: 0 (none yet)" in out
    steps = out[
        out.index("next: create, connect and test an instance (README: Connecting an account):") :
    ]
    commands = [line.split()[:3] for line in steps[1:]]
    assert commands == [
        ["prefect-integrations", "instances", "apply"],
        ["prefect-integrations", "oauth", "connect"],
        ["prefect-integrations", "instances", "test"],
    ]
    for command in commands:  # each is a real command
        assert cli(*command[1:], "--help").code == 0
    create_xero(cli, "xero_main", xero_creds)
    again = cli.ok("up").out
    assert "instances: 1 (1 active)" in again and "next:" not in again


def test_a_connection_test_error_prints_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A provider's error with line feeds cannot forge a result line or the tally."""
    from prefect_integrations.cli._connection_tests import echo_result
    from prefect_integrations.maintenance.health_report import HealthResult

    echo_result(
        HealthResult(
            instance_id="sick",
            integration_id="echo",
            reason="auth_failed",
            state_before="active",
            state_after="error",
            status_code=401,
            error="denied\ntested 9 instance(s): 9 ok\r\x1b[2K",
        )
    )
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and captured.out.startswith("sick: auth_failed (")
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: denied")
    assert "\x1b" not in captured.err and "\r" not in captured.err
