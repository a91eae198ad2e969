"""Software GSO: cut a TCP/IPv4 super-segment into MSS-sized frames.

The TCP layer hands down one super-segment of up to 64 KB with ``gso_size``
set to the MSS. A device that cannot pass it on whole (no TSO over the TAP's
virtio-net header) calls ``gso_segment`` just before the wire, as the
kernel's ``validate_xmit_skb`` calls ``skb_gso_segment`` ->
``inet_gso_segment`` -> ``tcp4_gso_segment`` -> ``tcp_gso_segment``
(net/ipv4/af_inet.c, net/ipv4/tcp_offload.c).

Python pays per operation, not per byte: each segment is one bytearray made
by concatenating a prebuilt header template with a memoryview slice of the
payload; only the fields that differ are patched with ``struct.pack_into``;
checksums are the C-speed big-integer sums of ``ustack.checksum``.
"""

from __future__ import annotations

import struct

from ..buffer import CHECKSUM_NONE, CHECKSUM_PARTIAL, Packet
from ..checksum import csum_partial, internet_checksum

# Not a virtio-net value: the kernel's SKB_GSO_TCP_FIXEDID, "keep the IP id
# of the super-segment on every segment" (set by GRO for forwarded flows).
# Nothing in ustack sets it today; a device must mask gso_type with 0xff
# before writing it into a virtio-net header.
SKB_GSO_TCP_FIXEDID = 0x100

# Room left in front of each segment's Ethernet header, so the device can
# push its virtio-net header (12 bytes) without copying the frame again.
GSO_HEADROOM = 16

IPPROTO_TCP = 6
TCP_CHECK_OFFSET = 16  # offsetof(struct tcphdr, check)

_FIN = 0x01
_PSH = 0x08
_CWR = 0x80

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# IPv4 total length and identification (offsets 2 and 4).
_IP_LEN_ID = struct.Struct("!HH")


def gso_segment(pkt: Packet, csum_offload: bool = False) -> list[Packet]:
    """Split the TCP/IPv4 Ethernet frame *pkt* into frames of ``gso_size`` payload.

    *pkt* has ``head`` (= ``mac_off``) at its Ethernet header, ``net_off`` at
    the IPv4 header, ``trans_off`` at the TCP header and ``gso_size`` = MSS.
    Its TCP checksum field may hold the full checksum (``CHECKSUM_NONE``) or
    the pseudo-header sum (``CHECKSUM_PARTIAL``): either way each segment's
    pseudo-header sum is recomputed from the addresses and its own length,
    as ``tcp4_gso_segment`` does for a packet that is not yet partial.

    Each returned segment is a complete frame in its own buffer, headers
    copied, with IPv4 total length, id and header checksum, TCP sequence
    number and flags rewritten (``tcp_gso_segment``: FIN and PSH only on the
    last segment, CWR only on the first). With *csum_offload* the TCP
    checksum is left ``CHECKSUM_PARTIAL`` (pseudo-header sum in the field,
    ``csum_start``/``csum_offset`` set); otherwise it is complete.

    A packet whose payload fits in one segment (or with ``gso_size`` 0) is
    returned as ``[pkt]``, untouched. Raises ValueError for a frame that is
    not TCP over IPv4 or whose header offsets do not fit in it.
    """
    mss = pkt.gso_size
    buf = pkt.buf
    toff = pkt.trans_off
    tail = pkt.tail
    if mss <= 0:
        return [pkt]
    mac = pkt.mac_off if pkt.mac_off >= 0 else pkt.head
    noff = pkt.net_off
    if not (mac <= noff and noff + 20 <= toff and toff + 20 <= tail <= len(buf)):
        raise ValueError("GSO: header offsets do not fit in the frame")
    thlen = (buf[toff + 12] >> 4) << 2
    poff = toff + thlen
    if thlen < 20 or poff > tail:
        raise ValueError("GSO: bad TCP data offset")
    plen = tail - poff
    if plen <= mss:
        return [pkt]
    ver_ihl = buf[noff]
    ihl = (ver_ihl & 0x0F) << 2
    if ver_ihl >> 4 != 4 or noff + ihl != toff or buf[noff + 9] != IPPROTO_TCP:
        raise ValueError("GSO: not a TCP/IPv4 packet")

    # The header template: headroom, then Ethernet + IPv4 + TCP headers as
    # they are, checksums zeroed (each segment fills its own).
    headroom = GSO_HEADROOM
    template = bytearray(headroom) + memoryview(buf)[mac:poff]
    s_noff = headroom + (noff - mac)
    s_toff = headroom + (toff - mac)
    _U16.pack_into(template, s_noff + 10, 0)
    _U16.pack_into(template, s_toff + TCP_CHECK_OFFSET, 0)

    ip_id = _U16.unpack_from(buf, noff + 4)[0]
    id_step = 0 if pkt.gso_type & SKB_GSO_TCP_FIXEDID else 1
    seq = _U32.unpack_from(buf, toff + 4)[0]
    flags = buf[toff + 13]
    first_flags = flags & ~(_FIN | _PSH)
    mid_flags = first_flags & ~_CWR
    last_flags = flags & ~_CWR
    # Pseudo-header sum without the length: addresses and protocol. Each
    # segment adds its TCP length (RFC 9293 section 3.1).
    addr_sum = csum_partial(memoryview(buf)[noff + 12 : noff + 20], IPPROTO_TCP)
    ip_hl = ihl + thlen  # IPv4 total length minus payload
    ip_end = s_noff + ihl
    payload = memoryview(buf)[poff:tail]

    segs: list[Packet] = []
    append = segs.append
    queue, rss_hash, protocol, vlan_tci = pkt.queue, pkt.hash, pkt.protocol, pkt.vlan_tci
    ip_summed = CHECKSUM_PARTIAL if csum_offload else CHECKSUM_NONE
    pack_u16 = _U16.pack_into
    pack_u32 = _U32.pack_into
    pack_len_id = _IP_LEN_ID.pack_into
    last = plen - 1 - (plen - 1) % mss  # payload offset of the last segment
    for off in range(0, plen, mss):
        n = mss if off != last else plen - off
        seg = template + payload[off : off + n]
        pack_len_id(seg, s_noff + 2, ip_hl + n, ip_id)
        ip_id = (ip_id + id_step) & 0xFFFF
        pack_u16(seg, s_noff + 10, internet_checksum(memoryview(seg)[s_noff:ip_end]))
        pack_u32(seg, s_toff + 4, (seq + off) & 0xFFFFFFFF)
        seg[s_toff + 13] = first_flags if off == 0 else last_flags if off == last else mid_flags
        # Pseudo-header sum for this segment's TCP length; never 0, as the
        # protocol word alone makes the sum non-zero.
        pseudo = (addr_sum + thlen + n) % 0xFFFF or 0xFFFF
        if csum_offload:
            pack_u16(seg, s_toff + TCP_CHECK_OFFSET, pseudo)
        else:
            pack_u16(seg, s_toff + TCP_CHECK_OFFSET,
                     internet_checksum(memoryview(seg)[s_toff:], pseudo))
        out = Packet(seg, headroom)
        out.mac_off = headroom
        out.net_off = s_noff
        out.trans_off = s_toff
        out.queue = queue
        out.hash = rss_hash
        out.protocol = protocol
        out.vlan_tci = vlan_tci
        out.ip_summed = ip_summed
        if csum_offload:
            out.csum_start = s_toff
            out.csum_offset = TCP_CHECK_OFFSET
        append(out)
    return segs
