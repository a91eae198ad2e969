"""The emulated NIC: rings, NAPI/net_rx_action, NetDevice RX/TX (ustack/nic/).

Link queues are fakes with scripted frames; the softirq clock is injected, so
budget and time-limit accounting are exact and deterministic. Frames written
with a completed checksum are parsed by scapy as an independent oracle.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ustack.buffer import (
    CHECKSUM_NONE,
    CHECKSUM_PARTIAL,
    CHECKSUM_UNNECESSARY,
    Packet,
)
from ustack.checksum import internet_checksum, pseudo_header_sum
from ustack.link.tap import TapQueue
from ustack.nic.device import NetDevice
from ustack.nic.features import GRO, GSO, TSO, TX_CSUM, FeatureError, Features
from ustack.nic.napi import Napi, Softnet
from ustack.nic.ring import Ring
from ustack.nic.virtio import (
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
)
from ustack.sysctl import Sysctl

MAC = bytes.fromhex("020000000002")
PEER = bytes.fromhex("020000000001")
VNET = struct.Struct("<BBHHHH")


# ---- Ring ---------------------------------------------------------------------------------


def test_ring_push_until_full_then_refuses() -> None:
    """push stores up to size items, then returns False and stores nothing."""
    r: Ring[int] = Ring(3)
    assert not r and len(r) == 0 and r.free == 3
    assert [r.push(i) for i in range(3)] == [True, True, True]
    assert len(r) == 3 and r.free == 0 and r
    assert r.push(99) is False
    assert r.drain() == [0, 1, 2]


def test_ring_pop_is_fifo_and_empty_pop_raises() -> None:
    """pop returns the oldest descriptor; an empty ring raises IndexError."""
    r: Ring[str] = Ring(4)
    for s in "abc":
        r.push(s)
    assert r.pop() == "a"
    r.push("d")
    assert [r.pop(), r.pop(), r.pop()] == ["b", "c", "d"]
    with pytest.raises(IndexError):
        r.pop()


def test_ring_drain_empties_and_frees_every_slot() -> None:
    """drain takes everything oldest first and leaves the ring reusable."""
    r: Ring[int] = Ring(2)
    r.push(1)
    r.push(2)
    assert r.drain() == [1, 2]
    assert len(r) == 0 and r.free == 2 and not r
    assert r.drain() == []
    assert r.push(3)


@pytest.mark.parametrize("size", [0, -1])
def test_ring_size_must_be_positive(size: int) -> None:
    """A ring needs at least one descriptor."""
    with pytest.raises(ValueError):
        Ring(size)


# ---- Softnet / net_rx_action -------------------------------------------------------------


class FakeWork:
    """A queue with *backlog* frames; each poll does min(budget, backlog) and logs it."""

    def __init__(self, name: str, backlog: float, log: list[tuple[str, int]],
                 tick: Callable[[], None] | None = None) -> None:
        self.name = name
        self.backlog = backlog
        self.log = log
        self.tick = tick
        self.completed = 0

    def poll(self, budget: int) -> int:
        work = int(min(budget, self.backlog))
        self.backlog -= work
        self.log.append((self.name, budget))
        if self.tick is not None:
            self.tick()
        return work

    def napi(self, weight: int = 64) -> Napi:
        n = Napi(self.name, self.poll, weight)
        n.on_complete = self.on_complete
        return n

    def on_complete(self) -> None:
        self.completed += 1


def softnet(**knobs: int) -> Softnet:
    s = Sysctl()
    for name, value in knobs.items():
        s.set(f"net.core.{name}", value)
    return Softnet(s)


def rounds_until_idle(sn: Softnet, limit: int = 50) -> int:
    """Run net_rx_action rounds until nothing is left; return how many ran."""
    for n in range(1, limit + 1):
        if not sn.net_rx_action():
            return n
    raise AssertionError("the poll list never emptied")


def test_napi_schedule_lists_once_and_raises_softirq_on_first() -> None:
    """napi_schedule is idempotent; the softirq is raised when the list becomes non-empty."""
    sn = softnet()
    raised: list[int] = []
    sn.raise_softirq = lambda: raised.append(1)
    log: list[tuple[str, int]] = []
    a, b = FakeWork("a", 0, log).napi(), FakeWork("b", 0, log).napi()
    sn.napi_schedule(a)
    sn.napi_schedule(a)
    sn.napi_schedule(b)
    assert list(sn.poll_list) == [a, b]
    assert a.scheduled and b.scheduled
    assert raised == [1]


def test_poll_using_less_than_weight_completes() -> None:
    """work < weight: napi_complete_done, on_complete runs, instance leaves the list."""
    sn = softnet()
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 10, log)
    n = w.napi(64)
    sn.napi_schedule(n)
    assert sn.net_rx_action() is False
    assert log == [("a", 64)]
    assert sn.stat["processed"] == 10
    assert sn.stat["time_squeeze"] == 0
    assert w.completed == 1
    assert not n.scheduled and not sn.poll_list
    sn.napi_schedule(n)  # can be scheduled again after completing
    assert list(sn.poll_list) == [n]


def test_poll_using_whole_weight_is_requeued_and_polled_again() -> None:
    """work == weight: repolled in the next round (once per round, as since Linux 4.0)."""
    sn = softnet()
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 100, log)
    n = w.napi(64)
    sn.napi_schedule(n)
    assert sn.net_rx_action() is True
    assert log == [("a", 64)] and w.completed == 0 and n.scheduled
    assert sn.stat["time_squeeze"] == 0  # budget and time were not exhausted
    assert sn.net_rx_action() is False
    assert log == [("a", 64), ("a", 64)]
    assert sn.stat["processed"] == 100
    assert w.completed == 1
    assert not n.scheduled


def test_exact_multiple_of_weight_needs_an_empty_poll_to_complete() -> None:
    """A queue holding exactly weight frames is repolled once and completes with 0."""
    sn = softnet()
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 64, log)
    sn.napi_schedule(w.napi(64))
    assert rounds_until_idle(sn) == 2
    assert log == [("a", 64), ("a", 64)]
    assert sn.stat["processed"] == 64
    assert w.completed == 1


def test_full_weight_poll_goes_behind_the_others() -> None:
    """Every listed instance is polled once per round; repolls keep their order."""
    sn = softnet()
    log: list[tuple[str, int]] = []
    a = FakeWork("a", 128, log)
    b = FakeWork("b", 64, log)
    c = FakeWork("c", 5, log)
    for w in (a, b, c):
        sn.napi_schedule(w.napi(64))
    assert rounds_until_idle(sn) == 3
    assert [name for name, _ in log] == ["a", "b", "c", "a", "b", "a"]
    assert sn.stat["processed"] == 128 + 64 + 5
    assert (a.completed, b.completed, c.completed) == (1, 1, 1)


def test_instances_scheduled_during_a_round_wait_for_the_next_and_go_before_repolls() -> None:
    """list_splice order: unpolled, then newly scheduled, then repolled instances."""
    sn = softnet()
    log: list[tuple[str, int]] = []
    late = FakeWork("late", 1, log).napi(64)
    a = FakeWork("a", 100, log)
    b = FakeWork("b", 1, log, tick=lambda: sn.napi_schedule(late))
    sn.napi_schedule(na := a.napi(64))
    sn.napi_schedule(b.napi(64))
    assert sn.net_rx_action() is True
    assert [name for name, _ in log] == ["a", "b"]
    assert list(sn.poll_list) == [late, na]


def test_netdev_budget_exhaustion_is_one_time_squeeze() -> None:
    """Budget spent with work left: stop, count time_squeeze once, keep the list."""
    sn = softnet(netdev_budget=100)
    log: list[tuple[str, int]] = []
    a = FakeWork("a", float("inf"), log)
    b = FakeWork("b", float("inf"), log)
    na, nb = a.napi(64), b.napi(64)
    sn.napi_schedule(na)
    sn.napi_schedule(nb)
    assert sn.net_rx_action() is True
    # a: 64 (budget 36 left), b: 64 (budget -28) -> stop with both still listed.
    assert log == [("a", 64), ("b", 64)]
    assert sn.stat["processed"] == 128
    assert sn.stat["time_squeeze"] == 1
    assert list(sn.poll_list) == [na, nb]
    assert na.scheduled and nb.scheduled
    assert a.completed == b.completed == 0


def test_each_squeezed_round_counts_once() -> None:
    """time_squeeze grows by exactly one per round that ran out with work left."""
    sn = softnet(netdev_budget=50)
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 64 * 3 + 10, log)
    sn.napi_schedule(w.napi(64))
    results = [sn.net_rx_action() for _ in range(4)]
    assert results == [True, True, True, False]
    assert sn.stat["time_squeeze"] == 3
    assert sn.stat["processed"] == 64 * 3 + 10
    assert w.completed == 1


def test_budget_spent_on_the_last_instance_is_a_squeeze() -> None:
    """The kernel counts time_squeeze whenever a poll leaves the budget at 0, even last."""
    sn = softnet(netdev_budget=10)
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 10, log)
    sn.napi_schedule(w.napi(64))
    assert sn.net_rx_action() is False
    assert sn.stat["time_squeeze"] == 1
    assert w.completed == 1


def test_budget_is_checked_after_every_poll_not_only_full_ones() -> None:
    """A completing poll that spends the budget still ends the round if others wait."""
    sn = softnet(netdev_budget=30)
    log: list[tuple[str, int]] = []
    a = FakeWork("a", 40, log)
    b = FakeWork("b", 1, log)
    sn.napi_schedule(a.napi(64))
    nb = b.napi(64)
    sn.napi_schedule(nb)
    assert sn.net_rx_action() is True
    assert log == [("a", 64)]
    assert sn.stat["time_squeeze"] == 1
    assert list(sn.poll_list) == [nb]


def test_netdev_budget_usecs_exhaustion_is_one_time_squeeze() -> None:
    """The round stops when the injected clock passes start + netdev_budget_usecs."""
    s = Sysctl()
    s.set("net.core.netdev_budget_usecs", 100)
    now = [1000.0]

    def tick() -> None:
        now[0] += 60e-6

    sn = Softnet(s, clock=lambda: now[0])
    log: list[tuple[str, int]] = []
    a = FakeWork("a", float("inf"), log, tick)
    b = FakeWork("b", float("inf"), log, tick)
    na, nb = a.napi(64), b.napi(64)
    sn.napi_schedule(na)
    sn.napi_schedule(nb)
    assert sn.net_rx_action() is True
    # a at +60 us (within 100 us), b at +120 us (past it): stop after b.
    assert log == [("a", 64), ("b", 64)]
    assert sn.stat["processed"] == 128
    assert sn.stat["time_squeeze"] == 1
    assert list(sn.poll_list) == [na, nb]


def test_time_limit_is_not_hit_when_the_clock_stands_still() -> None:
    """With a frozen clock only the frame budget ends a round."""
    now = [5.0]
    sn = Softnet(Sysctl(), clock=lambda: now[0])
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 200, log)
    sn.napi_schedule(w.napi(64))
    assert rounds_until_idle(sn) == 4  # 64 + 64 + 64 + 8
    assert sn.stat["processed"] == 200
    assert sn.stat["time_squeeze"] == 0


def test_post_round_hooks_run_every_round() -> None:
    """post_round hooks run once per round: empty, completed and squeezed rounds alike."""
    sn = softnet(netdev_budget=64)
    calls: list[str] = []
    sn.post_round.append(lambda: calls.append("gro"))
    sn.post_round.append(lambda: calls.append("tx"))
    sn.net_rx_action()  # nothing scheduled
    assert calls == ["gro", "tx"]
    log: list[tuple[str, int]] = []
    sn.napi_schedule(FakeWork("a", 100, log).napi(64))
    assert sn.net_rx_action() is True  # squeezed
    assert sn.net_rx_action() is False  # completes
    assert calls == ["gro", "tx"] * 3


def test_dev_weight_caps_the_napi_weight() -> None:
    """Each poll gets min(napi.weight, net.core.dev_weight) as its budget."""
    sn = softnet(dev_weight=16)
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 40, log)
    sn.napi_schedule(w.napi(64))
    assert rounds_until_idle(sn) == 3
    assert log == [("a", 16), ("a", 16), ("a", 16)]
    assert sn.stat["processed"] == 40


def test_smaller_napi_weight_wins_over_dev_weight() -> None:
    """A driver weight below dev_weight is used as is."""
    sn = softnet()
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 10, log)
    sn.napi_schedule(w.napi(8))
    assert rounds_until_idle(sn) == 2
    assert log == [("a", 8), ("a", 8)]


def test_dev_weight_change_applies_to_the_next_round() -> None:
    """dev_weight is read per round, so a sysctl write takes effect at once."""
    s = Sysctl()
    sn = Softnet(s)
    log: list[tuple[str, int]] = []
    w = FakeWork("a", 1000, log)
    n = w.napi(64)
    s.set("net.core.netdev_budget", 64)
    sn.napi_schedule(n)
    sn.net_rx_action()
    s.set("net.core.dev_weight", 4)
    sn.net_rx_action()
    assert log[0] == ("a", 64)
    assert log[1] == ("a", 4)


# ---- NetDevice ----------------------------------------------------------------------------


class FakeLink:
    """One link queue: frames to deliver, frames written, and a switch to fail writes."""

    def __init__(self, frames: list[bytes] | None = None) -> None:
        self.rx: deque[bytes] = deque(frames or [])
        self.written: list[bytes] = []
        self.accept = True

    def read_frame(self) -> bytes | None:
        return self.rx.popleft() if self.rx else None

    def read_frames(self, limit: int) -> list[bytes]:
        frames = []
        while self.rx and len(frames) < limit:
            frames.append(self.rx.popleft())
        return frames

    def write_frame(self, frame: bytes | bytearray | memoryview) -> bool:
        if not self.accept:
            return False
        self.written.append(bytes(frame))
        return True

    async def wait_readable(self) -> None:  # pragma: no cover - not used here
        raise AssertionError("unit tests never wait")


def eth(payload: bytes = b"", ethertype: int = 0x0800) -> bytes:
    return PEER + MAC + struct.pack("!H", ethertype) + payload


def device(nq: int = 1, *, ring_size: int = 8, mtu: int = 1500, vnet: int = 0,
           sysctl: Sysctl | None = None, hw: frozenset[str] | None = None,
           ) -> tuple[NetDevice, list[FakeLink], list[Packet]]:
    links = [FakeLink() for _ in range(nq)]
    if hw is None:
        # A vnet header lets the kernel finish checksums and take super-frames.
        hw = frozenset({TX_CSUM, TSO}) if vnet else frozenset()
    dev = NetDevice("eth9", MAC, links, Softnet(sysctl or Sysctl()), mtu=mtu,
                    ring_size=ring_size, vnet_hdr_len=vnet, hw_features=hw)
    got: list[Packet] = []
    dev.rx_handler = got.append
    return dev, links, got


def test_device_rejects_bad_configuration() -> None:
    """No queues or an MTU outside 68..65535 is refused."""
    with pytest.raises(ValueError):
        NetDevice("x", MAC, [], Softnet(Sysctl()))
    with pytest.raises(ValueError):
        NetDevice("x", MAC, [FakeLink()], Softnet(Sysctl()), mtu=67)


def test_device_napi_weight_comes_from_dev_weight() -> None:
    """Each queue's NAPI instance starts with net.core.dev_weight."""
    s = Sysctl()
    s.set("net.core.dev_weight", 32)
    dev, _, _ = device(3, sysctl=s)
    assert [n.weight for n in dev.napi] == [32, 32, 32]
    assert len({n.name for n in dev.napi}) == 3


