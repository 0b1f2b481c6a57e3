"""Tenant isolation of instance resolution, checked as a property over random tenants.

Hypothesis draws a population of instances (two integrations; scopes global, client:X and
user:X over small, overlapping id alphabets so that tenants collide and a client and a
user share an id; states active / inactive / error; some later moved to another scope)
and checks every context against an independent oracle of the documented rule
(ARCHITECTURE.md, `prefect_integrations.resolve`):

* only instances visible in the context are ever chosen, named or counted;
* the most specific scope with an active instance wins; an all-inactive scope is skipped;
  a most specific scope with instances only in error raises and never falls back;
* two or more active instances at the winning scope raise `AmbiguousInstance` naming them;
* an explicit id of another tenant or of another integration fails exactly like an id
  that does not exist (same type, code, rule and message shape).

The populations live in the per-test database: each example writes inside one
transaction and rolls it back, so examples never see each other's rows. A second, smaller
property commits each population and resolves through the public entry points
(`Runtime.resolve`, used by tasks and blocks, and ``instances resolve`` of the CLI).
An `IntegrationInstance` block called inside a tenant's context is an explicit id too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.context import integration_context
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    AmbiguousInstance,
    InstanceError,
    InstanceNotFound,
    InstanceUnavailable,
    NoInstanceFound,
    ValidationError,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.resolve import explain, resolve
from prefect_integrations.runtime import runtime
from prefect_integrations.scope import CONTEXT_ID_RULE, Context, Scope, parse_scope
from prefect_integrations.store import instances

from .clirunner import Cli, assert_one_error
from .conftest import ACME_DEFINITION
from .factories import make_echo, make_instance
from .provider import FakeProvider, Reply

INTEGRATIONS = ("xero", "acme")
CONFIG = {"xero": {"tenant_id": "t"}, "acme": {}}
# Clients and users share the alphabet: user 'a' and client 'a' are different tenants.
TENANTS = ("a", "b", "c")
SCOPES = [Scope("global")] + [Scope(kind, t) for kind in ("client", "user") for t in TENANTS]
CONTEXTS = [Context(client_id=c, user_id=u) for c in (None, *TENANTS) for u in (None, *TENANTS)]
MISSING = "inst-missing"
STATES = ("active", "inactive", "error")

EXAMPLES = 60
PUBLIC_EXAMPLES = 40
OUTCOMES = (
    "chosen",
    "ambiguous",
    "unavailable",
    "nothing visible",
    "not found (exists elsewhere)",
    "not found (missing)",
)


@dataclass(frozen=True)
class Spec:
    """One drawn instance."""

    instance_id: str
    integration_id: str
    scope: Scope
    state: str
    reason: str | None


@dataclass(frozen=True)
class Expected:
    """What the oracle says resolution must do."""

    chosen: str | None = None
    error: type[InstanceError] | None = None
    ambiguous: tuple[str, ...] = ()
    scope: str | None = None


# --------------------------------------------------------------------------------------
# The oracle: the documented rule, written independently of resolve.py
# --------------------------------------------------------------------------------------


def visible(spec: Spec, context: Context) -> bool:
    """An instance is visible when global, or scoped to the caller's client or user."""
    kind, ident = spec.scope.context_type, spec.scope.context_id
    if kind == "global":
        return True
    if kind == "client":
        return context.client_id is not None and ident == context.client_id
    return context.user_id is not None and ident == context.user_id


def oracle(
    population: list[Spec], integration_id: str, context: Context, explicit: str | None
) -> Expected:
    if explicit is not None:
        match = [s for s in population if s.instance_id == explicit]
        if not match or match[0].integration_id != integration_id:
            return Expected(error=InstanceNotFound)
        if not visible(match[0], context):
            return Expected(error=InstanceNotFound)
        if match[0].state != "active":
            return Expected(error=InstanceUnavailable)
        return Expected(chosen=explicit)
    mine = [s for s in population if s.integration_id == integration_id and visible(s, context)]
    for kind in ("user", "client", "global"):
        group = [s for s in mine if s.scope.context_type == kind]
        active = sorted(s.instance_id for s in group if s.state == "active")
        if len(active) == 1:
            return Expected(chosen=active[0], scope=kind)
        if len(active) > 1:
            return Expected(error=AmbiguousInstance, ambiguous=tuple(active), scope=kind)
        if any(s.state == "error" for s in group):
            return Expected(error=InstanceUnavailable, scope=kind)
    return Expected(error=NoInstanceFound)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------


