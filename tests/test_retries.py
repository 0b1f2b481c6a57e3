"""Retries that cannot duplicate a write: the client's, Prefect's, and how they combine.

The pipeline's tests send to `httpx.MockTransport`; the flow tests run the generated
tasks in a real Prefect test server against the loopback provider (tests/provider.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import State
from prefect.logging.handlers import APILogWorker

from prefect_integrations.credentials import Credentials
from prefect_integrations.db import Database
from prefect_integrations.definitions import Definition, Registry
from prefect_integrations.exceptions import ProviderUnavailable
from prefect_integrations.keyring import Keyring
from prefect_integrations.pipeline import (
    AsyncPipeline,
    Authorization,
    Call,
    InstanceAuth,
    Pipeline,
    RetryPolicy,
    build_call,
)
from prefect_integrations.scope import Scope
from prefect_integrations.store.instances import Instance

from .factories import api_key, echo_instance
from .provider import FakeProvider, Reply

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)
SECRET = "retry-secret-key-6f1c2a"


def _definition(verb: str = "POST", **method_fields: Any) -> Definition:
    """A definition whose one method is a ``verb``, with ``method_fields`` added to it."""
    document = {
        "integrationId": "writer",
        "name": "Writer",
        "description": "A definition used by the retry tests.",
        "version": "1.0.0",
        "authType": "apikey",
        "auth": {"apikey": {"in": "header", "name": "X-Api-Key"}},
        "configSchema": {"type": "object"},
        "baseUrl": "https://api.example.com",
        "methods": [
            {
                "id": "write",
                "name": "Write",
                "description": "Write something.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"text": {"type": "string"}, "key": {"type": "string"}},
                },
                "outputSchema": {"type": "object"},
                "http": {
                    "method": verb,
                    "path": "/write",
                    "headers": {"Idempotency-Key": "{{ inputs.key }}"},
                    "body": {"json": {"text": "{{ inputs.text }}"}},
                    "output": {"ok": "{{ status }}"},
                },
                **method_fields,
            }
        ],
    }
    return Definition.from_document(document, source="writer.json")


def _authorization(definition: Definition) -> Authorization:
    instance = Instance(
        uuid=uuid.uuid4(),
        instance_id="writer_1",
        integration_id=definition.id,
        name="Writer",
        description=None,
        scope=Scope("global"),
        config={},
        status={"state": "active"},
        credentials=None,
        created_at=None,
        updated_at=None,
        last_used_at=None,
        token_expires_at=None,
        credentials_version=1,
    )
    credentials = Credentials(
        instance_id="writer_1", key_id="k1", values={"apikey": {"key": SECRET}}
    )
    return Authorization(instance=instance, definition=definition, credentials=credentials)


def _send(
    definition: Definition, replies: list[httpx.Response | Exception], **inputs: Any
) -> tuple[Call, list[httpx.Request], Exception | None]:
    """Call ``write`` once through a retrying pipeline; each request gets the next reply."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    auth = _authorization(definition)
    call = build_call(
        definition, auth.instance, "write", {"text": "hi", **inputs}, timeout=httpx.Timeout(5)
    )
    error: Exception | None = None
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        try:
            Pipeline(http, retry=FAST).call(call, InstanceAuth(auth))
        except Exception as exc:
            error = exc
    return call, sent, error


def _retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prefect_integrations.retries"]


def test_a_post_answered_503_is_sent_once_and_said_not_safe_to_send_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "prefect_integrations.retries")
    call, sent, error = _send(_definition(), [httpx.Response(503, json={})])
    assert len(sent) == 1
    assert isinstance(error, ProviderUnavailable) and error.status == 503
    assert call.retry_safe is False
    assert _retry_lines(caplog) == [
        "'writer.write' on instance 'writer_1': attempt 1 failed (HTTP 503); not retried: "
        "the provider may have processed the request and the method is not idempotent"
    ]


def test_a_refused_connection_is_retried_and_each_retry_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "prefect_integrations.retries")
    refused = httpx.ConnectError("Connection refused")
    call, sent, error = _send(_definition(), [refused, refused, httpx.Response(201, json={})])
    assert error is None and len(sent) == 3 and call.attempts == 3
    lines = _retry_lines(caplog)
    assert [line.split(" in ")[0] for line in lines] == [
        "'writer.write' on instance 'writer_1': attempt 1 of 3 failed (ConnectError); retrying",
        "'writer.write' on instance 'writer_1': attempt 2 of 3 failed (ConnectError); retrying",
    ]
    assert all(line.endswith(" s") for line in lines)
    text = " ".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert SECRET not in text and "api.example.com" not in text and "/write" not in text

    # refused every time: nothing reached the provider, so sending again later is safe
    call, sent, error = _send(_definition(), [refused])
    assert len(sent) == 3 and isinstance(error, ProviderUnavailable)
    assert (call.unsent, call.retry_safe) == (True, True)


def test_a_429_is_retried_after_the_wait_it_asks_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "prefect_integrations.retries")
    limited = httpx.Response(429, headers={"Retry-After": "0"}, json={})
    call, sent, error = _send(_definition(), [limited, httpx.Response(201, json={})])
    assert error is None and len(sent) == 2
    assert _retry_lines(caplog) == [
        "'writer.write' on instance 'writer_1': attempt 1 of 3 failed "
        "(HTTP 429, Retry-After 0 s); retrying in 0.00 s"
    ]
    # a 429 that never ends: the provider processed none of it
    call, sent, error = _send(_definition(), [limited])
    assert len(sent) == 3 and isinstance(error, ProviderUnavailable)
    assert call.retry_safe is True


