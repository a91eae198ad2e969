"""Local port choice shared by TCP and UDP (inet_get_local_port_range).

Ephemeral ports are hard to guess (RFC 6056): without a destination (bind to
port 0, UDP) the search starts at a random place in the range; for an
outgoing connection it follows RFC 6056 section 3.3.4 (Algorithm 4, "double-
hash"), as the kernel's ``__inet_hash_connect`` does: a keyed hash of
(source, destination, destination port) gives the connection's own offset
into the range and picks one of 65536 perturbation counters, which advances
after every use by 2 plus a small random step. An off-path attacker cannot
predict the port of another destination's connection, while connections to
one destination walk the range instead of colliding.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Container

from ..sysctl import Sysctl

# INET_TABLE_PERTURB_SIZE: the number of perturbation counters (a power of two).
TABLE_PERTURB_SIZE = 1 << 16
# net_secret / table_perturb: one key and one table for the process, as the
# kernel keeps one per boot for every namespace.
_SECRET = os.urandom(32)
_table_perturb = [random.getrandbits(32) for _ in range(TABLE_PERTURB_SIZE)]


def port_offset(saddr: bytes, daddr: bytes, dport: int) -> int:
    """``secure_ipv4_port_ephemeral``: a 64-bit keyed hash of the flow's fixed part."""
    digest = hashlib.blake2b(saddr + daddr + dport.to_bytes(2, "big"), key=_SECRET,
                             digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ephemeral_port(sysctl: Sysctl, in_use: Container[int],
                   flow: tuple[bytes, bytes, int] | None = None) -> int:
    """A free port from net.ipv4.ip_local_port_range; EADDRNOTAVAIL when all are taken.

    Without *flow* the search starts at a random offset (``udp_lib_get_port``,
    ``inet_csk_find_open_port``); with *flow* = (saddr, daddr, dport) it is
    ``__inet_hash_connect``: the offset comes from the keyed hash and the
    flow's perturbation counter, ports of the offset's parity are tried first,
    then the others.
    """
    low, high = sysctl["net.ipv4.ip_local_port_range"]
    span = high - low + 1
    if flow is None:
        start = random.randrange(span)
        for i in range(span):
            port = low + (start + i) % span
            if port not in in_use:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free local port in ip_local_port_range")
    offset64 = port_offset(*flow)
    index = offset64 & (TABLE_PERTURB_SIZE - 1)
    remaining = span & ~1 if span > 1 else span
    offset = (_table_perturb[index] + (offset64 >> 32)) % remaining
    offset &= ~1
    for parity in (0, 1):
        port = low + offset + parity
        for i in range(0, remaining, 2):
            if port >= low + span:
                port -= remaining
            if port not in in_use:
                # A little randomness in the next port this counter gives: the
                # more ports were busy, the less (max with a random even step).
                step = max(i, random.randrange(8) * 2)
                _table_perturb[index] = (_table_perturb[index] + step + 2) & 0xFFFFFFFF
                return port
            port += 2
    raise OSError(errno.EADDRNOTAVAIL, "no free local port in ip_local_port_range")
