"""The virtio-net header in front of every TAP frame (IFF_VNET_HDR).

``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h) carries the
offload metadata across the TAP: checksum state (NEEDS_CSUM with
csum_start/csum_offset, DATA_VALID) and GSO (type, gso_size, hdr_len). The
device reads it into packet metadata on receive (``virtio_net_hdr_to_skb``)
and writes it from packet metadata on transmit (``virtio_net_hdr_from_skb``).
FACTS.md has what this kernel does with each field.
"""

from __future__ import annotations

import struct

from ..buffer import CHECKSUM_PARTIAL, CHECKSUM_UNNECESSARY, Packet
from ..checksum import csum_fold, csum_partial
from .gso import TCP_CHECK_OFFSET

# struct virtio_net_hdr, little-endian.
VNET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1


def headers_len(pkt: Packet) -> int:
    """Bytes from ``pkt.head`` to the TCP payload of an outgoing TCP packet."""
    return pkt.trans_off - pkt.head + ((pkt.buf[pkt.trans_off + 12] >> 4) << 2)


def parse_vnet_hdr(pkt: Packet, frame: bytes, vlen: int) -> None:
    """Receive: the header at the front of *frame* into *pkt*'s metadata."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    if flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID):
        # The local kernel built this frame; a NEEDS_CSUM frame holds only
        # the pseudo-header sum, and is as trustworthy as a verified one
        # (FACTS.md, tun_get_user -> virtio_net_hdr_to_skb).
        pkt.ip_summed = CHECKSUM_UNNECESSARY
    if gso_type & 0x7F:
        pkt.gso_type = gso_type
        pkt.gso_size = gso_size
    # virtio counts csum_start from the frame; Packet offsets are into the buffer.
    pkt.csum_start = csum_start + vlen
    pkt.csum_offset = csum_offset


def push_vnet_hdr(pkt: Packet, vlen: int) -> None:
    """Transmit: push a *vlen*-byte header describing *pkt* in front of it."""
    start = pkt.head
    off = pkt.push(vlen)
    flags = 0
    csum_start = csum_offset = 0
    if pkt.ip_summed == CHECKSUM_PARTIAL:
        flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        csum_start = pkt.csum_start - start
        csum_offset = pkt.csum_offset
    # The virtio field is one byte: the TCPV4 type and its ECN bit.
    gso_type = (pkt.gso_type & 0xFF) if pkt.gso_size else VIRTIO_NET_HDR_GSO_NONE
    # hdr_len covers every header up to the TCP payload (virtio spec 5.1.6.2).
    hdr_len = headers_len(pkt) - vlen if pkt.gso_size else 0
    VNET_HDR.pack_into(
        pkt.buf, off, flags, gso_type, hdr_len, pkt.gso_size, csum_start, csum_offset
    )
    if vlen > VNET_HDR.size:
        pkt.buf[off + VNET_HDR.size : off + vlen] = bytes(vlen - VNET_HDR.size)


def gso_prefix(pkt: Packet, vlen: int, csum_offload: bool) -> bytes:
    """The header of each segment software GSO cuts from *pkt*.

    What :func:`push_vnet_hdr` writes for such a segment: no GSO, and with
    *csum_offload* NEEDS_CSUM at the TCP checksum.
    """
    if not vlen:
        return b""
    if csum_offload:
        mac = pkt.mac_off if pkt.mac_off >= 0 else pkt.head
        hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0,
                            pkt.trans_off - mac, TCP_CHECK_OFFSET)
    else:
        hdr = bytes(VNET_HDR.size)
    return hdr + bytes(vlen - VNET_HDR.size)


def wire_form(frame: bytes, vlen: int) -> bytearray:
    """*frame* (header first) as a real wire carries it, for a bit flip.

    A NEEDS_CSUM frame holds only the pseudo-header sum: complete it
    (``skb_checksum_help``), and clear the offload flags so the receiver
    verifies the checksum instead of trusting it; a kernel super-frame keeps
    its GSO fields and is checked as one segment.
    """
    buf = bytearray(frame)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        start = vlen + csum_start
        with memoryview(buf) as view:
            total = csum_partial(view[start:])
        struct.pack_into("!H", buf, start + csum_offset, csum_fold(total))
    VNET_HDR.pack_into(buf, 0, 0, gso_type, hdr_len, gso_size, 0, 0)
    return buf
