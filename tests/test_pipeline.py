"""The call pipeline on its own: auth flow, retry and size-limit transports, no database.

Requests go to `httpx.MockTransport`; the credentials and their renewal are stand-ins for
what the clients load from the store.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from prefect_integrations.credentials import Credentials
from prefect_integrations.definitions import Definition
from prefect_integrations.exceptions import (
    CredentialsError,
    InvalidGrant,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ResponseTooLarge,
    TokenEndpointUnavailable,
)
from prefect_integrations.pipeline import (
    AsyncPipeline,
    Authorization,
    Call,
    InstanceAuth,
    Pipeline,
    RetryPolicy,
    RetryTransport,
    build_call,
    failure_reason,
)
from prefect_integrations.scope import Scope
from prefect_integrations.store.instances import Instance

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)


def _definition(**auth: Any) -> Definition:
    document = {
        "integrationId": "demo",
        "name": "Demo",
        "description": "A definition used by the pipeline tests.",
        "version": "1.0.0",
        "authType": "apikey",
        "auth": {"apikey": auth or {"in": "query", "name": "key"}},
        "configSchema": {"type": "object"},
        "baseUrl": "https://api.example.com",
        "methods": [
            {
                "id": "ping",
                "name": "Ping",
                "description": "Check the connection.",
                "inputSchema": {"type": "object"},
                "outputSchema": {"type": "object"},
                "http": {"method": "GET", "path": "/ping", "output": {"ok": "{{ status }}"}},
            }
        ],
    }
    return Definition.from_document(document, source="demo.json")


def _authorization(definition: Definition, key: str, *, version: int = 1) -> Authorization:
    instance = Instance(
        uuid=uuid.uuid4(),
        instance_id="demo_1",
        integration_id=definition.id,
        name="Demo",
        description=None,
        scope=Scope("global"),
        config={},
        status={"state": "active"},
        credentials=None,
        created_at=None,
        updated_at=None,
        last_used_at=None,
        token_expires_at=None,
        credentials_version=version,
    )
    credentials = Credentials(instance_id="demo_1", key_id="k1", values={"apikey": {"key": key}})
    return Authorization(instance=instance, definition=definition, credentials=credentials)


def _call(definition: Definition) -> Call:
    current = _authorization(definition, "unused")
    return build_call(definition, current.instance, "ping", {}, timeout=httpx.Timeout(5.0))


def test_refused_credentials_are_renewed_once_and_the_request_sent_again() -> None:
    definition = _definition()
    keys: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.url.params.get_list("key"))
        return httpx.Response(401 if len(keys) == 1 else 200, json={})

    renewals: list[bool] = []

    def renew(stale: Authorization, force: bool) -> Authorization | None:
        renewals.append(force)
        return _authorization(definition, "fresh-key", version=stale.version + 1)

    call = _call(definition)
    auth = InstanceAuth(_authorization(definition, "stale-key"), renew=renew)
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        assert Pipeline(http, retry=FAST).call(call, auth) == {"ok": 200}
    # the query key is replaced, not added to: the request is sent again from its copy
    assert keys == [["stale-key"], ["fresh-key"]]
    assert renewals == [True]
    assert auth.current.version == 2
    assert (call.status, call.attempts) == (200, 1)


@pytest.mark.parametrize("renewed", [True, False])
def test_credentials_are_renewed_at_most_once(renewed: bool) -> None:
    definition = _definition()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(401, json={"error": "invalid_key"})

    def renew(stale: Authorization, force: bool) -> Authorization | None:
        return _authorization(definition, "fresh-key", version=2) if renewed else None

    call = _call(definition)
    auth = InstanceAuth(_authorization(definition, "stale-key"), renew=renew)
    http = httpx.Client(transport=httpx.MockTransport(handler))
    with http, pytest.raises(ProviderAuthError) as caught:
        Pipeline(http, retry=FAST).call(call, auth)
    assert len(sent) == (2 if renewed else 1)
    assert caught.value.provider_code == "invalid_key" and call.status == 401


def test_retries_are_counted_on_the_call_and_retry_after_is_honoured() -> None:
    definition = _definition()
    replies = [httpx.Response(503), httpx.Response(503), httpx.Response(200, json={})]
    with httpx.Client(transport=httpx.MockTransport(lambda _: replies.pop(0))) as http:
        call = _call(definition)
        auth = InstanceAuth(_authorization(definition, "k" * 8))
        assert Pipeline(http, retry=FAST).call(call, auth) == {"ok": 200}
    assert (call.status, call.attempts) == (200, 3)

    too_long = httpx.Response(429, headers={"Retry-After": "3600"})
    with httpx.Client(transport=httpx.MockTransport(lambda _: too_long)) as http:
        call = _call(definition)
        with pytest.raises(ProviderUnavailable):
            Pipeline(http, retry=FAST).call(call, InstanceAuth(_authorization(definition, "k")))
    assert (call.status, call.attempts) == (429, 1)


def test_without_a_retry_policy_nothing_is_sent_twice() -> None:
    definition = _definition()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectError("refused", request=request)

    call = _call(definition)
    http = httpx.Client(transport=httpx.MockTransport(handler))
    with http, pytest.raises(ProviderUnavailable) as caught:
        Pipeline(http).call(call, InstanceAuth(_authorization(definition, "k")))
    assert len(sent) == 1
    assert (caught.value.status, caught.value.provider_code) == (None, "ConnectError")


class _Chunks(httpx.SyncByteStream):
    def __init__(self, count: int, size: int) -> None:
        self.count, self.size, self.read = count, size, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.count):
            self.read += 1
            yield b"x" * self.size


def test_a_body_over_the_limit_is_never_read_whole() -> None:
    definition = _definition()
    chunks = _Chunks(count=100, size=100)
    declared = _Chunks(count=100, size=100)
    replies = {
        "chunked": httpx.Response(200, stream=chunks),
        "declared": httpx.Response(200, headers={"Content-Length": "10000"}, stream=declared),
    }
    for name, reply in replies.items():
        call = _call(definition)
        with httpx.Client(transport=httpx.MockTransport(lambda _, r=reply: r)) as http:
            pipeline = Pipeline(http, retry=FAST, max_response_bytes=250)
            with pytest.raises(ResponseTooLarge) as caught:
                pipeline.call(call, InstanceAuth(_authorization(definition, "k")))
        assert "limit of 250 bytes" in str(caught.value), name
        assert (caught.value.status, call.status, call.attempts) == (200, 200, 1), name
    assert chunks.read == 3 and declared.read == 0


def test_the_async_pipeline_renews_in_a_worker_thread() -> None:
    definition = _definition(**{"in": "header", "name": "X-Key"})
    seen: list[str | None] = []
    renewed_in: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-key"))
        return httpx.Response(401 if len(seen) == 1 else 200, json={})

    def renew(stale: Authorization, force: bool) -> Authorization | None:
        renewed_in.append(threading.get_ident())
        return _authorization(definition, "fresh-key", version=2)

    async def main() -> Any:
        call = _call(definition)
        auth = InstanceAuth(_authorization(definition, "stale-key"), renew=renew)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await AsyncPipeline(http, retry=FAST).call(call, auth)

    assert asyncio.run(main()) == {"ok": 200}
    assert seen == ["stale-key", "fresh-key"]
    assert renewed_in and renewed_in[0] != threading.get_ident()


def _provider(cls: type[ProviderError], status: int | None) -> ProviderError:
    return cls(integration_id="demo", method_id="ping", status=status)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (_provider(ProviderAuthError, 401), "provider_auth_failed"),
        (InvalidGrant("refused"), "invalid_grant"),
        (TokenEndpointUnavailable("down"), "provider_auth_failed"),
        (
            ResponseTooLarge(integration_id="demo", method_id="ping", status=200, limit=1),
            "provider_response_too_large",
        ),
        (_provider(ProviderUnavailable, 503), "provider_unavailable"),
        (_provider(ProviderUnavailable, 429), "rate_limited"),
        (_provider(ProviderUnavailable, None), "network"),
        (_provider(ProviderError, 404), "config_invalid"),
        (httpx.ReadTimeout("slow"), "network"),
        (CredentialsError("missing"), "config_invalid"),
    ],
)
def test_failures_are_named_by_their_error_codes(error: BaseException, reason: str) -> None:
    assert failure_reason(error) == reason


def test_a_403_refuses_the_permission_and_renews_nothing() -> None:
    definition = _definition()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(403, json={"error": "forbidden"})

    renewals: list[bool] = []

    def renew(stale: Authorization, force: bool) -> Authorization | None:
        renewals.append(force)
        return _authorization(definition, "fresh-key", version=stale.version + 1)

    auth = InstanceAuth(_authorization(definition, "key"), renew=renew)
    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(ProviderAuthError),
    ):
        Pipeline(http, retry=FAST).call(_call(definition), auth)
    assert (len(sent), renewals) == (1, [])


def test_redirects_are_never_followed_even_by_a_client_that_would() -> None:
    definition = _definition(**{"in": "header", "name": "X-Api-Key"})
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(302, headers={"Location": "https://elsewhere.example/steal"})

    auth = InstanceAuth(_authorization(definition, "key-0123456789"))
    with (
        httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True) as http,
        pytest.raises(ProviderError),
    ):
        Pipeline(http, retry=FAST).call(_call(definition), auth)
    assert hosts == ["api.example.com"]


@pytest.mark.parametrize(
    ("method", "status", "sends"),
    [
        ("POST", 502, 1),
        ("POST", 504, 1),
        ("POST", 503, 1),
        ("PATCH", 503, 1),
        ("POST", 429, 3),
        ("GET", 504, 3),
        ("GET", 500, 3),
        ("PUT", 503, 3),
        ("DELETE", 502, 3),
    ],
)
def test_only_idempotent_requests_are_sent_again_after_a_gateway_error(
    method: str, status: int, sends: int
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        return httpx.Response(status, json={})

    with httpx.Client(transport=RetryTransport(httpx.MockTransport(handler), FAST)) as http:
        assert http.request(method, "https://api.example.com/x").status_code == status
    assert len(seen) == sends


@pytest.mark.parametrize("header", ["\u00b2", "soon", "-1 day", ""])
def test_an_unreadable_retry_after_is_as_good_as_none(header: str) -> None:
    response = httpx.Response(429, headers={b"Retry-After": header.encode("latin-1")})
    delay = FAST.delay(1, method="POST", response=response)
    assert delay is not None and delay <= FAST.max_delay


def test_a_transport_error_never_quotes_what_was_being_sent() -> None:
    """h11 refuses a header value with a newline, quoting it: the key must not follow."""
    definition = _definition(**{"in": "header", "name": "X-Api-Key"})
    key = "key-LEAKME-0123456789\n"
    auth = InstanceAuth(_authorization(definition, key))
    with socket.create_server(("127.0.0.1", 0)) as listening:  # accepts, never answers
        call = _call(definition)
        call.request.url = call.request.url.copy_with(
            scheme="http", host="127.0.0.1", port=listening.getsockname()[1]
        )
        with httpx.Client() as http, pytest.raises(ProviderUnavailable) as caught:
            Pipeline(http, retry=FAST).call(call, auth)
    assert caught.value.provider_code == "LocalProtocolError"
    text = f"{caught.value} {caught.value!r} {vars(caught.value)!r}"
    assert "LEAKME" not in text


# --------------------------------------------------------------------------------------
# Compressed bodies: the limit counts decoded bytes, decoded a bounded amount at a time
# --------------------------------------------------------------------------------------

_BODY = b'{"items": [' + b", ".join(b'"item-%d"' % i for i in range(200)) + b"]}"


def _compressed(data: bytes, coding: str) -> bytes:
    if coding == "deflate-raw":
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    return gzip.compress(data) if coding in ("gzip", "x-gzip") else zlib.compress(data)


class _Wire(httpx.SyncByteStream, httpx.AsyncByteStream):
    """``data`` sent in network-sized chunks, counting what was sent."""

    def __init__(self, data: bytes, size: int = 65536) -> None:
        self.data, self.size, self.sent = data, size, 0

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.size):
            self.sent += 1
            yield self.data[start : start + self.size]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def _bomb(decoded: int) -> bytes:
    """A gzip body of ``decoded`` zero bytes (a few hundred times smaller on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(decoded >> 20)) + packer.flush()


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "deflate-raw"])
def test_a_compressed_body_under_the_limit_is_read_decoded(coding: str) -> None:
    definition = _definition()
    encoding = "deflate" if coding == "deflate-raw" else coding
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding"))
        body = _compressed(_BODY, coding)
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=_Wire(body, 7))

    # a request asking for codings that are not decoded here asks only for those that are
    request = _call(definition).request
    request.headers["Accept-Encoding"] = "br, zstd, gzip"
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        pipeline = Pipeline(http, max_response_bytes=len(_BODY))
        response = pipeline.send(request, InstanceAuth(_authorization(definition, "k")))
    assert response.content == _BODY and response.json()["items"][-1] == "item-199"
    assert "content-encoding" not in response.headers
    assert seen == ["gzip, deflate"]