@st.composite
def populations(draw: st.DrawFn, max_size: int = 9) -> list[Spec]:
    """Instances with sequential ids; some moved to another scope after creation."""
    count = draw(st.integers(min_value=0, max_value=max_size))
    out = []
    for n in range(count):
        state = draw(st.sampled_from(STATES))
        out.append(
            Spec(
                instance_id=f"inst-{n:02d}",
                integration_id=draw(st.sampled_from(INTEGRATIONS)),
                scope=draw(st.sampled_from(SCOPES)),
                state=state,
                reason=draw(st.sampled_from([None, "invalid_grant"])) if state == "error" else None,
            )
        )
    return out


def rescopes(population: list[Spec]) -> st.SearchStrategy[dict[str, Scope]]:
    ids = [s.instance_id for s in population]
    if not ids:
        return st.just({})
    return st.dictionaries(st.sampled_from(ids), st.sampled_from(SCOPES), max_size=3)


# --------------------------------------------------------------------------------------
# Writing a population
# --------------------------------------------------------------------------------------


def insert(
    session: Session, registry: Registry, population: list[Spec], moves: dict[str, Scope]
) -> list[Spec]:
    """Create the population through the store, apply the scope moves; the final specs."""
    for spec in population:
        status: dict[str, Any] = {"state": spec.state}
        if spec.reason:
            status["error"] = spec.reason
        make_instance(
            session,
            registry,
            None,
            spec.instance_id,
            spec.integration_id,
            scope=spec.scope,
            config=CONFIG[spec.integration_id],
            status=status,
        )
    final = []
    for spec in population:
        if spec.instance_id in moves:
            scope = moves[spec.instance_id]
            instances.update_instance(
                session, registry, spec.instance_id, scope=scope, actor="tests"
            )
            spec = Spec(spec.instance_id, spec.integration_id, scope, spec.state, spec.reason)
        final.append(spec)
    return final


@pytest.fixture
def session(synced: Database) -> Iterator[Session]:
    """One session; each example rolls its writes back."""
    with synced.sessions() as s:
        yield s
        s.rollback()


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def quoted_ids(text: str) -> set[str]:
    """Every drawn instance id that appears in a text."""
    return set(re.findall(r"inst-\d\d", text))


def check_one(
    session: Session,
    population: list[Spec],
    integration_id: str,
    context: Context,
    explicit: str | None,
) -> str:
    """Resolve and explain one case, compare with the oracle; the kind of outcome."""
    expected = oracle(population, integration_id, context, explicit)
    visible_ids = {
        s.instance_id
        for s in population
        if visible(s, context) and s.integration_id == integration_id
    }
    where = f"{integration_id} {context} explicit={explicit}"

    why = explain(session, integration_id, context, instance_id=explicit)
    as_text = json.dumps(why.as_dict())
    leaked = quoted_ids(as_text) - visible_ids - ({explicit} if explicit else set())
    assert not leaked, f"{where}: explain names instances outside the context: {leaked}"
    assert {c.instance_id for c in why.candidates} <= visible_ids, where

    if expected.chosen is not None:
        chosen = resolve(session, integration_id, context, instance_id=explicit)
        assert chosen.instance_id == expected.chosen, where
        assert chosen.integration_id == integration_id, where
        spec = next(s for s in population if s.instance_id == chosen.instance_id)
        assert visible(spec, context), where
        assert why.chosen is not None and why.chosen.instance_id == expected.chosen, where
        return "chosen"

    assert expected.error is not None
    with pytest.raises(InstanceError) as info:
        resolve(session, integration_id, context, instance_id=explicit)
    error = info.value
    assert type(error) is expected.error, f"{where}: {error!r}, expected {expected}"
    assert why.chosen is None and type(why.error) is expected.error, where
    assert str(why.error) == str(error), where
    named = quoted_ids(str(error))
    assert named <= visible_ids | ({explicit} if explicit else set()), where

    if expected.error is AmbiguousInstance:
        assert isinstance(error, AmbiguousInstance)
        assert error.instance_ids == expected.ambiguous, where
        assert error.scope == expected.scope, where
        for instance_id in expected.ambiguous:
            assert f"'{instance_id}'" in str(error), where
        return "ambiguous"
    elif expected.error is InstanceNotFound:
        assert explicit is not None
        # Exactly what a never-created id gets: nothing tells that the id exists.
        baseline = explain(session, integration_id, context, instance_id=MISSING)
        assert str(error) == str(baseline.error).replace(MISSING, explicit), where
        assert why.rule == baseline.rule and why.candidates == baseline.candidates == [], where
        exists = any(s.instance_id == explicit for s in population)
        return "not found (exists elsewhere)" if exists else "not found (missing)"
    elif expected.error is InstanceUnavailable:
        if explicit is None:
            assert "not falling back" in str(error), where
            assert f"scope '{expected.scope}'" in str(error), where
        return "unavailable"
    else:
        return "nothing visible"


