"""IPv4 fragmentation and reassembly (ustack.net.frag), with scapy as the oracle.

Datagrams are built by scapy, split by scapy and by ustack, and every
fragment ustack makes is parsed back by scapy. Reassembly is driven with
explicit times, so timeouts cost no wall time.
"""

from __future__ import annotations

import random
import struct
from itertools import chain, zip_longest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, UDP, Raw, raw
from scapy.layers.inet import (
    IPOption_LSRR,
    IPOption_Router_Alert,
    IPOption_RR,
    defragment,
)
from scapy.layers.inet import fragment as scapy_fragment

from ustack.checksum import checksum_ok, internet_checksum
from ustack.net.frag import FRAG_OVERHEAD, QUEUE_OVERHEAD, Reassembler, fragment
from ustack.stats import Stats
from ustack.sysctl import Sysctl


def datagram(
    size: int, ident: int = 0x1234, src: str = "10.0.0.1", dst: str = "10.0.0.2", **ip: object
) -> bytes:
    """A UDP datagram of *size* IP payload bytes (UDP header included)."""
    data = bytes((i * 7 + 3) & 0xFF for i in range(size - 8))
    return raw(IP(src=src, dst=dst, id=ident, **ip) / UDP(sport=5000, dport=53) / Raw(data))


def split(packet: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of a raw IPv4 packet, as the IPv4 layer hands them over."""
    ihl = (packet[0] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", packet, 2)
    return packet[:ihl], packet[ihl:total]


def raw_fragment(
    base: bytes, offset: int, data: bytes, more: bool, tos: int | None = None
) -> bytes:
    """A hand-made fragment of *base*'s header carrying *data* at *offset*."""
    hdr = bytearray(split(base)[0])
    if tos is not None:
        hdr[1] = tos
    struct.pack_into("!HHH", hdr, 2, len(hdr) + len(data), struct.unpack_from("!H", hdr, 4)[0],
                     (offset >> 3) | (0x2000 if more else 0))
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr) + data


def new() -> tuple[Reassembler, Sysctl, Stats]:
    sysctl, stats = Sysctl(), Stats()
    return Reassembler(sysctl, stats), sysctl, stats


def feed(r: Reassembler, frags: list[bytes], now: float = 0.0) -> list[bytes]:
    """Add every fragment; return the datagrams that came out."""
    out = []
    for f in frags:
        result = r.add(*split(f), now)
        if result is not None:
            out.append(result)
    return out


# -- fragment() --------------------------------------------------------------


@pytest.mark.parametrize("size", [9, 100, 1473, 1480, 1481, 1488, 2961, 4001, 8999, 65507])
@pytest.mark.parametrize("mtu", [68, 576, 1500, 9000])
def test_fragment_is_byte_identical_to_scapy(size: int, mtu: int) -> None:
    pkt = datagram(size)
    ours = fragment(*split(pkt), mtu)
    if len(pkt) <= mtu:
        assert ours == [pkt]
        return
    theirs = [raw(f) for f in scapy_fragment(IP(pkt), fragsize=mtu - 20)]
    assert ours == theirs


@pytest.mark.parametrize("size", [1, 7, 8, 9, 1479, 1480, 1481, 3000, 4001])
@pytest.mark.parametrize("mtu", [28, 29, 35, 36, 600, 1500])
def test_fragments_parse_in_scapy(size: int, mtu: int) -> None:
    pkt = raw(IP(src="192.0.2.1", dst="192.0.2.2", id=9, ttl=17, tos=0x10, proto=253)
              / Raw(bytes(random.Random(size).randbytes(size))))
    frags = fragment(*split(pkt), mtu)
    offsets = []
    for i, f in enumerate(frags):
        assert len(f) <= mtu
        p = IP(f)
        assert p.len == len(f)
        assert p.id == 9 and p.ttl == 17 and p.tos == 0x10 and p.proto == 253
        assert checksum_ok(f[:20])
        chk = p.chksum
        del p.chksum
        assert IP(raw(p)).chksum == chk
        last = i == len(frags) - 1
        assert bool(p.flags.MF) is not last
        assert not p.flags.DF
        if not last:
            assert len(p.payload) % 8 == 0 and len(p.payload) > 0
        offsets.append(p.frag * 8)
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert raw(defragment([IP(f) for f in frags])[0]) == pkt


