"""Software GSO: cut a TCP/IPv4 super-segment into MSS-sized frames.

The TCP layer hands down one super-segment of up to 64 KB with ``gso_size``
set to the MSS. A device that cannot pass it on whole (no TSO over the TAP's
virtio-net header) calls ``gso_segment`` just before the wire, as the
kernel's ``validate_xmit_skb`` calls ``skb_gso_segment`` ->
``inet_gso_segment`` -> ``tcp4_gso_segment`` -> ``tcp_gso_segment``
(net/ipv4/af_inet.c, net/ipv4/tcp_offload.c).

Python pays per operation, not per byte: each segment is one bytearray made
by concatenating a prebuilt header template with a memoryview slice of the
payload; only the fields that differ are patched with ``struct.pack_into``.
The headers' checksums are the template's constant sums plus the fields
that differ; only the payload is summed per segment, with the C-speed
big-integer sums of ``ustack.checksum``. A driver that needs no Packet per
segment takes the bare frames (:func:`gso_frames`), its virtio-net header
already in front.
"""

from __future__ import annotations

import struct

from ..buffer import CHECKSUM_NONE, CHECKSUM_PARTIAL, Packet
from ..checksum import FOLD_MAX, csum_partial, csum_words

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
# IPv4 total length, identification, frag_off + TTL + protocol, checksum (from offset 2).
_IP_VAR = struct.Struct("!HHIH")
# TCP seq, ack_seq, data offset, flags, window, checksum (from offset 4).
_TCP_VAR = struct.Struct("!IIBBHH")


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
    headroom = GSO_HEADROOM
    frames = gso_frames(pkt, bytes(headroom), csum_offload)
    if frames is None:
        return [pkt]
    mac = pkt.mac_off if pkt.mac_off >= 0 else pkt.head
    s_noff = headroom + (pkt.net_off - mac)
    s_toff = headroom + (pkt.trans_off - mac)
    queue, rss_hash, protocol, vlan_tci = pkt.queue, pkt.hash, pkt.protocol, pkt.vlan_tci
    ip_summed = CHECKSUM_PARTIAL if csum_offload else CHECKSUM_NONE
    segs: list[Packet] = []
    for seg in frames:
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
        segs.append(out)
    return segs


def gso_frames(pkt: Packet, prefix: bytes, csum_offload: bool = False) -> list[bytearray] | None:
    """The frames :func:`gso_segment` cuts *pkt* into, as bare buffers; None: no cut.

    Each buffer is *prefix* (a device's virtio-net header, or headroom)
    followed by one segment's Ethernet frame, ready for the wire: a driver
    that needs no per-segment metadata writes them as they are. Same rules,
    checks and ValueError as :func:`gso_segment`.
    """
    mss = pkt.gso_size
    buf = pkt.buf
    toff = pkt.trans_off
    tail = pkt.tail
    if mss <= 0:
        return None
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
        return None
    ver_ihl = buf[noff]
    ihl = (ver_ihl & 0x0F) << 2
    if ver_ihl >> 4 != 4 or noff + ihl != toff or buf[noff + 9] != IPPROTO_TCP:
        raise ValueError("GSO: not a TCP/IPv4 packet")

    # The header template: the prefix, then Ethernet + IPv4 + TCP headers as
    # they are, with the fields each segment fills (IP length, id and
    # checksum; TCP seq, flags and checksum) zeroed, so that the sums of the
    # template's headers are those of the constant fields only.
    template = bytearray(prefix) + memoryview(buf)[mac:poff]
    s_noff = len(prefix) + (noff - mac)
    s_toff = len(prefix) + (toff - mac)
    template[s_noff + 2 : s_noff + 6] = bytes(4)
    template[s_noff + 10 : s_noff + 12] = bytes(2)
    template[s_toff + 4 : s_toff + 8] = bytes(4)
    template[s_toff + 13] = 0
    template[s_toff + 16 : s_toff + 18] = bytes(2)
    ip_sum = csum_partial(memoryview(template)[s_noff : s_toff])
    tcp_sum = csum_partial(memoryview(template)[s_toff:])

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
    payload = memoryview(buf)[poff:tail]

    # The fields around the per-segment ones are packed again with their
    # constant values, so each header takes one pack_into.
    frag_ttl = _U32.unpack_from(buf, noff + 6)[0]
    ack = _U32.unpack_from(buf, toff + 8)[0]
    doff, window = buf[toff + 12], _U16.unpack_from(buf, toff + 14)[0]

    frames: list[bytearray] = []
    append = frames.append
    pack_ip = _IP_VAR.pack_into
    pack_tcp = _TCP_VAR.pack_into
    fold = mss <= FOLD_MAX
    last = plen - 1 - (plen - 1) % mss  # payload offset of the last segment
    for off in range(0, plen, mss):
        n = mss if off != last else plen - off
        chunk = payload[off : off + n]
        seg = template + chunk
        tot_len = ip_hl + n
        # The IP header checksum from the constant fields' sum (-sum % 0xffff
        # is the folded complement, as internet_checksum computes it).
        pack_ip(seg, s_noff + 2, tot_len, ip_id, frag_ttl,
                -(ip_sum + tot_len + ip_id) % 0xFFFF)
        ip_id = (ip_id + id_step) & 0xFFFF
        s = (seq + off) & 0xFFFFFFFF
        f = first_flags if off == 0 else last_flags if off == last else mid_flags
        # The pseudo-header sum for this segment's TCP length; never 0 (the
        # protocol word alone makes it non-zero), so the field is never 0.
        pseudo = (addr_sum + thlen + n) % 0xFFFF or 0xFFFF
        if csum_offload:
            check = pseudo
        else:
            # Header sum: the template's constant words, seq and flags; the
            # payload is summed alone (it starts on a word boundary).
            value = csum_words(chunk) if fold else csum_partial(chunk)
            check = -(value + tcp_sum + (s >> 16) + (s & 0xFFFF) + f + pseudo) % 0xFFFF
        pack_tcp(seg, s_toff + 4, s, ack, doff, f, window, check)
        append(seg)
    return frames
