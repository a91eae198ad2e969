"""Packet: the skb of this stack.

One buffer, a ``head``/``tail`` window into it, header offsets and metadata.
Layers never copy a packet to hand it on: on receive they advance ``head``
(``pull``, like ``skb_pull``) and read headers with ``struct.unpack_from`` on
the same buffer; on transmit a packet is allocated with headroom and each
layer writes its header in front of the payload (``push``, like
``skb_push``), so the frame leaves as one contiguous buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .checksum import csum_fold, csum_partial

# ip_summed values, with the kernel's names and numbers (include/linux/skbuff.h).
CHECKSUM_NONE = 0
CHECKSUM_UNNECESSARY = 1
CHECKSUM_COMPLETE = 2
CHECKSUM_PARTIAL = 3

# Room for a virtio-net header (12), Ethernet (14), VLAN (4), IPv4 with options
# (60) and TCP with options (60).
MAX_HEADER = 160


class Packet:
    """A frame or packet and what the layers learned about it.

    ``destructor`` (None by default, then it costs nothing) is the kernel's
    ``skb->destructor`` for transmitted packets, e.g. TCP Small Queues'
    ``tcp_wfree``. The contract: the device calls it exactly once, with the
    packet, through :func:`skb_orphan`, when the frame has left the device
    (written to the link, or, on an impaired wire, when the impairment
    releases it) or was dropped anywhere below the stack (qdisc drop, failed
    link write, impairment loss or limit, GSO failure, qdisc replaced). A
    super-segment cut by software GSO is done once, when its last segment
    is. It runs inside the device's transmit path, so it must not transmit
    itself: it should note the completion and defer new sends (the kernel's
    TSQ tasklet).
    """

    __slots__ = (
        "buf",
        "head",
        "tail",
        "mac_off",
        "net_off",
        "trans_off",
        "queue",
        "hash",
        "ip_summed",
        "csum_start",
        "csum_offset",
        "gso_size",
        "gso_segs",
        "gso_type",
        "vlan_tci",
        "protocol",
        "pkt_type",
        "truesize",
        "destructor",
    )

    def __init__(self, buf: bytes | bytearray, head: int = 0, tail: int | None = None) -> None:
        self.buf = buf
        self.head = head
        self.tail = len(buf) if tail is None else tail
        self.mac_off = -1
        self.net_off = -1
        self.trans_off = -1
        self.queue = 0
        self.hash = 0
        self.ip_summed = CHECKSUM_NONE
        self.csum_start = 0
        self.csum_offset = 0
        self.gso_size = 0
        self.gso_segs = 0
        self.gso_type = 0
        self.vlan_tci = 0
        self.protocol = 0
        self.pkt_type = 0
        # Bytes charged for this buffer, as the kernel's skb->truesize.
        self.truesize = len(buf) + 256
        self.destructor: Callable[[Packet], None] | None = None

    @classmethod
    def alloc(
        cls, payload: bytes | bytearray | memoryview = b"", headroom: int = MAX_HEADER
    ) -> Packet:
        """A transmit packet holding *payload* with room for headers in front."""
        # One allocation and one copy of the payload (no zero-fill to overwrite).
        return cls(bytearray(headroom) + payload, headroom)

    def push(self, n: int) -> int:
        """Open *n* bytes in front of the data and return their offset."""
        self.head -= n
        if self.head < 0:
            raise ValueError("no headroom left in packet")
        return self.head

    def pull(self, n: int) -> int:
        """Consume *n* bytes from the front; return the old head offset."""
        old = self.head
        self.head += n
        return old

    def trim(self, length: int) -> None:
        """Cut the data to *length* bytes (``pskb_trim``, e.g. Ethernet padding)."""
        self.tail = self.head + length

    def __len__(self) -> int:
        return self.tail - self.head

    def data(self) -> memoryview:
        """The bytes between head and tail, without copying."""
        return memoryview(self.buf)[self.head : self.tail]

    def frame(self) -> memoryview:
        """The bytes from the MAC header (or head) to the tail."""
        start = self.mac_off if self.mac_off >= 0 else self.head
        return memoryview(self.buf)[start : self.tail]


def skb_orphan(pkt: Packet) -> None:
    """Run and clear the packet's destructor (``skb_orphan``); a second call does nothing."""
    destructor = pkt.destructor
    if destructor is not None:
        pkt.destructor = None
        destructor(pkt)


def skb_checksum_help(pkt: Packet) -> None:
    """Finish a CHECKSUM_PARTIAL packet in software (``skb_checksum_help``).

    The checksum field already holds the pseudo-header sum; the sum from
    ``csum_start`` to the end, folded, completes it. Needed whenever the
    packet will not reach a device that offloads the checksum.
    """
    start = pkt.csum_start
    field = start + pkt.csum_offset
    total = csum_partial(memoryview(pkt.buf)[start : pkt.tail])
    struct.pack_into("!H", pkt.buf, field, csum_fold(total))
    pkt.ip_summed = CHECKSUM_NONE
