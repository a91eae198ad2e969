"""Ethernet II framing (net/ethernet/eth.c).

``eth_type_trans`` classifies a received frame (to us, broadcast, multicast,
or another host) and records its EtherType; ``eth_header`` writes the header
in front of an outgoing packet.
"""

from __future__ import annotations

import struct

from ..buffer import Packet

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_HLEN = 14
ETH_ALEN = 6
BROADCAST = b"\xff" * 6

# skb->pkt_type values (include/uapi/linux/if_packet.h).
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4

_ETH = struct.Struct("!6s6sH")


def eth_type_trans(pkt: Packet, dev_mac: bytes) -> int:
    """Classify *pkt* and pull the Ethernet header; return the EtherType.

    The caller has checked that the frame holds at least ETH_HLEN bytes.
    """
    buf = pkt.buf
    off = pkt.head
    pkt.mac_off = off
    dst = buf[off : off + 6]
    ethertype = (buf[off + 12] << 8) | buf[off + 13]
    if dst == dev_mac:
        pkt.pkt_type = PACKET_HOST
    elif dst[0] & 1:
        pkt.pkt_type = PACKET_BROADCAST if dst == BROADCAST else PACKET_MULTICAST
    else:
        pkt.pkt_type = PACKET_OTHERHOST
    pkt.protocol = ethertype
    pkt.head = off + ETH_HLEN
    pkt.net_off = pkt.head
    return ethertype


def eth_header(pkt: Packet, dst: bytes, src: bytes, ethertype: int) -> None:
    """Write the Ethernet header in front of *pkt* (``eth_header``)."""
    off = pkt.push(ETH_HLEN)
    _ETH.pack_into(pkt.buf, off, dst, src, ethertype)
    pkt.mac_off = off


def mac_str(mac: bytes) -> str:
    """aa:bb:cc:dd:ee:ff"""
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff``; ValueError with a clear message otherwise."""
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {text!r}") from None
    if mac[0] & 1:
        raise ValueError(f"MAC address {text} is a multicast address")
    return mac
