"""IPv4 fragmentation and reassembly, sans-IO.

:class:`Reassembler` is the stack's ``ip_defrag``: one queue per
(source, destination, protocol, identification) as in the kernel's
``inet_frag_queue`` (net/ipv4/inet_fragment.c, net/ipv4/ip_fragment.c). It
takes fragments and the current time and hands back complete datagrams; the
caller drives its timer with :meth:`Reassembler.next_deadline` and
:meth:`Reassembler.expire` and sends the ICMP Time Exceeded itself.

:func:`fragment` is ``ip_do_fragment``'s slow path: it splits one datagram
into MTU-sized fragments.

Python pays per packet, not per byte: fragment data is copied once when it is
queued, held as ``bytes`` in a list, and joined once when the datagram is
complete; no loop ever walks the payload byte by byte.
"""

from __future__ import annotations

import heapq
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

from ustack.checksum import internet_checksum
from ustack.stats import Stats
from ustack.sysctl import Sysctl

Buffer = bytes | bytearray | memoryview

# Bits of the 16-bit flags + fragment offset field (RFC 791 section 3.1).
IP_RF = 0x8000
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET = 0x1FFF

IP_MAX_LEN = 0xFFFF
IP_MIN_HLEN = 20

# Option type octets (RFC 791 section 3.1): the top bit is the copy flag.
IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_COPY = 0x80

# What one queued fragment costs on top of its bytes, like the part of
# skb->truesize that is not data (struct sk_buff + shared info), and what a
# queue costs by itself (inet_frag_alloc charges f->qsize, sizeof(struct ipq)).
# Without these a flood of tiny fragments would be nearly free to hold.
FRAG_OVERHEAD = 256
QUEUE_OVERHEAD = 192

# ECN codepoints of the TOS byte (RFC 3168 section 5) and the bits the kernel
# ORs together per queue (ip4_frag_ecn: IPFRAG_ECN_NOT_ECT .. IPFRAG_ECN_CE).
INET_ECN_MASK = 3
INET_ECN_CE = 3
IPFRAG_ECN_NOT_ECT = 1 << 0
IPFRAG_ECN_CE = 1 << INET_ECN_CE

_HDR = struct.Struct("!BBHHHBBH4s4s")


@dataclass(eq=False)
class _FragQueue:
    """One datagram being reassembled (struct ipq / inet_frag_queue).

    Fragments are kept as (offset, data) in arrival order and sorted once on
    completion. The covered byte ranges are kept separately as sorted,
    disjoint, non-adjacent *runs* (the kernel's frag runs,
    ``inet_frag_queue_insert``): that is what overlap detection needs, and a
    datagram is complete when one run covers 0..len.
    """

    key: tuple[bytes, int, int]
    deadline: float
    frags: list[tuple[int, bytes]] = field(default_factory=list)
    run_starts: list[int] = field(default_factory=list)
    run_ends: list[int] = field(default_factory=list)
    # q.len: the end of the datagram if the last fragment arrived, else the
    # largest end seen so far (ip_frag_queue).
    length: int = 0
    last_in: bool = False
    # Header of the offset-0 fragment (INET_FRAG_FIRST_IN when not None),
    # and what an ICMP Time Exceeded must quote: that header + 8 data bytes.
    first_header: bytes | None = None
    quote: bytes = b""
    mem: int = QUEUE_OVERHEAD
    ecn: int = 0
    # q.max_size / max_df_size: the reassembled datagram keeps DF only when
    # the largest fragment carried it (ip_frag_reasm).
    max_size: int = 0
    max_df_size: int = 0
    dead: bool = False


# Results of _insert, named after the kernel's IPFRAG_* codes.
_IPFRAG_OK = 0
_IPFRAG_DUP = 1
_IPFRAG_OVERLAP = 2


