"""Software GSO (ustack.nic.gso), with scapy as the oracle.

Super-segments are built by scapy (and by ustack's own ``build_segment``),
cut by ``gso_segment`` in both checksum modes, and every frame it makes is
parsed back by scapy: IPv4 length, id and checksum, TCP sequence number,
flags, options and checksum, and the payload put back together by sequence
number must equal the original.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, Raw, raw
from scapy.layers.inet import IPOption_Router_Alert, IPOption_RR

from ustack.buffer import (
    CHECKSUM_NONE,
    CHECKSUM_PARTIAL,
    MAX_HEADER,
    Packet,
    skb_checksum_help,
)
from ustack.checksum import internet_checksum, pseudo_header_sum
from ustack.nic.gso import GSO_HEADROOM, SKB_GSO_TCP_FIXEDID, gso_segment
from ustack.transport.tcp.header import ACK, CWR, ECE, FIN, PSH, URG, Segment, build_segment
from ustack.transport.tcp.options import TcpOptions

FAST = settings(max_examples=120, derandomize=True, database=None, deadline=None)

SRC, DST = "10.0.0.1", "10.0.0.2"
SRC_B, DST_B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
MAC_DST, MAC_SRC = "02:00:00:00:00:02", "02:00:00:00:00:01"
MSS = 1448
TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (0x11223344, 0x55667788))]
SACK_OPTS = [("NOP", None), ("NOP", None), ("SAck", (1000, 2000, 3000, 4000))]


def payload_of(size: int) -> bytes:
    """Bytes that differ from position to position, so a misplaced slice shows."""
    return bytes((i * 131 + (i >> 8) * 7 + 1) & 0xFF for i in range(size))


def scapy_frame(
    payload: bytes,
    seq: int = 1000,
    flags: str | int = "A",
    options: list | None = None,
    ip_options: list | None = None,
    ip_id: int = 0x4242,
    **tcp: object,
) -> bytes:
    """A complete Ethernet/IPv4/TCP super-frame, checksums filled in by scapy."""
    ip = IP(src=SRC, dst=DST, id=ip_id, flags="DF", ttl=61, tos=0x28,
            options=ip_options or [])
    return raw(Ether(dst=MAC_DST, src=MAC_SRC) / ip
               / TCP(sport=40000, dport=80, seq=seq, ack=0xABCDEF01, flags=flags,
                     window=501, options=options or [], **tcp)
               / Raw(payload))


def to_packet(
    frame: bytes, mss: int, partial: bool = False, headroom: int = 64, queue: int = 3
) -> Packet:
    """Put *frame* into a transmit Packet as the device sees it (head at the MAC header)."""
    buf = bytearray(headroom) + frame
    pkt = Packet(buf, headroom)
    pkt.mac_off = headroom
    pkt.net_off = headroom + 14
    ihl = (buf[pkt.net_off] & 0x0F) * 4
    pkt.trans_off = pkt.net_off + ihl
    pkt.gso_size = mss
    pkt.gso_type = 1  # VIRTIO_NET_HDR_GSO_TCPV4
    pkt.queue = queue
    if partial:
        # As build_segment(csum_partial_offload=True) leaves it.
        tcp_len = len(buf) - pkt.trans_off
        struct.pack_into("!H", buf, pkt.trans_off + 16,
                         pseudo_header_sum(SRC_B, DST_B, 6, tcp_len))
        pkt.ip_summed = CHECKSUM_PARTIAL
        pkt.csum_start = pkt.trans_off
        pkt.csum_offset = 16
    return pkt


def tcp_options_bytes(frame: Ether) -> bytes:
    tcp = frame[TCP]
    return raw(tcp)[20 : tcp.dataofs * 4]


def check_segments(
    original: bytes,
    segs: list[Packet],
    mss: int,
    csum_offload: bool,
    fixed_id: bool = False,
    queue: int = 3,
) -> list[Ether]:
    """Assert that *segs* are a correct segmentation of *original*; return them parsed."""
    orig = Ether(original)
    o_ip, o_tcp = orig[IP], orig[TCP]
    o_payload = bytes(o_tcp.payload)
    assert len(segs) == -(-len(o_payload) // mss)
    parsed = []
    offset = 0
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        assert seg.head == seg.mac_off and seg.head >= 12
        assert seg.net_off == seg.mac_off + 14
        assert seg.trans_off == seg.net_off + o_ip.ihl * 4
        assert seg.gso_size == 0
        assert seg.queue == queue
        tcp_len = seg.tail - seg.trans_off
        if csum_offload:
            assert seg.ip_summed == CHECKSUM_PARTIAL
            assert seg.csum_start == seg.trans_off and seg.csum_offset == 16
            # The field holds exactly this segment's pseudo-header sum.
            field = struct.unpack_from("!H", seg.buf, seg.trans_off + 16)[0]
            assert field == pseudo_header_sum(SRC_B, DST_B, 6, tcp_len)
            skb_checksum_help(seg)
        else:
            assert seg.ip_summed == CHECKSUM_NONE
        frame = bytes(seg.data())
        p = Ether(frame)
        ip, tcp = p[IP], p[TCP]
        # Ethernet header copied.
        assert frame[:14] == original[:14]
        # IPv4: length and id rewritten, checksum correct, all else copied.
        assert ip.len == len(frame) - 14
        assert ip.id == (o_ip.id if fixed_id else (o_ip.id + i) & 0xFFFF)
        assert internet_checksum(frame[14 : 14 + ip.ihl * 4]) == 0
        for name in ("version", "ihl", "tos", "flags", "frag", "ttl", "proto", "src", "dst"):
            assert getattr(ip, name) == getattr(o_ip, name), name
        assert raw(ip)[20 : ip.ihl * 4] == raw(o_ip)[20 : o_ip.ihl * 4]
        # TCP: seq advanced by the payload offset, flags placed, rest copied.
        assert tcp.seq == (o_tcp.seq + offset) % 2**32
        want = int(o_tcp.flags)
        if not last:
            want &= ~(FIN | PSH)
        if i:
            want &= ~CWR
        assert int(tcp.flags) == want
        for name in ("sport", "dport", "ack", "dataofs", "reserved", "window", "urgptr"):
            assert getattr(tcp, name) == getattr(o_tcp, name), name
        assert tcp_options_bytes(p) == tcp_options_bytes(orig)
        # TCP checksum: scapy's own computation over the segment as the oracle.
        redo = p.copy()
        del redo[IP].chksum
        del redo[TCP].chksum
        redo = Ether(raw(redo))
        assert tcp.chksum == redo[TCP].chksum
        assert ip.chksum == redo[IP].chksum
        data = bytes(tcp.payload)
        assert len(data) == (mss if not last else len(o_payload) - offset)
        assert 0 < len(data) <= mss
        offset += len(data)
        parsed.append(p)
    # Reassemble by sequence number (relative to the first, modulo 2**32).
    base = o_tcp.seq
    pieces = sorted(((p[TCP].seq - base) % 2**32, bytes(p[TCP].payload)) for p in parsed)
    joined = bytearray()
    for rel, data in pieces:
        assert rel == len(joined)
        joined += data
    assert bytes(joined) == o_payload
    return parsed


# ---- scapy-built super-frames ----------------------------------------------------


@pytest.mark.parametrize("csum_offload", [False, True], ids=["full-csum", "csum-offload"])
@pytest.mark.parametrize("partial", [False, True], ids=["in-none", "in-partial"])
@pytest.mark.parametrize("size", [MSS + 1, 2 * MSS, 2 * MSS + 1, 10 * MSS + 7, 65000])
def test_segments_scapy_frames(size: int, partial: bool, csum_offload: bool) -> None:
    original = scapy_frame(payload_of(size), flags="PA", options=TS_OPTS)
    pkt = to_packet(original, MSS, partial=partial)
    segs = gso_segment(pkt, csum_offload=csum_offload)
    check_segments(original, segs, MSS, csum_offload)


@pytest.mark.parametrize("size", [1, MSS - 1, MSS])
@pytest.mark.parametrize("partial", [False, True])
def test_payload_that_fits_is_returned_unchanged(size: int, partial: bool) -> None:
    original = scapy_frame(payload_of(size), flags="FPA", options=TS_OPTS)
    pkt = to_packet(original, MSS, partial=partial)
    before = bytes(pkt.buf)
    for offload in (False, True):
        assert gso_segment(pkt, csum_offload=offload) == [pkt]
        assert gso_segment(pkt, csum_offload=offload)[0] is pkt
    assert bytes(pkt.buf) == before
    assert pkt.gso_size == MSS
    assert pkt.ip_summed == (CHECKSUM_PARTIAL if partial else CHECKSUM_NONE)


def test_gso_size_zero_is_returned_unchanged() -> None:
    original = scapy_frame(payload_of(5000))
    pkt = to_packet(original, 0)
    before = bytes(pkt.buf)
    assert gso_segment(pkt)[0] is pkt
    assert len(gso_segment(pkt, csum_offload=True)) == 1
    assert bytes(pkt.buf) == before


@pytest.mark.parametrize("csum_offload", [False, True])
def test_flags_fin_psh_last_cwr_first(csum_offload: bool) -> None:
    original = scapy_frame(payload_of(5 * 500 + 3), flags=FIN | PSH | ACK | CWR | ECE | URG,
                           urgptr=7)
    segs = gso_segment(to_packet(original, 500), csum_offload=csum_offload)
    parsed = check_segments(original, segs, 500, csum_offload)
    flags = [int(p[TCP].flags) for p in parsed]
    assert flags[0] == ACK | CWR | ECE | URG
    assert all(f == ACK | ECE | URG for f in flags[1:-1])
    assert flags[-1] == FIN | PSH | ACK | ECE | URG
    assert all(f & ACK for f in flags)


def test_two_segments_cwr_and_fin_split() -> None:
    original = scapy_frame(payload_of(101), flags=FIN | ACK | CWR)
    parsed = check_segments(original, gso_segment(to_packet(original, 100)), 100, False)
    assert [int(p[TCP].flags) for p in parsed] == [ACK | CWR, FIN | ACK]


@pytest.mark.parametrize("seq", [2**32 - 1, 2**32 - 1448, 2**32 - 3000, 0xFFFFFF00])
@pytest.mark.parametrize("csum_offload", [False, True])
def test_sequence_wraparound(seq: int, csum_offload: bool) -> None:
    original = scapy_frame(payload_of(4 * MSS + 11), seq=seq, options=TS_OPTS)
    segs = gso_segment(to_packet(original, MSS), csum_offload=csum_offload)
    parsed = check_segments(original, segs, MSS, csum_offload)
    seqs = [p[TCP].seq for p in parsed]
    assert any(s < seq for s in seqs)  # it did wrap
    assert all(0 <= s < 2**32 for s in seqs)


def test_ip_id_increments_and_wraps() -> None:
    original = scapy_frame(payload_of(5 * 100), ip_id=0xFFFE)
    parsed = check_segments(original, gso_segment(to_packet(original, 100)), 100, False)
    assert [p[IP].id for p in parsed] == [0xFFFE, 0xFFFF, 0, 1, 2]


def test_fixed_ip_id_when_asked() -> None:
    original = scapy_frame(payload_of(3 * 100 + 1), ip_id=0x1234)
    pkt = to_packet(original, 100)
    pkt.gso_type |= SKB_GSO_TCP_FIXEDID
    parsed = check_segments(original, gso_segment(pkt), 100, False, fixed_id=True)
    assert {p[IP].id for p in parsed} == {0x1234}


@pytest.mark.parametrize("csum_offload", [False, True])
@pytest.mark.parametrize(
    "ip_options",
    [[IPOption_Router_Alert()], [IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])]],
    ids=["router-alert", "record-route"],
)
def test_ip_options_copied_to_every_segment(ip_options: list, csum_offload: bool) -> None:
    original = scapy_frame(payload_of(3 * 700 + 1), options=SACK_OPTS, ip_options=ip_options)
    assert Ether(original)[IP].ihl > 5
    segs = gso_segment(to_packet(original, 700), csum_offload=csum_offload)
    check_segments(original, segs, 700, csum_offload)


@pytest.mark.parametrize("mss", [1, 2, 3, 7, 536, 1447])
@pytest.mark.parametrize("csum_offload", [False, True])
def test_odd_sizes(mss: int, csum_offload: bool) -> None:
    size = 9 * mss + (mss // 2 or 1) if mss > 1 else 9
    original = scapy_frame(payload_of(size), flags="PA",
                           options=[("NOP", None), ("MSS", 1460), ("NOP", None),
                                    ("WScale", 7), ("EOL", None)])
    segs = gso_segment(to_packet(original, mss, partial=True), csum_offload=csum_offload)
    check_segments(original, segs, mss, csum_offload)


def test_minimal_segments_are_short_frames() -> None:
    """1-byte payloads make 55-byte frames; the device pads them, GSO must not."""
    original = scapy_frame(payload_of(3))
    segs = gso_segment(to_packet(original, 1))
    check_segments(original, segs, 1, False)
    assert [len(s) for s in segs] == [14 + 20 + 20 + 1] * 3


def test_odd_payload_sum_checked_by_checksum_help() -> None:
    """An odd last segment: the field must survive skb_checksum_help's padding rule."""
    original = scapy_frame(b"\xff" * 2 * 333 + b"\xfe", options=TS_OPTS)
    segs = gso_segment(to_packet(original, 333, partial=True), csum_offload=True)
    check_segments(original, segs, 333, True)