def test_ping_4000_bytes_at_mtu_1500() -> None:
    pkt = raw(IP(src="10.0.0.1", dst="10.0.0.2", id=4242) / ICMP(id=1, seq=1) / Raw(b"p" * 3972))
    assert len(pkt) == 4000
    frags = fragment(*split(pkt), 1500)
    assert [len(f) for f in frags] == [1500, 1500, 1040]
    assert [IP(f).frag for f in frags] == [0, 185, 370]
    assert [int(IP(f).flags) for f in frags] == [1, 1, 0]
    r, _, stats = new()
    assert feed(r, frags) == [pkt]
    assert IP(feed(new()[0], frags[::-1])[0])[ICMP].seq == 1


def test_fragment_refuses_tiny_mtu() -> None:
    hdr, payload = split(datagram(100))
    with pytest.raises(ValueError):
        fragment(hdr, payload, 27)
    assert len(fragment(hdr, payload, 28)) == 13
    opt = raw(IP(options=[IPOption_Router_Alert()]) / Raw(b"x" * 100))
    with pytest.raises(ValueError):
        fragment(*split(opt), 31)
    assert all(len(f) <= 32 for f in fragment(*split(opt), 32))


def test_fragment_copies_only_options_with_copy_flag() -> None:
    opts = [IPOption_RR(routers=["1.2.3.4"]), IPOption_LSRR(routers=["5.6.7.8"]),
            IPOption_Router_Alert()]
    pkt = raw(IP(src="10.0.0.1", dst="10.0.0.2", id=5, options=opts) / UDP() / Raw(b"o" * 300))
    hdr, payload = split(pkt)
    frags = fragment(hdr, payload, 120)
    assert len(frags) > 2
    first = IP(frags[0])
    assert [o.option for o in first.options[:3]] == [7, 3, 20]  # RR, LSRR, Router Alert
    for f in frags[1:]:
        p = IP(f)
        # ip_options_fragment: not-copied options become NOOPs, length kept.
        assert p.ihl * 4 == len(hdr)
        kinds = [o.option for o in p.options]
        assert 7 not in kinds and 3 in kinds and 20 in kinds
        assert kinds[:7] == [1] * 7
        assert checksum_ok(f[: len(hdr)])
        assert p.options[7].routers == ["5.6.7.8"]
    # Reassembly keeps the first fragment's header, options and all.
    r, _, _ = new()
    assert feed(r, frags[::-1]) == [pkt]


def test_fragment_of_a_fragment_keeps_offset_and_mf() -> None:
    pkt = datagram(3000)
    big = fragment(*split(pkt), 1500)
    assert len(big) == 3
    # A router with a smaller MTU splits the middle fragment again (ip_frag_init).
    small = fragment(*split(big[1]), 576)
    assert all(IP(f).flags.MF for f in small)
    assert IP(small[0]).frag == IP(big[1]).frag
    r, _, _ = new()
    assert feed(r, [big[2], *small, big[0]]) == [pkt]


@pytest.mark.parametrize("mtu", [1501, 1503, 1507])
def test_odd_mtu_datagram_that_fits_is_not_split(mtu: int) -> None:
    pkt = datagram(mtu - 20)
    assert fragment(*split(pkt), mtu) == [pkt]
    frags = fragment(*split(datagram(mtu - 19)), mtu)
    assert [len(f) for f in frags] == [1500, 20 + mtu - 19 - 1480]


def test_fragment_keeps_df_when_asked_and_fits_unchanged() -> None:
    pkt = datagram(100, flags="DF")
    assert fragment(*split(pkt), 1500) == [pkt]
    big = datagram(1000, flags="DF")
    frags = fragment(*split(big), 576)
    assert all(IP(f).flags.DF for f in frags)
    # ip_frag_reasm: DF survives reassembly when the largest fragment had it...
    assert feed(new()[0], frags) == [big]
    # ...and not when it did not.
    hdr, payload = split(frags[0])
    no_df = bytearray(hdr)
    no_df[6] &= ~0x40
    out = feed(new()[0], [bytes(no_df) + payload, *frags[1:]])
    assert len(out) == 1 and not IP(out[0]).flags.DF and checksum_ok(out[0][:20])


