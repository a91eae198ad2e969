"""Options and header codec, checked against scapy as an independent oracle."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from ustack.checksum import internet_checksum, pseudo_header_sum
from ustack.transport.tcp import (
    ACK,
    FIN,
    PSH,
    SYN,
    Segment,
    TcpOptions,
    build_segment,
    parse_options,
    parse_segment,
    rst_for,
    tcp_checksum_ok,
)
from ustack.transport.tcp.header import RST

SRC = bytes([192, 168, 1, 1])
DST = bytes([192, 168, 1, 2])


def scapy_opts(opts):
    return {k: v for k, v in opts}


def test_syn_options_match_scapy():
    opts = TcpOptions(mss=1460, wscale=7, sack_ok=True, ts_val=12345, ts_ecr=0)
    seg = Segment(40000, 80, 1000, 0, SYN, 65535, opts)
    pkt = build_segment(seg, SRC, DST)
    raw = bytes(pkt.data())
    t = TCP(raw)
    assert (t.sport, t.dport, t.seq, t.ack, t.window) == (40000, 80, 1000, 0, 65535)
    assert t.flags == "S"
    o = scapy_opts(t.options)
    assert o["MSS"] == 1460 and o["WScale"] == 7 and "SAckOK" in o
    assert o["Timestamp"] == (12345, 0)
    # Kernel layout: MSS, SACK_PERM+TS, NOP+WSCALE -> 20 option bytes.
    assert t.dataofs == 10
    # Our checksum equals scapy's.
    ref = IP(src="192.168.1.1", dst="192.168.1.2") / TCP(raw)
    del ref[TCP].chksum
    assert TCP(bytes(ref[TCP]))  # builds
    assert struct.unpack("!H", raw[16:18])[0] == IP(bytes(ref))[TCP].chksum


def test_parse_scapy_built_segment():
    pkt = IP(src="192.168.1.1", dst="192.168.1.2") / TCP(
        sport=1234, dport=80, seq=0xFFFFFFFE, ack=77, flags="PA", window=501,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2)),
                 ("NOP", None), ("NOP", None), ("SAck", (10, 20, 30, 40))],
    ) / b"hello world"
    raw = bytes(pkt[TCP])
    assert tcp_checksum_ok(SRC, DST, raw)
    seg = parse_segment(raw)
    assert seg is not None
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.window) == (1234, 80, 0xFFFFFFFE, 77, 501)
    assert seg.flags == PSH | ACK
    assert bytes(seg.payload) == b"hello world"
    assert seg.options.ts_val == 1 and seg.options.ts_ecr == 2
    assert seg.options.sack == [(10, 20), (30, 40)]
    bad = bytearray(raw)
    bad[-1] ^= 1
    assert not tcp_checksum_ok(SRC, DST, bytes(bad))


@settings(max_examples=200, deadline=None)
@given(
    sport=st.integers(0, 65535), dport=st.integers(0, 65535), seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1), flags=st.integers(0, 255), window=st.integers(0, 65535),
    payload=st.binary(max_size=3000),
    ts=st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))),
    mss=st.one_of(st.none(), st.integers(0, 65535)),
    sack=st.one_of(st.none(), st.lists(st.tuples(st.integers(0, 2**32 - 1),
                                                 st.integers(0, 2**32 - 1)), min_size=1,
                                       max_size=3)),
)
def test_roundtrip_against_scapy(sport, dport, seq, ack, flags, window, payload, ts, mss, sack):
    opts = TcpOptions(mss=mss, sack=sack)
    if ts:
        opts.ts_val, opts.ts_ecr = ts
    if mss is not None and sack and len(sack) == 3 and ts:
        sack = sack[:2]
        opts.sack = sack
    seg = Segment(sport, dport, seq, ack, flags, window, opts, payload)
    raw = bytes(build_segment(seg, SRC, DST).data())
    t = TCP(raw)
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window) == (
        sport, dport, seq, ack, flags, window)
    assert bytes(t.payload) == payload
    o = scapy_opts(t.options)
    if ts:
        assert o["Timestamp"] == ts
    if mss is not None:
        assert o["MSS"] == mss
    if sack:
        assert list(o["SAck"]) == [x for b in sack for x in b]
    assert tcp_checksum_ok(SRC, DST, raw)
    full = internet_checksum(raw[:16] + b"\0\0" + raw[18:],
                             pseudo_header_sum(SRC, DST, 6, len(raw)))
    assert struct.unpack("!H", raw[16:18])[0] == full
    back = parse_segment(raw)
    expected = opts if opts.to_bytes() else None
    assert back is not None and back.options == expected and bytes(back.payload) == payload


def test_checksum_partial_offload_leaves_pseudo_sum():
    seg = Segment(1, 2, 3, 4, ACK, 5, None, b"abc")
    pkt = build_segment(seg, SRC, DST, csum_partial_offload=True)
    raw = bytearray(pkt.data())
    assert struct.unpack("!H", raw[16:18])[0] == pseudo_header_sum(SRC, DST, 6, len(raw))
    assert pkt.csum_start == pkt.head and pkt.csum_offset == 16


def test_build_leaves_headroom():
    pkt = build_segment(Segment(1, 2, 3, 4, ACK, 5), SRC, DST)
    assert pkt.head >= 14 + 60 + 12


@pytest.mark.parametrize("raw", [
    b"\x02",                      # kind without length
    b"\x02\x01\x05\xb4",          # length below 2
    b"\x08\x0a\x00\x00",          # length past the end
    b"\x01\x01\x05\x00",          # SACK with zero length byte
])
def test_malformed_options(raw):
    assert parse_options(raw) is None
    hdr = struct.pack("!HHIIHHHH", 1, 2, 3, 4, ((20 + 4) << 10) | ACK, 5, 0, 0)
    assert parse_segment(hdr + raw.ljust(4, b"\0")) is None


def test_unknown_and_wrong_length_options_are_skipped():
    # unknown kind 30 len 4, MSS with bad length 3, EOL then garbage
    opts = parse_options(b"\x1e\x04\xaa\xbb\x02\x03\x05\x01\x03\x03\x09\x00\xff\xff")
    assert opts is not None and opts.mss is None and opts.wscale == 9
    assert parse_options(b"\x03\x03\x30").wscale == 14  # RFC 7323: shift capped at 14


def test_header_validation():
    hdr = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (4 << 12) | ACK, 5, 0, 0)
    assert parse_segment(hdr) is None  # data offset below 5
    hdr = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (6 << 12) | ACK, 5, 0, 0)
    assert parse_segment(hdr) is None  # offset past the end
    assert parse_segment(hdr[:19]) is None
    ok = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (5 << 12) | FIN | ACK, 5, 0, 0) + b"xy"
    seg = parse_segment(b"pad" + ok, 3, len(ok))
    assert seg.flags == FIN | ACK and bytes(seg.payload) == b"xy" and seg.seg_len == 3


def test_rst_for_closed_port():
    syn = Segment(1234, 80, 100, 0, SYN, 1000, None, b"ab")
    r = rst_for(syn)
    assert (r.sport, r.dport, r.seq, r.ack, r.flags) == (80, 1234, 0, 103, RST | ACK)
    data = Segment(1234, 80, 100, 555, ACK | PSH, 1000, None, b"abc")
    r = rst_for(data)
    assert (r.seq, r.flags) == (555, RST)
    assert rst_for(Segment(1, 2, 3, 4, RST, 0)) is None
