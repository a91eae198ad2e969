"""802.1Q VLAN sub-interfaces (net/8021q).

``ustack up --vlan 100:10.0.100.2/24`` gives the stack a sub-interface
``tap0.100`` as ``ip link add link tap0 name tap0.100 type vlan id 100``
does: its own address, connected route and neighbour table, sharing the
real device's MAC and queues. Received frames carry their VLAN id as
metadata (stripped by the NIC, ``nic/vlan.py``) and go to that
sub-interface's protocol handlers; frames it sends are tagged with its id.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from ..buffer import Packet
from ..nic.vlan import VLAN_VID_MASK
from ..timer import Timer
from .arp import ArpTable


def parse_vlan(text: str) -> tuple[int, ipaddress.IPv4Interface]:
    """``ID:ADDR/PREFIX`` (e.g. ``100:10.0.100.2/24``); ValueError with a one-line reason."""
    vid_text, sep, addr_text = text.partition(":")
    if not sep or not vid_text.strip().isdigit():
        raise ValueError(f"bad VLAN {text!r}: expected ID:ADDR/PREFIX, e.g. 100:10.0.100.2/24")
    vid = int(vid_text)
    if not 1 <= vid < VLAN_VID_MASK:
        raise ValueError(f"bad VLAN id {vid}: must be 1..4094")
    if "/" not in addr_text:
        raise ValueError(f"bad VLAN address {addr_text!r}: give a prefix, e.g. {addr_text}/24")
    try:
        iface = ipaddress.IPv4Interface(addr_text)
    except ValueError:
        raise ValueError(f"bad VLAN address {addr_text!r}: expected IPv4 ADDR/PREFIX") from None
    if iface.network.prefixlen > 30 or iface.ip in (
        iface.network.network_address, iface.network.broadcast_address
    ):
        raise ValueError(f"bad VLAN address {addr_text}: not a host address in a usable subnet")
    return vid, iface


@dataclass
class VlanDev:
    """One sub-interface: VLAN id, address, neighbour table and handler table."""

    vid: int
    iface: ipaddress.IPv4Interface
    name: str
    arp: ArpTable
    arp_timer: Timer
    # EtherType -> handler for frames of this VLAN (its ptype view).
    ptype: dict[int, Callable[[Packet], None]] = field(default_factory=dict)

    @property
    def addr(self) -> bytes:
        return self.iface.ip.packed

    @property
    def broadcast(self) -> bytes:
        return self.iface.network.broadcast_address.packed
