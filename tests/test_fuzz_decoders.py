"""Every decoder that faces the network, fuzzed: any input gives a value or the documented refusal,
never another exception, in bounded time (the Hypothesis deadline).

The targets live in tests/fuzz_targets.py; scripts/fuzz.py runs the same ones for longer under
atheris (coverage-guided). Inputs are random bytes, CBOR or JSON of random structures shaped like
the real messages, and valid inputs with random edits.
"""

from __future__ import annotations

import json
from datetime import timedelta

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz_targets
from tests.fuzz_targets import TARGETS

FAST = settings(max_examples=300, deadline=timedelta(milliseconds=750), derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

KEYS = ["id", "method", "params", "result", "error", "type", "message", "resource", "readings", "binary",
        "data", "mime_type", "metadata", "many", "file_id", "state", "offset", "size", "records", "sha256",
        "kind", "name", "detail", "status"]
WORDS = KEYS + ["resource.capture", "resource.list", "s1", "cam", "sensor", "camera", "Readings", "GetImages",
                "ReadImage", "committed", "partial", "unknown", "capture", "file", "BadMessage"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True) | st.sampled_from(WORDS) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5),
                      max_leaves=25)
messages = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.sampled_from(WORDS) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5),
                                                                inner, max_size=6),
    max_leaves=25)


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A valid input with a few random edits: overwritten, inserted or deleted bytes, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _cbor(obj) -> bytes:
    try:
        return cbor2.dumps(obj)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return b"\xa0"


def strategies_for(name: str):
    """Input strategies for one target: random bytes, real-shaped messages, mutated seeds."""
    seeds = TARGETS[name][1]()
    raw = st.binary(max_size=4096)
    if name == "capture_reader":
        return raw | mutated(seeds)
    if name == "sync_protocol":
        shaped = st.tuples(st.integers(0, 255), json_values).map(
            lambda t: bytes([t[0]]) + json.dumps(t[1]).encode())
        return raw | shaped | mutated(seeds)
    return raw | messages.map(_cbor) | values.map(_cbor) | mutated(seeds)


@pytest.fixture(scope="module", autouse=True)
def _scratch():
    yield
    fuzz_targets.cleanup()


def _fuzz_test(name: str):
    check = TARGETS[name][0]

    @FAST
    @given(data=strategies_for(name))
    def test(data: bytes) -> None:
        check(data)

    test.__name__ = f"test_{name}_gives_a_value_or_the_documented_refusal"
    test.__doc__ = f"Fuzz target {name} (tests/fuzz_targets.py)."
    return test


test_rpc_decode_gives_a_value_or_the_documented_refusal = _fuzz_test("rpc_decode")
test_resource_dispatch_gives_a_value_or_the_documented_refusal = _fuzz_test("resource_dispatch")
test_remote_reply_gives_a_value_or_the_documented_refusal = _fuzz_test("remote_reply")
test_sync_protocol_gives_a_value_or_the_documented_refusal = _fuzz_test("sync_protocol")
test_capture_reader_gives_a_value_or_the_documented_refusal = _fuzz_test("capture_reader")


def test_every_target_is_fuzzed_here():
    """A new target in tests/fuzz_targets.py must get its test here too."""
    here = {n.removeprefix("test_").removesuffix("_gives_a_value_or_the_documented_refusal")
            for n in globals() if n.endswith("_gives_a_value_or_the_documented_refusal")}
    assert here == set(TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_target_fails_on_an_undocumented_exception(name, monkeypatch):
    """The property can fail: a decoder that raises something undocumented is caught by its target."""
    import capsync.actors.resource_server as rs
    import capsync.cloud.ingest as ing
    import capsync.runtime.rpc as rpc
    from capsync.runtime import remote

    def boom(*a, **k):
        raise KeyError("planted bug")

    if name == "rpc_decode":
        monkeypatch.setattr(rpc.untrusted_cbor, "decode", boom)
    elif name == "sync_protocol":
        monkeypatch.setattr(fuzz_targets.UploadStart, "model_validate_json", classmethod(lambda cls, d: boom()))
    else:
        monkeypatch.setattr(*{"resource_dispatch": (rs, "decode"), "remote_reply": (remote, "decode_result"),
                              "capture_reader": (ing, "iter_capture")}[name], boom)
    seed = TARGETS[name][1]()[0]
    with pytest.raises((KeyError, AssertionError)):
        TARGETS[name][0](seed)