def test_dma_rx_fills_the_ring_and_drops_beyond_it() -> None:
    """Frames finding the RX ring full are dropped: rx_fifo_errors, rx_dropped, queue drops."""
    dev, links, got = device(ring_size=4)
    links[0].rx.extend(eth(bytes([i]) * 50) for i in range(6))
    assert dev.dma_rx(0) == 4  # one ring's worth per call
    assert len(links[0].rx) == 2
    assert dev.dma_rx(0) == 0  # ring still full: both remaining frames are lost
    assert not links[0].rx
    stats = dev.ethtool_stats()
    assert stats["rx_fifo_errors"] == 2
    assert stats["rx_dropped"] == 2
    assert stats["rx_queue_0_drops"] == 2
    assert got == []


def test_napi_poll_delivers_at_most_budget_frames_in_order() -> None:
    """napi_poll hands up to budget frames to rx_handler with mac_off and queue set."""
    dev, links, got = device(2, ring_size=16)
    frames = [eth(bytes([i]) * (46 + i)) for i in range(10)]
    links[1].rx.extend(frames)
    assert dev.napi_poll(1, 4) == 4
    assert [bytes(p.frame()) for p in got] == frames[:4]
    assert all(p.queue == 1 and p.mac_off == p.head for p in got)
    assert dev.napi_poll(1, 64) == 6
    assert [bytes(p.frame()) for p in got] == frames
    stats = dev.ethtool_stats()
    assert stats["rx_packets"] == 10 == stats["rx_queue_1_packets"]
    assert stats["rx_bytes"] == sum(map(len, frames)) == stats["rx_queue_1_bytes"]
    assert stats["rx_queue_0_packets"] == 0
    assert dev.napi_poll(1, 64) == 0


