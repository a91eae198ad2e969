"""ustack: a userspace TCP/IP stack that owns a Linux TAP device.

The layout follows ../shared/DESIGN.md: ``link`` (TAP, host config, in-memory
wire), ``nic`` (rings, NAPI), ``net`` (Ethernet, ARP, IPv4, ICMP),
``transport`` (UDP, TCP), ``socket`` (the trio-native socket API), and the
``Stack`` that wires them together. ``open_stack`` runs one on a TAP.
"""

from .api import open_stack
from .stack import Stack

__all__ = ["Stack", "open_stack"]
__version__ = "0.1.0"
