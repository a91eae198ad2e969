"""Local port choice shared by TCP and UDP (inet_get_local_port_range)."""

from __future__ import annotations

import errno
import random
from collections.abc import Container

from ..sysctl import Sysctl


def ephemeral_port(sysctl: Sysctl, in_use: Container[int]) -> int:
    """A free port from net.ipv4.ip_local_port_range, searched from a random start.

    Like ``inet_hash_connect`` / ``udp_lib_get_port`` choosing an offset
    and walking the range; raises EADDRNOTAVAIL when every port is taken.
    """
    low, high = sysctl["net.ipv4.ip_local_port_range"]
    span = high - low + 1
    start = random.randrange(span)
    for i in range(span):
        port = low + (start + i) % span
        if port not in in_use:
            return port
    raise OSError(errno.EADDRNOTAVAIL, "no free local port in ip_local_port_range")
