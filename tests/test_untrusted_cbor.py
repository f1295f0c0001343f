"""The decoder every network-facing part uses: bounded size, depth and expansion; one error type."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsync.runtime.untrusted_cbor import MAX_BIGNUM_BYTES, Decoder, UntrustedCBORError, decode

SELF_REFERENCE = bytes.fromhex("d81c81d81d00")  # shareable [sharedref(0)]: an array that contains itself


def _expanding(levels: int) -> bytes:
    """Each level an array holding the previous level twice, by shared reference: 2**levels leaves."""
    value: list = [0]
    for _ in range(levels):
        value = [value, value]
    return cbor2.dumps(value, value_sharing=True)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30,
)


@given(json_like)
def test_what_capsync_writes_decodes_unchanged(value):
    assert decode(cbor2.dumps(value), max_bytes=1 << 20) == value


@pytest.mark.parametrize("data, reason", [
    (SELF_REFERENCE, "tag 2[89]"),
    (_expanding(23), "tag 28"),
    (cbor2.dumps(cbor2.CBORTag(1, 10**30)), "tag 1 "),
    (cbor2.dumps(cbor2.CBORTag(999, 1)), "tag 999"),
    (cbor2.dumps(2 ** (8 * MAX_BIGNUM_BYTES + 1)), "bignum of"),
    (cbor2.dumps(10**4400), "bignum of"),
    (b"\x81" * 100 + b"\x00", "depth"),
    (b"\x9f\x01\xff", "indefinite"),
    (cbor2.dumps(1) + b"\x00", "stray bytes"),
    (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "premature end"),  # a byte string claiming 2**64 bytes
    (b"", "premature end"),
])
def test_hostile_input_is_refused_with_a_reason(data, reason):
    with pytest.raises(UntrustedCBORError, match=reason):
        decode(data, max_bytes=1 << 20)


def test_size_bound():
    data = cbor2.dumps(b"x" * 1000)
    assert decode(data, max_bytes=len(data)) == b"x" * 1000
    with pytest.raises(UntrustedCBORError, match="at most 1000"):
        decode(data, max_bytes=1000)


def test_depth_bound_is_the_callers():
    assert decode(b"\x81" * 10 + b"\x00", max_bytes=100, max_depth=11)
    with pytest.raises(UntrustedCBORError, match="depth"):
        decode(b"\x81" * 10 + b"\x00", max_bytes=100, max_depth=5)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused_never_anything_else(data):
    try:
        decode(data, max_bytes=1 << 16)
    except UntrustedCBORError:
        pass


@settings(max_examples=300)
@given(json_like, st.data())
def test_mutated_messages_decode_or_are_refused(value, data):
    raw = bytearray(cbor2.dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw), max_bytes=1 << 16)
    except UntrustedCBORError:
        pass


@settings(max_examples=200)
@given(st.lists(st.one_of(json_like.map(cbor2.dumps), st.binary(max_size=40)), min_size=1, max_size=12))
def test_one_decoder_for_many_messages_answers_each_as_decode_would(messages):
    # a reused decoder (the records of one file) must carry nothing from one message to the next,
    # a refused or broken one included
    many = Decoder(max_bytes=1 << 16, max_depth=16)
    for raw in messages:
        try:
            alone = ("value", decode(raw, max_bytes=1 << 16, max_depth=16))
        except UntrustedCBORError as exc:
            alone = ("refused", str(exc))
        try:
            reused = ("value", many.decode(raw))
        except UntrustedCBORError as exc:
            reused = ("refused", str(exc))
        assert reused == alone


def test_a_reused_decoder_refuses_after_a_nesting_that_stopped_half_way():
    many = Decoder(max_bytes=100, max_depth=5)
    with pytest.raises(UntrustedCBORError, match="depth"):
        many.decode(b"\x81" * 10 + b"\x00")
    assert many.decode(b"\x81" * 4 + b"\x00") == [[[[0]]]]
    with pytest.raises(UntrustedCBORError, match="premature end"):
        many.decode(b"\x82\x01")  # an array of two that ends after one
    assert many.decode(cbor2.dumps([1, 2])) == [1, 2]
