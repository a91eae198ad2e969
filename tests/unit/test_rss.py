"""Toeplitz RSS hash against Microsoft's published verification vectors; RETA edits."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ustack.nic.rss import DEFAULT_KEY, RETA_SIZE, Rss, RssError

# A copy of ../shared/data/rss-toeplitz-vectors.json (Microsoft's public RSS
# verification data), kept with the tests so any checkout can run them.
VECTORS = Path(__file__).resolve().parent / "data" / "rss-toeplitz-vectors.json"


def naive_toeplitz(key: bytes, data: bytes) -> int:
    """The specification's bit-by-bit algorithm, as an independent oracle."""
    k = int.from_bytes(key, "big")
    bits = len(key) * 8
    h = 0
    for i in range(len(data) * 8):
        if data[i // 8] & (0x80 >> (i % 8)):
            h ^= (k >> (bits - 32 - i)) & 0xFFFFFFFF
    return h


def load_vectors() -> dict:
    return json.loads(VECTORS.read_text())


def test_microsoft_ipv4_vectors():
    v = load_vectors()
    rss = Rss(4, bytes.fromhex(v["key"]))
    assert rss.key == DEFAULT_KEY
    for case in v["ipv4"]:
        src = ipaddress.IPv4Address(case["src"]).packed
        dst = ipaddress.IPv4Address(case["dst"]).packed
        assert rss.flow_hash(src, dst) == int(case["hash_2tuple"], 16)
        assert rss.flow_hash(src, dst, case["sport"], case["dport"]) == int(
            case["hash_4tuple"], 16)


def test_microsoft_ipv6_vectors():
    v = load_vectors()
    rss = Rss(4)
    for case in v["ipv6"]:
        src = ipaddress.IPv6Address(case["src"]).packed
        dst = ipaddress.IPv6Address(case["dst"]).packed
        assert rss.toeplitz(src + dst) == int(case["hash_2tuple"], 16)
        ports = case["sport"].to_bytes(2, "big") + case["dport"].to_bytes(2, "big")
        assert rss.toeplitz(src + dst + ports) == int(case["hash_4tuple"], 16)


@given(st.binary(min_size=0, max_size=36), st.binary(min_size=40, max_size=40))
def test_table_driven_hash_equals_the_bitwise_definition(data, key):
    assert Rss(1, key).toeplitz(data) == naive_toeplitz(key, data)


def test_reta_equal_and_weight_edits_move_flows():
    rss = Rss(4)
    assert Counter(rss.reta) == {0: 32, 1: 32, 2: 32, 3: 32}
    hashes = [rss.flow_hash(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 40000 + i, 80)
              for i in range(400)]
    spread = Counter(rss.queue_of(h) for h in hashes)
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 50
    rss.set_equal(2)
    assert {rss.queue_of(h) for h in hashes} == {0, 1}
    rss.set_weights([1, 0, 0, 3])
    counts = Counter(rss.reta)
    assert counts == {0: 32, 3: 96}
    assert {rss.queue_of(h) for h in hashes} == {0, 3}
    assert len(rss.reta) == RETA_SIZE


def test_bad_settings_are_refused():
    rss = Rss(2)
    for bad in (lambda: rss.set_equal(3), lambda: rss.set_weights([1, 1, 1]),
                lambda: rss.set_weights([0, 0]), lambda: rss.set_key(b"short")):
        with pytest.raises(RssError):
            bad()
