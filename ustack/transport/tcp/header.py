"""The TCP header (RFC 9293 section 3.1): flags, ``Segment``, parse and build.

``parse_segment`` reads a header in place (``struct.unpack_from`` on the
receive buffer) and hands the payload on as a memoryview slice, so no byte is
copied on the way in. ``build_segment`` writes header, options and payload
into one :class:`~ustack.buffer.Packet` with headroom left for IPv4 and
Ethernet in front, and fills in the checksum with the big-integer Internet
checksum (no per-byte Python loop).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ustack.buffer import CHECKSUM_PARTIAL, MAX_HEADER, Packet
from ustack.checksum import checksum_ok, internet_checksum, pseudo_header_sum

from .options import TCPOLEN_TSTAMP_ALIGNED, TcpOptions, parse_options

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

IPPROTO_TCP = 6
TCP_HLEN = 20

_hdr = struct.Struct("!HHIIHHHH")
# The header followed by NOP NOP TIMESTAMP (RFC 7323 appendix A layout).
_hdr_ts = struct.Struct("!HHIIHHHHIII")
_TS_WORD = 0x0101080A
_u16 = struct.Struct("!H")
_FLAG_NAMES = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "W"))


@dataclass(slots=True)
class Segment:
    """One TCP segment as the protocol core sees it.

    ``window`` is the raw 16-bit header field (not yet scaled); ``options``
    is None when the header carries none. ``payload`` may be a memoryview
    into the receive buffer: the core copies what it keeps.
    """

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: TcpOptions | None = None
    payload: bytes | bytearray | memoryview = b""

    def __repr__(self) -> str:
        flags = "".join(c for bit, c in _FLAG_NAMES if self.flags & bit) or "none"
        return (f"Segment({self.sport}>{self.dport} [{flags}] seq={self.seq} ack={self.ack} "
                f"win={self.window} len={len(self.payload)} {self.options or ''})")

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload bytes plus one for each of SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN)


def parse_segment(
    buf: bytes | bytearray | memoryview, off: int = 0, length: int | None = None
) -> Segment | None:
    """Decode the segment of *length* bytes at *off* in *buf*; None if malformed.

    Malformed means: shorter than 20 bytes, a data offset below 5 words or
    past the end, or garbled options. The checksum is not checked here: the
    caller checks it (``tcp_checksum_ok``) unless the NIC already did.
    """
    if length is None:
        length = len(buf) - off
    if length < TCP_HLEN:
        return None
    sport, dport, seq, ack, off_flags, window, _csum, _urg = _hdr.unpack_from(buf, off)
    doff = (off_flags >> 12) << 2
    if doff < TCP_HLEN or doff > length:
        return None
    mv = memoryview(buf)
    options = None
    if doff > TCP_HLEN:
        options = parse_options(mv[off + TCP_HLEN : off + doff])
        if options is None:
            return None
    return Segment(sport, dport, seq, ack, off_flags & 0xFF, window, options,
                   mv[off + doff : off + length])


def tcp_checksum_ok(src_ip: bytes, dst_ip: bytes, data: bytes | bytearray | memoryview) -> bool:
    """True when the TCP segment *data* (header + payload) has a valid checksum."""
    return checksum_ok(data, pseudo_header_sum(src_ip, dst_ip, IPPROTO_TCP, len(data)))


def build_segment(
    seg: Segment,
    src_ip: bytes,
    dst_ip: bytes,
    headroom: int = MAX_HEADER,
    csum_partial_offload: bool = False,
) -> Packet:
    """Write *seg* into a new Packet whose ``head`` is the TCP header.

    The checksum is complete unless *csum_partial_offload* is set: then, as
    for ``CHECKSUM_PARTIAL`` in the kernel, only the pseudo-header sum is
    stored and ``csum_start``/``csum_offset`` tell the device where to finish.
    """
    opts = seg.options
    pkt = Packet.alloc(seg.payload, headroom)
    buf = pkt.buf
    if (opts is not None and opts.ts_val is not None and opts.mss is None
            and opts.wscale is None and not opts.sack and opts.fastopen is None
            and not opts.sack_ok):
        # The established segment: header and aligned timestamp in one pack
        # (tcp_options_write's OPTION_TS with NOP NOP in front).
        off = pkt.push(TCP_HLEN + TCPOLEN_TSTAMP_ALIGNED)
        _hdr_ts.pack_into(buf, off, seg.sport, seg.dport, seg.seq, seg.ack,
                          (8 << 12) | seg.flags, seg.window, 0, 0, _TS_WORD,
                          opts.ts_val, opts.ts_ecr)
    else:
        raw = opts.to_bytes() if opts is not None else b""
        hlen = TCP_HLEN + len(raw)
        off = pkt.push(hlen)
        _hdr.pack_into(buf, off, seg.sport, seg.dport, seg.seq, seg.ack,
                       (hlen << 10) | seg.flags, seg.window, 0, 0)
        if raw:
            buf[off + TCP_HLEN : off + hlen] = raw
    pkt.trans_off = off
    pseudo = pseudo_header_sum(src_ip, dst_ip, IPPROTO_TCP, pkt.tail - off)
    if csum_partial_offload:
        _u16.pack_into(buf, off + 16, pseudo)
        pkt.ip_summed = CHECKSUM_PARTIAL
        pkt.csum_start = off
        pkt.csum_offset = 16
    else:
        _u16.pack_into(buf, off + 16, internet_checksum(pkt.data(), pseudo))
    return pkt