def test_rx_through_net_rx_action_completes_the_queue() -> None:
    """Scheduling the queue's NAPI and running rounds delivers everything and completes."""
    dev, links, got = device(ring_size=256)
    links[0].rx.extend(eth(b"x" * 46) for _ in range(100))
    completed: list[int] = []
    dev.napi[0].on_complete = lambda: completed.append(1)
    dev.softnet.napi_schedule(dev.napi[0])
    assert dev.softnet.net_rx_action() is True  # 64 frames: the whole weight
    assert len(got) == 64 and not completed
    assert dev.softnet.net_rx_action() is False
    assert len(got) == 100
    assert dev.softnet.stat["processed"] == 100
    assert completed == [1]


@pytest.mark.parametrize("length,ok", [(13, False), (14, True), (1518, True), (1519, False)])
def test_runts_and_oversize_frames_are_length_errors(length: int, ok: bool) -> None:
    """<14 bytes or > mtu+18 (Ethernet + VLAN) is counted as rx_length_errors, not delivered."""
    dev, links, got = device()
    frame = (eth(b"") + bytes(2000))[:length]
    links[0].rx.append(frame)
    assert dev.napi_poll(0, 64) == 1
    stats = dev.ethtool_stats()
    if ok:
        assert [bytes(p.frame()) for p in got] == [frame]
        assert stats["rx_length_errors"] == 0 and stats["rx_packets"] == 1
    else:
        assert got == []
        assert stats["rx_length_errors"] == 1
        assert stats["rx_errors"] == 1
        assert stats["rx_packets"] == 0 and stats["rx_bytes"] == 0
        assert stats["rx_queue_0_drops"] == 1