def _insert(q: _FragQueue, offset: int, end: int) -> int:
    """Record [offset, end) in the queue's runs (inet_frag_queue_insert).

    Since CVE-2018-5391 (FragmentSmack) and RFC 5722 the kernel accepts no
    overlap at all: a fragment lying wholly inside what was already received
    is a harmless duplicate (retransmission); any other overlap is an attack
    or a broken sender and condemns the whole datagram.
    """
    starts, ends = q.run_starts, q.run_ends
    j = bisect_right(starts, offset)
    i = j - 1
    left = i >= 0 and ends[i] >= offset
    if left and ends[i] > offset:
        return _IPFRAG_DUP if end <= ends[i] else _IPFRAG_OVERLAP
    right = j < len(starts) and starts[j] <= end
    if right and starts[j] < end:
        return _IPFRAG_OVERLAP
    if left and right:
        ends[i] = ends[j]
        del starts[j], ends[j]
    elif left:
        ends[i] = end
    elif right:
        starts[j] = offset
    else:
        starts.insert(j, offset)
        ends.insert(j, end)
    return _IPFRAG_OK


class Reassembler:
    """ip_defrag / inet_frag_queue: one queue per (src, dst, proto, id)."""

    def __init__(self, sysctl: Sysctl, stats: Stats) -> None:
        self._sysctl = sysctl
        self._stats = stats
        # Insertion order is creation order: the oldest queue comes first,
        # which is what the evictor wants.
        self._queues: dict[tuple[bytes, int, int], _FragQueue] = {}
        # (deadline, serial, queue); killed queues are skipped lazily.
        self._timers: list[tuple[float, int, _FragQueue]] = []
        self._serial = 0
        self._mem = 0

    @property
    def mem(self) -> int:
        """Bytes charged now (frag_mem_limit)."""
        return self._mem

    def __len__(self) -> int:
        return len(self._queues)

    def add(self, header: Buffer, payload: Buffer, now: float) -> bytes | None:
        """Queue one fragment; return the whole datagram when it completes it.

        *header* is the fragment's validated IPv4 header (options included),
        *payload* its data. The result is the offset-0 fragment's header with
        total length, flags, offset (and ECN, checksum) rewritten, followed by
        the reassembled payload (ip_frag_queue + ip_frag_reasm).
        """
        stats = self._stats
        mib = stats.ip
        mib["ReasmReqds"] += 1
        (_, tos, _, ident, frag_off, _, proto, _, saddr, daddr) = _HDR.unpack_from(header)
        offset = (frag_off & IP_OFFSET) << 3
        more = bool(frag_off & IP_MF)
        size = len(payload)
        end = offset + size

        # RFC 791 section 3.2: every fragment but the last carries a multiple
        # of 8 bytes. The kernel trims such a fragment to a multiple of 8 and
        # refuses an empty one (-EINVAL); here both are simply refused, which
        # keeps the queue untouched.
        if size == 0 or (more and size & 7):
            stats.drop("FRAG_INVALID")
            return None

        key = (saddr + daddr, proto, ident)
        q = self._queues.get(key)

        # No datagram can be longer than 65535 bytes (ip_frag_reasm's
        # out_oversize); checked on arrival so an impossible queue holds no memory.
        if end + IP_MIN_HLEN > IP_MAX_LEN:
            if q is not None:
                self._kill(q)
            mib["ReasmFails"] += 1
            stats.drop("FRAG_OVERSIZE")
            return None

        # Memory: refuse when the charge would pass ipfrag_high_thresh (as
        # inet_frag_find does) and evict the oldest queues down to
        # ipfrag_low_thresh (the former inet_frag_evictor).
        charge = FRAG_OVERHEAD + len(header) + size
        needed = charge if q is not None else charge + QUEUE_OVERHEAD
        if self._mem + needed > self._sysctl["net.ipv4.ipfrag_high_thresh"]:
            mib["ReasmFails"] += 1
            stats.drop("FRAG_REASM_OVERFLOW")
            self._evict(self._sysctl["net.ipv4.ipfrag_low_thresh"])
            return None

        if q is None:
            q = self._create(key, now)

        # ip_frag_queue: where does this fragment end, and is that consistent
        # with what the queue already knows about the datagram's end?
        if not more:
            if end < q.length or (q.last_in and end != q.length):
                return self._discard(q, "FRAG_BAD_END")
            q.last_in = True
            q.length = end
        elif end > q.length:
            if q.last_in:
                return self._discard(q, "FRAG_BAD_END")
            q.length = end

        result = _insert(q, offset, end)
        if result == _IPFRAG_DUP:
            stats.drop("DUP_FRAG")
            return None
        if result == _IPFRAG_OVERLAP:
            stats.ipext["ReasmOverlaps"] += 1
            return self._discard(q, "FRAG_OVERLAP")

        q.frags.append((offset, bytes(payload)))
        q.mem += charge
        self._mem += charge
        q.ecn |= 1 << (tos & INET_ECN_MASK)
        if offset == 0:
            q.first_header = bytes(header)
            q.quote = q.first_header + bytes(payload[:8])
        fragsize = len(header) + size
        q.max_size = max(q.max_size, fragsize)
        if frag_off & IP_DF:
            q.max_df_size = max(q.max_df_size, fragsize)

        if (
            q.last_in
            and q.first_header is not None
            and len(q.run_starts) == 1
            and q.run_ends[0] == q.length
        ):
            return self._reasm(q)
        return None

    def expire(self, now: float) -> list[bytes]:
        """Kill the queues whose ipfrag_time has run out (ip_expire).

        Returns, for each killed queue that had its offset-0 fragment, the
        bytes an ICMP Time Exceeded code 1 must quote (RFC 792: the header +
        64 bits of data); without that fragment there is nothing to quote and
        no ICMP is sent (ip_expire's INET_FRAG_FIRST_IN test).
        """
        quotes: list[bytes] = []
        timers = self._timers
        mib = self._stats.ip
        while timers and timers[0][0] <= now:
            _, _, q = heapq.heappop(timers)
            if q.dead:
                continue
            self._kill(q)
            mib["ReasmFails"] += 1
            mib["ReasmTimeout"] += 1
            if q.first_header is not None:
                quotes.append(q.quote)
        return quotes

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expire` has work, or None with no queue."""
        timers = self._timers
        while timers and timers[0][2].dead:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # -- internals ---------------------------------------------------------

    def _create(self, key: tuple[bytes, int, int], now: float) -> _FragQueue:
        """A new queue whose timer runs from its first fragment (inet_frag_create)."""
        q = _FragQueue(key, now + self._sysctl["net.ipv4.ipfrag_time"])
        self._queues[key] = q
        self._mem += QUEUE_OVERHEAD
        self._serial += 1
        heapq.heappush(self._timers, (q.deadline, self._serial, q))
        return q

    def _kill(self, q: _FragQueue) -> None:
        """Unhash the queue and release its memory (inet_frag_kill + destroy)."""
        q.dead = True
        del self._queues[q.key]
        self._mem -= q.mem
        q.frags = []
        # Completed and killed queues leave dead timer entries behind; rebuild
        # the heap when they dominate so it cannot outgrow the live queues.
        # (In place: expire() may be iterating over the same list.)
        timers = self._timers
        if len(timers) > 2 * len(self._queues) + 64:
            timers[:] = [t for t in timers if not t[2].dead]
            heapq.heapify(timers)

    def _discard(self, q: _FragQueue, reason: str) -> None:
        """ip_frag_queue's discard_qp: the datagram cannot be rebuilt."""
        self._kill(q)
        self._stats.ip["ReasmFails"] += 1
        self._stats.drop(reason)
        return None

    def _evict(self, low: int) -> None:
        """Kill the oldest queues until memory is at most *low*."""
        mib = self._stats.ip
        queues = self._queues
        while self._mem > low and queues:
            self._kill(next(iter(queues.values())))
            mib["ReasmFails"] += 1

    def _reasm(self, q: _FragQueue) -> bytes | None:
        """Build the datagram from a complete queue (ip_frag_reasm)."""
        frags = q.frags
        self._kill(q)
        first_header = q.first_header
        assert first_header is not None
        ihl = len(first_header)
        total = ihl + q.length
        if total > IP_MAX_LEN:
            self._stats.ip["ReasmFails"] += 1
            self._stats.drop("FRAG_OVERSIZE")
            return None
        # ip_frag_ecn_table: Not-ECT mixed with any ECN-capable fragment is
        # invalid (RFC 3168 section 5.3); CE on any fragment marks the whole.
        tos = first_header[1]
        if q.ecn & IPFRAG_ECN_NOT_ECT and q.ecn != IPFRAG_ECN_NOT_ECT:
            self._stats.ip["ReasmFails"] += 1
            self._stats.drop("FRAG_ECN_INVALID")
            return None
        if q.ecn & IPFRAG_ECN_CE:
            tos |= INET_ECN_CE
        hdr = bytearray(first_header)
        hdr[1] = tos
        frag_off = IP_DF if q.max_df_size == q.max_size else 0
        struct.pack_into("!H", hdr, 2, total)
        struct.pack_into("!HBBH", hdr, 6, frag_off, hdr[8], hdr[9], 0)
        struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
        # Fragments are disjoint, so sorting by offset orders them; arrival
        # order is usually sorted or reversed, which Timsort does in O(n).
        frags.sort(key=_offset_of)
        self._stats.ip["ReasmOKs"] += 1
        return b"".join([hdr, *(data for _, data in frags)])


def _options_fragment(options: memoryview) -> None:
    """Overwrite the options a non-first fragment must not carry with NOOPs.

    RFC 791 section 3.1: only options whose copy flag is set are copied into
    every fragment. Like the kernel's ip_options_fragment the header keeps
    its length (the options become NOOPs rather than being removed), so every
    fragment has the same room for data.
    """
    i = 0
    n = len(options)
    while i < n:
        kind = options[i]
        if kind == IPOPT_END:
            return
        if kind == IPOPT_NOOP:
            i += 1
            continue
        if i + 1 >= n:
            return
        optlen = options[i + 1]
        if optlen < 2 or i + optlen > n:
            return
        if not kind & IPOPT_COPY:
            options[i : i + optlen] = bytes([IPOPT_NOOP]) * optlen
        i += optlen


def fragment(header: Buffer, payload: Buffer, mtu: int) -> list[bytes]:
    """Split one datagram into fragments of at most *mtu* bytes (ip_do_fragment).

    *header* is the datagram's IPv4 header with options, its identification
    already chosen. Every fragment but the last carries a multiple of 8 data
    bytes (RFC 791 section 3.2); the first keeps all options, the others only
    those with the copy flag. DF is left as the header has it (deciding to
    send "fragmentation needed" instead is the caller's business, as in
    ip_fragment), and a datagram that is itself a fragment is split again
    with its offset and MF carried over (forwarding, ip_frag_init).
    A datagram that already fits is returned as one packet.

    Raises ValueError if *mtu* has no room for the header and 8 data bytes.
    """
    hlen = (header[0] & 0x0F) * 4
    if hlen < IP_MIN_HLEN or len(header) < hlen:
        raise ValueError(f"bad IPv4 header length {hlen}")
    if mtu - hlen < 8:
        raise ValueError(f"mtu {mtu} leaves no room for {hlen} header bytes + 8 data bytes")
    data = memoryview(payload)
    total = len(data)
    # Data per fragment: what the MTU leaves, rounded down to 8 (the offset
    # field counts 8-byte units), unless everything fits in one packet.
    room = total if hlen + total <= mtu else (mtu - hlen) & ~7
    (frag_off,) = struct.unpack_from("!H", header, 6)
    base = (frag_off & IP_OFFSET) << 3
    df = frag_off & IP_DF
    more = frag_off & IP_MF

    hdr = bytearray(header[:hlen])
    later = bytearray(hdr)
    _options_fragment(memoryview(later)[IP_MIN_HLEN:])

    out: list[bytes] = []
    pos = 0
    while True:
        length = min(room, total - pos)
        last = pos + length >= total
        field_ = df | ((base + pos) >> 3)
        if more or not last:
            field_ |= IP_MF
        struct.pack_into("!H", hdr, 2, hlen + length)
        struct.pack_into("!HBBH", hdr, 6, field_, hdr[8], hdr[9], 0)
        struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
        out.append(b"".join([hdr, data[pos : pos + length]]))
        if last:
            return out
        pos += length
        hdr = later


def _offset_of(frag: tuple[int, bytes]) -> int:
    return frag[0]