def check_population(session: Session, population: list[Spec]) -> Counter[str]:
    """Check every context, implicitly and with every explicit id; count outcomes."""
    outcomes: Counter[str] = Counter()
    for context in CONTEXTS:
        for integration_id in INTEGRATIONS:
            outcomes[check_one(session, population, integration_id, context, None)] += 1
        for spec in population:
            outcomes[
                check_one(session, population, spec.integration_id, context, spec.instance_id)
            ] += 1
            other = next(i for i in INTEGRATIONS if i != spec.integration_id)
            outcomes[check_one(session, population, other, context, spec.instance_id)] += 1
        outcomes[check_one(session, population, INTEGRATIONS[0], context, MISSING)] += 1
    outcomes["cases"] = sum(outcomes.values())
    return outcomes


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


def test_resolution_never_crosses_tenants(session: Session, test_registry: Registry) -> None:
    checked: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        drawn = data.draw(populations(), label="population")
        moves = data.draw(rescopes(drawn), label="moves")
        try:
            population = insert(session, test_registry, drawn, moves)
            checked.update(check_population(session, population))
        finally:
            session.rollback()
        checked["examples"] += 1
        checked["instances"] += len(population)
        event(f"instances: {len(population)}")

    prop()
    print(f"\nisolation: {dict(checked)}")
    # every outcome of the rule was reached, or the property proved little
    for kind in OUTCOMES:
        assert checked[kind] > 0, f"no case reached {kind!r}: {dict(checked)}"


def test_oracle_covers_every_outcome() -> None:
    """The property above is only as good as the cases it reaches; make sure it reaches all."""
    g = Spec("g", "xero", Scope("global"), "active", None)
    c1 = Spec("c1", "xero", Scope("client", "a"), "active", None)
    c2 = Spec("c2", "xero", Scope("client", "a"), "active", None)
    ue = Spec("ue", "xero", Scope("user", "a"), "error", "x")
    ui = Spec("ui", "xero", Scope("user", "b"), "inactive", None)
    population = [g, c1, c2, ue, ui]
    assert oracle(population, "xero", Context(), None) == Expected(chosen="g", scope="global")
    assert oracle(population, "xero", Context(client_id="a"), None).error is AmbiguousInstance
    assert oracle(population, "xero", Context(user_id="a"), None).error is InstanceUnavailable
    assert oracle(population, "xero", Context(user_id="b"), None).chosen == "g"
    assert oracle(population, "xero", Context(user_id="b"), "c1").error is InstanceNotFound
    assert oracle(population, "acme", Context(client_id="a"), "c1").error is InstanceNotFound
    assert oracle(population, "acme", Context(), None).error is NoInstanceFound
    # a user id equal to a client id sees nothing of that client
    assert oracle(population, "xero", Context(user_id="a"), "c1").error is InstanceNotFound


