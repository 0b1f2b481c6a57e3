"""The response size limit, as a transport: a larger body is never read whole."""

from __future__ import annotations

from typing import Final

import httpx

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

    The response returned is read (its body in memory, without the encoding and length
    headers of the stream it was read from). A declared ``Content-Length`` over the limit
    is refused before reading anything, a longer body as soon as the limit is passed:
    `BodyTooLarge`, the stream closed either way.
    """

    def __init__(self, transport: httpx.BaseTransport, limit: int = MAX_RESPONSE_BYTES) -> None:
        self._transport = transport
        self.limit = limit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its response, at most ``limit`` bytes."""
        response = self._transport.handle_request(request)
        chunks: list[bytes] = []
        size = 0
        try:
            if _declared_too_large(response, self.limit):
                raise BodyTooLarge(response.status_code, self.limit)
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.limit:
                    raise BodyTooLarge(response.status_code, self.limit)
                chunks.append(chunk)
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
        response = await self._transport.handle_async_request(request)
        chunks: list[bytes] = []
        size = 0
        try:
            if _declared_too_large(response, self.limit):
                raise BodyTooLarge(response.status_code, self.limit)
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.limit:
                    raise BodyTooLarge(response.status_code, self.limit)
                chunks.append(chunk)
        finally:
            await response.aclose()
        return _buffered(request, response, b"".join(chunks))

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
