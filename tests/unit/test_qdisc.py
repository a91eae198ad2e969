"""Egress qdiscs, BQL and TX completion on the device (ustack/nic/qdisc.py, dql.py, device.py).

A NetDevice on a recording link with a manual clock; a tx ``rate`` impairment
makes the wire slower than the stack, so frames really wait: BQL stops the
queue and the qdisc holds the backlog. Time moves only when a test advances
it, so every outcome is exact.
"""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from ustack.buffer import Packet
from ustack.nic.device import NetDevice
from ustack.nic.impair import Impair
from ustack.nic.napi import Softnet
from ustack.nic.qdisc import FqCodel, PfifoFast, skb_priority
from ustack.sysctl import Sysctl

MAC = bytes.fromhex("020000000001")
RATE = 100_000  # bytes/s: a 1000-byte frame takes 10 ms on the wire


class Link:
    """A link queue that records what is written (or refuses it)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.accept = True

    def read_frame(self) -> bytes | None:
        return None

    def read_frames(self, limit: int) -> list[bytes]:
        return []

    def write_frame(self, frame: bytes | bytearray | memoryview) -> bool:
        if not self.accept:
            return False
        self.written.append(bytes(frame))
        return True

    async def wait_readable(self) -> None:
        raise AssertionError("not used")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tracker:
    """Makes packets whose destructor counts its calls per packet."""

    def __init__(self) -> None:
        self.pkts: list[Packet] = []
        self.calls: Counter[int] = Counter()

    def destructor(self, pkt: Packet) -> None:
        self.calls[next(i for i, p in enumerate(self.pkts) if p is pkt)] += 1

    def pkt(self, frame: bytes) -> Packet:
        p = Packet.alloc(frame)
        p.mac_off = p.head
        p.destructor = self.destructor
        self.pkts.append(p)
        return p

    def done(self) -> int:
        assert all(n == 1 for n in self.calls.values()), self.calls
        return len(self.calls)


def make_dev(kind: str = "pfifo_fast", txqueuelen: int = 1000, **impair: object
             ) -> tuple[NetDevice, Link, Clock]:
    sysctl = Sysctl()
    sysctl.set("net.core.default_qdisc", kind)
    link, clock = Link(), Clock()
    dev = NetDevice("eth0", MAC, [link], Softnet(sysctl), txqueuelen=txqueuelen, clock=clock)
    if impair:
        dev.set_impair(None, Impair(**impair))  # type: ignore[arg-type]
    return dev, link, clock


def udp_frame(tag: int, tos: int = 0, sport: int = 1000, size: int = 1000,
              proto: int = 17) -> bytes:
    """An Ethernet + IPv4 + UDP frame of *size* bytes whose payload starts with *tag*."""
    payload = struct.pack("!I", tag) + bytes(size - 14 - 20 - 8 - 4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + 8 + len(payload), 0, 0, 64, proto, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0)
    return MAC + MAC + b"\x08\x00" + ip + udp + payload


def tags(link: Link) -> list[int]:
    return [struct.unpack_from("!I", f, 42)[0] for f in link.written]


def advance(dev: NetDevice, clock: Clock, until: float) -> None:
    """Run the impaired wire's releases (TX completions) in time order up to *until*."""
    while True:
        deadline = dev.impair_deadline()
        if deadline is None or deadline > until:
            break
        clock.t = max(clock.t, deadline)
        dev.impair_poll(clock.t)
    clock.t = until


def drain(dev: NetDevice, clock: Clock) -> None:
    advance(dev, clock, clock.t + 3600)


def assert_adds_up(dev: NetDevice, enqueued: int) -> None:
    """sent + dropped + backlog == enqueued, and backlog is what the qdisc really holds."""
    qd = dev.qdiscs[0]
    assert qd.packets + qd.drops + qd.qlen == enqueued
    if isinstance(qd, PfifoFast):
        held = [p for band in qd.bands for p in band]
    else:
        assert isinstance(qd, FqCodel)
        held = [p for flow in qd.flows.values() for p, _ in flow.q]
    assert qd.qlen == len(held) and qd.backlog == sum(map(len, held))


# ---- pfifo_fast ---------------------------------------------------------------------------


