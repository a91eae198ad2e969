"""Interrupt coalescing (ustack/nic/coalesce.py, net_dim in nic/dim.py) and busy polling.

The stack tests run on MockClock; net_dim is also fed sample sequences directly.

Stack a sends one UDP datagram every 100 us of virtual time; stack b's
interrupt is held by rx-usecs / rx-frames, so the frames each interrupt
(and each NAPI poll) finds follow from the settings exactly.
"""

from __future__ import annotations

import socket as _stdlib

import pytest
import trio
from stackpair import make_pair, run, running

from ustack.nic.coalesce import Coalesce, CoalesceError
from ustack.nic.dim import (
    DIM_GOING_LEFT,
    DIM_NEVENTS,
    DIM_PARKING_ON_TOP,
    DIM_PARKING_TIRED,
    DIM_STATS_BETTER,
    DIM_STATS_SAME,
    DIM_STATS_WORSE,
    NET_DIM_DEF_PROFILE_EQE,
    NET_DIM_RX_EQE_PROFILES,
    Dim,
    DimSample,
    DimStats,
    net_dim_stats_compare,
)
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
    # Fixed moderation: adaptive-rx (on by default) would override rx-usecs.
    b.dev.coalesce.set({"adaptive-rx": False, **settings})
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


def test_adaptive_rx_settles_request_response_on_profile_0() -> None:
    """UDP ping-pong: every hold adds to the round trip, so net_dim ends on profile 0."""
    _, a, b = make_pair()
    b.dev.coalesce.set({"adaptive-rx": True})
    assert b.dev.coalesce.params(0) == NET_DIM_RX_EQE_PROFILES[NET_DIM_DEF_PROFILE_EQE]

    async def main() -> None:
        async with running(a, b):
            srv = b.socket(type=_stdlib.SOCK_DGRAM)
            await srv.bind(("10.0.0.2", 7))
            cli = a.socket(type=_stdlib.SOCK_DGRAM)
            await cli.connect(("10.0.0.2", 7))

            async def echo() -> None:
                while True:
                    data, addr = await srv.recvfrom(100)
                    await srv.sendto(data, addr)

            async with trio.open_nursery() as n:
                n.start_soon(echo)
                for i in range(12 * DIM_NEVENTS):
                    await cli.send(i.to_bytes(4, "big"))
                    assert await cli.recv(100) == i.to_bytes(4, "big")
                n.cancel_scope.cancel()

    run(main)
    shown = b.dev.coalesce.show()
    assert shown["adaptive-rx"]
    assert shown["queues"][0]["profile"] == 0
    assert shown["queues"][0]["tune-state"] == "parking-on-top"
    assert b.dev.coalesce.params(0) == NET_DIM_RX_EQE_PROFILES[0]
    assert b.dev.coalesce.queues[0].interrupts >= 12 * DIM_NEVENTS


class DimFeed:
    """Feeds a Dim one DIM_NEVENTS window at a time, at chosen rates."""

    def __init__(self) -> None:
        self.dim = Dim()
        self.t = 0.0
        self.events = self.packets = self.nbytes = 0
        self.dim.net_dim(self.sample())  # DIM_START_MEASURE: opens the first window

    def sample(self) -> DimSample:
        return DimSample(self.t, self.events, self.packets, self.nbytes)

    def window(self, bpms: int, ppms: int = 100, ms: int = 10) -> int:
        """A 10 ms window at *bpms*/*ppms*; the profile after it."""
        self.t += ms / 1000
        self.events += DIM_NEVENTS
        self.nbytes += bpms * ms
        self.packets += ppms * ms
        if self.dim.net_dim(self.sample()):
            # A new profile: the next interrupt opens the next window.
            self.events += 1
            assert not self.dim.net_dim(self.sample())
        return self.dim.profile_ix

    def run(self, bpms_of_profile: list[int], windows: int) -> list[int]:
        """*windows* windows whose rate follows the profile in force: the profiles."""
        return [self.window(bpms_of_profile[self.dim.profile_ix]) for _ in range(windows)]


def test_dim_waits_for_a_full_window_of_events() -> None:
    f = DimFeed()
    f.t, f.events, f.nbytes = 0.01, DIM_NEVENTS - 1, 10**6
    assert not f.dim.net_dim(f.sample())
    assert f.dim.profile_ix == NET_DIM_DEF_PROFILE_EQE and f.dim.prev_stats == DimStats()
    f.events += 1
    assert f.dim.net_dim(f.sample())  # the first window: bytes where there were none
    assert f.dim.prev_stats == DimStats(ppms=0, bpms=100_000, epms=7)


def test_dim_rising_throughput_climbs_and_parks_on_top() -> None:
    """Bulk: every longer hold moves more bytes; net_dim climbs to the last profile and stays."""
    f = DimFeed()
    bulk = [100_000, 200_000, 300_000, 400_000, 500_000]
    # The first window leaves parking to the left; profile 0 is worse, so it turns.
    assert f.run(bulk, 6) == [0, 1, 2, 3, 4, 4]
    assert f.dim.tune_state == DIM_PARKING_ON_TOP
    assert f.run(bulk, 20) == [4] * 20
    # Within 10 % is the same traffic: still parked.
    assert [f.window(b) for b in (460_000, 540_000, 500_000)] == [4, 4, 4]
    assert f.dim.tune_state == DIM_PARKING_ON_TOP


