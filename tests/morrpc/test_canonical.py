"""canonical_json: the exact bytes both sides hash before signing."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy_router.morrpc.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json

json_scalars = (st.none() | st.booleans()
                | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text())
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def shuffled(value: Any, rng: random.Random) -> Any:
    """Same value, every object rebuilt with its keys inserted in random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def test_sorted_keys_no_whitespace_utf8() -> None:
    value = {"b": 1, "a": [None, True, "é\n\x00"], "A": {"z": "", "y": -5}}
    assert canonical_json(value) == (
        '{"A":{"y":-5,"z":""},"a":[null,true,"é\\n\\u0000"],"b":1}'.encode()
    )


def test_bytes_become_lowercase_0x_hex() -> None:
    assert canonical_json({"k": b"\x01\xab"}) == b'{"k":"0x01ab"}'


def test_bytes_sign_the_same_as_the_hex_the_receiver_parses() -> None:
    encoded = canonical_json({"k": b"\xff"})
    assert canonical_json(json.loads(encoded)) == encoded


@given(json_values, st.randoms())
def test_key_insertion_order_does_not_matter(value: Any, rng: random.Random) -> None:
    assert canonical_json(shuffled(value, rng)) == canonical_json(value)


@given(json_values)
def test_round_trips_through_any_json_parser(value: Any) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded) == value
    assert canonical_json(json.loads(encoded)) == encoded


@pytest.mark.parametrize("value", [0.5, float("nan"), float("inf"), {"a": [1.0]}])
def test_floats_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalJsonError, match="float"):
        canonical_json(value)


def test_integers_beyond_2_pow_53_must_travel_as_strings() -> None:
    assert canonical_json(MAX_SAFE_INTEGER) == str(MAX_SAFE_INTEGER).encode()
    assert canonical_json(-MAX_SAFE_INTEGER) == str(-MAX_SAFE_INTEGER).encode()
    with pytest.raises(CanonicalJsonError, match="decimal string"):
        canonical_json({"wei": 10**18})


@pytest.mark.parametrize("value", [{1: "int key"}, {"s": {1, 2}}, object(), "\ud800"])
def test_values_without_a_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_json(value)


def test_tuples_encode_as_arrays() -> None:
    assert canonical_json((1, "a")) == b'[1,"a"]'


def test_deep_nesting_is_refused_not_a_crash() -> None:
    value: Any = []
    for _ in range(100):
        value = [value]
    with pytest.raises(CanonicalJsonError, match="deep"):
        canonical_json(value)
