"""Response bodies decoded a chunk at a time, never past a limit of decoded bytes.

httpx decodes each network chunk whole before anyone can count it: a few KiB of
``gzip, gzip`` become gigabytes. `LimitedDecoder` inflates with a bound on its output
instead, so a body that decodes to more than the limit is refused after decoding at most
one byte more than the limit. One content-coding is decoded: ``gzip`` (``x-gzip``) or
``deflate``; stacked codings and any other coding are refused (`UnsupportedEncoding`),
and `ACCEPT_ENCODING` is what requests ask for.
"""

from __future__ import annotations

import zlib
from typing import Final

import httpx

__all__ = [
    "ACCEPT_ENCODING",
    "DecodedTooLarge",
    "LimitedDecoder",
    "UnsupportedEncoding",
    "accept_decodable",
]

#: The ``Accept-Encoding`` of requests whose responses `LimitedDecoder` reads.
ACCEPT_ENCODING: Final = "gzip, deflate"
_DECODABLE: Final = frozenset({"gzip", "x-gzip", "deflate", "identity", ""})
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS


class DecodedTooLarge(Exception):
    """A body decodes to more bytes than the limit (nothing past the limit was kept)."""


class UnsupportedEncoding(httpx.DecodingError):
    """A ``Content-Encoding`` that is not decoded: stacked codings, or an unknown one."""


def accept_decodable(request: httpx.Request) -> None:
    """Ask only for codings `LimitedDecoder` reads, if ``request`` asks for others."""
    asked = request.headers.get("accept-encoding")
    if asked is None:
        return
    codings = {part.split(";")[0].strip().lower() for part in asked.split(",")}
    if not codings <= _DECODABLE:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING


def _coding(headers: httpx.Headers) -> str | None:
    """The one content-coding of a body (None for identity); refuse anything else."""
    codings = [
        value.strip().lower()
        for value in headers.get_list("content-encoding", split_commas=True)
        if value.strip() and value.strip().lower() != "identity"
    ]
    if len(codings) > 1:
        raise UnsupportedEncoding(
            f"the response Content-Encoding '{', '.join(codings)}' stacks "
            f"{len(codings)} codings; only one of gzip, deflate is decoded"
        )
    if codings and codings[0] not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedEncoding(
            f"the response Content-Encoding '{codings[0][:40]}' is not supported "
            "(gzip and deflate are)"
        )
    return codings[0] if codings else None


def _is_zlib(head: bytes) -> bool:
    """True when ``head`` starts a zlib stream (``deflate`` as meant), not raw deflate."""
    return (head[0] & 0x0F) == 8 and ((head[0] << 8) | head[1]) % 31 == 0


class LimitedDecoder:
    """Decode the body of a response with ``headers``, at most ``limit`` bytes of it.

    `decode` each raw chunk in turn, then `flush`. Both return decoded bytes and raise
    `DecodedTooLarge` once the body decodes to more than ``limit`` bytes; the constructor
    raises `UnsupportedEncoding` for a coding that is not decoded, and a corrupt body
    raises `httpx.DecodingError`. Data after the end of a compressed stream is counted,
    not kept.
    """

    def __init__(self, headers: httpx.Headers, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._coding = _coding(headers)
        self._inflater: zlib._Decompress | None = (
            zlib.decompressobj(_GZIP_WBITS) if self._coding in ("gzip", "x-gzip") else None
        )
        self._head = b""  # deflate: the first bytes, until they tell zlib from raw

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > self.limit:
            raise DecodedTooLarge

    def _inflate(self, data: bytes) -> bytes:
        inflater = self._inflater
        assert inflater is not None
        out: list[bytes] = []
        while data:
            if inflater.eof:
                self._count(len(data))
                break
            try:
                # one byte past the limit is enough to know the body is too large
                chunk = inflater.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise httpx.DecodingError(f"the response body is not valid {self._coding}") from exc
            self._count(len(chunk))
            out.append(chunk)
            data = inflater.unconsumed_tail
        return b"".join(out)

    def decode(self, data: bytes) -> bytes:
        """The decoded bytes of the next raw chunk ``data``."""
        if self._coding is None:
            self._count(len(data))
            return data
        if self._inflater is None:  # deflate: zlib or raw, told by the first two bytes
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            self._inflater = zlib.decompressobj(
                zlib.MAX_WBITS if _is_zlib(data) else -zlib.MAX_WBITS
            )
        return self._inflate(data)

    def flush(self) -> bytes:
        """The decoded bytes still held once every raw chunk was given."""
        if self._coding is None:
            return b""
        if self._inflater is None:  # a deflate body of fewer than two bytes
            if not self._head:
                return b""
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data, self._head = self._head, b""
            return self._inflate(data)
        try:
            # nothing is left unconsumed, and `_inflate` stopped short of its bound: little is held
            rest = self._inflater.flush()
        except zlib.error as exc:
            raise httpx.DecodingError(f"the response body is not valid {self._coding}") from exc
        self._count(len(rest))
        return rest