# -- Reassembler: orders, duplicates -------------------------------------------


def test_reassemble_in_order_and_reverse() -> None:
    pkt = datagram(5000)
    frags = fragment(*split(pkt), 1500)
    for order in (frags, frags[::-1]):
        r, _, stats = new()
        out = []
        for f in order:
            assert out == [], "completed before the last fragment"
            res = r.add(*split(f), 1.0)
            if res is not None:
                out.append(res)
        assert out == [pkt]
        assert (len(r), r.mem, r.next_deadline()) == (0, 0, None)
        assert stats.ip["ReasmReqds"] == len(frags)
        assert stats.ip["ReasmOKs"] == 1
        assert stats.ip["ReasmFails"] == 0


def test_reassemble_scapy_fragments_with_memoryviews() -> None:
    pkt = datagram(3333)
    frags = [raw(f) for f in scapy_fragment(IP(pkt), fragsize=800)]
    r, _, _ = new()
    out = None
    for f in frags[::-1]:
        buf = memoryview(bytearray(f))
        hdr, payload = split(f)
        out = r.add(buf[: len(hdr)], buf[len(hdr) : len(f)], 0.0)
        buf[:] = b"\0" * len(buf)  # the caller may reuse its buffer
    assert out == pkt


@settings(max_examples=200, deadline=None)
@given(mtu=st.sampled_from([68, 100, 576, 1500]), data=st.data())
def test_reassemble_any_order_with_duplicates(mtu: int, data: st.DataObject) -> None:
    # Big enough to need at least two fragments.
    size = data.draw(st.integers(min_value=mtu - 20 + 1, max_value=6000))
    pkt = datagram(size, ident=size)
    frags = fragment(*split(pkt), mtu)
    assert len(frags) >= 2
    order = list(data.draw(st.permutations(frags)))
    # Duplicates of any fragment but the completing (last) one, each placed
    # after its original and before the end, so that they meet a live queue.
    dups = data.draw(st.lists(st.sampled_from(order[:-1]), max_size=5))
    for d in dups:
        order.insert(data.draw(st.integers(order.index(d) + 1, len(order) - 1)), d)
    r, _, stats = new()
    out = feed(r, order)
    assert out == [pkt]
    assert (len(r), r.mem) == (0, 0)
    assert stats.ip["ReasmOKs"] == 1
    assert stats.ip["ReasmReqds"] == len(order)
    assert stats.drop_reasons.get("DUP_FRAG", 0) == len(order) - len(frags)
    assert stats.ip["ReasmFails"] == 0


def test_interleaved_datagrams_do_not_mix() -> None:
    # The queue key is (src, dst, proto, id): change any one and it is
    # another datagram. Sizes differ so that a mix-up cannot go unnoticed.
    pkts = [
        datagram(3000, ident=1),
        datagram(3100, ident=1, src="10.0.0.9"),
        datagram(3200, ident=1, dst="10.0.0.9"),
        raw(IP(src="10.0.0.1", dst="10.0.0.2", id=1) / ICMP() / Raw(b"i" * 3292)),
        datagram(2500, ident=2),
    ]
    streams = [fragment(*split(p), 1000) for p in pkts]
    streams[1].reverse()
    mixed = [f for f in chain.from_iterable(zip_longest(*streams)) if f is not None]
    r, _, stats = new()
    assert len(r) == 0
    out = feed(r, mixed)
    assert sorted(out) == sorted(pkts)
    assert stats.ip["ReasmOKs"] == len(pkts)
    assert (len(r), r.mem) == (0, 0)