@pytest.fixture
def public(
    cli_env: dict[str, str],
    synced: Database,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Cli:
    """The CLI (and the process runtime) on the synced test database with acme loaded."""
    folder = tmp_path / "extra-definitions"
    folder.mkdir()
    (folder / "acme.json").write_text(ACME_DEFINITION)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(folder))
    reset_runtime()
    return Cli(capsys, monkeypatch)


def test_public_entry_points_never_cross_tenants(
    public: Cli, synced: Database, test_registry: Registry
) -> None:
    checked: Counter[str] = Counter()

    @settings(max_examples=PUBLIC_EXAMPLES)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        drawn = data.draw(populations(max_size=7), label="population")
        moves = data.draw(rescopes(drawn), label="moves")
        with synced.transaction() as s:
            s.execute(sa.text("DELETE FROM integration_instances"))
            population = insert(s, test_registry, drawn, moves)
        assert runtime().wait_for_changes()  # resolutions remembered before are forgotten
        ids = [s.instance_id for s in population]
        cases = data.draw(
            st.lists(
                st.tuples(
                    st.sampled_from(INTEGRATIONS),
                    st.sampled_from(CONTEXTS),
                    st.sampled_from([None, MISSING, *ids]),
                ),
                min_size=1,
                max_size=6,
            ),
            label="cases",
        )
        for integration_id, context, explicit in cases:
            check_public(public, population, integration_id, context, explicit)
            checked["cases"] += 1
        checked["examples"] += 1

    prop()
    print(f"\npublic entry points: {dict(checked)}")
    assert checked["cases"] >= PUBLIC_EXAMPLES


def check_public(
    cli: Cli, population: list[Spec], integration_id: str, context: Context, explicit: str | None
) -> None:
    """`Runtime.resolve` and ``instances resolve --json`` agree with the oracle."""
    expected = oracle(population, integration_id, context, explicit)
    where = f"{integration_id} {context} explicit={explicit}"
    if expected.chosen is not None:
        assert runtime().resolve(integration_id, context, explicit) == expected.chosen, where
    else:
        assert expected.error is not None
        with pytest.raises(expected.error) as info:
            runtime().resolve(integration_id, context, explicit)
        if expected.error is InstanceNotFound:
            assert str(info.value) == f"Instance '{explicit}' not found", where

    args = ["instances", "resolve", integration_id, "--json"]
    if context.client_id is not None:
        args += ["--client", context.client_id]
    if context.user_id is not None:
        args += ["--user", context.user_id]
    if explicit is not None:
        args += ["--instance", explicit]
    result = cli(*args)
    assert "Traceback" not in result.out + result.err, where
    shown = json.loads(result.out)
    assert shown["chosen"] == expected.chosen, where
    if expected.error is None:
        assert result.code == 0 and shown["error"] is None, where
    else:
        assert result.code == 1 and shown["error_code"] == expected.error.code, where
    allowed = {
        s.instance_id
        for s in population
        if s.integration_id == integration_id and visible(s, context)
    }
    leaked = quoted_ids(result.out) - allowed - ({explicit} if explicit else set())
    assert not leaked, f"{where}: the CLI names instances outside the context: {leaked}"


# --------------------------------------------------------------------------------------
# Entry points that take an instance reference
# --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("informational_integration", [True, False])
def test_block_of_another_tenant_is_not_found_inside_a_context(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    informational_integration: bool,
) -> None:
    from prefect_integrations.blocks import IntegrationInstance

    url = provider.url
    make_echo(echo_db, echo_registry, keyring, url, "echo_g")
    make_echo(echo_db, echo_registry, keyring, url, "echo_acme", scope=Scope("client", "acme"))
    make_echo(echo_db, echo_registry, keyring, url, "echo_beta", scope=Scope("client", "beta"))
    for iid in ("echo_g", "echo_acme", "echo_beta"):
        provider.reply("GET", f"/{iid}/items/1", Reply(200, {"id": 1, "name": iid}))

    def block(iid: str) -> IntegrationInstance:
        return IntegrationInstance(
            instance_id=iid, integration_id="echo" if informational_integration else None
        )

    with integration_context(client_id="acme"):
        assert block("echo_acme").call("get_item", {"item_id": 1})["name"] == "echo_acme"
        assert block("echo_g").call("get_item", {"item_id": 1})["name"] == "echo_g"
        for attempt in (
            lambda: block("echo_beta").call("get_item", {"item_id": 1}),
            lambda: asyncio.run(block("echo_beta").acall("get_item", {"item_id": 1})),
            lambda: block("echo_beta").get_client(),
            lambda: block("nope").call("get_item", {"item_id": 1}),
        ):
            with pytest.raises(InstanceNotFound, match=r"^Instance '(echo_beta|nope)' not found$"):
                attempt()
    assert [r.path for r in provider.requests] == ["/echo_acme/items/1", "/echo_g/items/1"]
    # outside any tenant context a block is an operator's explicit reference
    assert block("echo_beta").call("get_item", {"item_id": 1})["name"] == "echo_beta"


