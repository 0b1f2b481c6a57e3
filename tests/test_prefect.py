"""Generated tasks and the block, in a real Prefect test server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, cast

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter
from prefect.client.schemas.objects import State
from prefect.logging.handlers import APILogWorker

from prefect_integrations.cli import run
from prefect_integrations.context import integration_context
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import InstanceNotFound, ProviderError, ValidationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.runtime import runtime
from prefect_integrations.store import audit

from .factories import api_key, echo_instance, make_instance
from .provider import FakeProvider, Reply

CANARY = "canary-token-5d2e8a77"


def _stored_results(folder: Path) -> str:
    """Every persisted result, with base64 payloads (pickles) decoded."""
    chunks: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            chunks.append(value)
            with contextlib.suppress(ValueError):
                chunks.append(base64.b64decode(value).decode("latin-1"))

    for path in folder.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            chunks.append(raw.decode("latin-1"))
            with contextlib.suppress(ValueError):
                walk(json.loads(raw))
    return "\n".join(chunks)


def test_generated_task_has_a_real_signature() -> None:
    from prefect_integrations.tasks import xero

    task = xero.create_invoice
    assert task.name == "xero.create_invoice"
    assert task.tags == {"integration:xero"}
    params = inspect.signature(task.fn).parameters
    assert params["contact_id"].default is inspect.Parameter.empty
    assert params["line_items"].annotation == list[Any]
    assert params["status"].default == "DRAFT"
    assert params["reference"].default is None
    assert params["instance"].default is None
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert task.fn.__qualname__ == "xero_create_invoice"
    from prefect.cache_policies import NO_CACHE

    assert task.cache_policy is NO_CACHE
    with pytest.raises(ImportError):
        from prefect_integrations.tasks import nope  # noqa: F401


@pytest.mark.usefixtures("env")
def test_flow_calls_tasks_for_global_and_client_instances(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    from prefect_integrations.tasks import echo

    echo_instance(echo_db, echo_registry, keyring, provider, "echo_global", api_key(CANARY))
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "echo_acme",
        "echo",
        scope="client:acme",
        config={"base_url": f"{provider.url}/echo_acme"},
        credentials=api_key("acme-token"),
    )
    provider.reply("POST", "/echo_global/items", Reply(201, {"id": 1, "name": "g"}))
    provider.reply("POST", "/echo_acme/items", Reply(201, {"id": 2, "name": "a"}))

    @flow
    def billing() -> list[Any]:
        first = echo.create_item(name="g")
        with integration_context(client_id="acme"):
            second = echo.create_item(name="a")
            submitted = echo.create_item.submit(name="a").result()
        explicit = echo.create_item(name="g", instance="echo_global")
        return [first, second, submitted, explicit]

    assert billing() == [
        {"id": 1, "name": "g"},
        {"id": 2, "name": "a"},
        {"id": 2, "name": "a"},
        {"id": 1, "name": "g"},
    ]
    paths = [r.path for r in provider.requests]
    assert paths == [
        "/echo_global/items",
        "/echo_acme/items",
        "/echo_acme/items",
        "/echo_global/items",
    ]
    runtime().recorder.flush()
    with echo_db.transaction() as s:
        rows = audit.tail(s, action="method.call")
    assert [r.instance_id for r in rows] == ["echo_global", "echo_acme", "echo_acme", "echo_global"]
    assert all("flow_run_id" in r.details and "task_run_id" in r.details for r in rows)


@pytest.mark.usefixtures("env")
def test_other_tenants_instance_is_not_found_from_a_task(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    from prefect_integrations.tasks import echo

    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "echo_beta",
        "echo",
        scope="client:beta",
        config={"base_url": f"{provider.url}/echo_beta"},
        credentials=api_key(CANARY),
    )

    @flow
    def sneaky() -> Any:
        with integration_context(client_id="acme"):
            return echo.create_item(name="x", instance="echo_beta")

    state = cast(State[Any], sneaky(return_state=True))
    assert state.is_failed()
    with pytest.raises(Exception, match="Instance 'echo_beta' not found"):
        state.result()
    assert provider.requests == []


@pytest.mark.usefixtures("env")
def test_canary_never_reaches_prefect_or_the_audit_log(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect_integrations.tasks import echo

    echo_instance(echo_db, echo_registry, keyring, provider, "echo_main", api_key(CANARY))
    provider.reply("POST", "/echo_main/items", Reply(201, {"id": 1, "name": "ok"}))
    provider.reply(
        "GET",
        "/echo_main/items/1",
        Reply(400, {"error": {"code": "bad", "message": f"your key {CANARY} was rejected"}}),
    )

    @flow(log_prints=True)
    def leaky() -> Any:
        echo.create_item(name="ok")
        return echo.get_item(item_id=1)

    state = cast(State[Any], leaky(return_state=True))
    assert state.is_failed()
    with pytest.raises(ProviderError) as info:
        state.result()
    assert CANARY not in str(info.value) and "was rejected" in str(info.value)

    # the CLI path too
    assert run(["call", "echo.get_item", "--input", '{"item_id": 1}', "--json"]) == 1
    assert run(["call", "echo.create_item", "--input", '{"name": "ok"}', "--json"]) == 0
    cli_out = capsys.readouterr()
    assert '"id": 1' in cli_out.out

    APILogWorker.drain_all()

    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None

    async def collect() -> str:
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            logs = await client.read_logs(LogFilter())
            states = [flow_run.state, *[t.state for t in task_runs]]
            return json.dumps(
                {
                    "logs": [log.message for log in logs],
                    "states": [s.model_dump(mode="json") for s in states if s is not None],
                    "task_runs": [t.model_dump(mode="json") for t in task_runs],
                }
            )

    prefect_side = asyncio.run(collect())
    data = json.loads(prefect_side)
    assert any("was rejected" in m for m in data["logs"])  # the error reached the logs
    assert any("was rejected" in json.dumps(s) for s in data["states"])  # and the states
    stored = _stored_results(harness)
    assert "ProviderError" in stored  # the failed task's exception was persisted
    runtime().recorder.flush()
    with echo_db.transaction() as s:
        audit_text = json.dumps([e.as_dict() for e in audit.tail(s, limit=1000)])
    for sink, text in {
        "prefect": prefect_side,
        "results": stored,
        "audit": audit_text,
        "cli": cli_out.out + cli_out.err,
    }.items():
        assert CANARY not in text, sink


@pytest.mark.usefixtures("env")
def test_block_registered_synced_and_callable(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect_integrations.blocks import IntegrationInstance

    async def block_type_slug() -> str:
        async with get_client() as client:
            found = await client.read_block_type_by_slug("integration-instance")
            return found.slug

    assert asyncio.run(block_type_slug()) == "integration-instance"  # no manual registration

    echo_instance(echo_db, echo_registry, keyring, provider, "echo_main", api_key(CANARY))
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "Echo.Other",
        "echo",
        scope="user:u1",
        config={"base_url": f"{provider.url}/Echo.Other"},
        credentials=api_key(CANARY),
    )
    assert run(["blocks", "sync"]) == 0
    assert "2 block(s) saved" in capsys.readouterr().out
    block = cast(IntegrationInstance, IntegrationInstance.load("echo-main"))
    assert block.instance_id == "echo_main" and block.integration_id == "echo"
    other = cast(IntegrationInstance, IntegrationInstance.load("echo-other"))
    assert other.instance_id == "Echo.Other"

    async def stored_documents() -> str:
        async with get_client() as client:
            docs = await client.read_block_documents(include_secrets=True)
            return json.dumps([d.model_dump(mode="json") for d in docs])

    assert CANARY not in asyncio.run(stored_documents())

    provider.reply("GET", "/echo_main/items/4", Reply(200, {"id": 4, "name": "four"}))
    assert block.call("get_item", {"item_id": 4}) == {"id": 4, "name": "four"}
    assert asyncio.run(block.acall("get_item", {"item_id": 4})) == {"id": 4, "name": "four"}
    provider.reply("GET", "/echo_main/items/1", Reply(200, {"id": 1, "name": "one"}))
    tested = block.test()  # the connection test, as `instances test` runs it
    assert (tested["passed"], tested["reason"], tested["status_code"]) == (True, "ok", 200)
    assert tested["state"] == "active"


def test_a_misspelt_keyword_is_named_with_the_closest_parameter() -> None:
    from prefect_integrations.tasks import slack

    task = slack.post_message
    with pytest.raises(ValidationError) as info:
        task(chanel="#x", text="hi")
    assert str(info.value) == (
        "Input of 'slack.post_message' is invalid at $.chanel: "
        "unknown parameter 'chanel'; did you mean 'channel'?"
    )
    assert info.value.path == ("chanel",)
    # a block given by position as well: the keyword is still what is named
    with pytest.raises(ValidationError, match="did you mean 'channel'"):
        task("a-block", chanel="#x", text="hi")
    # the same through a copy with other options
    with pytest.raises(ValidationError, match="did you mean 'channel'"):
        task.with_options(retries=2)(chanel="#x", text="hi")
    with pytest.raises(ValidationError, match=r"at \$\.channel: missing required parameter"):
        task(text="hi")
    with pytest.raises(ValidationError, match="takes keyword arguments only"):
        task("#x", text="hi")
    with pytest.raises(ValidationError, match="expected one of 'channel', "):
        task(channel="#x", zzzzzz=1)


@pytest.mark.usefixtures("env")
def test_a_misspelt_keyword_fails_submit_and_map_before_any_task_run(
    harness: Path, provider: FakeProvider
) -> None:
    from prefect_integrations.tasks import echo

    @flow
    def submitted() -> Any:
        return echo.create_item.submit(nmae="x").result()

    @flow
    def mapped() -> Any:
        return echo.create_item.map(nmae=["x", "y"]).result()

    for misspelt in (submitted, mapped):
        state = cast(State[Any], misspelt(return_state=True))
        assert state.is_failed()
        with pytest.raises(ValidationError, match=r"\$\.nmae: .*did you mean 'name'\?"):
            state.result()
    assert provider.requests == []


@pytest.mark.usefixtures("env")
def test_a_block_is_one_instance_for_every_mapped_run(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    from prefect_integrations.blocks import IntegrationInstance
    from prefect_integrations.tasks import echo

    echo_instance(echo_db, echo_registry, keyring, provider, "echo_mapped", api_key("mapped-key"))
    IntegrationInstance(instance_id="echo_mapped", integration_id="echo").save(
        "echo-mapped", overwrite=True
    )
    for item_id in (1, 2, 3):
        provider.reply(
            "GET", f"/echo_mapped/items/{item_id}", Reply(200, {"id": item_id, "name": "n"})
        )

    @flow
    def fan_out(item_ids: list[int]) -> list[Any]:
        block = IntegrationInstance.load("echo-mapped")
        results: list[Any] = echo.get_item.map(item_id=item_ids, instance=block).result()
        return results

    assert fan_out([1, 2, 3]) == [{"id": i, "name": "n"} for i in (1, 2, 3)]
    assert sorted(r.path for r in provider.requests) == [
        "/echo_mapped/items/1",
        "/echo_mapped/items/2",
        "/echo_mapped/items/3",
    ]
    assert {r.headers["x-api-key"] for r in provider.requests} == {"mapped-key"}


@pytest.mark.usefixtures("env")
def test_a_block_saved_in_the_ui_naming_a_missing_instance_fails_naming_both(
    harness: Path, provider: FakeProvider
) -> None:
    from prefect.client.schemas.actions import BlockDocumentCreate

    from prefect_integrations.blocks import IntegrationInstance
    from prefect_integrations.tasks import echo

    async def save_as_the_ui_does() -> None:
        """What the UI's form posts: a block document with the typed-in instance id."""
        async with get_client() as client:
            block_type = await client.read_block_type_by_slug("integration-instance")
            schemas = await client.read_block_schemas()
            schema = next(s for s in schemas if s.block_type_id == block_type.id)
            await client.create_block_document(
                BlockDocumentCreate(
                    name="typo-in-ui",
                    data={"instance_id": "echo_mian"},
                    block_schema_id=schema.id,
                    block_type_id=block_type.id,
                )
            )

    asyncio.run(save_as_the_ui_does())
    block = cast(IntegrationInstance, IntegrationInstance.load("typo-in-ui"))
    expected = (
        "Instance 'echo_mian' not found (named by the Prefect block "
        "'integration-instance/typo-in-ui': correct the block's instance_id or create the "
        "instance)"
    )
    for use in (
        lambda: block.call("get_item", {"item_id": 1}),
        lambda: asyncio.run(block.acall("get_item", {"item_id": 1})),
        block.get_client,
        block.test,
    ):
        with pytest.raises(InstanceNotFound) as info:
            use()
        assert str(info.value) == expected
        assert (info.value.instance_id, info.value.block) == (
            "echo_mian",
            "integration-instance/typo-in-ui",
        )

    @flow
    def uses_the_block() -> Any:
        return echo.get_item(item_id=1, instance=IntegrationInstance.load("typo-in-ui"))

    state = cast(State[Any], uses_the_block(return_state=True))
    with pytest.raises(InstanceNotFound) as info:
        state.result()
    assert str(info.value) == expected
    assert provider.requests == []