def test_oversize_limit_follows_the_mtu() -> None:
    """With MTU 9000 a 9018-byte frame passes and 9019 is refused."""
    dev, links, got = device(mtu=9000)
    links[0].rx.extend([eth(bytes(9004)), eth(bytes(9005))])
    dev.napi_poll(0, 64)
    assert [len(p) for p in got] == [9018]
    assert dev.ethtool_stats()["rx_length_errors"] == 1


def test_bad_frames_between_good_ones_do_not_stop_delivery() -> None:
    """A runt in the middle is dropped; the frames around it still arrive."""
    dev, links, got = device()
    good1, good2 = eth(b"a" * 46), eth(b"b" * 46)
    links[0].rx.extend([good1, b"\x00" * 5, good2])
    dev.napi_poll(0, 64)
    assert [bytes(p.frame()) for p in got] == [good1, good2]


def tx_packet(frame: bytes, queue: int = 0) -> Packet:
    pkt = Packet.alloc(frame)
    pkt.mac_off = pkt.head
    pkt.queue = queue
    return pkt


def test_tx_writes_frames_in_order_and_counts() -> None:
    """start_xmit queues; flush_tx writes in order and counts tx_packets/tx_bytes."""
    dev, links, _ = device()
    frames = [eth(bytes([i]) * (100 + i)) for i in range(5)]
    for f in frames:
        dev.start_xmit(tx_packet(f))
    assert links[0].written == []  # nothing leaves before the doorbell
    dev.flush_tx()
    assert links[0].written == frames
    stats = dev.ethtool_stats()
    assert stats["tx_packets"] == 5 == stats["tx_queue_0_packets"]
    assert stats["tx_bytes"] == sum(map(len, frames)) == stats["tx_queue_0_bytes"]
    dev.flush_tx()
    assert len(links[0].written) == 5  # an empty ring writes nothing


def test_tx_queue_is_chosen_by_pkt_queue() -> None:
    """pkt.queue selects the TX queue (modulo the queue count)."""
    dev, links, _ = device(2)
    a, b, c = eth(b"a" * 50), eth(b"b" * 50), eth(b"c" * 50)
    dev.start_xmit(tx_packet(a, 0))
    dev.start_xmit(tx_packet(b, 1))
    dev.start_xmit(tx_packet(c, 3))
    dev.flush_tx()
    assert links[0].written == [a]
    assert links[1].written == [b, c]
    stats = dev.ethtool_stats()
    assert stats["tx_queue_0_packets"] == 1 and stats["tx_queue_1_packets"] == 2


