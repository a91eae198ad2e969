"""The out-of-order queue (``tcp_data_queue_ofo``, RFC 9293 section 3.10.7.4).

Segments that arrive beyond ``rcv_nxt`` are kept as disjoint, non-adjacent
intervals sorted by sequence number, each one bytearray. A new segment is
trimmed against what is already held and merged with the intervals it
overlaps or touches, so the queue never holds a byte twice and merging costs
slice copies, not per-byte work. The common case (the next segment after the
last interval) is an in-place append.
"""

from __future__ import annotations

from .seq import seq_add, seq_sub

Buffer = bytes | bytearray | memoryview


class OfoQueue:
    """Held out-of-order data; ``nbytes`` is what it charges to the receive buffer."""

    __slots__ = ("_ivs", "nbytes", "_last")

    def __init__(self) -> None:
        # [start_seq, data] pairs, sorted, neither overlapping nor adjacent.
        self._ivs: list[list] = []
        self.nbytes = 0
        # Start of the interval that took the latest segment (first SACK block).
        self._last: int | None = None

    def __bool__(self) -> bool:
        return bool(self._ivs)

    def intervals(self) -> list[tuple[int, int]]:
        """(start, end) sequence numbers of the held intervals, in order."""
        return [(s, seq_add(s, len(d))) for s, d in self._ivs]

    def insert(self, rcv_nxt: int, seq: int, data: Buffer) -> int:
        """Hold *data* starting at *seq* (after *rcv_nxt*); return new bytes stored."""
        s = seq_sub(seq, rcv_nxt)
        e = s + len(data)
        ivs = self._ivs
        if ivs:
            last = ivs[-1]
            ls = seq_sub(last[0], rcv_nxt)
            le = ls + len(last[1])
            if ls <= s <= le < e:
                # Fast path: extends the last interval to the right.
                last[1] += data[le - s :]
                self._last = last[0]
                self.nbytes += e - le
                return e - le
        lo = 0
        n = len(ivs)
        while lo < n and seq_sub(ivs[lo][0], rcv_nxt) + len(ivs[lo][1]) < s:
            lo += 1
        hi = lo
        while hi < n and seq_sub(ivs[hi][0], rcv_nxt) <= e:
            hi += 1
        old = 0
        if lo == hi:
            merged = bytearray(data)
            start = seq
        else:
            first = ivs[lo]
            fs = seq_sub(first[0], rcv_nxt)
            if fs <= s:
                merged = first[1]
                start = first[0]
                pos = fs + len(merged)
                old = len(merged)
                rest = ivs[lo + 1 : hi]
            else:
                merged = bytearray()
                start = seq
                pos = s
                rest = ivs[lo:hi]
            for iv_seq, iv_data in rest:
                iv_s = seq_sub(iv_seq, rcv_nxt)
                if pos < iv_s:
                    merged += data[pos - s : iv_s - s]
                merged += iv_data
                old += len(iv_data)
                pos = iv_s + len(iv_data)
            if pos < e:
                merged += data[pos - s :]
        ivs[lo:hi] = [[start, merged]]
        self._last = start
        added = len(merged) - old
        self.nbytes += added
        return added

    def pop_ready(self, rcv_nxt: int) -> bytearray | None:
        """Remove and return the data that now continues at *rcv_nxt*, if any.

        Intervals that *rcv_nxt* has passed entirely are discarded on the way.
        """
        ivs = self._ivs
        while ivs:
            start, data = ivs[0]
            s = seq_sub(start, rcv_nxt)
            if s > 0:
                return None
            del ivs[0]
            self.nbytes -= len(data)
            if s + len(data) > 0:
                return data[-s:] if s else data
        return None

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to *limit* SACK blocks, the most recently changed first (RFC 2018 4)."""
        blocks = self.intervals()
        for i, (s, _) in enumerate(blocks):
            if s == self._last and i:
                blocks.insert(0, blocks.pop(i))
                break
        return blocks[:limit]

    def drop_last(self) -> int:
        """Drop the interval with the highest sequence (``tcp_prune_ofo_queue``); its size."""
        if not self._ivs:
            return 0
        start, data = self._ivs.pop()
        self.nbytes -= len(data)
        if self._last == start:
            self._last = None
        return len(data)

    def clear(self) -> None:
        """Drop everything (connection reset or closed)."""
        self._ivs.clear()
        self.nbytes = 0
        self._last = None
