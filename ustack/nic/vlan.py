"""802.1Q tags at the NIC: strip on receive, insert on transmit, filter by VLAN id.

A NIC with ``rx-vlan-offload`` takes the 4-byte tag out of a received frame
and hands it over as metadata (``skb->vlan_tci``); with ``tx-vlan-offload``
it inserts the tag from the descriptor on transmit; with ``rx-vlan-filter``
it drops frames of VLANs nobody subscribed to (``ndo_vlan_rx_add_vid``).
The same two byte moves serve the software path when an offload is off
(``skb_vlan_untag``, ``vlan_insert_tag``): both move the 12 address bytes,
never the payload, so every other header offset stays put.
"""

from __future__ import annotations

from ..buffer import Packet

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_HLEN = 4
VLAN_VID_MASK = 0x0FFF
VLAN_N_VID = 4096
_MIN_TAGGED = 14 + VLAN_HLEN  # addresses, tag, inner EtherType


def is_tagged(pkt: Packet) -> bool:
    """Does the frame (head at its MAC header) carry an 802.1Q tag in-band?"""
    off = pkt.head + 12
    return pkt.tail >= off + 2 and pkt.buf[off] == 0x81 and pkt.buf[off + 1] == 0x00


def vlan_untag(pkt: Packet) -> bool:
    """``skb_vlan_untag``: move the frame's tag into ``pkt.vlan_tci``.

    The frame's head is at its MAC header and its EtherType is 802.1Q. False
    (nothing changed) when the frame is malformed: too short to hold a tag
    and an inner EtherType, or VLAN id 4095, which 802.1Q reserves.
    """
    head = pkt.head
    if pkt.tail - head < _MIN_TAGGED:
        return False
    buf = pkt.buf
    tci = (buf[head + 14] << 8) | buf[head + 15]
    if tci & VLAN_VID_MASK == VLAN_VID_MASK:
        return False
    if not isinstance(buf, bytearray):
        buf = pkt.buf = bytearray(buf)
    buf[head + VLAN_HLEN : head + VLAN_HLEN + 12] = buf[head : head + 12]
    pkt.head = head + VLAN_HLEN
    pkt.mac_off = pkt.head
    # A tag of VLAN 0 only carries a priority: the frame belongs to the real
    # device (vlan_do_receive), which vlan_id() == 0 says.
    pkt.vlan_tci = tci
    return True


def vlan_insert_tag(pkt: Packet, tci: int) -> None:
    """``vlan_insert_tag``: put an 802.1Q tag after the addresses of *pkt*'s frame."""
    head = pkt.head
    new = pkt.push(VLAN_HLEN)
    buf = pkt.buf
    buf[new : new + 12] = buf[head : head + 12]
    buf[new + 12] = 0x81
    buf[new + 13] = 0x00
    buf[new + 14] = (tci >> 8) & 0xFF
    buf[new + 15] = tci & 0xFF
    pkt.mac_off = new


def vlan_id(pkt: Packet) -> int:
    """The VLAN id of a received frame (0: untagged or priority-tagged)."""
    return pkt.vlan_tci & VLAN_VID_MASK
