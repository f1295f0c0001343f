"""Decoding CBOR that someone else sent: bounded in size, depth and expansion.

Every decoder that faces the network (the control RPC, `/resources`, remote parts' replies, the
capture files the cloud ingests) decodes through :func:`decode`. What it refuses, and why:

- more than ``max_bytes`` of input: the caller's bound on one message;
- nesting deeper than ``max_depth``;
- every semantic tag but bignums: CBOR shared references (tags 28/29) let 12 bytes refer to
  themselves or a 150-byte message expand to millions of copies; dates, regexes, decimals and
  the rest are nothing capsync writes. Without tags, a decoded value holds at most one item per
  input byte, so its size is bounded by the input's;
- bignums (tags 2/3) longer than :data:`MAX_BIGNUM_BYTES`: a huge integer is cheap to send and
  costly to print (Python refuses to turn one of over 4,300 digits into text);
- indefinite-length items (capsync never writes them), and anything after the one item.

All refusals are :class:`UntrustedCBORError` (a ValueError) with a reason; a caller answers with
it and closes only the connection or file that carried it.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

#: Longest bignum accepted, in bytes (about 77 decimal digits): room for any 256-bit value.
MAX_BIGNUM_BYTES = 32
#: The tags capsync's own encoder can write (unsigned and negative bignums).
_BIGNUM_TAGS = (2, 3)
#: Every tag cbor2 decodes by itself; all but the bignums are refused.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 270, 1004, 55799)


class UntrustedCBORError(ValueError):
    """The input is not CBOR that capsync accepts from a peer; the message says why."""


# cbor2 6 calls a semantic decoder with the tag's content, already decoded, and an "immutable" flag.
def _refuse_tag(tag: int):
    def refuse(content: Any, immutable: bool) -> Any:
        raise UntrustedCBORError(f"CBOR tag {tag} is not accepted"
                                 + (" (shared references can expand without bound)" if tag in (28, 29) else ""))
    return refuse


def _bignum(negative: bool):
    def decode_bignum(raw: Any, immutable: bool) -> int:
        if type(raw) is not bytes:
            raise UntrustedCBORError("a bignum must hold a byte string")
        if len(raw) > MAX_BIGNUM_BYTES:
            raise UntrustedCBORError(f"bignum of {len(raw)} bytes; at most {MAX_BIGNUM_BYTES} are accepted")
        value = int.from_bytes(raw, "big")
        return -1 - value if negative else value
    return decode_bignum


_SEMANTIC = {tag: _refuse_tag(tag) for tag in _BUILTIN_TAGS}
_SEMANTIC.update({2: _bignum(False), 3: _bignum(True)})


def _unknown_tag(tag: cbor2.CBORTag, immutable: bool) -> Any:
    raise UntrustedCBORError(f"CBOR tag {tag.tag} is not accepted")


def decode(data: bytes, *, max_bytes: int, max_depth: int = 64) -> Any:
    """The one CBOR item ``data`` holds; :class:`UntrustedCBORError` for anything refused above."""
    return Decoder(max_bytes=max_bytes, max_depth=max_depth).decode(data)


class Decoder:
    """:func:`decode` for many messages in a row (the records of one file), with one cbor2 decoder
    reused for all of them: making one costs more than decoding a small reading. Not thread-safe."""

    def __init__(self, *, max_bytes: int, max_depth: int = 64) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._cbor: cbor2.CBORDecoder | None = None

    def decode(self, data: bytes) -> Any:
        """The one CBOR item ``data`` holds; :class:`UntrustedCBORError` for anything refused."""
        if len(data) > self._max_bytes:
            raise UntrustedCBORError(f"{len(data)} bytes; at most {self._max_bytes} are accepted")
        fp = io.BytesIO(data)
        cbor = self._cbor
        try:
            if cbor is None:
                cbor = self._cbor = cbor2.CBORDecoder(fp, tag_hook=_unknown_tag, semantic_decoders=_SEMANTIC,
                                                      max_depth=self._max_depth, allow_indefinite=False)
            else:
                cbor.fp = fp
            item = cbor.decode()
        except BaseException as exc:
            self._cbor = None  # a decoder that stopped half-way is not used again
            refusal = _refusal(exc)
            if refusal is exc:
                raise
            raise refusal from None
        if fp.tell() != len(data):
            raise UntrustedCBORError(f"{len(data) - fp.tell()} stray bytes after the CBOR item")
        return item


def _refusal(exc: BaseException) -> BaseException:
    """What to raise for an error out of cbor2: an UntrustedCBORError saying why (other errors as they are)."""
    if isinstance(exc, UntrustedCBORError):
        return exc
    if isinstance(exc, cbor2.CBORDecodeError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, UntrustedCBORError):  # raised inside a semantic decoder, wrapped by cbor2
            return cause
        return UntrustedCBORError(f"not valid CBOR: {exc}")
    if isinstance(exc, (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError)):
        return UntrustedCBORError(f"not valid CBOR: {exc}")
    return exc