def test_tos_picks_the_band_like_rt_tos2priority() -> None:
    t = Tracker()
    assert [skb_priority(t.pkt(udp_frame(0, tos))) for tos in (0, 0x10, 0x08, 0x18)] == \
        [0, 6, 2, 4]
    arp = Packet.alloc(MAC + MAC + b"\x08\x06" + bytes(28))
    assert skb_priority(arp) == 0


def test_pfifo_fast_serves_bands_in_priority_order() -> None:
    """Interactive (TOS 0x10) before best effort before bulk (TOS 0x08), FIFO within a band."""
    dev, link, clock = make_dev(rate=RATE)
    t = Tracker()
    dev.start_xmit(t.pkt(udp_frame(0)))  # onto the ring; BQL (limit 0) stops the queue
    assert dev.tx_stopped[0]
    for tag, tos in ((1, 0x08), (2, 0x08), (3, 0), (4, 0), (5, 0x10), (6, 0x10)):
        dev.start_xmit(t.pkt(udp_frame(tag, tos)))
    qd = dev.qdiscs[0]
    assert isinstance(qd, PfifoFast)
    assert [len(b) for b in qd.bands] == [2, 2, 2] and qd.qlen == 6 and qd.backlog == 6000
    dev.flush_tx()
    drain(dev, clock)
    assert tags(link) == [0, 5, 6, 3, 4, 1, 2]
    assert qd.packets == 7 and qd.bytes == 7000 and qd.qlen == qd.backlog == 0
    assert t.done() == 7
    assert_adds_up(dev, 7)


def test_pfifo_fast_tail_drops_at_txqueuelen_and_follows_its_changes() -> None:
    dev, link, clock = make_dev(txqueuelen=4, rate=RATE)
    t = Tracker()
    for tag in range(11):  # one goes to the ring, four wait, six are dropped
        dev.start_xmit(t.pkt(udp_frame(tag)))
        assert_adds_up(dev, tag + 1)
    qd = dev.qdiscs[0]
    assert qd.qlen == 4 and qd.drops == 6
    assert sorted(t.calls) == list(range(5, 11))  # the dropped ones are freed at once
    dev.set_txqueuelen(2)  # ip link set txqueuelen 2: the two newest go
    assert qd.limit == 2 and qd.qlen == 2 and qd.drops == 8 and qd.backlog == 2000
    assert_adds_up(dev, 11)
    dev.flush_tx()
    drain(dev, clock)
    assert tags(link) == [0, 1, 2]
    assert t.done() == 11
    assert_adds_up(dev, 11)
    with pytest.raises(ValueError, match="txqueuelen"):
        dev.set_txqueuelen(0)
    assert dev.txqueuelen == 2


def test_clean_wire_bypasses_the_empty_qdisc() -> None:
    """No rate limit: after BQL's first adaptation frames go straight to the ring."""
    dev, link, _ = make_dev()
    t = Tracker()
    n = 0
    for _round in range(20):
        for _ in range(8):
            dev.start_xmit(t.pkt(udp_frame(n)))
            n += 1
        dev.flush_tx()  # end of the softirq round: the doorbell
        assert dev.qdiscs[0].qlen == 0 and not dev.tx_stopped[0]
    assert tags(link) == list(range(n))
    qd = dev.qdiscs[0]
    assert qd.packets == n and qd.bytes == 1000 * n and qd.drops == 0
    assert dev.dql[0].limit >= 8000 and dev.dql[0].inflight == 0
    assert t.done() == n


# ---- fq_codel -----------------------------------------------------------------------------


def first_position(kind: str) -> int:
    """Where a sparse flow's one frame leaves, queued behind 100 frames of a bulk flow."""
    dev, link, clock = make_dev(kind, rate=RATE)
    t = Tracker()
    for tag in range(101):
        dev.start_xmit(t.pkt(udp_frame(tag, sport=1000)))
    dev.start_xmit(t.pkt(udp_frame(999, sport=2000, size=200)))
    dev.flush_tx()
    drain(dev, clock)
    assert t.done() == 102
    assert_adds_up(dev, 102)
    return tags(link).index(999)


def test_fq_codel_keeps_a_sparse_flow_out_of_a_bulk_flows_queue() -> None:
    qd = FqCodel()
    t = Tracker()
    assert qd.classify(t.pkt(udp_frame(0, sport=1000))) != qd.classify(
        t.pkt(udp_frame(0, sport=2000)))
    assert first_position("fq_codel") <= 2  # a new flow is served first
    assert first_position("pfifo_fast") == 101  # FIFO: behind all of the bulk