def test_the_async_pipeline_retries_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "prefect_integrations.retries")
    definition = _definition()
    replies: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(503, json={}),
    ]
    sent: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def main() -> Call:
        auth = _authorization(definition)
        call = build_call(
            definition, auth.instance, "write", {"text": "hi"}, timeout=httpx.Timeout(5)
        )
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            with pytest.raises(ProviderUnavailable):
                await AsyncPipeline(http, retry=FAST).call(call, InstanceAuth(auth))
        return call

    call = asyncio.run(main())
    assert len(sent) == 2 and call.retry_safe is False  # refused, retried; then 503: stop
    assert [line.split(";")[0] for line in _retry_lines(caplog)] == [
        "'writer.write' on instance 'writer_1': attempt 1 of 3 failed (ConnectError)",
        "'writer.write' on instance 'writer_1': attempt 2 failed (HTTP 503)",
    ]


def test_a_read_timeout_after_a_post_is_not_retried() -> None:
    call, sent, error = _send(_definition(), [httpx.ReadTimeout("no answer")])
    assert len(sent) == 1 and isinstance(error, ProviderUnavailable)
    assert (call.unsent, call.retry_safe) == (False, False)


def test_a_method_marked_idempotent_is_retried_after_a_503() -> None:
    down = httpx.Response(503, json={})
    call, sent, error = _send(_definition(idempotent=True), [down, down, httpx.Response(200)])
    assert error is None and len(sent) == 3
    # and a PUT declared not idempotent (Xero's PUT creates) is sent once
    call, sent, error = _send(_definition("PUT"), [down, httpx.Response(200)])
    assert error is None and [r.method for r in sent] == ["PUT", "PUT"]
    call, sent, error = _send(_definition("PUT", idempotent=False), [down])
    assert [r.method for r in sent] == ["PUT"] and call.retry_safe is False


def test_a_request_carrying_the_idempotency_key_is_retried_after_a_503() -> None:
    definition = _definition(idempotencyKeyHeader="Idempotency-Key")
    down = httpx.Response(503, json={})
    call, sent, error = _send(definition, [down, httpx.Response(201)], key="order-42")
    assert error is None and len(sent) == 2
    assert {r.headers["Idempotency-Key"] for r in sent} == {"order-42"}
    # without a key the header is left out, and the POST is sent once
    call, sent, error = _send(definition, [down])
    assert len(sent) == 1 and "Idempotency-Key" not in sent[0].headers
    assert call.retry_safe is False


def test_the_shipped_xero_creates_are_not_idempotent_without_their_key(
    registry: Registry,
) -> None:
    for method_id in ("create_invoice", "create_contact"):
        method = registry.get("xero").method(method_id)
        assert method.http is not None and method.http.verb == "PUT"
        assert (method.idempotent, method.idempotency_key_header) == (False, "Idempotency-Key")
    assert registry.get("slack").method("post_message").idempotent is None  # POST: not


# --------------------------------------------------------------------------------------
# With Prefect task retries, in a real flow run
# --------------------------------------------------------------------------------------


def _flow_run_logs(flow_run_id: Any) -> list[str]:
    APILogWorker.drain_all()

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            return [log.message for log in logs]

    return asyncio.run(read())


@pytest.mark.usefixtures("env")
def test_prefect_retries_never_send_a_post_again_after_a_503(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    from prefect_integrations.tasks import tasks_for

    echo_instance(echo_db, echo_registry, keyring, provider, "echo_writes", api_key(SECRET))
    provider.reply("POST", "/echo_writes/items", Reply(503, {"error": {"code": "down"}}))
    echo = tasks_for("echo", retries=1, retry_delay_seconds=0)

    @flow
    def writes() -> Any:
        return echo.create_item(name="once")

    state = cast(State[Any], writes(return_state=True))
    assert state.is_failed()
    with pytest.raises(ProviderUnavailable) as info:
        state.result()
    assert info.value.status == 503 and info.value.retry_safe is False
    assert [r.method for r in provider.requests] == ["POST"]  # not 3 x 2 = 6
    logs = _flow_run_logs(state.state_details.flow_run_id)
    assert any(
        "'echo.create_item' on instance 'echo_writes': attempt 1 failed (HTTP 503); not retried"
        in line
        for line in logs
    ), logs
    assert any("Task 'echo.create_item' is not retried" in line for line in logs), logs
    assert not any(SECRET in line for line in logs)


@pytest.mark.usefixtures("env")
def test_prefect_retries_a_read_after_the_client_gave_up_and_logs_each_attempt(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    from prefect_integrations.tasks import tasks_for

    echo_instance(echo_db, echo_registry, keyring, provider, "echo_reads", api_key(SECRET))
    down = Reply(503, {"error": {"code": "down"}})
    provider.reply(
        "GET", "/echo_reads/items/7", down, down, down, Reply(200, {"id": 7, "name": "s"})
    )
    echo = tasks_for("echo", retries=1, retry_delay_seconds=0)

    @flow
    def reads() -> Any:
        return echo.get_item(item_id=7)

    state = cast(State[Any], reads(return_state=True))
    assert state.result() == {"id": 7, "name": "s"}
    # the client's 3 attempts, then Prefect's retry: a GET may be sent again
    assert len(provider.requests) == 4
    logs = _flow_run_logs(state.state_details.flow_run_id)
    retried = [line for line in logs if "retrying in" in line]
    assert [line.split(" failed")[0] for line in retried] == [
        "'echo.get_item' on instance 'echo_reads': attempt 1 of 3",
        "'echo.get_item' on instance 'echo_reads': attempt 2 of 3",
    ]
