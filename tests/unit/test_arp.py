"""ARP and the neighbour table (ustack/net/arp.py).

Packet formats are checked against scapy as an independent oracle; the NUD
state machine is driven with explicit ``now`` values, so every test is
deterministic and takes no wall time.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP

from ustack.buffer import Packet
from ustack.net.arp import (
    ETH_BROADCAST,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_OTHERHOST,
    STATE_NAMES,
    ArpTable,
)
from ustack.stats import Stats
from ustack.sysctl import Sysctl

OUR_MAC = bytes.fromhex("020000000001")
OUR_IP = bytes([10, 0, 0, 1])
PEER_MAC = bytes.fromhex("020000000002")
PEER_IP = bytes([10, 0, 0, 2])
OTHER_MAC = bytes.fromhex("020000000003")
P = "net.ipv4.neigh.default."


def make(seed: int = 1, **knobs: int) -> ArpTable:
    """A table for 10.0.0.1 with the given net.ipv4.neigh.default.* overrides."""
    sysctl = Sysctl()
    for name, value in knobs.items():
        sysctl.set(P + name, value)
    return ArpTable(sysctl, Stats(), OUR_MAC, OUR_IP, seed=seed)


def pkt(tag: int, size: int = 100) -> Packet:
    return Packet(bytes([tag]) * size)


def scapy_arp(op: int, hwsrc: bytes, psrc: bytes, pdst: bytes, hwdst: bytes = b"\0" * 6) -> bytes:
    """An Ethernet/IPv4 ARP packet built by scapy, not by the code under test."""
    return bytes(
        ARP(
            op=op,
            hwsrc=":".join(f"{b:02x}" for b in hwsrc),
            psrc=".".join(map(str, psrc)),
            hwdst=":".join(f"{b:02x}" for b in hwdst),
            pdst=".".join(map(str, pdst)),
        )
    )


def reply_from_peer(mac: bytes = PEER_MAC, ip: bytes = PEER_IP) -> bytes:
    return scapy_arp(2, mac, ip, OUR_IP, OUR_MAC)


def request_from_peer(target: bytes = OUR_IP, mac: bytes = PEER_MAC, ip: bytes = PEER_IP) -> bytes:
    return scapy_arp(1, mac, ip, target)


def check(t: ArpTable) -> None:
    """Invariants that hold after every call."""
    assert t.stats.arp_cache["entries"] == len(t)
    for n in (t.lookup(bytes([10, 0, 0, i])) for i in range(256)):
        if n is not None:
            assert n.queue_bytes == sum(len(p) for p in n.queue)


def reachable(t: ArpTable, now: float = 0.0) -> None:
    """Resolve PEER_IP and answer: the entry is REACHABLE at *now*."""
    assert t.resolve(PEER_IP, pkt(0), now) is None
    assert t.arp_rcv(reply_from_peer(), now)
    t.out.clear()
    t.ready.clear()
    assert t.lookup(PEER_IP).state == NUD_REACHABLE


# -- formats (scapy as oracle) -------------------------------------------------


def test_state_names_are_kernel_values() -> None:
    assert STATE_NAMES[0x01] == "INCOMPLETE"
    assert STATE_NAMES[0x02] == "REACHABLE"
    assert STATE_NAMES[0x04] == "STALE"
    assert STATE_NAMES[0x08] == "DELAY"
    assert STATE_NAMES[0x10] == "PROBE"
    assert STATE_NAMES[0x20] == "FAILED"
    assert STATE_NAMES[0x40] == "NOARP"
    assert STATE_NAMES[0x80] == "PERMANENT"


def test_request_format() -> None:
    t = make()
    assert t.resolve(PEER_IP, pkt(1), 0.0) is None
    assert len(t.out) == 1
    dst, data = t.out[0]
    assert dst == ETH_BROADCAST
    assert len(data) == 28
    a = ARP(data)
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 1)
    assert a.hwsrc == "02:00:00:00:00:01"
    assert a.psrc == "10.0.0.1"
    assert a.hwdst == "00:00:00:00:00:00"
    assert a.pdst == "10.0.0.2"


def test_reply_to_request_for_our_ip() -> None:
    t = make()
    assert t.arp_rcv(request_from_peer(), 3.0, PACKET_BROADCAST) is True
    assert len(t.out) == 1
    dst, data = t.out[0]
    assert dst == PEER_MAC  # unicast back to the asker
    a = ARP(data)
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 2)
    assert a.hwsrc == "02:00:00:00:00:01"
    assert a.psrc == "10.0.0.1"
    assert a.hwdst == "02:00:00:00:00:02"
    assert a.pdst == "10.0.0.2"
    # neigh_event_ns: the asker is learned, STALE (a request proves nothing).
    n = t.lookup(PEER_IP)
    assert n is not None and n.mac == PEER_MAC and n.state == NUD_STALE
    assert t.stats.arp_cache["rcv_probes_mcast"] == 1
    assert t.stats.arp_cache["rcv_probes_ucast"] == 0
    # A unicast request (a kernel re-probing us) counts as ucast.
    assert t.arp_rcv(request_from_peer(), 4.0, PACKET_HOST)
    assert t.stats.arp_cache["rcv_probes_ucast"] == 1
    assert len(t.out) == 2
    check(t)


def test_request_with_ethernet_padding() -> None:
    t = make()
    assert t.arp_rcv(request_from_peer() + b"\0" * 18, 0.0, PACKET_BROADCAST)
    assert len(t.out) == 1
    assert t.lookup(PEER_IP) is not None


def test_memoryview_input() -> None:
    t = make()
    frame = bytearray(b"\xee" * 14 + request_from_peer())
    assert t.arp_rcv(memoryview(frame)[14:], 0.0, PACKET_BROADCAST)
    assert len(t.out) == 1
    assert t.lookup(PEER_IP).mac == PEER_MAC


def test_silent_for_other_targets() -> None:
    t = make()
    assert t.arp_rcv(request_from_peer(target=bytes([10, 0, 0, 99])), 0.0, PACKET_BROADCAST)
    assert t.out == []
    assert len(t) == 0  # an overheard request does not create an entry
    assert t.stats.arp_cache["rcv_probes_mcast"] == 0


def test_gratuitous_format() -> None:
    t = make()
    t.gratuitous()
    assert len(t.out) == 1
    dst, data = t.out[0]
    assert dst == ETH_BROADCAST
    a = ARP(data)
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 1)
    assert a.hwsrc == "02:00:00:00:00:01"
    assert a.psrc == a.pdst == "10.0.0.1"
    assert a.hwdst == "00:00:00:00:00:00"


def test_probe_for_our_address_is_defended_not_learned() -> None:
    # RFC 5227 2.1.1: a probe has sender IP 0.0.0.0.
    t = make()
    assert t.arp_rcv(scapy_arp(1, PEER_MAC, bytes(4), OUR_IP), 0.0, PACKET_BROADCAST)
    assert len(t) == 0
    assert len(t.out) == 1
    dst, data = t.out[0]
    a = ARP(data)
    assert dst == PEER_MAC and a.op == 2 and a.psrc == "10.0.0.1" and a.pdst == "0.0.0.0"
    assert a.hwdst == "02:00:00:00:00:02"
    # A probe for someone else's address: nothing.
    t.out.clear()
    assert t.arp_rcv(scapy_arp(1, PEER_MAC, bytes(4), PEER_IP), 0.0, PACKET_BROADCAST)
    assert t.out == [] and len(t) == 0


# -- resolution ---------------------------------------------------------------


def test_incomplete_to_reachable_releases_queue_in_order() -> None:
    t = make()
    pkts = [pkt(i) for i in range(3)]
    for i, p in enumerate(pkts):
        assert t.resolve(PEER_IP, p, 0.1 * i) is None
    assert len(t.out) == 1  # only the creating resolve sends a request
    n = t.lookup(PEER_IP)
    assert n.state == NUD_INCOMPLETE and n.queue == pkts and n.queue_bytes == 300
    assert t.ready == []
    assert t.arp_rcv(reply_from_peer(), 0.5, PACKET_HOST)
    assert t.ready == [(PEER_MAC, p) for p in pkts]
    assert n.state == NUD_REACHABLE and n.mac == PEER_MAC and n.queue == []
    assert n.confirmed == 0.5
    assert t.resolve(PEER_IP, pkt(9), 0.6) == PEER_MAC
    assert len(t.out) == 1  # no request for a reachable neighbour
    check(t)


def test_incomplete_to_failed_after_mcast_solicit() -> None:
    t = make()
    pkts = [pkt(1), pkt(2)]
    t.resolve(PEER_IP, pkts[0], 0.0)
    t.resolve(PEER_IP, pkts[1], 0.2)
    assert t.next_deadline() == 1.0  # retrans_time_ms
    t.timer(0.99)
    assert len(t.out) == 1
    t.timer(1.0)
    assert len(t.out) == 2
    assert t.next_deadline() == 2.0
    t.timer(2.0)
    assert len(t.out) == 3
    assert all(dst == ETH_BROADCAST for dst, _ in t.out)
    assert t.lookup(PEER_IP).state == NUD_INCOMPLETE and t.failed == []
    t.timer(3.0)
    n = t.lookup(PEER_IP)
    assert n.state == NUD_FAILED
    assert len(t.out) == 3  # mcast_solicit requests, no more
    assert t.failed == pkts
    assert n.queue == [] and n.queue_bytes == 0
    assert t.stats.arp_cache["res_failed"] == 1
    assert t.next_deadline() is None
    check(t)


def test_mcast_solicit_read_at_run_time() -> None:
    t = make(mcast_solicit=5)
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.sysctl.set(P + "retrans_time_ms", 200)
    now = 0.0
    while t.lookup(PEER_IP).state == NUD_INCOMPLETE:
        now = t.next_deadline()
        t.timer(now)
    assert len(t.out) == 5
    # The first retransmission still used the old 1 s, the rest the new 200 ms.
    assert now == pytest.approx(1.0 + 4 * 0.2)


def test_mcast_solicit_zero_fails_at_once() -> None:
    t = make(mcast_solicit=0)
    p = pkt(1)
    assert t.resolve(PEER_IP, p, 0.0) is None
    assert t.lookup(PEER_IP).state == NUD_FAILED
    assert t.out == [] and t.failed == [p]
    assert t.next_deadline() is None


def test_failed_entry_restarts_resolution() -> None:
    t = make(mcast_solicit=1)
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.timer(1.0)
    assert t.lookup(PEER_IP).state == NUD_FAILED
    t.out.clear()
    assert t.resolve(PEER_IP, pkt(2), 10.0) is None
    n = t.lookup(PEER_IP)
    assert n.state == NUD_INCOMPLETE and len(n.queue) == 1
    assert t.out and t.out[0][0] == ETH_BROADCAST
    assert t.next_deadline() == 11.0


def test_reachable_to_stale_after_random_reachable_time() -> None:
    t = make(seed=7)
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    assert 15.0 <= n.reachable_time < 45.0
    assert t.next_deadline() == pytest.approx(n.reachable_time)
    t.timer(n.reachable_time - 0.001)
    assert n.state == NUD_REACHABLE
    t.timer(n.reachable_time)
    assert n.state == NUD_STALE
    assert n.mac == PEER_MAC
    assert t.next_deadline() is None  # STALE has no timer; GC below gc_thresh1 is idle


def test_reachable_time_is_random_per_entry_and_seeded() -> None:
    values = set()
    for seed in range(8):
        t = make(seed=seed)
        reachable(t)
        values.add(t.lookup(PEER_IP).reachable_time)
    assert len(values) > 1
    assert all(15.0 <= v < 45.0 for v in values)
    a, b = make(seed=3), make(seed=3)
    reachable(a)
    reachable(b)
    assert a.lookup(PEER_IP).reachable_time == b.lookup(PEER_IP).reachable_time
    # Two entries of one table draw separately.
    t = make(seed=5)
    t.arp_rcv(request_from_peer(), 0.0)
    for i, ip in enumerate([PEER_IP, bytes([10, 0, 0, 3])]):
        t.resolve(ip, pkt(i), 0.0)
        t.arp_rcv(reply_from_peer(ip=ip), 0.0)
    assert t.lookup(PEER_IP).reachable_time != t.lookup(bytes([10, 0, 0, 3])).reachable_time


def test_confirm_extends_reachable() -> None:
    t = make()
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    rt = n.reachable_time
    t.confirm(PEER_IP, 10.0)
    t.timer(rt)
    assert n.state == NUD_REACHABLE
    assert t.next_deadline() == pytest.approx(10.0 + rt)
    t.timer(10.0 + rt)
    assert n.state == NUD_STALE


def test_reachable_in_use_goes_to_delay() -> None:
    # neigh_timer_handler: used within delay_first_probe_time -> DELAY, not STALE.
    t = make()
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    rt = n.reachable_time
    assert t.resolve(PEER_IP, pkt(1), rt - 1.0) == PEER_MAC
    t.timer(rt)
    assert n.state == NUD_DELAY
    assert t.next_deadline() == pytest.approx(rt + 5.0)


def test_stale_delay_confirm_reachable() -> None:
    t = make()
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    t.timer(n.reachable_time)
    assert n.state == NUD_STALE
    # A STALE entry is used at once, and checked after delay_first_probe_time.
    assert t.resolve(PEER_IP, pkt(1), 100.0) == PEER_MAC
    assert n.state == NUD_DELAY
    assert t.out == []
    assert t.resolve(PEER_IP, pkt(2), 101.0) == PEER_MAC
    assert t.next_deadline() == 105.0
    t.confirm(PEER_IP, 103.0)
    t.timer(105.0)
    assert n.state == NUD_REACHABLE
    assert t.out == []  # confirmed by the upper layer: no probe needed
    assert t.next_deadline() == pytest.approx(103.0 + n.reachable_time)


def test_stale_delay_probe_failed() -> None:
    t = make()
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    t.timer(n.reachable_time)
    assert t.resolve(PEER_IP, pkt(1), 100.0) == PEER_MAC
    t.timer(105.0)
    assert n.state == NUD_PROBE
    assert t.resolve(PEER_IP, pkt(2), 105.5) == PEER_MAC  # PROBE still sends
    for k, now in enumerate([105.0, 106.0, 107.0]):
        if k:
            t.timer(now)
        assert len(t.out) == k + 1
        dst, data = t.out[-1]
        assert dst == PEER_MAC  # unicast probes to the cached address
        a = ARP(data)
        assert a.op == 1 and a.pdst == "10.0.0.2" and a.hwdst == "00:00:00:00:00:00"
    assert n.state == NUD_PROBE
    assert t.next_deadline() == 108.0
    t.timer(108.0)
    assert n.state == NUD_FAILED
    assert len(t.out) == 3  # ucast_solicit
    assert t.stats.arp_cache["res_failed"] == 1
    assert t.failed == []  # nothing was queued in PROBE
    assert t.resolve(PEER_IP, pkt(3), 109.0) is None


def test_probe_answered_becomes_reachable() -> None:
    t = make()
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    t.timer(n.reachable_time)
    t.resolve(PEER_IP, pkt(1), 100.0)
    t.timer(105.0)
    assert n.state == NUD_PROBE
    assert t.arp_rcv(reply_from_peer(), 105.2, PACKET_HOST)
    assert n.state == NUD_REACHABLE
    assert t.next_deadline() == pytest.approx(105.2 + n.reachable_time)


def test_ucast_solicit_zero_fails_from_delay() -> None:
    t = make(ucast_solicit=0)
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    t.timer(n.reachable_time)
    t.resolve(PEER_IP, pkt(1), 100.0)
    t.timer(105.0)
    assert n.state == NUD_FAILED and t.out == []


def test_queue_bounded_by_bytes_drops_oldest() -> None:
    t = make(unres_qlen_bytes=250)
    pkts = [pkt(i, 100) for i in range(4)]
    for p in pkts:
        t.resolve(PEER_IP, p, 0.0)
    n = t.lookup(PEER_IP)
    assert n.queue == pkts[2:] and n.queue_bytes == 200
    assert t.stats.arp_cache["unresolved_discards"] == 2
    t.arp_rcv(reply_from_peer(), 0.1, PACKET_HOST)
    assert t.ready == [(PEER_MAC, p) for p in pkts[2:]]
    check(t)


def test_queue_keeps_one_oversized_packet() -> None:
    # __neigh_event_send empties the queue for a packet above the limit, then queues it.
    t = make(unres_qlen_bytes=150)
    a, b = pkt(1, 100), pkt(2, 200)
    t.resolve(PEER_IP, a, 0.0)
    t.resolve(PEER_IP, b, 0.0)
    assert t.lookup(PEER_IP).queue == [b]
    assert t.stats.arp_cache["unresolved_discards"] == 1


# -- learning -----------------------------------------------------------------


def test_unsolicited_reply_not_learned() -> None:
    t = make()  # arp_accept = 0, the kernel default
    assert t.arp_rcv(reply_from_peer(), 0.0, PACKET_HOST)
    assert len(t) == 0
    t.arp_accept = 1
    assert t.arp_rcv(reply_from_peer(), 0.0, PACKET_HOST)
    assert t.lookup(PEER_IP).state == NUD_REACHABLE


def test_gratuitous_updates_existing_entry_only() -> None:
    t = make()
    t.arp_rcv(request_from_peer(), 0.0, PACKET_BROADCAST)
    n = t.lookup(PEER_IP)
    garp = scapy_arp(1, OTHER_MAC, PEER_IP, PEER_IP)
    # Within locktime, but a gratuitous ARP always overrides.
    assert t.arp_rcv(garp, 0.1, PACKET_BROADCAST)
    assert n.mac == OTHER_MAC and n.state == NUD_STALE
    assert t.out[1:] == []  # no answer to a gratuitous ARP
    other = bytes([10, 0, 0, 7])
    assert t.arp_rcv(scapy_arp(1, OTHER_MAC, other, other), 0.2, PACKET_BROADCAST)
    assert t.lookup(other) is None


def test_locktime_keeps_first_answer() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.arp_rcv(reply_from_peer(), 0.1, PACKET_HOST)
    n = t.lookup(PEER_IP)
    t.arp_rcv(reply_from_peer(mac=OTHER_MAC), 0.5, PACKET_HOST)
    assert n.mac == PEER_MAC  # a second proxy answering within 1 s is ignored
    t.arp_rcv(reply_from_peer(mac=OTHER_MAC), 1.2, PACKET_HOST)
    assert n.mac == OTHER_MAC and n.state == NUD_REACHABLE


def test_request_same_mac_does_not_demote_reachable() -> None:
    t = make()
    reachable(t, 0.0)
    t.arp_rcv(request_from_peer(), 1.0, PACKET_BROADCAST)
    assert t.lookup(PEER_IP).state == NUD_REACHABLE


def test_broadcast_reply_only_stale_but_releases_queue() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.arp_rcv(reply_from_peer(), 0.1, PACKET_BROADCAST)
    n = t.lookup(PEER_IP)
    assert t.ready == [(PEER_MAC, t.ready[0][1])] and len(t.ready) == 1
    # Sending the queue through neigh_resolve_output moves STALE to DELAY.
    assert n.state == NUD_DELAY
    assert t.next_deadline() == pytest.approx(5.1)


def test_request_from_incomplete_neighbour_releases_queue() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.arp_rcv(request_from_peer(), 0.1, PACKET_BROADCAST)
    assert len(t.ready) == 1 and t.ready[0][0] == PEER_MAC
    assert t.lookup(PEER_IP).state == NUD_DELAY


def test_otherhost_frames_consumed_silently() -> None:
    t = make()
    assert t.arp_rcv(request_from_peer(), 0.0, PACKET_OTHERHOST) is True
    assert t.out == [] and len(t) == 0


def test_martian_addresses() -> None:
    t = make()
    assert t.arp_rcv(request_from_peer(target=bytes([224, 0, 0, 1])), 0.0) is False
    assert t.arp_rcv(request_from_peer(target=bytes([127, 0, 0, 1])), 0.0) is False
    # A sender claiming a multicast address or our own is neither learned nor answered.
    assert t.arp_rcv(request_from_peer(ip=bytes([224, 0, 0, 5])), 0.0)
    assert t.arp_rcv(request_from_peer(ip=OUR_IP), 0.0)
    assert t.out == [] and len(t) == 0


def test_permanent_entries() -> None:
    t = make(gc_thresh1=0)
    t.add_permanent(PEER_IP, OTHER_MAC)
    n = t.lookup(PEER_IP)
    assert n.state == NUD_PERMANENT
    assert t.resolve(PEER_IP, pkt(1), 0.0) == OTHER_MAC
    t.arp_rcv(reply_from_peer(), 5.0, PACKET_HOST)  # not overridden by the wire
    assert n.mac == OTHER_MAC and n.state == NUD_PERMANENT
    assert t.next_deadline() is None
    t.timer(10_000.0)
    assert t.lookup(PEER_IP) is n
    assert t.entries() == [
        {
            "ip": "10.0.0.2",
            "mac": "02:00:00:00:00:03",
            "state": "PERMANENT",
            "age": 10_000.0,
            "probes": 0,
            "queued": 0,
        }
    ]


def test_permanent_releases_queue() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.add_permanent(PEER_IP, PEER_MAC)
    assert len(t.ready) == 1
    assert t.next_deadline() is None


def test_entries_display() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 1.0)
    t.arp_rcv(request_from_peer(ip=bytes([10, 0, 0, 5]), mac=OTHER_MAC), 2.0, PACKET_BROADCAST)
    rows = {r["ip"]: r for r in t.entries(now=4.0)}
    assert rows["10.0.0.2"]["mac"] is None
    assert rows["10.0.0.2"]["state"] == "INCOMPLETE"
    assert rows["10.0.0.2"]["age"] == 3.0
    assert rows["10.0.0.5"]["mac"] == "02:00:00:00:00:03"
    assert rows["10.0.0.5"]["state"] == "STALE"
    assert rows["10.0.0.5"]["age"] == 2.0


def test_lookup_counters() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)  # miss
    t.resolve(PEER_IP, pkt(2), 0.0)  # hit
    assert t.stats.arp_cache["lookups"] == 2
    assert t.stats.arp_cache["hits"] == 1
    assert t.stats.arp_cache["allocs"] == 1


# -- garbage collection --------------------------------------------------------


def test_periodic_gc_removes_unused_stale() -> None:
    t = make(gc_thresh1=0)
    t.arp_rcv(request_from_peer(), 0.0, PACKET_BROADCAST)
    assert t.lookup(PEER_IP).state == NUD_STALE
    # GC runs every base_reachable_time/2 = 15 s.
    assert t.next_deadline() == 15.0
    removed_at = None
    for _ in range(10):
        now = t.next_deadline()
        if now is None:
            break
        t.timer(now)
        if len(t) == 0:
            removed_at = now
            break
    # used at 0, gc_stale_time 60: gone at the first run not before 60 s.
    assert removed_at == 60.0
    assert t.stats.arp_cache["periodic_gc_runs"] == 4
    assert t.stats.arp_cache["destroys"] == 1
    assert t.stats.arp_cache["entries"] == 0
    assert t.next_deadline() is None


def test_periodic_gc_spares_used_and_small_tables() -> None:
    t = make(gc_thresh1=0)
    t.arp_rcv(request_from_peer(), 0.0, PACKET_BROADCAST)
    t.lookup(PEER_IP).used = 50.0  # resolve-ed recently (as if via DELAY/REACHABLE)
    t.timer(60.0)
    assert len(t) == 1
    # Below gc_thresh1 (default 128) the kernel keeps even stale entries.
    t = make()
    t.arp_rcv(request_from_peer(), 0.0, PACKET_BROADCAST)
    t.timer(1000.0)
    assert len(t) == 1
    assert t.stats.arp_cache["periodic_gc_runs"] == 1


def test_periodic_gc_removes_failed() -> None:
    t = make(gc_thresh1=0)
    t.resolve(PEER_IP, pkt(1), 0.0)
    for now in (1.0, 2.0, 3.0):
        t.timer(now)
    assert t.lookup(PEER_IP).state == NUD_FAILED
    assert t.next_deadline() == 15.0
    t.timer(15.0)
    assert len(t) == 0


def test_gc_thresh3_refuses_then_forced_gc() -> None:
    t = make(gc_thresh2=4, gc_thresh3=4)
    for i in range(4):
        ip = bytes([10, 0, 1, i])
        assert t.arp_rcv(request_from_peer(ip=ip), 0.0, PACKET_BROADCAST)
    assert len(t) == 4 and len(t.out) == 4
    # Full, and every entry was updated within 5 s: nothing to reclaim.
    new = bytes([10, 0, 2, 0])
    assert t.arp_rcv(request_from_peer(ip=new), 1.0, PACKET_BROADCAST)
    assert len(t) == 4
    assert t.lookup(new) is None
    assert len(t.out) == 4  # neigh_event_ns failed: no reply
    assert t.stats.arp_cache["table_fulls"] == 1
    assert t.stats.arp_cache["forced_gc_runs"] == 1
    # Later the oldest idle entry is reclaimed to make room.
    assert t.resolve(new, pkt(1), 10.0) is None
    assert len(t) == 4
    assert t.lookup(new).state == NUD_INCOMPLETE
    assert t.lookup(bytes([10, 0, 1, 0])) is None
    assert t.stats.arp_cache["forced_gc_runs"] == 2
    assert t.stats.arp_cache["table_fulls"] == 1
    check(t)


def test_gc_thresh3_never_reclaims_entries_in_timer() -> None:
    t = make(gc_thresh2=2, gc_thresh3=2)
    t.resolve(bytes([10, 0, 1, 1]), pkt(1), 0.0)
    t.resolve(bytes([10, 0, 1, 2]), pkt(2), 0.0)
    out = len(t.out)
    assert t.resolve(bytes([10, 0, 1, 3]), pkt(3), 100.0) is None
    assert len(t) == 2
    assert t.lookup(bytes([10, 0, 1, 3])) is None
    assert len(t.out) == out  # no request for a refused entry
    assert t.stats.arp_cache["table_fulls"] == 1
    # Permanent entries are exempt from the limit.
    t.add_permanent(bytes([10, 0, 1, 9]), OTHER_MAC)
    assert len(t) == 3


# -- next_deadline ---------------------------------------------------------------


def test_next_deadline_is_minimum_of_entries() -> None:
    t = make()
    assert t.next_deadline() is None
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.resolve(bytes([10, 0, 0, 3]), pkt(2), 0.4)
    assert t.next_deadline() == 1.0
    t.timer(1.0)
    assert t.next_deadline() == pytest.approx(1.4)
    t.timer(1.4)
    assert t.next_deadline() == pytest.approx(2.0)
    t.arp_rcv(reply_from_peer(), 1.5, PACKET_HOST)
    t.arp_rcv(reply_from_peer(ip=bytes([10, 0, 0, 3])), 1.5, PACKET_HOST)
    n = t.lookup(PEER_IP)
    m = t.lookup(bytes([10, 0, 0, 3]))
    assert t.next_deadline() == pytest.approx(1.5 + min(n.reachable_time, m.reachable_time))


def test_next_deadline_includes_gc_when_earlier() -> None:
    t = make(gc_thresh1=0)
    t.arp_rcv(request_from_peer(ip=bytes([10, 0, 0, 9])), 0.0, PACKET_BROADCAST)  # STALE
    reachable(t, 0.0)
    assert t.lookup(PEER_IP).reachable_time > 15.0
    assert t.next_deadline() == 15.0  # periodic GC, before the REACHABLE timer
    t.timer(15.0)
    assert t.stats.arp_cache["periodic_gc_runs"] == 1
    assert t.next_deadline() == pytest.approx(min(30.0, t.lookup(PEER_IP).reachable_time))


def test_timer_before_deadline_does_nothing() -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    for now in (0.1, 0.5, 0.999):
        t.timer(now)
    assert len(t.out) == 1
    assert t.next_deadline() == 1.0


# -- malformed input -------------------------------------------------------------


def _mutate(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(reply_from_peer())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


MALFORMED = {
    "short": reply_from_peer()[:27],
    "empty": b"",
    "htype": _mutate(0, "!H", 6),
    "ptype": _mutate(2, "!H", 0x86DD),
    "hlen": _mutate(4, "!B", 8),
    "plen": _mutate(5, "!B", 16),
    "op0": _mutate(6, "!H", 0),
    "op3": _mutate(6, "!H", 3),
    "rarp": _mutate(6, "!H", 4),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_dropped_without_effect(name: str) -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    t.out.clear()
    before = dict(t.stats.arp_cache)
    assert t.arp_rcv(MALFORMED[name], 0.5, PACKET_HOST) is False
    n = t.lookup(PEER_IP)
    assert n.state == NUD_INCOMPLETE and n.mac is None and len(n.queue) == 1
    assert t.ready == [] and t.out == [] and t.failed == []
    after = dict(t.stats.arp_cache)
    after["lookups"] -= 1
    after["hits"] -= 1
    assert after == before
    # The same packet, well-formed, does resolve (so the test can fail).
    assert t.arp_rcv(reply_from_peer(), 0.5, PACKET_HOST) is True
    assert n.state == NUD_REACHABLE


def test_malformed_request_for_us_not_answered() -> None:
    t = make()
    data = bytearray(request_from_peer())
    data[5] = 6  # plen
    assert t.arp_rcv(bytes(data), 0.0, PACKET_BROADCAST) is False
    assert t.out == [] and len(t) == 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    data=st.binary(max_size=80),
    pkt_type=st.sampled_from([0, 1, 2, 3, 4, 7]),
    now=st.floats(min_value=0, max_value=1e6),
)
def test_random_bytes_never_raise(data: bytes, pkt_type: int, now: float) -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    assert t.arp_rcv(data, now, pkt_type) in (True, False)
    assert t.arp_rcv(memoryview(data), now, pkt_type) in (True, False)
    t.timer(now)
    check(t)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    op=st.integers(0, 0xFFFF),
    sha=st.binary(min_size=6, max_size=6),
    sip=st.binary(min_size=4, max_size=4),
    tha=st.binary(min_size=6, max_size=6),
    tip=st.sampled_from([OUR_IP, PEER_IP, bytes(4), b"\xff" * 4])
    | st.binary(min_size=4, max_size=4),
    pad=st.binary(max_size=20),
    pkt_type=st.sampled_from([PACKET_HOST, PACKET_BROADCAST, PACKET_OTHERHOST]),
)
def test_random_valid_headers_never_raise(
    op: int, sha: bytes, sip: bytes, tha: bytes, tip: bytes, pad: bytes, pkt_type: int
) -> None:
    t = make()
    t.resolve(PEER_IP, pkt(1), 0.0)
    data = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, sip, tha, tip) + pad
    handled = t.arp_rcv(data, 1.0, pkt_type)
    if op not in (1, 2):
        assert handled is False
    for _, frame in t.out:
        assert len(frame) == 28
        assert ARP(frame).hwsrc == "02:00:00:00:00:01"
    check(t)


def test_connected_fast_path_only_for_reachable_entries() -> None:
    # neigh_connected_output: a REACHABLE entry gives its MAC and moves no state;
    # any other state is left to resolve(), which runs the NUD machine.
    t = make()
    assert t.connected(PEER_IP, 0.0) is None  # no entry: resolve() creates one
    reachable(t, 0.0)
    n = t.lookup(PEER_IP)
    deadline = t.next_deadline()
    assert t.connected(PEER_IP, 1.0) == PEER_MAC
    assert n.used == 1.0 and n.state == NUD_REACHABLE
    assert t.next_deadline() == deadline and t.out == []
    t.timer(n.reachable_time)
    assert n.state == NUD_STALE
    assert t.connected(PEER_IP, 100.0) is None
    assert n.state == NUD_STALE  # untouched: resolve() takes it to DELAY
    assert t.resolve(PEER_IP, pkt(1), 100.0) == PEER_MAC
    assert n.state == NUD_DELAY


def test_connected_counts_lookups_and_hits_like_resolve() -> None:
    t = make()
    reachable(t, 0.0)
    cache = t.stats.arp_cache
    lookups, hits = cache["lookups"], cache["hits"]
    t.connected(PEER_IP, 1.0)
    assert (cache["lookups"], cache["hits"]) == (lookups + 1, hits + 1)
