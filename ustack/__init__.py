"""ustack: a userspace TCP/IP stack that owns a Linux TAP device.

The layout follows ../shared/DESIGN.md: ``link`` (TAP, host config, in-memory
wire), ``nic`` (rings, NAPI), ``net`` (Ethernet, ARP, IPv4, ICMP),
``transport`` (UDP, TCP), ``socket`` (the trio-native socket API), and the
``Stack`` that wires them together. ``open_stack`` runs one on a TAP.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Stack", "open_stack"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): the CLI's client commands import ustack.cli without the
    # stack, trio and the protocol modules, so each call starts quickly.
    if name == "open_stack":
        from .api import open_stack

        return open_stack
    if name == "Stack":
        from .stack import Stack

        return Stack
    raise AttributeError(f"module 'ustack' has no attribute {name!r}")