# ---- properties of the output Packets ------------------------------------------------


def test_segments_own_their_buffers_and_have_headroom() -> None:
    original = scapy_frame(payload_of(3 * MSS), options=TS_OPTS)
    pkt = to_packet(original, MSS)
    segs = gso_segment(pkt)
    frames = [bytes(s.data()) for s in segs]
    pkt.buf[pkt.trans_off + 40 : pkt.tail] = bytes(pkt.tail - pkt.trans_off - 40)
    assert [bytes(s.data()) for s in segs] == frames
    assert len({id(s.buf) for s in segs}) == len(segs)
    for s in segs:
        assert s.head == GSO_HEADROOM
        s.push(12)  # a virtio-net header fits in front
        assert s.gso_type == 0 and s.gso_segs == 0


def test_short_frame_padding_after_gso() -> None:
    """The device pads short frames by resizing the buffer: no view may pin it."""
    segs = gso_segment(to_packet(scapy_frame(payload_of(4)), 2))
    for s in segs:
        del s.buf[s.tail :]
        s.buf.extend(bytes(60 - len(s)))


@pytest.mark.parametrize("csum_offload", [False, True])
@pytest.mark.parametrize("partial", [False, True])
def test_build_segment_super_segment(partial: bool, csum_offload: bool) -> None:
    """ustack's own TCP builder, with IPv4 and Ethernet pushed in front as the stack does."""
    data = payload_of(7 * 1000 + 999)
    seg = Segment(40000, 443, 0xFFFFF000, 77, PSH | ACK, 1024,
                  TcpOptions(ts_val=123456, ts_ecr=654321), data)
    pkt = build_segment(seg, SRC_B, DST_B, headroom=MAX_HEADER, csum_partial_offload=partial)
    tcp_len = len(pkt)
    off = pkt.push(20)
    struct.pack_into("!BBHHHBBH4s4s", pkt.buf, off, 0x45, 0, 20 + tcp_len, 999, 0x4000, 64, 6,
                     0, SRC_B, DST_B)
    struct.pack_into("!H", pkt.buf, off + 10, internet_checksum(pkt.buf[off : off + 20]))
    pkt.net_off = off
    off = pkt.push(14)
    pkt.buf[off : off + 14] = bytes.fromhex("020000000002" "020000000001" "0800")
    pkt.mac_off = off
    pkt.gso_size = 1000
    pkt.queue = 1
    if partial:
        original = bytearray(pkt.data())
        t = pkt.trans_off - pkt.head
        struct.pack_into("!H", original, t + 16,
                         internet_checksum(original[t:], pseudo_header_sum(SRC_B, DST_B, 6,
                                                                            tcp_len)))
        original = bytes(original)
    else:
        original = bytes(pkt.data())
    segs = gso_segment(pkt, csum_offload=csum_offload)
    parsed = check_segments(original, segs, 1000, csum_offload, queue=1)
    assert len(parsed) == 8
    assert all(p[TCP].options[-1] == ("Timestamp", (123456, 654321)) for p in parsed)