def test_dim_drop_in_bpms_turns_and_parks_on_the_best_profile() -> None:
    """Throughput peaks at profile 2: one step past it is worse, net_dim turns back and parks."""
    f = DimFeed()
    peak = [100_000, 200_000, 400_000, 300_000, 200_000]
    assert f.run(peak, 6) == [0, 1, 2, 3, 2, 2]
    assert f.dim.tune_state == DIM_PARKING_ON_TOP
    assert f.run(peak, 10) == [2] * 10


def test_dim_packets_then_events_break_a_bytes_tie() -> None:
    prev = DimStats(ppms=100, bpms=1000, epms=10)
    # 10 % apart is not significant: only more than that is.
    assert net_dim_stats_compare(DimStats(100, 1100, 10), prev) == DIM_STATS_SAME
    assert net_dim_stats_compare(DimStats(120, 1050, 10), prev) == DIM_STATS_BETTER
    assert net_dim_stats_compare(DimStats(80, 1050, 10), prev) == DIM_STATS_WORSE
    assert net_dim_stats_compare(DimStats(100, 1000, 5), prev) == DIM_STATS_BETTER  # fewer events
    assert net_dim_stats_compare(DimStats(100, 1000, 20), prev) == DIM_STATS_WORSE
    assert net_dim_stats_compare(DimStats(100, 800, 5), prev) == DIM_STATS_WORSE  # bytes first


def test_dim_request_response_returns_to_profile_0() -> None:
    """After bulk parks on top, a latency-bound pattern (longer holds, fewer bytes) walks back."""
    f = DimFeed()
    f.run([100_000, 200_000, 300_000, 400_000, 500_000], 6)
    assert f.dim.profile_ix == 4
    rr = [5_000, 4_000, 1_000, 600, 300]
    assert f.run(rr, 7) == [3, 2, 1, 0, 0, 0, 0]
    assert f.dim.tune_state == DIM_PARKING_ON_TOP
    # A fresh queue with only request/response traffic goes straight there.
    g = DimFeed()
    assert g.run(rr, 5) == [0, 0, 0, 0, 0]
    assert g.dim.moderation() == NET_DIM_RX_EQE_PROFILES[0]


def test_dim_parks_tired_after_many_steps_then_moves_again() -> None:
    """Throughput that only falls makes every step look wrong: after 10 steps net_dim rests."""
    f = DimFeed()
    bpms = 10**9
    profiles = []
    for _ in range(11):
        bpms = bpms * 8 // 10
        profiles.append(f.window(bpms))
    # Ping-pong between two profiles, each step undone by the next.
    assert profiles == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1]
    assert f.dim.tune_state == DIM_PARKING_TIRED and f.dim.tired == 10
    for left in range(9, 0, -1):
        bpms = bpms * 8 // 10
        assert f.window(bpms) == 1 and f.dim.tired == left
    # Rested: it leaves parking towards profile 0.
    assert f.window(bpms) == 0 and f.dim.tune_state == DIM_GOING_LEFT


def test_adaptive_rx_on_starts_net_dim_afresh() -> None:
    c = Coalesce(1, lambda q: (0, 0))
    c.set({"adaptive-rx": True})
    c.queues[0].dim.profile_ix = 4
    assert c.params(0) == NET_DIM_RX_EQE_PROFILES[4]
    c.set({"adaptive-rx": False, "rx-usecs": 20})
    assert c.params(0) == (20, 0)
    c.set({"adaptive-rx": True})
    assert c.params(0) == NET_DIM_RX_EQE_PROFILES[NET_DIM_DEF_PROFILE_EQE]


def test_coalesce_settings_are_validated_all_or_nothing() -> None:
    c = Coalesce(1, lambda q: (0, 0))
    assert c.adaptive_rx  # the default, as mlx5 and ice have it
    c.set({"rx-usecs": 50, "rx-frames": 8, "adaptive-rx": False})
    for bad in ({"rx-usecs": -1}, {"rx-frames": 10**6}, {"tx-usecs": 1},
                {"adaptive-rx": 1}, {"rx-usecs": "5"}, {"rx-usecs": 10, "rx-frames": -2}):
        with pytest.raises(CoalesceError):
            c.set(bad)
    assert c.params(0) == (50, 8) and not c.adaptive_rx


def test_busy_poll_takes_frames_off_the_ring_itself() -> None:
    """SO_BUSY_POLL: a blocked recv polls the queue; the frames it takes are counted."""
    _, a, b = make_pair()
    # The interrupt would wait 10 ms: only busy polling can be faster.
    b.dev.coalesce.set({"adaptive-rx": False, "rx-usecs": 10000})
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
