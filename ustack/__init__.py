"""ustack: a userspace TCP/IP stack that owns a Linux TAP device.

The layout follows ../shared/DESIGN.md: ``link`` (TAP, host config, in-memory
wire), ``nic`` (rings, NAPI), ``net`` (Ethernet, ARP, IPv4, ICMP), and the
``Stack`` that wires them together.
"""

__version__ = "0.1.0"