def test_not_tcp_ipv4_is_refused() -> None:
    frame = bytearray(scapy_frame(payload_of(3000)))
    frame[14 + 9] = 17  # UDP
    with pytest.raises(ValueError):
        gso_segment(to_packet(bytes(frame), 1000))
    frame = bytearray(scapy_frame(payload_of(3000)))
    frame[14] = 0x65  # IPv6 version nibble
    with pytest.raises(ValueError):
        gso_segment(to_packet(bytes(frame), 1000))


# ---- the checker itself catches what it must ------------------------------------------


@pytest.mark.parametrize("damage", ["tcp-csum", "ip-id", "seq", "psh-early", "payload", "cwr"])
def test_checker_catches_damage(damage: str) -> None:
    original = scapy_frame(payload_of(3 * 200 + 5), flags=PSH | ACK | CWR, options=TS_OPTS)
    segs = gso_segment(to_packet(original, 200))
    s = segs[1]
    t, n = s.trans_off, s.net_off
    if damage == "tcp-csum":
        s.buf[t + 16] ^= 1
    elif damage == "ip-id":
        struct.pack_into("!H", s.buf, n + 4, 0)
        struct.pack_into("!H", s.buf, n + 10, 0)
        struct.pack_into("!H", s.buf, n + 10, internet_checksum(s.buf[n : n + 20]))
    elif damage == "seq":
        s.buf[t + 7] ^= 1
    elif damage == "psh-early":
        s.buf[t + 13] |= PSH
    elif damage == "payload":
        s.buf[s.tail - 1] ^= 0xFF
        s.buf[s.tail - 2] ^= 0xFF  # keeps the sum; only reassembly sees it
    elif damage == "cwr":
        s.buf[t + 13] |= CWR
    with pytest.raises(AssertionError):
        check_segments(original, segs, 200, False)