def standing_queue(kind: str) -> tuple[NetDevice, Tracker, int]:
    """A flow sending twice the line rate for 4 s: a standing queue builds."""
    dev, link, clock = make_dev(kind, rate=RATE)
    t = Tracker()
    n = 0
    for i in range(800):  # a frame every 5 ms, the wire takes one per 10 ms
        advance(dev, clock, i * 0.005)
        dev.start_xmit(t.pkt(udp_frame(n)))
        dev.flush_tx()
        n += 1
    return dev, t, n


def test_codel_drops_from_the_head_under_a_standing_queue() -> None:
    fifo, _, n = standing_queue("pfifo_fast")
    assert fifo.qdiscs[0].drops == 0 and fifo.qdiscs[0].qlen > 300
    dev, t, n = standing_queue("fq_codel")
    qd = dev.qdiscs[0]
    assert isinstance(qd, FqCodel)
    assert qd.drops > 100 and qd.drop_overlimit == 0
    assert qd.qlen < fifo.qdiscs[0].qlen / 3
    assert_adds_up(dev, n)
    # Dropped frames are freed (destructor) at once; none twice.
    assert len(t.calls) == qd.drops + qd.packets - dev.dql[0].inflight // 1000
    show = qd.show()
    assert show["maxpacket"] == 1000 and show["new_flow_count"] >= 1
    assert show["ecn_mark"] == 0 and show["target_us"] == 5000 and show["interval_us"] == 100000


def test_fq_codel_over_limit_drops_from_the_fattest_flow() -> None:
    qd = FqCodel(limit=10)
    t = Tracker()
    for i in range(9):
        qd.enqueue(t.pkt(udp_frame(i, sport=1000)), 0.0)
    qd.enqueue(t.pkt(udp_frame(100, sport=2000)), 0.0)
    qd.enqueue(t.pkt(udp_frame(101, sport=2000)), 0.0)  # 11 > limit: the fat flow pays
    # Half of the fat flow's 9000 bytes: five frames from its head.
    assert qd.drop_overlimit == 5 == qd.drops and qd.qlen == 6
    assert sorted(t.calls) == [0, 1, 2, 3, 4]
    out = [qd.dequeue(0.0) for _ in range(6)]
    assert qd.dequeue(0.0) is None and qd.qlen == qd.backlog == 0
    assert sorted(t.pkts.index(p) for p in out if p is not None) == [5, 6, 7, 8, 9, 10]


# ---- BQL on the device --------------------------------------------------------------------


def test_bql_grows_under_load_and_keeps_the_backlog_in_the_qdisc() -> None:
    dev, t, _ = standing_queue("pfifo_fast")
    dql = dev.dql[0]
    held = dev.tx_impair[0].held()
    assert dql.limit >= 1000  # grew from 0 when the wire ran dry while frames waited
    # The wire (ring + impairment) holds only what BQL allows; the rest is in the qdisc.
    assert held * 1000 <= dql.limit + 1000 and dql.inflight <= dql.limit + 1000
    assert dev.qdiscs[0].qlen > 10 * held


def test_bql_shrinks_when_the_queue_stays_busy_with_slack() -> None:
    """Big bursts on a clean wire grow the limit; a steady, slower wire then shrinks it."""
    dev, _, clock = make_dev()
    t = Tracker()
    for _ in range(5):
        for tag in range(64):
            dev.start_xmit(t.pkt(udp_frame(tag)))
        dev.flush_tx()
    grown = dev.dql[0].limit
    assert grown >= 32_000
    dev.set_impair(None, Impair(rate=RATE))
    for i in range(600):  # 3 s of a frame every 5 ms
        advance(dev, clock, 1.0 + i * 0.005)
        dev.start_xmit(t.pkt(udp_frame(i)))
        dev.flush_tx()
    assert dev.dql[0].limit < grown / 4


# ---- the TX completion hook -----------------------------------------------------------------


def test_destructor_runs_once_when_the_frame_leaves() -> None:
    dev, link, _ = make_dev()
    t = Tracker()
    dev.start_xmit(t.pkt(udp_frame(1)))
    assert not t.calls  # still on the ring
    dev.flush_tx()
    assert len(link.written) == 1 and t.done() == 1
    dev.flush_tx()
    assert t.done() == 1


