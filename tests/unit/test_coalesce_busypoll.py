"""Interrupt coalescing (ustack/nic/coalesce.py) and busy polling, on MockClock.

Stack a sends one UDP datagram every 100 us of virtual time; stack b's
interrupt is held by rx-usecs / rx-frames, so the frames each interrupt
(and each NAPI poll) finds follow from the settings exactly.
"""

from __future__ import annotations

import socket as _stdlib

import pytest
import trio
from stackpair import make_pair, run, running

from ustack.nic.coalesce import DIM_PROFILES, Coalesce, CoalesceError
from ustack.sockets.base import SO_BUSY_POLL

GAP = 100e-6
COUNT = 200


async def _udp_stream(a, b, count: int, gap: float, received: list[bytes],
                      port: int = 5000) -> None:
    rx = b.socket(type=_stdlib.SOCK_DGRAM)
    await rx.bind(("10.0.0.2", port))
    tx = a.socket(type=_stdlib.SOCK_DGRAM)
    # One datagram first, so ARP is done before the measured stream.
    await tx.sendto(b"warm", ("10.0.0.2", port))
    received.append(await rx.recv(100))

    async def reader() -> None:
        while len(received) < count + 1:
            received.append(await rx.recv(100))

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await trio.sleep(0.01)
        for i in range(count):
            await tx.sendto(i.to_bytes(4, "big"), ("10.0.0.2", port))
            await trio.sleep(gap)


def frames_per_interrupt(**settings) -> tuple[float, float]:
    """(frames per interrupt, frames per NAPI poll) on b's queue 0 for the stream."""
    _, a, b = make_pair()
    b.dev.coalesce.set(settings)
    received: list[bytes] = []
    marks: dict[str, dict[str, int]] = {}

    async def main() -> None:
        async with running(a, b):
            async def stream() -> None:
                await _udp_stream(a, b, COUNT, GAP, received)

            async with trio.open_nursery() as n:
                n.start_soon(stream)
                await trio.sleep(0.005)
                marks["start"] = b.dev.ethtool_stats()
            await trio.sleep(0.05)
            marks["end"] = b.dev.ethtool_stats()

    run(main)
    assert len(received) == COUNT + 1
    d = {k: marks["end"][k] - marks["start"][k]
         for k in ("rx_queue_0_packets", "rx_queue_0_interrupts", "rx_queue_0_napi_polls")}
    return (d["rx_queue_0_packets"] / d["rx_queue_0_interrupts"],
            d["rx_queue_0_packets"] / d["rx_queue_0_napi_polls"])


def test_no_coalescing_interrupts_for_every_frame() -> None:
    per_irq, per_poll = frames_per_interrupt()
    assert per_irq == pytest.approx(1.0, abs=0.05)
    assert per_poll == pytest.approx(1.0, abs=0.05)


def test_rx_usecs_holds_the_interrupt_for_that_long() -> None:
    """rx-usecs 1000 with a frame every 100 us: about 10 frames per interrupt and poll."""
    per_irq, per_poll = frames_per_interrupt(**{"rx-usecs": 1000})
    assert 9 <= per_irq <= 11
    assert 9 <= per_poll <= 11


def test_rx_frames_fires_early_when_enough_frames_wait() -> None:
    """rx-usecs 1000 but rx-frames 4: the interrupt fires at the 4th frame."""
    per_irq, per_poll = frames_per_interrupt(**{"rx-usecs": 1000, "rx-frames": 4})
    assert per_irq == pytest.approx(4.0, abs=0.1)
    assert per_poll == pytest.approx(4.0, abs=0.1)


def test_adaptive_rx_moderates_a_busy_queue_and_not_a_quiet_one() -> None:
    _, a, b = make_pair()
    b.dev.coalesce.set({"adaptive-rx": True})
    received: list[bytes] = []
    levels: list[int] = []

    async def main() -> None:
        async with running(a, b):
            await _udp_stream(a, b, 300, 10e-6, received)  # 100k frames/s
            levels.append(b.dev.coalesce.queues[0].level)
            received.clear()
            await _udp_stream(a, b, 20, 0.01, received, port=5002)  # 100 frames/s
            levels.append(b.dev.coalesce.queues[0].level)

    run(main)
    assert levels[0] >= 2 and b.dev.coalesce.show()["adaptive-rx"]
    assert levels[1] == 0
    assert b.dev.coalesce.params(0) == DIM_PROFILES[0][1:]


def test_coalesce_settings_are_validated_all_or_nothing() -> None:
    c = Coalesce(1)
    c.set({"rx-usecs": 50, "rx-frames": 8})
    for bad in ({"rx-usecs": -1}, {"rx-frames": 10**6}, {"tx-usecs": 1},
                {"adaptive-rx": 1}, {"rx-usecs": "5"}, {"rx-usecs": 10, "rx-frames": -2}):
        with pytest.raises(CoalesceError):
            c.set(bad)
    assert c.params(0) == (50, 8) and not c.adaptive_rx


def test_busy_poll_takes_frames_off_the_ring_itself() -> None:
    """SO_BUSY_POLL: a blocked recv polls the queue; the frames it takes are counted."""
    _, a, b = make_pair()
    # The interrupt would wait 10 ms: only busy polling can be faster.
    b.dev.coalesce.set({"rx-usecs": 10000})
    got: list[tuple[bytes, float]] = []

    async def main() -> None:
        async with running(a, b):
            rx = b.socket(type=_stdlib.SOCK_DGRAM)
            await rx.bind(("10.0.0.2", 5001))
            await rx.connect(("10.0.0.1", 5001))
            tx = a.socket(type=_stdlib.SOCK_DGRAM)
            await tx.bind(("10.0.0.1", 5001))
            await tx.connect(("10.0.0.2", 5001))
            await tx.send(b"warm")
            got.append((await rx.recv(100), trio.current_time()))
            rx.setsockopt(_stdlib.SOL_SOCKET, SO_BUSY_POLL, 50_000)
            assert rx.getsockopt(_stdlib.SOL_SOCKET, SO_BUSY_POLL) == 50_000

            async def later() -> None:
                await trio.sleep(0.001)
                await tx.send(b"ping")

            async with trio.open_nursery() as n:
                n.start_soon(later)
                sent = trio.current_time() + 0.001
                data = await rx.recv(100)
                got.append((data, trio.current_time() - sent))

    run(main)
    assert got[1][0] == b"ping"
    assert got[1][1] < 0.0005  # not the 10 ms the held interrupt would take
    assert b.stats.tcpext["BusyPollRxPackets"] >= 1
    assert b.dev.ethtool_stats()["rx_queue_0_busy_poll_packets"] >= 1


def test_busy_read_sysctl_is_the_default_and_bad_values_refused() -> None:
    _, a, b = make_pair()
    b.sysctl.set("net.core.busy_read", 25)
    s = b.socket(type=_stdlib.SOCK_DGRAM)
    assert s.getsockopt(_stdlib.SOL_SOCKET, SO_BUSY_POLL) == 25
    with pytest.raises(OSError):
        s.setsockopt(_stdlib.SOL_SOCKET, SO_BUSY_POLL, -1)
