"""Receive-side scaling: the Toeplitz hash and the indirection table (RETA).

A NIC hashes each flow's addresses and ports with a secret 40-byte key and
looks the low bits up in a 128-entry table whose entries name queues, so a
flow always lands on the same queue and flows spread over all of them
(Microsoft's RSS specification; the kernel's ethtool -x/-X). ustack uses the
same hash to choose the queue a flow's frames are written on, so the TAP's
flow table steers the kernel's replies back to that queue (FACTS.md).

The hash is computed a byte at a time from tables built once per key: no
per-bit Python loop on the packet path.
"""

from __future__ import annotations

import struct

# The well-known default key of Microsoft's RSS verification data (and of
# many drivers' netdev_rss_key defaults before randomisation).
DEFAULT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
RETA_SIZE = 128
_MAX_INPUT = 36  # IPv6 4-tuple: 16 + 16 + 2 + 2 bytes


class RssError(ValueError):
    """A key or indirection table ethtool would refuse."""


def _byte_tables(key: bytes) -> list[list[int]]:
    """tables[i][v]: what input byte i with value v XORs into the hash."""
    bits = len(key) * 8
    k = int.from_bytes(key, "big")
    tables = []
    for i in range(min(_MAX_INPUT, len(key) - 4)):
        windows = [(k >> (bits - 32 - (8 * i + j))) & 0xFFFFFFFF for j in range(8)]
        row = [0] * 256
        for v in range(1, 256):
            h = 0
            for j in range(8):
                if v & (0x80 >> j):
                    h ^= windows[j]
            row[v] = h
        tables.append(row)
    return tables


class Rss:
    """Toeplitz hashing and queue selection for one device."""

    def __init__(self, queues: int, key: bytes = DEFAULT_KEY) -> None:
        if queues < 1:
            raise RssError("at least one queue")
        self.queues = queues
        # Bumped by every change of key or table, so cached choices can expire.
        self.generation = 0
        self.set_key(key)
        self.reta = [i % queues for i in range(RETA_SIZE)]

    def set_key(self, key: bytes) -> None:
        if len(key) != len(DEFAULT_KEY):
            raise RssError(f"the RSS key must be {len(DEFAULT_KEY)} bytes, got {len(key)}")
        self.key = key
        self._tables = _byte_tables(key)
        self.generation += 1

    def toeplitz(self, data: bytes) -> int:
        """The Toeplitz hash of *data* (addresses then ports, network order)."""
        h = 0
        for row, byte in zip(self._tables, data, strict=False):
            h ^= row[byte]
        return h

    def flow_hash(self, saddr: bytes, daddr: bytes, sport: int = -1, dport: int = -1) -> int:
        """The IPv4 2-tuple hash, or 4-tuple when ports are given."""
        if sport < 0:
            return self.toeplitz(saddr + daddr)
        return self.toeplitz(saddr + daddr + struct.pack("!HH", sport, dport))

    def queue_of(self, flow_hash: int) -> int:
        """The queue the RETA gives a hash (its low 7 bits index the table)."""
        return self.reta[flow_hash & (RETA_SIZE - 1)]

    def set_equal(self, n: int) -> None:
        """``ethtool -X DEV equal N``: spread the table over the first N queues."""
        if not 1 <= n <= self.queues:
            raise RssError(f"equal {n}: the device has {self.queues} queue(s)")
        self.reta = [i % n for i in range(RETA_SIZE)]
        self.generation += 1

    def set_weights(self, weights: list[int]) -> None:
        """``ethtool -X DEV weight W0 W1 ...``: entries in proportion to the weights."""
        if not weights or len(weights) > self.queues or any(w < 0 for w in weights):
            raise RssError(f"weight needs 1..{self.queues} non-negative numbers")
        total = sum(weights)
        if total == 0:
            raise RssError("weights must not all be zero")
        # ethtool's rule: entry i goes to the queue whose cumulative share covers it.
        reta = []
        for i in range(RETA_SIZE):
            point = (i * total) // RETA_SIZE
            acc = 0
            for q, w in enumerate(weights):
                acc += w
                if point < acc:
                    reta.append(q)
                    break
        self.reta = reta
        self.generation += 1
