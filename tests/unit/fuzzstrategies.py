"""Hypothesis strategies that build frames field by field, one per parser.

Each strategy draws a function of the live :class:`fuzzing.Harness` (the TCP
ones need its connection's ports and sequence numbers) returning the frames
of one example. Values come from edge cases and the whole field range alike.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from fuzzing import (
    A_IP_B,
    A_MAC,
    B_IP_B,
    B_MAC,
    TCP_PORT,
    UDP_PORT,
    VLAN_ID,
    VNET_HDR_LEN,
    Harness,
    fix_checksums,
)
from hypothesis import strategies as st

Build = Callable[[Harness], list[bytes]]

MACS = st.sampled_from([B_MAC, b"\xff" * 6, bytes.fromhex("01005e000001"), bytes(6),
                        bytes.fromhex("020000000099")])
ADDRS = st.one_of(st.sampled_from([A_IP_B, B_IP_B, bytes([10, 0, 0, 255]), b"\xff" * 4,
                                   bytes(4), bytes([127, 0, 0, 1]), bytes([224, 0, 0, 1]),
                                   bytes([10, 0, 100, 2])]),
                  st.binary(min_size=4, max_size=4))
U16 = st.one_of(st.sampled_from([0, 1, 7, 8, 20, 0x7FFF, 0x8000, 0xFFFF]), st.integers(0, 0xFFFF))
U8 = st.one_of(st.sampled_from([0, 1, 0x45, 0x7F, 0x80, 0xFF]), st.integers(0, 0xFF))


def eth(dst: bytes, ethertype: int) -> bytes:
    return dst + A_MAC + ethertype.to_bytes(2, "big")


def ip_header(d: st.DataObject, proto: int, payload_len: int, src: bytes = A_IP_B,
              dst: bytes = B_IP_B) -> bytes:
    """An IPv4 header, mostly sane, sometimes wrong in any field."""
    wild = d.draw(st.booleans())
    opts = d.draw(st.binary(max_size=40)) if d.draw(st.integers(0, 4)) == 0 else b""
    opts += bytes(-len(opts) % 4)
    ihl = (20 + len(opts)) // 4
    vihl = d.draw(U8) if wild else 0x40 | ihl
    tot = d.draw(U16) if wild else 20 + len(opts) + payload_len
    frag = d.draw(U16) if wild and d.draw(st.booleans()) else 0
    return struct.pack("!BBHHHBBH4s4s", vihl, d.draw(U8), tot, d.draw(U16), frag,
                       d.draw(U8) or 1, proto, 0, src, dst) + opts


def finish(frame: bytes, d: st.DataObject, l3: int = 14) -> bytes:
    """Fix the checksums (usually) and sometimes cut the frame short."""
    buf = bytearray(frame)
    if d.draw(st.integers(0, 3)):
        fix_checksums(buf, l3)
    if d.draw(st.integers(0, 5)) == 0:
        del buf[d.draw(st.integers(0, len(buf))):]
    return bytes(buf)


@st.composite
def ethernet_frames(draw: st.DrawFn) -> Build:
    d = draw(st.data())
    ethertype = draw(st.one_of(st.sampled_from([0x0800, 0x0806, 0x8100, 0x88A8, 0x86DD, 0x05DC]),
                               st.integers(0, 0xFFFF)))
    frame = eth(draw(MACS), ethertype) + draw(st.binary(max_size=120))
    if draw(st.booleans()):
        frame = frame[: draw(st.integers(0, 20))]
    return lambda h: [finish(frame, d)]


@st.composite
def arp_frames(draw: st.DrawFn) -> Build:
    hrd = draw(st.sampled_from([1, 6]) | U16)
    pro = draw(st.sampled_from([0x0800]) | U16)
    hln, pln = draw(st.sampled_from([6]) | U8), draw(st.sampled_from([4]) | U8)
    op = draw(st.sampled_from([1, 2, 3, 0]) | U16)
    sha = draw(st.sampled_from([A_MAC, bytes(6), b"\xff" * 6, B_MAC]))
    body = struct.pack("!HHBBH6s4s6s4s", hrd, pro, hln, pln, op, sha, draw(ADDRS),
                       draw(st.sampled_from([bytes(6), B_MAC])), draw(ADDRS))
    body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=20))
    frame = eth(draw(MACS), 0x0806) + body
    return lambda h: [frame]


@st.composite
def vlan_frames(draw: st.DrawFn) -> Build:
    d = draw(st.data())
    tags = b""
    for _ in range(draw(st.integers(1, 3))):
        tci = draw(st.sampled_from([VLAN_ID, 0, 4095, 7]) | U16)
        tpid = draw(st.sampled_from([0x8100, 0x88A8]))
        tags += tpid.to_bytes(2, "big") + tci.to_bytes(2, "big")
    inner = draw(st.sampled_from([0x0800, 0x0806, 0x8100]))
    payload = ip_header(d, 1, 8, src=bytes([10, 0, 100, 1]), dst=bytes([10, 0, 100, 2]))
    payload += b"\x08\x00\x00\x00\x00\x01\x00\x01"
    frame = draw(MACS) + A_MAC + tags
    frame += inner.to_bytes(2, "big") + payload
    l3 = len(frame) - len(payload)
    return lambda h: [finish(frame, d, l3)]


@st.composite
def virtio_frames(draw: st.DrawFn) -> Build:
    hdr = struct.pack("<BBHHHHH", draw(U8), draw(st.sampled_from([0, 1, 4, 5, 0x81]) | U8),
                      draw(U16), draw(st.sampled_from([0, 1, 536, 1448]) | U16), draw(U16),
                      draw(U16), 0)[: draw(st.sampled_from([VNET_HDR_LEN] * 4 + [0, 5, 10]))]
    proto = draw(st.sampled_from([6, 17, 1]))
    d = draw(st.data())
    payload = draw(st.binary(min_size=8, max_size=3000))
    frame = eth(B_MAC, 0x0800) + ip_header(d, proto, len(payload)) + payload
    return lambda h: [hdr + finish(frame, d) if len(hdr) == VNET_HDR_LEN else hdr]


@st.composite
def ipv4_frames(draw: st.DrawFn) -> Build:
    d = draw(st.data())
    proto = draw(st.sampled_from([1, 6, 17, 99, 0, 255]))
    payload = draw(st.binary(max_size=80))
    frame = eth(B_MAC, 0x0800) + ip_header(d, proto, len(payload), draw(ADDRS), draw(ADDRS))
    return lambda h: [finish(frame + payload, d)]


@st.composite
def fragment_trains(draw: st.DrawFn) -> Build:
    """A few fragments of one or two datagrams: gaps, overlaps, odd sizes, MF games."""
    frames = []
    for _ in range(draw(st.integers(1, 8))):
        ident = draw(st.sampled_from([1, 2]))
        off = draw(st.sampled_from([0, 1, 2, 3, 8, 185, 8189, 8191]) | st.integers(0, 0x1FFF))
        mf = draw(st.booleans())
        size = draw(st.sampled_from([0, 1, 7, 8, 16, 24, 64, 1480]))
        proto = draw(st.sampled_from([1, 17, 6]))
        body = bytes([0x41 + (off & 0x0F)]) * size
        frag = (0x2000 if mf else 0) | off
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + size, ident, frag, 64, proto, 0,
                          A_IP_B, B_IP_B)
        buf = bytearray(eth(B_MAC, 0x0800) + iph + body)
        fix_checksums(buf, 14)
        frames.append(bytes(buf))
    return lambda h: frames


@st.composite
def icmp_frames(draw: st.DrawFn) -> Build:
    d = draw(st.data())
    icmp_type = draw(st.sampled_from([0, 3, 4, 5, 8, 11, 12, 13, 14]) | U8)
    code = draw(st.sampled_from([0, 1, 3, 4]) | U8)
    qproto = draw(st.sampled_from([6, 17, 1, 50]))
    quoted = ip_header(d, qproto, 8, src=B_IP_B, dst=A_IP_B)
    sport = draw(st.sampled_from([TCP_PORT, UDP_PORT]) | U16)
    quoted += struct.pack("!HHI", sport, draw(U16), draw(st.integers(0, 2**32 - 1)))
    quoted = quoted[: draw(st.integers(0, len(quoted)))]
    body = struct.pack("!BBHI", icmp_type, code, 0, draw(st.integers(0, 2**32 - 1))) + quoted
    payload = body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body
    frame = eth(B_MAC, 0x0800) + ip_header(d, 1, len(payload)) + payload
    return lambda h: [finish(frame, d)]


@st.composite
def udp_frames(draw: st.DrawFn) -> Build:
    d = draw(st.data())
    payload = draw(st.binary(max_size=60))
    ulen = draw(st.sampled_from([8 + len(payload)] * 3) | U16)
    dport = draw(st.sampled_from([UDP_PORT, 9, 0]) | U16)
    udp = struct.pack("!HHHH", draw(U16), dport, ulen, draw(st.sampled_from([0, 1]))) + payload
    dst = draw(st.sampled_from([B_IP_B, bytes([10, 0, 0, 255]), b"\xff" * 4]))
    frame = eth(B_MAC, 0x0800) + ip_header(d, 17, len(udp), dst=dst) + udp
    return lambda h: [finish(frame, d)]


OPTION = st.one_of(
    st.tuples(st.sampled_from([0, 1]), st.just(b"")),
    st.tuples(st.sampled_from([2, 3, 4, 5, 8, 34, 254, 19, 29, 30]),
              st.binary(max_size=38)),
)


@st.composite
def tcp_option_bytes(draw: st.DrawFn) -> bytes:
    """An option list: right lengths mostly, wrong ones, truncated ones."""
    out = b""
    for kind, body in draw(st.lists(OPTION, max_size=8)):
        if kind in (0, 1):
            out += bytes([kind])
            continue
        length = len(body) + 2 if draw(st.integers(0, 3)) else draw(U8)
        out += bytes([kind, length]) + body
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out[:40] + bytes(-len(out[:40]) % 4)


@st.composite
def tcp_segments(draw: st.DrawFn) -> Build:
    """Segments with fuzzed options and flags, at the connection or the listener."""
    d = draw(st.data())
    opts = draw(tcp_option_bytes())
    flags = draw(st.sampled_from([0x10, 0x18, 0x02, 0x04, 0x12, 0x11, 0x14, 0x01]) | U8)
    to_conn = draw(st.booleans())
    seq_delta = draw(st.sampled_from([0, 0, 1, -1, 2**31, 65535]) | st.integers(-2**31, 2**31))
    ack_delta = draw(st.sampled_from([0, 0, -1, 1, 2**30]) | st.integers(-2**31, 2**31))
    window = draw(U16)
    payload = draw(st.binary(max_size=100))
    count = draw(st.integers(1, 3))

    def build(h: Harness) -> list[bytes]:
        cport, sport, rcv_nxt, snd_nxt = h.tcp_ctx()
        if not to_conn:
            cport, sport, rcv_nxt, snd_nxt = 40000 + seq_delta % 1000, TCP_PORT, 1, 0
        frames = []
        for i in range(count):
            seq = (rcv_nxt + seq_delta + i * len(payload)) & 0xFFFFFFFF
            hdr = struct.pack("!HHIIHHHH", cport, sport, seq, (snd_nxt + ack_delta) & 0xFFFFFFFF,
                              ((20 + len(opts)) << 10) | flags, window, 0, 0)
            seg = hdr + opts + payload
            frame = eth(B_MAC, 0x0800) + ip_header(d, 6, len(seg)) + seg
            frames.append(finish(frame, d))
        return frames
    return build


STRATEGIES = {
    "ethernet": ethernet_frames(), "arp": arp_frames(), "vlan": vlan_frames(),
    "virtio": virtio_frames(), "ipv4": ipv4_frames(), "frag": fragment_trains(),
    "icmp": icmp_frames(), "udp": udp_frames(), "tcp": tcp_segments(),
}
