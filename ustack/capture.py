"""Packet taps (the ``ETH_P_ALL`` ptype handlers of this stack) and pcap files.

A tap is a callable ``tap(point, data)`` attached to one capture point of
the path; ``data`` is a memoryview of the packet there, valid only during
the call (copy what you keep, as a ptype handler clones the skb). The
points, in path order:

========== ======== =========================================================
point      link     what is seen
========== ======== =========================================================
rx         Ethernet frames taken off the RX ring by NAPI (after XDP, before
                    GRO): wire frames, or the kernel's super-frames with TSO
gro        Ethernet what ``netif_receive_skb`` gets: GRO's super-segments
ip_rcv     IPv4     packets entering ``ip_rcv`` (before validation)
ip_output  IPv4     packets IP hands to the neighbour layer (after OUTPUT and
                    POSTROUTING, after fragmentation; TCP super-segments whole)
tx         Ethernet frames written to the link: super-frames with TSO, the
                    GSO-cut frames without; with checksum offload the TCP/UDP
                    checksum holds only the pseudo-header sum, as tcpdump
                    shows on a kernel with offload
========== ======== =========================================================

Each layer keeps its point as one attribute that is ``None`` while no tap
is attached, so the path pays one ``is not None`` test when nobody captures.

:class:`Capture` is a bounded tap: it copies at most ``snaplen`` bytes of
each matching packet into a queue limited in bytes; what does not fit is
dropped and counted, so a capture can never grow memory without bound.
:class:`PcapWriter` writes the classic libpcap format.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import BinaryIO

from .capfilter import LINKTYPE_ETHERNET, LINKTYPE_IPV4, compile_filter

log = logging.getLogger(__name__)

Tap = Callable[[str, memoryview], None]

# Capture point -> pcap link type of what it sees.
POINTS: dict[str, int] = {
    "rx": LINKTYPE_ETHERNET,
    "gro": LINKTYPE_ETHERNET,
    "ip_rcv": LINKTYPE_IPV4,
    "ip_output": LINKTYPE_IPV4,
    "tx": LINKTYPE_ETHERNET,
}
DEFAULT_POINTS = ("rx", "tx")
# tcpdump's defaults: snaplen 262144, buffer 2 MiB (-B 2048).
DEFAULT_SNAPLEN = 262144
DEFAULT_BUFFER = 2 * 1024 * 1024
# Bookkeeping charged per queued packet on top of its bytes.
_ENTRY_OVERHEAD = 64


class CaptureError(ValueError):
    """A capture request that cannot be honoured; one-line message."""


def points_linktype(points: Iterable[str]) -> int:
    """The one link type shared by *points*; CaptureError if unknown or mixed."""
    types = set()
    for p in points:
        if p not in POINTS:
            raise CaptureError(f"unknown capture point {p!r} (points: {', '.join(POINTS)})")
        types.add(POINTS[p])
    if not types:
        raise CaptureError("no capture point given")
    if len(types) > 1:
        raise CaptureError(
            "points with an Ethernet header (rx, gro, tx) and without (ip_rcv, ip_output) "
            "cannot share one pcap file: capture them separately"
        )
    return types.pop()


class TapList:
    """The taps of one point, called in the order they were added."""

    __slots__ = ("point", "taps")

    def __init__(self, point: str) -> None:
        self.point = point
        self.taps: list[Tap] = []

    def __call__(self, data: memoryview) -> None:
        for tap in self.taps:
            try:
                tap(self.point, data)
            except Exception:
                # A broken tap must not take the path down; the packet goes on.
                log.exception("capture tap on %s failed", self.point)


def with_vlan_tag(frame: memoryview, tci: int) -> memoryview:
    """*frame* with an 802.1Q tag the NIC stripped (rx-vlan-offload) put back.

    As libpcap does from PACKET_AUXDATA, so a capture after the driver still
    shows the tag that was on the wire; *frame* itself when there is none.
    """
    if not tci:
        return frame
    return memoryview(b"".join((frame[:12], struct.pack("!HH", 0x8100, tci), frame[12:])))


class Capture:
    """A bounded, filtered tap whose packets a reader drains.

    ``count``: stop taking packets after this many (0: no limit).
    ``buffer``: bytes the queue may hold (snapped bytes + a fixed overhead
    per packet); a packet that does not fit is dropped and counted.
    """

    def __init__(
        self, points: Iterable[str], filter_expr: str = "", snaplen: int = DEFAULT_SNAPLEN,
        buffer: int = DEFAULT_BUFFER, count: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.points = list(dict.fromkeys(points))
        self.linktype = points_linktype(self.points)
        if not 1 <= snaplen <= DEFAULT_SNAPLEN:
            raise CaptureError(f"snaplen {snaplen} out of range 1..{DEFAULT_SNAPLEN}")
        if not 1024 <= buffer <= 1 << 30:
            raise CaptureError("capture buffer must be 1 KiB..1 GiB")
        if count < 0:
            raise CaptureError("count must be >= 0")
        self.match = compile_filter(filter_expr)
        self.snaplen = snaplen
        self.buffer = buffer
        self.count = count
        self.clock = clock
        # (timestamp, point, snapped bytes, original length)
        self.queue: deque[tuple[float, str, bytes, int]] = deque()
        self.queued_bytes = 0
        self.captured = 0  # taken into the queue
        self.dropped = 0  # matched but the queue was full
        self.seen = 0  # offered by the taps, before the filter
        # Called when a packet is queued (wakes the reader).
        self.on_packet: Callable[[], None] = lambda: None

    @property
    def done(self) -> bool:
        """Has the capture taken its ``count`` packets?"""
        return 0 < self.count <= self.captured

    def tap(self, point: str, data: memoryview) -> None:
        """The tap itself: filter, snap, queue or drop."""
        self.seen += 1
        if self.done or not self.match(data, self.linktype):
            return
        snapped = bytes(data[: self.snaplen])
        cost = len(snapped) + _ENTRY_OVERHEAD
        if self.queued_bytes + cost > self.buffer:
            self.dropped += 1
            return
        self.queue.append((self.clock(), point, snapped, len(data)))
        self.queued_bytes += cost
        self.captured += 1
        self.on_packet()

    def drain(self) -> list[tuple[float, str, bytes, int]]:
        """Take every queued packet, oldest first."""
        items = list(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return items


_PCAP_HDR = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")
PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps


class PcapWriter:
    """Write the classic libpcap format (pcap-savefile(5)), little-endian."""

    def __init__(self, f: BinaryIO, linktype: int, snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.f = f
        f.write(_PCAP_HDR.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts: float, data: bytes, orig_len: int | None = None) -> None:
        """One record: *data* as captured, *orig_len* as it was on the path."""
        sec = int(ts)
        usec = min(999999, int(round((ts - sec) * 1e6)))
        self.f.write(_PCAP_REC.pack(sec, usec, len(data),
                                    len(data) if orig_len is None else orig_len))
        self.f.write(data)

    def flush(self) -> None:
        self.f.flush()