def test_short_frames_are_padded_to_60_bytes() -> None:
    """A frame shorter than ETH_ZLEN leaves as 60 bytes, zero-padded, counted as 60."""
    dev, links, _ = device()
    short = eth(b"\x01\x02")
    dev.start_xmit(tx_packet(short))
    dev.flush_tx()
    assert links[0].written == [short + bytes(60 - len(short))]
    assert dev.ethtool_stats()["tx_bytes"] == 60


def test_padding_of_a_trimmed_packet_is_zeros() -> None:
    """A packet whose tail is before the buffer end is padded with zeros, not old bytes.

    Padding with stale buffer contents leaks memory onto the wire (Etherleak,
    CVE-2003-0001); the kernel pads with skb_put_padto, which zeroes.
    """
    dev, links, _ = device()
    buf = bytearray(eth(b"\x01\x02") + b"\xee" * 40)
    pkt = Packet(buf, 0, tail=16)
    pkt.mac_off = 0
    dev.start_xmit(pkt)
    dev.flush_tx()
    assert links[0].written == [eth(b"\x01\x02") + bytes(44)]


def test_failed_write_counts_tx_dropped() -> None:
    """write_frame returning False counts tx_dropped/tx_errors and the queue's drops."""
    dev, links, _ = device()
    links[0].accept = False
    dev.start_xmit(tx_packet(eth(b"x" * 50)))
    dev.start_xmit(tx_packet(eth(b"y" * 50)))
    dev.flush_tx()
    stats = dev.ethtool_stats()
    assert stats["tx_dropped"] == 2 == stats["tx_queue_0_drops"]
    assert stats["tx_errors"] == 2
    assert stats["tx_packets"] == 0 and stats["tx_bytes"] == 0


def test_full_tx_ring_rings_the_doorbell_instead_of_dropping() -> None:
    """start_xmit on a full ring writes the batch first; nothing is lost, order is kept."""
    dev, links, _ = device(ring_size=2)
    # BQL would stop the queue before the ring fills; here the ring is the limit.
    dev.dql[0].set_limits(limit_min=1 << 20)
    frames = [eth(bytes([i]) * 50) for i in range(5)]
    for f in frames[:3]:
        dev.start_xmit(tx_packet(f))
    assert links[0].written == frames[:2]
    for f in frames[3:]:
        dev.start_xmit(tx_packet(f))
    dev.flush_tx()
    assert links[0].written == frames
    stats = dev.ethtool_stats()
    assert stats["tx_dropped"] == 0 and stats["tx_packets"] == 5


def test_softirq_round_end_flushes_tx() -> None:
    """The device registers flush_tx as a post_round hook (doorbell per round)."""
    dev, links, _ = device()
    f = eth(b"z" * 50)
    dev.start_xmit(tx_packet(f))
    dev.softnet.net_rx_action()
    assert links[0].written == [f]


def test_ethtool_stats_keys() -> None:
    """ethtool -S: device totals, then rx_queue_N_* and tx_queue_N_* for every queue."""
    dev, _, _ = device(2)
    keys = list(dev.ethtool_stats())
    for name in ("rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "rx_length_errors",
                 "rx_fifo_errors", "rx_missed_errors", "tx_packets", "tx_bytes",
                 "tx_errors", "tx_dropped"):
        assert name in keys
    per_queue = [k for k in keys if "_queue_" in k]
    assert per_queue == [
        "rx_queue_0_packets", "rx_queue_0_bytes", "rx_queue_0_drops", "rx_queue_0_interrupts",
        "rx_queue_0_napi_polls", "rx_queue_0_busy_poll_packets",
        "rx_queue_1_packets", "rx_queue_1_bytes", "rx_queue_1_drops", "rx_queue_1_interrupts",
        "rx_queue_1_napi_polls", "rx_queue_1_busy_poll_packets",
        "tx_queue_0_packets", "tx_queue_0_bytes", "tx_queue_0_drops",
        "tx_queue_1_packets", "tx_queue_1_bytes", "tx_queue_1_drops",
    ]
    assert all(v == 0 for v in dev.ethtool_stats().values())


def test_rings_view_reports_sizes_and_fill() -> None:
    """rings() shows ring sizes and per-queue RX occupancy."""
    dev, links, _ = device(2, ring_size=8)
    links[1].rx.extend(eth(b"q" * 46) for _ in range(3))
    dev.dma_rx(1)
    assert dev.rings() == {"rx": 8, "tx": 8, "rx_queue_0_fill": 0, "rx_queue_1_fill": 3}


# ---- virtio-net header --------------------------------------------------------------------


def vnet_hdr(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
             csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) + b"\x00\x00"


def test_rx_vnet_needs_csum_marks_checksum_unnecessary() -> None:
    """NEEDS_CSUM from the kernel: ip_summed CHECKSUM_UNNECESSARY; header not in the frame."""
    dev, links, got = device(vnet=12)
    frame = eth(b"p" * 46)
    links[0].rx.append(vnet_hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6) + frame)
    dev.napi_poll(0, 64)
    (pkt,) = got
    assert pkt.ip_summed == CHECKSUM_UNNECESSARY
    assert bytes(pkt.frame()) == frame
    assert pkt.mac_off == 12 == pkt.head
    assert pkt.csum_offset == 6
    assert pkt.gso_size == 0
    assert dev.ethtool_stats()["rx_bytes"] == len(frame)


