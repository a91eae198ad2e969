"""The impaired wire under whole stacks: TCP stays exact, counters tell what happened.

The same seeded impairment model runs in the in-memory wire (``Wire(impair=)``)
and in the NIC (``Stack.set_impair``); everything runs on MockClock, so
delays cost no wall time and outcomes repeat for a seed.
"""

from __future__ import annotations

import hashlib
import ipaddress

import trio
import trio.testing
from stackpair import A_MAC, B_MAC, run, running
from test_sockets import connected_pair

from ustack.link.wire import Wire
from ustack.nic.impair import Impair
from ustack.stack import Stack


def pair(impair: str = "") -> tuple[Wire, Stack, Stack]:
    wire = Wire(impair=impair)
    a = Stack([wire.a], ipaddress.IPv4Interface("10.0.0.1/24"), name="a", mac=A_MAC)
    b = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), name="b", mac=B_MAC)
    return wire, a, b




async def exchange(a: Stack, b: Stack, size: int) -> None:
    data = hashlib.sha256(b"impaired").digest() * (size // 32)
    up, down = await connected_pair(a, b)
    got = bytearray()
    async with trio.open_nursery() as n:
        async def send():
            await up.send_all(data)
            await up.send_eof()
        n.start_soon(send)
        async for chunk in down:
            got += chunk
    assert bytes(got) == data


def test_wire_delay_shows_in_ping_rtt():
    wire, a, b = pair("delay=25ms")

    async def main():
        async with running(a, b):
            results = [r async for r in a.ping("10.0.0.2", count=3, interval=0.5)]
            # The first also waits for ARP (another 50 ms round trip, less one leg).
            assert results[0]["time_ms"] > 50
            assert all(49.9 <= r["time_ms"] <= 51 for r in results[1:]), results

    run(main)


def test_tcp_stays_exact_over_a_lossy_reordering_duplicating_wire():
    wire, a, b = pair("loss=3%,reorder=3%,dup=1%,seed=11")

    async def main():
        async with running(a, b):
            await exchange(a, b, 2_000_000)

    run(main)
    assert wire.a.impair.counters["impair_dropped"] + wire.b.impair.counters[
        "impair_dropped"] > 0
    assert a.stats.tcp["RetransSegs"] + b.stats.tcp["RetransSegs"] > 0


def test_corruption_is_caught_by_checksums():
    wire, a, b = pair("rx:corrupt=5%,seed=5;tx:corrupt=5%,seed=6")

    async def main():
        async with running(a, b):
            await exchange(a, b, 1_000_000)

    run(main)
    caught = sum(s.stats.tcp["InCsumErrors"] + s.stats.ipext["InCsumErrors"]
                 + s.stats.tcp["InErrs"] for s in (a, b))
    corrupted = wire.a.impair.counters["impair_corrupted"] + wire.b.impair.counters[
        "impair_corrupted"]
    assert corrupted > 0 and caught > 0


def test_nic_impairment_set_at_run_time_and_counted():
    wire, a, b = pair()

    async def main():
        async with running(a, b):
            a.set_impair(Impair(delay=0.01, seed=1), Impair(loss=0.05, seed=2))
            await exchange(a, b, 1_000_000)
            stats = a.dev.ethtool_stats()
            assert stats["tx_impair_dropped"] > 0 and stats["rx_impair_delayed"] > 0
            a.set_impair(None, None)
            results = [r async for r in a.ping("10.0.0.2", count=1)]
            assert results[0]["time_ms"] < 1

    run(main)