def test_contained_duplicate_is_dropped_and_queue_kept() -> None:
    pkt = datagram(64)
    hdr, payload = split(pkt)
    r, _, stats = new()
    assert r.add(*split(raw_fragment(pkt, 0, payload[:32], True)), 0) is None
    # Wholly inside [0, 32): a duplicate, silently dropped.
    assert r.add(*split(raw_fragment(pkt, 8, payload[8:16], True)), 0) is None
    # Spanning two adjacent received fragments is still inside one run.
    assert r.add(*split(raw_fragment(pkt, 32, payload[32:48], True)), 0) is None
    assert r.add(*split(raw_fragment(pkt, 24, payload[24:40], True)), 0) is None
    assert len(r) == 1
    assert stats.drop_reasons["DUP_FRAG"] == 2
    assert r.add(*split(raw_fragment(pkt, 48, payload[48:], False)), 0) == pkt
    assert stats.ipext["ReasmOverlaps"] == 0 and stats.ip["ReasmFails"] == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, 16), (8, 24)),  # partial overlap, later fragment starts inside
        ((8, 24), (0, 16)),  # partial overlap, later fragment ends inside
        ((8, 16), (0, 24)),  # new fragment contains an old one
        ((16, 24), (8, 24)),  # same end, starts earlier
    ],
)
def test_true_overlap_kills_queue(first: tuple[int, int], second: tuple[int, int]) -> None:
    pkt = datagram(64)
    payload = split(pkt)[1]
    r, _, stats = new()
    r.add(*split(raw_fragment(pkt, 48, payload[48:56], True)), 0)
    r.add(*split(raw_fragment(pkt, first[0], payload[first[0] : first[1]], True)), 0)
    assert len(r) == 1
    late = raw_fragment(pkt, second[0], payload[second[0] : second[1]], True)
    assert r.add(*split(late), 0) is None
    assert (len(r), r.mem) == (0, 0)
    assert stats.ipext["ReasmOverlaps"] == 1
    assert stats.ip["ReasmFails"] == 1
    # What arrives afterwards starts a fresh queue, which cannot complete.
    rest = [raw_fragment(pkt, o, payload[o : o + 8], o + 8 < len(payload))
            for o in range(0, len(payload), 8) if o not in (first[0], second[0])]
    assert feed(r, rest) == []


def test_conflicting_ends_kill_queue() -> None:
    pkt = datagram(64)
    payload = split(pkt)[1]
    cases = [
        # two last fragments with different ends
        [raw_fragment(pkt, 48, payload[48:], False), raw_fragment(pkt, 40, payload[40:48], False)],
        # data beyond the known end
        [raw_fragment(pkt, 48, payload[48:], False), raw_fragment(pkt, 64, b"x" * 8, True)],
        # last fragment ending before data already received
        [raw_fragment(pkt, 48, payload[48:], True), raw_fragment(pkt, 0, payload[:48], False)],
    ]
    for frags in cases:
        r, _, stats = new()
        assert feed(r, frags) == []
        assert (len(r), r.mem) == (0, 0)
        assert stats.ip["ReasmFails"] == 1
        assert stats.drop_reasons["FRAG_BAD_END"] == 1
        assert stats.ipext["ReasmOverlaps"] == 0


def test_same_last_fragment_twice_is_a_duplicate() -> None:
    pkt = datagram(64)
    payload = split(pkt)[1]
    last = raw_fragment(pkt, 48, payload[48:], False)
    r, _, stats = new()
    assert feed(r, [last, last, raw_fragment(pkt, 0, payload[:48], True)]) == [pkt]
    assert stats.drop_reasons["DUP_FRAG"] == 1


def test_oversized_datagram_is_refused() -> None:
    pkt = datagram(64)
    payload = split(pkt)[1]
    r, _, stats = new()
    r.add(*split(raw_fragment(pkt, 0, payload[:16], True)), 0)
    assert len(r) == 1
    # Offset 65520 + 16 bytes + a 20-byte header is over 65535.
    assert r.add(*split(raw_fragment(pkt, 65520, b"z" * 16, False)), 0) is None
    assert (len(r), r.mem) == (0, 0)
    assert stats.ip["ReasmFails"] == 1
    assert stats.drop_reasons["FRAG_OVERSIZE"] == 1
    # The largest legal datagram still goes through.
    big = raw(IP(id=3) / Raw(b"b" * (65535 - 20)))
    assert feed(r, fragment(*split(big), 9000)[::-1]) == [big]