def test_rx_vnet_data_valid_marks_checksum_unnecessary() -> None:
    """DATA_VALID also means the checksum need not be verified."""
    dev, links, got = device(vnet=12)
    links[0].rx.append(vnet_hdr(VIRTIO_NET_HDR_F_DATA_VALID) + eth(b"p" * 46))
    dev.napi_poll(0, 64)
    assert got[0].ip_summed == CHECKSUM_UNNECESSARY


def test_rx_vnet_without_flags_leaves_checksum_to_software() -> None:
    """No flags: CHECKSUM_NONE, the stack verifies."""
    dev, links, got = device(vnet=12)
    links[0].rx.append(vnet_hdr() + eth(b"p" * 46))
    dev.napi_poll(0, 64)
    assert got[0].ip_summed == CHECKSUM_NONE
    assert got[0].gso_size == 0


def test_rx_vnet_gso_super_frame_is_accepted_with_gso_fields() -> None:
    """A TCPv4 GSO frame larger than the MTU is delivered with gso_type/gso_size set."""
    dev, links, got = device(vnet=12)
    frame = eth(bytes(20 + 20 + 3000))
    links[0].rx.append(vnet_hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54,
                                1448, 34, 16) + frame)
    dev.napi_poll(0, 64)
    (pkt,) = got
    assert pkt.gso_type == VIRTIO_NET_HDR_GSO_TCPV4
    assert pkt.gso_size == 1448
    assert pkt.ip_summed == CHECKSUM_UNNECESSARY
    assert len(pkt) == len(frame)
    assert dev.ethtool_stats()["rx_length_errors"] == 0


def test_rx_vnet_runt_is_measured_without_the_header() -> None:
    """The 12-byte header does not count toward the 14-byte minimum."""
    dev, links, got = device(vnet=12)
    links[0].rx.append(vnet_hdr() + eth(b"")[:13])
    dev.napi_poll(0, 64)
    assert got == []
    assert dev.ethtool_stats()["rx_length_errors"] == 1


def udp_frame() -> tuple[bytes, int, int]:
    """An Ether/IPv4/UDP frame with a correct IP checksum and UDP checksum 0.

    Returns the frame, the transport offset in it, and the UDP length.
    """
    p = (Ether(src=MAC, dst=PEER) / IP(src="10.0.0.2", dst="10.0.0.1")
         / UDP(sport=4000, dport=5000, chksum=0) / (b"payload!" * 5 + b"odd"))
    return bytes(p), 34, 8 + 43


def tcp_frame() -> tuple[bytes, int, int]:
    p = (Ether(src=MAC, dst=PEER) / IP(src="10.0.0.2", dst="10.0.0.1")
         / TCP(sport=40000, dport=80, seq=1, ack=2, flags="PA", chksum=0) / b"GET / HTTP/1.0\r\n")
    return bytes(p), 34, 20 + 16


def partial_packet(frame: bytes, l4: int, l4_len: int, proto: int, field: int) -> Packet:
    """A CHECKSUM_PARTIAL packet whose checksum field holds the pseudo-header sum."""
    pkt = tx_packet(frame)
    base = pkt.head
    pseudo = pseudo_header_sum(bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]), proto, l4_len)
    struct.pack_into("!H", pkt.buf, base + l4 + field, pseudo)
    pkt.ip_summed = CHECKSUM_PARTIAL
    pkt.csum_start = base + l4
    pkt.csum_offset = field
    pkt.net_off = base + 14
    pkt.trans_off = base + l4
    return pkt


def test_tx_without_vnet_completes_a_partial_udp_checksum() -> None:
    """No offload: skb_checksum_help finishes the UDP checksum; scapy verifies it."""
    frame, l4, l4_len = udp_frame()
    dev, links, _ = device()
    dev.start_xmit(partial_packet(frame, l4, l4_len, 17, 6))
    dev.flush_tx()
    (out,) = links[0].written
    parsed = Ether(out)
    got = parsed[UDP].chksum
    del parsed[UDP].chksum
    assert got == Ether(bytes(parsed))[UDP].chksum
    assert out[:l4 + 6] == frame[:l4 + 6] and out[l4 + 8:] == frame[l4 + 8:]


def test_tx_without_vnet_completes_a_partial_tcp_checksum() -> None:
    """No offload: the TCP checksum is completed and matches scapy's."""
    frame, l4, l4_len = tcp_frame()
    dev, links, _ = device()
    dev.start_xmit(partial_packet(frame, l4, l4_len, 6, 16))
    dev.flush_tx()
    (out,) = links[0].written
    parsed = Ether(out)
    got = parsed[TCP].chksum
    del parsed[TCP].chksum
    assert got == Ether(bytes(parsed))[TCP].chksum


def test_tx_vnet_partial_checksum_is_offloaded_in_the_header() -> None:
    """With a vnet header, NEEDS_CSUM and csum_start relative to the frame start are sent."""
    frame, l4, l4_len = tcp_frame()
    dev, links, _ = device(vnet=12)
    pkt = partial_packet(frame, l4, l4_len, 6, 16)
    pseudo_field = bytes(pkt.buf[pkt.head + l4 + 16 : pkt.head + l4 + 18])
    dev.start_xmit(pkt)
    dev.flush_tx()
    (out,) = links[0].written
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(out)
    assert (flags, gso_type, hdr_len, gso_size) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0)
    assert (csum_start, csum_offset) == (l4, 16)
    assert out[10:12] == b"\x00\x00"
    eth_part = out[12:]
    assert eth_part[l4 + 16 : l4 + 18] == pseudo_field  # left for the kernel to finish
    stats = dev.ethtool_stats()
    assert stats["tx_bytes"] == len(frame)
    # Finishing the sum the way the header says gives the checksum scapy computes.
    finished = bytearray(eth_part)
    struct.pack_into("!H", finished, csum_start + csum_offset,
                     internet_checksum(finished[csum_start:]))
    parsed = Ether(bytes(finished))
    got = parsed[TCP].chksum
    del parsed[TCP].chksum
    assert got == Ether(bytes(parsed))[TCP].chksum