def test_destructor_waits_for_the_impaired_wire_to_release_the_frame() -> None:
    dev, link, clock = make_dev(delay=0.010)
    t = Tracker()
    dev.start_xmit(t.pkt(udp_frame(1)))
    dev.flush_tx()
    assert not link.written and not t.calls and dev.dql[0].inflight == 1000
    advance(dev, clock, 0.009)
    assert not t.calls
    advance(dev, clock, 0.010)
    assert len(link.written) == 1 and t.done() == 1 and dev.dql[0].inflight == 0


@pytest.mark.parametrize("path", ["link_refuses", "impair_loss", "impair_limit", "replace",
                                  "reimpair"])
def test_destructor_runs_once_on_every_drop_below_the_stack(path: str) -> None:
    impair = {"link_refuses": {}, "impair_loss": {"loss": 1.0},
              "impair_limit": {"rate": RATE, "limit": 1}, "replace": {"rate": RATE},
              "reimpair": {"delay": 1.0}}[path]
    dev, link, clock = make_dev(**impair)
    dev.dql[0].set_limits(limit_min=3000)  # three frames reach the wire, the rest wait
    link.accept = path != "link_refuses"
    t = Tracker()
    for tag in range(6):
        dev.start_xmit(t.pkt(udp_frame(tag)))
    dev.flush_tx()
    if path == "replace":
        dev.set_qdisc("fq_codel")  # qdisc_graft: the old qdisc's frames are freed
        assert dev.qdiscs[0].kind == "fq_codel" and dev.qdiscs[0].qlen == 0
    if path == "reimpair":
        dev.set_impair(None, None)  # what the old wire held goes out now
    drain(dev, clock)
    assert t.done() == 6
    assert dev.dql[0].inflight == 0
    stats = dev.ethtool_stats()
    if path == "link_refuses":
        assert stats["tx_dropped"] == 6
    elif path == "impair_loss":
        assert stats["tx_impair_dropped"] == 6 and not link.written
    elif path == "impair_limit":
        assert stats["tx_impair_limit_drops"] > 0
    elif path == "reimpair":
        assert len(link.written) == 6


def tcp_super_segment(payload: int, mss: int, t: Tracker) -> Packet:
    """A TCP/IPv4 super-segment (gso_size = mss) that the device must cut in software."""
    frame = bytearray(udp_frame(0, size=14 + 20 + 20 + payload, proto=6))
    struct.pack_into("!HHIIBBHHH", frame, 34, 1000, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    pkt = t.pkt(bytes(frame))
    pkt.net_off = pkt.head + 14
    pkt.trans_off = pkt.head + 34
    pkt.gso_size = mss
    pkt.gso_segs = -(-payload // mss)
    pkt.gso_type = 1
    return pkt


def test_gso_super_segment_completes_once_after_its_last_segment() -> None:
    dev, link, clock = make_dev(rate=RATE)
    t = Tracker()
    dev.start_xmit(tcp_super_segment(4000, 1000, t))
    dev.flush_tx()
    assert dev.counters["tx_gso_segments"] == 4
    advance(dev, clock, 0.035)  # three of four segments are out
    assert len(link.written) == 3 and not t.calls
    drain(dev, clock)
    assert len(link.written) == 4 and t.done() == 1 and dev.dql[0].inflight == 0


def test_gso_failure_frees_the_packet() -> None:
    """A super-segment that is not TCP cannot be cut: dropped, destructor run, BQL completed."""
    dev, link, _ = make_dev()
    t = Tracker()
    pkt = t.pkt(udp_frame(0, size=3000))
    pkt.gso_size = 1000
    pkt.net_off, pkt.trans_off = pkt.head + 14, pkt.head + 34
    dev.start_xmit(pkt)
    dev.flush_tx()
    assert not link.written and t.done() == 1
    assert dev.counters["tx_dropped"] == 1 and dev.dql[0].inflight == 0


def test_qdisc_kind_comes_from_default_qdisc_and_unknown_is_refused() -> None:
    dev, _, _ = make_dev("fq_codel")
    assert dev.qdiscs[0].kind == "fq_codel" and dev.qdiscs[0].show()["quantum"] == 1514
    with pytest.raises(ValueError, match="unknown qdisc"):
        dev.set_qdisc("netem")
    assert dev.qdiscs[0].kind == "fq_codel"
    with pytest.raises(Exception, match="default_qdisc"):
        Sysctl().set("net.core.default_qdisc", "sfq")