@pytest.mark.usefixtures("env")
def test_a_moved_instance_is_out_of_reach_on_the_next_call(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    """Moving an instance to another tenant takes effect for the next task call of a
    running process once the change has reached it (`Runtime.wait_for_changes`)."""
    from prefect_integrations.tasks import call_method

    make_echo(
        echo_db, echo_registry, keyring, provider.url, "echo_acme", scope=Scope("client", "acme")
    )
    provider.reply("GET", "/echo_acme/items/1", Reply(200, {"id": 1, "name": "echo_acme"}))
    with integration_context(client_id="acme"):
        assert call_method("echo", "get_item", {"item_id": 1})["name"] == "echo_acme"
        with echo_db.transaction() as s:
            instances.update_instance(
                s, echo_registry, "echo_acme", scope=Scope("client", "beta"), actor="tests"
            )
        assert runtime().wait_for_changes()
        with pytest.raises(NoInstanceFound):
            call_method("echo", "get_item", {"item_id": 1})
        with pytest.raises(InstanceNotFound):
            call_method("echo", "get_item", {"item_id": 1}, "echo_acme")
    assert len(provider.requests) == 1


# --------------------------------------------------------------------------------------
# Client and user ids: one rule on every input, refused rather than read as absent
# --------------------------------------------------------------------------------------

#: Ids that used to resolve silently (to the global instance) or print like another id.
BAD_IDS = {
    "trailing space": "a ",
    "leading space": " a",
    "inner space": "a b",
    "tab": "a\t",
    "too long": "x" * 100_000,
    "256 characters": "x" * 256,
    "empty": "",
    "Cyrillic look-alike": "\u0430cme",  # prints as 'acme'
    "zero-width space": "ac\u200bme",
    "zero-width joiner": "acme\u200d",
    "bidirectional mark": "\u202eacme",
    "no-break space": "acme\u00a0",
    "decomposed accent": "cafe\u0301",
    "colon": "a:b",
    "NUL": "a\x00",
    "lone surrogate": "a\ud800",
    "starts with a dot": ".a",
}


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_invalid_client_and_user_ids_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"^client_id is invalid") as info:
        Context(client_id=bad)
    assert len(str(info.value)) < 400  # a 100,000-character id is not echoed
    with pytest.raises(ValidationError, match=r"^user_id is invalid"):
        Context(user_id=bad)
    with (
        pytest.raises(ValidationError, match=r"^client_id is invalid"),
        integration_context(client_id=bad),
    ):
        pytest.fail("the block ran with an invalid client id")
    with (
        pytest.raises(ValidationError, match=r"^user_id is invalid"),
        integration_context(client_id="acme", user_id=bad),
    ):
        pytest.fail("the block ran with an invalid user id")
    for kind in ("client", "user"):
        with pytest.raises(ValidationError, match=r"context_id"):
            Scope(kind, bad)
        with pytest.raises(ValidationError, match=r"^--context is invalid at \$\.context_id"):
            parse_scope(f"{kind}:{bad}", subject="--context")