def test_tx_vnet_plain_packet_gets_an_empty_header() -> None:
    """A packet without offload gets an all-zero virtio-net header."""
    dev, links, _ = device(vnet=12)
    frame = eth(b"n" * 60)
    dev.start_xmit(tx_packet(frame))
    dev.flush_tx()
    assert links[0].written == [bytes(12) + frame]


def test_tx_vnet_short_frame_is_padded_after_the_header() -> None:
    """Padding counts only the Ethernet frame: 12 + 60 bytes go out."""
    dev, links, _ = device(vnet=12)
    short = eth(b"s")
    dev.start_xmit(tx_packet(short))
    dev.flush_tx()
    (out,) = links[0].written
    assert len(out) == 72
    assert out[12:] == short + bytes(60 - len(short))
    assert dev.ethtool_stats()["tx_bytes"] == 60


def test_tx_vnet_gso_packet_describes_the_segmentation() -> None:
    """A TSO super-frame carries gso_type, gso_size and the header length (vnet header)."""
    frame, l4, l4_len = tcp_frame()
    dev, links, _ = device(vnet=12)
    pkt = partial_packet(frame, l4, l4_len, 6, 16)
    pkt.gso_size = 5  # the 16-byte payload is more than one segment
    pkt.gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    dev.start_xmit(pkt)
    dev.flush_tx()
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(
        links[0].written[0])
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert (gso_type, gso_size) == (VIRTIO_NET_HDR_GSO_TCPV4, 5)
    assert hdr_len == l4 + 20  # Ethernet + IP + TCP headers
    assert len(links[0].written) == 1 and dev.ethtool_stats()["tx_tso_packets"] == 1
    assert (csum_start, csum_offset) == (l4, 16)


def test_without_tso_a_super_segment_is_cut_in_software() -> None:
    """tso off: the device runs GSO and writes MSS frames, counted as gso packets/segments."""
    frame, l4, l4_len = tcp_frame()
    dev, links, _ = device(vnet=12)
    dev.features.set({TSO: False})
    pkt = partial_packet(frame, l4, l4_len, 6, 16)
    pkt.gso_size = 5
    pkt.gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    dev.start_xmit(pkt)
    dev.flush_tx()
    assert len(links[0].written) == 4  # 16 bytes in 5-byte segments
    stats = dev.ethtool_stats()
    assert stats["tx_gso_packets"] == 1 and stats["tx_gso_segments"] == 4
    payload = b""
    for out in links[0].written:
        flags, gso_type, *_ = VNET.unpack_from(out)
        assert gso_type == VIRTIO_NET_HDR_GSO_NONE and flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
        payload += Ether(out[12:])[Raw].load
    assert payload == b"GET / HTTP/1.0\r\n"


def test_tx_checksum_off_means_complete_checksums_on_the_wire() -> None:
    """tx-checksumming off: a partial checksum is finished before the frame leaves."""
    frame, l4, l4_len = tcp_frame()
    dev, links, _ = device(vnet=12)
    changed = dev.features.set({TX_CSUM: False})
    assert changed == {TX_CSUM, TSO}  # TSO depends on it and goes too
    dev.start_xmit(partial_packet(frame, l4, l4_len, 6, 16))
    dev.flush_tx()
    (out,) = links[0].written
    assert VNET.unpack_from(out)[0] == 0
    parsed = Ether(out[12:])
    got = parsed[TCP].chksum
    del parsed[TCP].chksum
    assert got == Ether(bytes(parsed))[TCP].chksum


def test_feature_rules() -> None:
    """Unknown, unavailable and dependent features are refused as ethtool -K does."""
    f = Features(frozenset())
    assert GRO in f and GSO in f and TSO not in f
    with pytest.raises(FeatureError):
        f.set({"warp-drive": True})
    with pytest.raises(FeatureError):
        f.set({TSO: True})  # needs a link that takes super-frames
    g = Features(frozenset({TX_CSUM, TSO}))
    with pytest.raises(FeatureError):
        g.set({TX_CSUM: False, TSO: True})
    seen: list[set[str]] = []
    g.on_change = seen.append
    assert g.set({GRO: False}) == {GRO} and GRO not in seen[-1]
    assert g.set({GRO: False}) == set() and len(seen) == 1


def test_gro_off_delivers_frames_one_by_one() -> None:
    """With generic-receive-offload off, the GRO contexts pass every frame straight up."""
    dev, links, got = device(ring_size=64)
    dev.features.set({GRO: False})
    assert not dev.gro[0].enabled
    frames = [bytes(Ether(dst=MAC, src=PEER) / IP(src="10.0.0.1", dst="10.0.0.2")
                    / TCP(sport=1, dport=2, seq=1 + 100 * i, flags="A") / (b"x" * 100))
              for i in range(4)]
    links[0].rx.extend(frames)
    dev.napi_poll(0, 64)
    assert len(got) == 4