@pytest.mark.parametrize(("offset", "size", "more"), [(0, 0, True), (8, 0, False), (0, 12, True),
                                                      (16, 1, True)])
def test_invalid_fragment_is_dropped_queue_untouched(offset: int, size: int, more: bool) -> None:
    pkt = datagram(64)
    payload = split(pkt)[1]
    r, _, stats = new()
    r.add(*split(raw_fragment(pkt, 48, payload[48:], False)), 0)
    mem = r.mem
    assert r.add(*split(raw_fragment(pkt, offset, b"i" * size, more)), 0) is None
    assert (len(r), r.mem) == (1, mem)
    assert stats.drop_reasons["FRAG_INVALID"] == 1
    assert stats.ip["ReasmFails"] == 0
    assert stats.ip["ReasmReqds"] == 2
    assert r.add(*split(raw_fragment(pkt, 0, payload[:48], True)), 0) == pkt


# -- ECN (ip_frag_ecn_table) -----------------------------------------------------


def test_ce_on_one_fragment_marks_the_datagram() -> None:
    pkt = datagram(64, tos=0x02)  # ECT(0)
    payload = split(pkt)[1]
    r, _, _ = new()
    out = feed(r, [raw_fragment(pkt, 0, payload[:32], True),
                   raw_fragment(pkt, 32, payload[32:], False, tos=0x03)])
    assert len(out) == 1 and IP(out[0]).tos == 0x03
    assert checksum_ok(out[0][:20])


def test_not_ect_mixed_with_ect_fails() -> None:
    pkt = datagram(64, tos=0x00)
    payload = split(pkt)[1]
    r, _, stats = new()
    assert feed(r, [raw_fragment(pkt, 0, payload[:32], True),
                    raw_fragment(pkt, 32, payload[32:], False, tos=0x01)]) == []
    assert (len(r), r.mem) == (0, 0)
    assert stats.ip["ReasmFails"] == 1 and stats.ip["ReasmOKs"] == 0


# -- timeouts (ip_expire) ------------------------------------------------------------


def test_expire_kills_queue_and_returns_quote() -> None:
    with_first = fragment(*split(datagram(3000, ident=1)), 1500)
    without_first = fragment(*split(datagram(3000, ident=2)), 1500)
    r, sysctl, stats = new()
    r.add(*split(with_first[0]), 100.0)
    r.add(*split(without_first[1]), 105.0)
    assert r.next_deadline() == 130.0
    assert r.expire(129.9) == []
    assert len(r) == 2
    hdr, payload = split(with_first[0])
    assert r.expire(130.0) == [hdr + payload[:8]]
    assert IP(hdr + payload[:8]).flags.MF  # the fragment's own header, as received
    assert len(r) == 1 and r.next_deadline() == 135.0
    assert r.expire(1000.0) == []
    assert (len(r), r.mem, r.next_deadline()) == (0, 0, None)
    assert stats.ip["ReasmTimeout"] == 2
    assert stats.ip["ReasmFails"] == 2
    # A later fragment of an expired datagram starts a new queue, which
    # cannot complete without the parts lost with the old one.
    assert r.add(*split(with_first[1]), 1001.0) is None
    sysctl.set("net.ipv4.ipfrag_time", 5)
    r.add(*split(with_first[2]), 1002.0)  # joins the existing queue: deadline unchanged
    assert r.next_deadline() == 1031.0
    r.add(*split(without_first[0]), 1002.0)
    assert r.expire(1007.0) == [b"".join(split(without_first[0]))[:28]]


def test_completed_queues_leave_no_timers() -> None:
    r, _, stats = new()
    # One incomplete queue holds the earliest deadline, so the dead timer
    # entries of the completed ones sit behind it in the heap.
    stuck = fragment(*split(datagram(3000, ident=60000)), 1500)[0]
    r.add(*split(stuck), 0.0)
    for i in range(500):
        feed(r, fragment(*split(datagram(3000, ident=i)), 1500), now=1.0 + i * 0.01)
    assert len(r) == 1
    assert len(r._timers) <= 2 * 1 + 64 + 1  # dead entries are reclaimed
    assert r.next_deadline() == 30.0
    assert len(r.expire(1e9)) == 1
    assert r.next_deadline() is None
    assert stats.ip["ReasmTimeout"] == 1 and stats.ip["ReasmOKs"] == 500


