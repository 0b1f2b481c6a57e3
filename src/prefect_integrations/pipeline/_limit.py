"""The response size limit, as a transport: a larger body is never read whole.

The limit counts decoded bytes, and bodies are decoded here, a bounded amount at a time
(`LimitedDecoder`): a compressed body is refused once it decodes past the limit, before
it is decoded whole. A body in a coding that is not decoded (stacked codings, ``br``...)
is refused with a `ProviderError` with code ``unsupported_content_encoding``.
"""

from __future__ import annotations

from typing import Final

import httpx

from prefect_integrations._decoding import (
    DecodedTooLarge,
    LimitedDecoder,
    UnsupportedEncoding,
    accept_decodable,
)
from prefect_integrations.exceptions import ProviderError
from prefect_integrations.pipeline._request import CALL_EXTENSION, Call

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AsyncSizeLimitTransport",
    "BodyTooLarge",
    "SizeLimitTransport",
]

#: The largest response body a client or health check reads (decoded bytes).
MAX_RESPONSE_BYTES: Final = 10 * 1024 * 1024
_UNBUFFERED_HEADERS: Final = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class BodyTooLarge(Exception):
    """A response body exceeds the limit; its stream was closed without reading it whole.

    Not an `httpx.TransportError`: nothing retries it. The caller turns it into
    `ResponseTooLarge`, which names the method and instance.
    """

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"HTTP {status}: the response body exceeds the limit of {limit} bytes")
        self.status = status
        self.limit = limit


def _declared_too_large(response: httpx.Response, limit: int) -> bool:
    declared = response.headers.get("content-length", "").strip()
    return declared.isdigit() and int(declared) > limit


def _decoder(request: httpx.Request, response: httpx.Response, limit: int) -> LimitedDecoder:
    """The decoder of ``response``'s body; refuse a body over the limit or not decodable."""
    if _declared_too_large(response, limit):
        raise BodyTooLarge(response.status_code, limit)
    try:
        return LimitedDecoder(response.headers, limit)
    except UnsupportedEncoding as exc:
        call: Call | None = request.extensions.get(CALL_EXTENSION)
        if call is None:
            raise
        call.status = response.status_code
        raise ProviderError(
            integration_id=call.definition.id,
            method_id=call.method.id,
            status=response.status_code,
            provider_code="unsupported_content_encoding",
            provider_message=str(exc),
            instance_id=call.instance_id,
        ) from None


def _in_memory(response: httpx.Response, limit: int) -> bytes:
    """The body of a response built in memory (by a mock transport): read, decoded."""
    if len(response.content) > limit:
        raise BodyTooLarge(response.status_code, limit)
    return response.content


def _buffered(request: httpx.Request, response: httpx.Response, content: bytes) -> httpx.Response:
    """A read response holding ``content`` (already decoded) in place of a streamed one."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _UNBUFFERED_HEADERS
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=content,
        request=request,
        extensions=response.extensions,
    )


class SizeLimitTransport(httpx.BaseTransport):
    """Read each response of ``transport`` whole, up to ``limit`` decoded bytes.

    The response returned is read (its body in memory and decoded, without the encoding
    and length headers of the stream it was read from). A declared ``Content-Length`` over
    the limit is refused before reading anything, a longer body as soon as its decoded
    bytes pass the limit: `BodyTooLarge`, the stream closed either way. Requests ask only
    for the codings decoded here (``gzip, deflate``).
    """

    def __init__(self, transport: httpx.BaseTransport, limit: int = MAX_RESPONSE_BYTES) -> None:
        self._transport = transport
        self.limit = limit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its response, at most ``limit`` bytes."""
        accept_decodable(request)
        response = self._transport.handle_request(request)
        chunks: list[bytes] = []
        try:
            if response.is_stream_consumed:
                chunks.append(_in_memory(response, self.limit))
            else:
                decoder = _decoder(request, response, self.limit)
                for raw in response.iter_raw():
                    chunks.append(decoder.decode(raw))
                chunks.append(decoder.flush())
        except DecodedTooLarge:
            raise BodyTooLarge(response.status_code, self.limit) from None
        finally:
            response.close()
        return _buffered(request, response, b"".join(chunks))

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncSizeLimitTransport(httpx.AsyncBaseTransport):
    """`SizeLimitTransport` for an async transport."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, limit: int = MAX_RESPONSE_BYTES
    ) -> None:
        self._transport = transport
        self.limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its response, at most ``limit`` bytes."""
        accept_decodable(request)
        response = await self._transport.handle_async_request(request)
        chunks: list[bytes] = []
        try:
            if response.is_stream_consumed:
                chunks.append(_in_memory(response, self.limit))
            else:
                decoder = _decoder(request, response, self.limit)
                async for raw in response.aiter_raw():
                    chunks.append(decoder.decode(raw))
                chunks.append(decoder.flush())
        except DecodedTooLarge:
            raise BodyTooLarge(response.status_code, self.limit) from None
        finally:
            await response.aclose()
        return _buffered(request, response, b"".join(chunks))

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