def test_a_compressed_body_over_the_limit_is_refused_before_it_is_decoded_whole() -> None:
    """1 MiB of zeros per 1 KiB on the wire: the limit counts what they decode to."""
    definition = _definition()
    limit = 1 << 20
    bomb = _bomb(64 << 20)
    for name in ("sync", "async"):
        wire = _Wire(bomb, 16384)
        call = _call(definition)
        auth = InstanceAuth(_authorization(definition, "k"))

        def handler(request: httpx.Request, wire: _Wire = wire) -> httpx.Response:
            return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=wire)

        async def in_async(call: Call = call, auth: InstanceAuth = auth) -> Any:
            async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
                return await AsyncPipeline(http, retry=FAST, max_response_bytes=limit).call(
                    call, auth
                )

        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge) as caught:
                if name == "sync":
                    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
                        Pipeline(http, retry=FAST, max_response_bytes=limit).call(call, auth)
                else:
                    asyncio.run(in_async())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert f"limit of {limit} bytes" in str(caught.value), name
        assert (caught.value.status, call.status, call.attempts) == (200, 200, 1), name
        # the body up to the limit, and a byte past it: not the 16 MiB a chunk decodes to
        assert peak < 4 * limit, (name, peak)
        assert wire.sent < len(bomb) // 16384, name


@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip, deflate", "br", "zstd", "compress"])
def test_a_body_in_stacked_or_unknown_codings_is_refused(encoding: str) -> None:
    definition = _definition()
    wire = _Wire(gzip.compress(gzip.compress(_BODY)))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=wire)

    call = _call(definition)
    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(ProviderError) as caught,
    ):
        Pipeline(http, retry=FAST).call(call, InstanceAuth(_authorization(definition, "k")))
    error = caught.value
    assert type(error) is ProviderError
    assert (error.status, error.provider_code) == (200, "unsupported_content_encoding")
    assert f"'{encoding}'" in str(error)
    assert (call.status, call.attempts, wire.sent) == (200, 1, 0)
    assert failure_reason(error) == "config_invalid"
