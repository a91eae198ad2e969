"""RFC 6528 initial sequence numbers and RFC 6056 ephemeral ports.

An off-path attacker who opens connections of its own must learn nothing
that predicts another connection's ISN or source port: consecutive
connections show no fixed increment, ports of different destinations are
spread over ip_local_port_range, and one 4-tuple's ISN still grows with the
4 microsecond clock (RFC 6528 section 3).
"""

from __future__ import annotations

import errno

import pytest
from fuzzing import B_IP_B, Harness, SimStack

from ustack.sysctl import Sysctl
from ustack.transport.ports import ephemeral_port
from ustack.transport.tcp.secure import ISN_TICKS_PER_SECOND, SecureSeq

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def test_isn_is_keyed_hash_plus_4us_clock():
    now = [100.0]
    seq = SecureSeq(lambda: now[0], secret=b"k" * 32)
    first = seq.isn(A, 40000, B, 80)
    now[0] += 1.0
    # Same 4-tuple one second later: exactly 250 000 ticks further on.
    assert (seq.isn(A, 40000, B, 80) - first) % 2**32 == ISN_TICKS_PER_SECOND
    # Another key or another 4-tuple: unrelated.
    other = SecureSeq(lambda: now[0], secret=b"x" * 32)
    assert other.isn(A, 40000, B, 80) != seq.isn(A, 40000, B, 80)
    assert seq.isn(A, 40001, B, 80) != seq.isn(A, 40000, B, 80)


def spread(values: list[int], space: int, buckets: int = 16) -> int:
    """How many of *buckets* equal slices of [0, space) the values fall in."""
    return len({v * buckets // space for v in values})


def test_isns_of_many_connections_have_no_predictable_increment():
    h = Harness()
    isns = []
    for _ in range(300):
        conn, _ = h.a.tcp.connect(None, B_IP_B, 80, False)
        isns.append(conn.iss)
        SimStack.clock_now += 0.001
    deltas = [(b - a) % 2**32 for a, b in zip(isns, isns[1:], strict=False)]
    assert len(set(deltas)) > 290
    assert spread(isns, 2**32) == 16 and spread(deltas, 2**32) == 16


def test_ephemeral_ports_of_different_destinations_spread_over_the_range():
    sysctl = Sysctl()
    low, high = sysctl["net.ipv4.ip_local_port_range"]
    ports = [ephemeral_port(sysctl, (), (A, B, dport)) for dport in range(1, 401)]
    assert all(low <= p <= high for p in ports)
    assert spread([p - low for p in ports], high - low + 1) == 16
    steps = {(b - a) % (high - low + 1) for a, b in zip(ports, ports[1:], strict=False)}
    assert len(steps) > 350


def test_ports_to_one_destination_walk_the_range_with_random_steps():
    h = Harness()
    ports = [h.a.tcp.connect(None, B_IP_B, 443, False)[1].port for _ in range(200)]
    assert len(set(ports)) == 200
    steps = [(b - a) % 28232 for a, b in zip(ports, ports[1:], strict=False)]
    # Each use moves the flow's counter by 2 plus a random even step below 16.
    assert len(set(steps)) > 3 and all(s % 2 == 0 and 2 <= s <= 16 for s in steps)


def test_exhausted_range_is_eaddrnotavail():
    h = Harness()
    h.a.sysctl.set("net.ipv4.ip_local_port_range", "40000 40008")
    used = set()
    with pytest.raises(OSError) as e:
        for _ in range(12):
            used.add(h.a.tcp.connect(None, B_IP_B, 80, False)[1].port)
    assert e.value.errno == errno.EADDRNOTAVAIL
    # __inet_hash_connect walks high - low ports (rounded to even) from the
    # flow's offset, so one of the nine may stay out of its reach, and the
    # harness's own connection may hold another.
    assert used <= set(range(40000, 40009)) and len(used) >= 7