def _bulk_super_segment(payload_len: int, mss: int) -> Packet:
    """A CHECKSUM_PARTIAL TCP super-segment of *payload_len* bytes, gso_size *mss*.

    With timestamps, unless the payload is tiny: then its last segment makes
    a frame shorter than the Ethernet minimum.
    """
    payload = bytes((i * 7 + 3) & 0xFF for i in range(payload_len))
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))] if payload_len > 9 else []
    frame = bytes(Ether(src=MAC, dst=PEER) / IP(src="10.0.0.2", dst="10.0.0.1", id=9)
                  / TCP(sport=40000, dport=80, seq=0xFFFFFF00, ack=2, flags="PA", chksum=0,
                        options=opts)
                  / payload)
    pkt = partial_packet(frame, 34, len(frame) - 34, 6, 16)
    pkt.gso_size = mss
    pkt.gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    return pkt


@pytest.mark.parametrize("vnet", [0, 12])
@pytest.mark.parametrize("tx_csum", [True, False])
@pytest.mark.parametrize("payload_len, mss", [(4 * 1448, 1448), (3 * 1448 + 1, 1448),
                                              (1000, 333), (17, 4), (9, 4)])
@pytest.mark.parametrize("accept", [True, False])
def test_software_gso_bare_frames_equal_the_per_segment_path(
    vnet: int, tx_csum: bool, payload_len: int, mss: int, accept: bool,
) -> None:
    """Segments written as bare frames are the bytes and counts of Packet segments.

    A capture at the wire (tap_tx) needs a Packet per segment, so it takes
    the per-segment path: both ways must give the same wire and counters,
    short last segments padded, failed writes counted.
    """
    results = []
    for capture in (False, True):
        dev, links, _ = device(vnet=vnet)
        if vnet:
            dev.features.set({TSO: False, TX_CSUM: tx_csum})
        if capture:
            dev.tap_tx = lambda view: None
        links[0].accept = accept
        pkt = _bulk_super_segment(payload_len, mss)
        done: list[Packet] = []
        pkt.destructor = done.append
        dev.start_xmit(pkt)
        dev.flush_tx()
        assert done == [pkt]  # completed once
        assert dev.dql[0].num_queued == dev.dql[0].num_completed
        results.append((links[0].written, dev.ethtool_stats()))
    assert results[0] == results[1]
    written, stats = results[0]
    segments = -(-payload_len // mss)
    assert stats["tx_gso_segments"] == segments
    assert stats["tx_packets"] == (segments if accept else 0)
    assert stats["tx_errors"] == (0 if accept else segments)
    if accept:
        # The payload comes back whole, and scapy finds every checksum right.
        data = b""
        for out in written:
            flags = VNET.unpack_from(out)[0] if vnet else 0
            e = Ether(out[vnet:])
            if not flags:
                ip_sum, tcp_sum = e[IP].chksum, e[TCP].chksum
                del e[IP].chksum, e[TCP].chksum
                e = Ether(bytes(e))
                assert (e[IP].chksum, e[TCP].chksum) == (ip_sum, tcp_sum)
            data += bytes(e[TCP].payload)[: e[IP].len - 20 - e[TCP].dataofs * 4]
        thlen = (pkt.buf[pkt.trans_off + 12] >> 4) * 4
        assert data == bytes(pkt.buf[pkt.trans_off + thlen : pkt.tail])


class CountingLink(FakeLink):
    """A FakeLink that counts its reads and reads in bursts, as TapQueue does."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_frames(self, limit: int) -> list[bytes]:
        self.reads += 1
        return super().read_frames(limit)


def test_napi_poll_does_not_read_again_right_after_an_empty_dma() -> None:
    """The interrupt's DMA found the link empty: its poll does not read, the next poll does."""
    link = CountingLink()
    dev = NetDevice("eth9", MAC, [link], Softnet(Sysctl()), ring_size=8)
    got: list[Packet] = []
    dev.rx_handler = got.append
    link.rx.extend(eth(bytes([i]) * 50) for i in range(3))
    assert dev.dma_rx(0) == 3 and link.reads == 1  # the interrupt's DMA: 3, then EAGAIN
    assert dev.napi_poll(0, 2) == 2 and link.reads == 1  # nothing new to read
    link.rx.append(eth(b"x" * 50))
    assert dev.napi_poll(0, 2) == 2 and link.reads == 2  # the repoll reads
    assert dev.napi_poll(0, 2) == 0 and link.reads == 3
    assert len(got) == 4
    # A full ring is no empty link: the poll after it reads.
    link.rx.extend(eth(bytes([i]) * 50) for i in range(8))
    assert dev.dma_rx(0) == 8 and link.reads == 4
    dev.napi_poll(0, 8)
    assert link.reads == 5
    stats = dev.ethtool_stats()
    assert stats["rx_packets"] == 12 and stats["rx_fifo_errors"] == 0


def test_tap_queue_reads_frames_in_bursts_up_to_a_limit() -> None:
    """read_frames returns whole frames, at most *limit*, fewer when the queue runs dry."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        b.setblocking(False)
        queue = TapQueue(b.fileno(), "tap9", 0)
        frames = [eth(bytes([i]) * (50 + i)) for i in range(3)]
        for f in frames:
            a.send(f)
        assert queue.read_frames(2) == frames[:2]
        assert queue.read_frames(8) == frames[2:]  # then EAGAIN
        assert queue.read_frames(8) == []
        assert queue.read_frame() is None