def test_valid_ids_follow_the_documented_rule() -> None:
    for good in ("A", "a", "0", "acme", "acme-eu_1.prod", "u@example.com", "a+b", "x" * 255):
        assert Context(client_id=good, user_id=good).client_id == good
        assert Scope("client", good).context_id == good
        assert parse_scope(f"user:{good}") == Scope("user", good)
    with pytest.raises(ValidationError) as info:
        Context(client_id="a ")
    assert CONTEXT_ID_RULE in str(info.value)


def test_cli_refuses_invalid_ids_and_resolves_a_valid_unknown_one_to_global(
    public: Cli, synced: Database, test_registry: Registry
) -> None:
    active = {"state": "active"}
    make_instance(synced, test_registry, None, "acme_global", "acme", status=active)
    make_instance(synced, test_registry, None, "acme_a", "acme", scope="client:a", status=active)
    # "A" is a valid id of a client that has no instance: global, by design
    shown = json.loads(public("instances", "resolve", "acme", "--client", "A", "--json").out)
    assert shown["chosen"] == "acme_global"
    shown = json.loads(public("instances", "resolve", "acme", "--client", "a", "--json").out)
    assert shown["chosen"] == "acme_a"
    for bad in ("a ", "x" * 100_000, "\u0430", "a\u200b"):
        for option in ("--client", "--user"):
            result = public("instances", "resolve", "acme", option, bad, "--json")
            line = assert_one_error(result, "validation_error", f"{option} is invalid")
            assert "acme_global" not in result.out + line
            result = public("call", "acme.ping", option, bad)
            assert_one_error(result, "validation_error", f"{option} is invalid")
        result = public(
            "instances", "create", "x1", "--integration", "acme", "--name", "X",
            "--context", f"client:{bad}",
        )  # fmt: skip
        assert_one_error(result, "validation_error", "(--context) is invalid at $.context_id")
        result = public("instances", "list", "--context", f"user:{bad}")
        assert_one_error(result, "validation_error", "(--context) is invalid")
    with synced.transaction() as s:
        assert [i.instance_id for i in instances.list_instances(s)] == ["acme_a", "acme_global"]


def test_the_store_refuses_invalid_ids_but_reads_rows_stored_before_the_rule(
    synced: Database, test_registry: Registry
) -> None:
    make_instance(synced, test_registry, None, "legacy", "acme", scope="client:acme")
    with synced.transaction() as s:  # an id stored before the rule existed
        s.execute(
            sa.text(
                "UPDATE integration_instances SET context_id = 'Acme Corp ' "
                "WHERE instance_id = 'legacy'"
            )
        )
    with synced.transaction() as s:
        listed = instances.list_instances(s)
        assert [(i.instance_id, str(i.scope)) for i in listed] == [("legacy", "client:Acme Corp ")]
        assert instances.require_instance(s, "legacy").as_document()["context"] == {
            "type": "client",
            "contextId": "Acme Corp ",
        }
        stored = instances.require_instance(s, "legacy").scope
        with pytest.raises(ValidationError, match=r"\$\.context\.context_id"):
            instances.create_instance(
                s, test_registry, None, instance_id="copy", integration_id="acme",
                name="Copy", scope=stored, actor="t",
            )  # fmt: skip
        with pytest.raises(ValidationError, match="client_id is invalid"):
            instances.visible_instances(s, _unchecked_context("Acme Corp "), integration_id="acme")
        # an update that leaves the scope alone still works; a move to a valid id too
        instances.update_instance(s, test_registry, "legacy", name="Renamed", actor="t")
        moved = instances.update_instance(
            s, test_registry, "legacy", scope=Scope("client", "acme-corp"), actor="t"
        )
        assert str(moved.scope) == "client:acme-corp"
    with synced.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET context_id = 'Acme Corp ' "
                "WHERE instance_id = 'legacy'"
            )
        )
    with synced.transaction() as s:
        instances.delete_instance(s, "legacy", actor="t")
        assert instances.list_instances(s) == []


def _unchecked_context(client_id: str) -> Context:
    """A context that skipped its own check, to show the store checks again."""
    context = object.__new__(Context)
    object.__setattr__(context, "client_id", client_id)
    object.__setattr__(context, "user_id", None)
    return context