# ---- property: any size, mss, options, flags, sequence ---------------------------------

OPTION_SETS = [
    [],
    TS_OPTS,
    SACK_OPTS,
    [("NOP", None), ("NOP", None), ("Timestamp", (1, 2)), ("NOP", None), ("NOP", None),
     ("SAck", (5, 6))],
    [("MSS", 1460), ("SAckOK", b""), ("EOL", None)],
    [("NOP", None)] * 40,
]


@st.composite
def super_segments(draw: st.DrawFn) -> tuple[int, int, int, int, list, list, bool, bool]:
    mss = draw(st.integers(1, 1500))
    nseg = draw(st.integers(1, 24))
    size = draw(st.integers(1, nseg * mss))
    seq = draw(st.integers(0, 2**32 - 1))
    flags = ACK | draw(st.integers(0, 0xFF))
    opts = draw(st.sampled_from(OPTION_SETS))
    ip_opts = draw(st.sampled_from([[], [IPOption_Router_Alert()]]))
    return (mss, size, seq, flags, opts, ip_opts, draw(st.booleans()), draw(st.booleans()))


@FAST
@given(super_segments(), st.integers(0, 0xFFFF))
def test_property_segmentation(case: tuple, ip_id: int) -> None:
    mss, size, seq, flags, opts, ip_opts, partial, csum_offload = case
    original = scapy_frame(payload_of(size), seq=seq, flags=flags, options=opts,
                           ip_options=ip_opts, ip_id=ip_id)
    pkt = to_packet(original, mss, partial=partial)
    segs = gso_segment(pkt, csum_offload=csum_offload)
    if size <= mss:
        assert segs == [pkt]
    else:
        check_segments(original, segs, mss, csum_offload)