# -- memory (ipfrag_high_thresh / ipfrag_low_thresh) -----------------------------------


def test_flood_of_queues_stays_bounded() -> None:
    r, sysctl, stats = new()
    high, low = 64 * 1024, 48 * 1024
    sysctl.set("net.ipv4.ipfrag_high_thresh", high)
    sysctl.set("net.ipv4.ipfrag_low_thresh", low)
    peak = 0
    for ident in range(2000):
        first = fragment(*split(datagram(3000, ident=ident)), 1500)[0]
        r.add(*split(first), ident * 0.001)
        peak = max(peak, r.mem)
        assert r.mem <= high
    per_queue = QUEUE_OVERHEAD + FRAG_OVERHEAD + 1500
    assert peak > high - per_queue  # the limit was actually reached
    assert len(r) <= high // per_queue
    assert stats.drop_reasons["FRAG_REASM_OVERFLOW"] > 0
    refused = stats.drop_reasons["FRAG_REASM_OVERFLOW"]
    # Every refused fragment and every evicted queue is a failure: the
    # 2000 - refused queues created are either still here or were evicted.
    assert stats.ip["ReasmFails"] == refused + (2000 - refused - len(r))
    # The oldest queues went first.
    assert min(k[2] for k in r._queues) >= 2000 - 2 * (high // per_queue)
    # Reassembly still works after the flood.
    pkt = datagram(3000, ident=60000)
    assert feed(r, fragment(*split(pkt), 1500), now=10.0) == [pkt]
    assert r.mem <= high


def test_eviction_stops_at_low_thresh() -> None:
    r, sysctl, stats = new()
    per_queue = QUEUE_OVERHEAD + FRAG_OVERHEAD + 1500
    sysctl.set("net.ipv4.ipfrag_high_thresh", 10 * per_queue)
    sysctl.set("net.ipv4.ipfrag_low_thresh", 6 * per_queue)
    for ident in range(11):
        r.add(*split(fragment(*split(datagram(3000, ident=ident)), 1500)[0]), 0.0)
    # The 11th was refused and the 4 oldest were evicted to get down to low.
    assert len(r) == 6 and r.mem == 6 * per_queue
    assert sorted(k[2] for k in r._queues) == [4, 5, 6, 7, 8, 9]
    assert stats.ip["ReasmFails"] == 1 + 4
    assert stats.drop_reasons["FRAG_REASM_OVERFLOW"] == 1


def test_zero_high_thresh_disables_reassembly() -> None:
    r, sysctl, stats = new()
    sysctl.set("net.ipv4.ipfrag_high_thresh", 0)
    assert feed(r, fragment(*split(datagram(3000)), 1500)) == []
    assert (len(r), r.mem) == (0, 0)
    assert stats.ip["ReasmFails"] == 3


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 64), st.integers(0, 4),
                          st.booleans()), max_size=300))
def test_memory_bounded_whatever_arrives(frags: list[tuple[int, int, int, bool]]) -> None:
    r, sysctl, stats = new()
    sysctl.set("net.ipv4.ipfrag_high_thresh", 8000)
    sysctl.set("net.ipv4.ipfrag_low_thresh", 6000)
    base = datagram(64)
    for t, (ident, off8, size8, more) in enumerate(frags):
        f = bytearray(raw_fragment(base, off8 * 8, b"q" * (size8 * 8), more))
        f[4:6] = ident.to_bytes(2, "big")
        r.add(bytes(f[:20]), bytes(f[20:]), t * 0.5)
        assert r.mem <= 8000
        assert r.mem == sum(q.mem for q in r._queues.values())
        r.expire(t * 0.5)
    r.expire(1e9)
    assert (len(r), r.mem) == (0, 0)
