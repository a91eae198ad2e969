"""The sender's SACK scoreboard (RFC 2018, RFC 6675 section 4; ``tcp_sacktag_write_queue``).

The retransmit queue of this stack is one byte buffer (``_sndq``), so the
marks the kernel keeps in each skb's ``TCP_SKB_CB(skb)->sacked`` live here
in a list of records ``[start, end, flags, rtx_high]`` that cover the sent
and unacknowledged sequence space [SND.UNA, SND.MAX) without gaps, in
order. A record is what one transmission sent (up to a 64 KB super-segment)
and is cut wherever a SACK block or a retransmission edge falls inside it,
as ``tcp_fragment``/``tcp_match_skb_to_sack`` do; adjacent SACKed records
merge again (``tcp_shift_skb_data`` in spirit).

Positions are kept as unwrapped integers (``base_abs`` + distance from
``base_seq``) so the list stays sorted across sequence wrap and can be
bisected. Counts are bytes, like cwnd in this stack: ``sacked_out``,
``lost_out``, ``retrans_out`` as the kernel's (which count segments), and
``rtx_todo``, the lost bytes not yet retransmitted.

Sans-IO: no clock, no sockets; the recovery logic (recovery.py) drives it.
"""

from __future__ import annotations

from bisect import bisect_right

from .seq import seq_add, seq_sub

# TCP_SKB_CB(skb)->sacked bits (include/net/tcp.h).
SACKED = 0x01        # TCPCB_SACKED_ACKED
RETRANS = 0x02       # TCPCB_SACKED_RETRANS: a retransmitted copy is in flight
LOST = 0x04          # TCPCB_LOST
EVER_RETRANS = 0x80  # TCPCB_EVER_RETRANS

# tcp_ack flags (net/ipv4/tcp_input.c) that the scoreboard reports.
FLAG_DATA_SACKED = 0x20
FLAG_DSACKING_ACK = 0x800
FLAG_SACK_RENEGING = 0x2000
FLAG_ORIG_SACK_ACKED = 0x200


def _start(rec: list[int]) -> int:
    return rec[0]


class Scoreboard:
    """Per-connection SACK state of the data in flight."""

    __slots__ = ("recs", "base_seq", "base_abs", "sacked_out", "lost_out", "retrans_out",
                 "rtx_todo", "high_sacked")

    def __init__(self) -> None:
        self.recs: list[list[int]] = []
        self.base_seq = 0
        self.base_abs = 0
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        self.rtx_todo = 0
        #: Unwrapped end of the highest SACKed byte (``tcp_highest_sack_seq``), 0: none.
        self.high_sacked = 0

    def __bool__(self) -> bool:
        return bool(self.recs)

    # -- positions -----------------------------------------------------------

    def pos(self, seq: int) -> int:
        """Unwrapped position of *seq* (which must lie within 2**31 of SND.UNA)."""
        return self.base_abs + seq_sub(seq, self.base_seq)

    def seq(self, pos: int) -> int:
        return seq_add(self.base_seq, pos - self.base_abs)

    @property
    def high(self) -> int:
        """Unwrapped SND.MAX as far as recorded."""
        return self.recs[-1][1] if self.recs else self.base_abs

    # -- marks and counts ----------------------------------------------------

    def _set(self, rec: list[int], new: int) -> None:
        """Change a record's flags and keep the byte counts (``tcp_sacktag_one``)."""
        old = rec[2]
        if old == new:
            return
        n = rec[1] - rec[0]
        diff = old ^ new
        if diff & SACKED:
            self.sacked_out += n if new & SACKED else -n
        if diff & RETRANS:
            self.retrans_out += n if new & RETRANS else -n
        if diff & LOST:
            self.lost_out += n if new & LOST else -n
        was = old & (LOST | RETRANS) == LOST
        now = new & (LOST | RETRANS) == LOST
        if was != now:
            self.rtx_todo += n if now else -n
        rec[2] = new

    def _find(self, pos: int) -> int:
        """Index of the record holding *pos* (0 when before the first)."""
        i = bisect_right(self.recs, pos, key=_start) - 1
        return i if i > 0 else 0

    def _split(self, i: int, pos: int) -> None:
        """Cut record *i* at *pos* (``tcp_fragment``); counts are unchanged."""
        rec = self.recs[i]
        self.recs.insert(i + 1, [pos, rec[1], rec[2], rec[3]])
        rec[1] = pos

    def _merge_sacked(self, lo: int, hi: int) -> None:
        """Join adjacent SACKed records between indexes *lo* and *hi*."""
        recs = self.recs
        i = max(lo, 1)
        hi = min(hi, len(recs) - 1)
        while i <= hi:
            prev, rec = recs[i - 1], recs[i]
            if prev[2] & SACKED and rec[2] & SACKED:
                prev[1] = rec[1]
                prev[2] |= rec[2]
                del recs[i]
                hi -= 1
            else:
                i += 1

    # -- transmit side -------------------------------------------------------

    def sent(self, seq: int, end: int, snd_max: int) -> bool:
        """Record a transmission of [seq, end) made while SND.MAX was *snd_max*.

        New sequence space gets a record; sent-before space is marked
        retransmitted (RETRANS, EVER_RETRANS) with the SND.MAX of the moment,
        which ``mark_lost_retrans`` compares against later SACKs. Returns
        True when any of it was a retransmission.
        """
        if not self.recs:
            self.base_seq, self.base_abs = seq, 0
        a, b = self.pos(seq), self.pos(end)
        high = self.high
        if b > high:
            self.recs.append([max(a, high), b, 0, 0])
        if a >= high:
            return False
        stop = min(b, high)
        nxt = self.pos(snd_max)
        recs = self.recs
        i = self._find(a)
        if recs[i][0] < a:
            self._split(i, a)
            i += 1
        while i < len(recs) and recs[i][0] < stop:
            if recs[i][1] > stop:
                self._split(i, stop)
            rec = recs[i]
            if not rec[2] & SACKED:
                self._set(rec, rec[2] | RETRANS | EVER_RETRANS)
                rec[3] = nxt
            i += 1
        return True

    def next_lost(self, i: int = 0) -> int | None:
        """Index of the first record from *i* that is lost and not yet retransmitted."""
        recs = self.recs
        n = len(recs)
        while i < n:
            if recs[i][2] & (LOST | RETRANS | SACKED) == LOST:
                return i
            i += 1
        return None

    # -- ACK side ------------------------------------------------------------

    def clean(self, ack: int, high_seq: int) -> int:
        """Forget what the cumulative ACK covers (``tcp_clean_rtx_queue``).

        Returns FLAG_ORIG_SACK_ACKED when never-retransmitted data up to
        *high_seq* was acknowledged (F-RTO evidence) and FLAG_SACK_RENEGING
        when the ACK stops at data the receiver had SACKed.
        """
        recs = self.recs
        if not recs:
            return 0
        a = self.pos(ack)
        hs = self.pos(high_seq)
        flag = 0
        i = 0
        n = len(recs)
        while i < n and recs[i][1] <= a:
            rec = recs[i]
            if not rec[2] & (EVER_RETRANS | SACKED) and rec[1] <= hs:
                flag |= FLAG_ORIG_SACK_ACKED
            self._set(rec, 0)
            i += 1
        del recs[:i]
        if recs and recs[0][0] < a:
            rec = recs[0]
            old = rec[2]
            if not old & (EVER_RETRANS | SACKED) and a <= hs:
                flag |= FLAG_ORIG_SACK_ACKED
            self._set(rec, 0)
            rec[0] = a
            self._set(rec, old)
        self.base_seq, self.base_abs = ack, a
        if recs and recs[0][2] & SACKED:
            flag |= FLAG_SACK_RENEGING
        if not recs or self.high_sacked <= a:
            self.high_sacked = 0
        return flag

    def tag(self, start: int, end: int, high_seq: int) -> int:
        """Mark [start, end) SACKed (``tcp_sacktag_walk``); the block must lie above SND.UNA.

        Lost and retransmitted marks give way to SACKED. Returns
        FLAG_DATA_SACKED if anything was newly SACKed, with
        FLAG_ORIG_SACK_ACKED if some of it had never been retransmitted.
        """
        recs = self.recs
        if not recs:
            return 0
        s = max(self.pos(start), recs[0][0])
        e = min(self.pos(end), self.high)
        if s >= e:
            return 0
        hs = self.pos(high_seq)
        flag = 0
        i0 = i = self._find(s)
        while i < len(recs) and recs[i][0] < e:
            rec = recs[i]
            if rec[2] & SACKED:
                i += 1
                continue
            if rec[0] < s:
                self._split(i, s)
                i += 1
                continue
            if rec[1] > e:
                self._split(i, e)
            if not rec[2] & EVER_RETRANS and rec[1] <= hs:
                flag |= FLAG_ORIG_SACK_ACKED
            self._set(rec, SACKED | (rec[2] & EVER_RETRANS))
            flag |= FLAG_DATA_SACKED
            i += 1
        if flag:
            if e > self.high_sacked:
                self.high_sacked = e
            self._merge_sacked(i0, i)
        return flag

    def ever_retrans_bytes(self, start: int, end: int) -> int:
        """Bytes of [start, end) that were retransmitted (for D-SACK undo accounting)."""
        recs = self.recs
        if not recs:
            return 0
        s, e = self.pos(start), self.pos(end)
        total = 0
        i = self._find(s)
        while i < len(recs) and recs[i][0] < e:
            rec = recs[i]
            if rec[2] & EVER_RETRANS:
                total += min(rec[1], e) - max(rec[0], s)
            i += 1
        return max(total, 0)

    # -- loss marking --------------------------------------------------------

    def mark_lost(self, thresh: int) -> None:
        """RFC 6675 IsLost: mark lost every un-SACKed byte with more than *thresh*
        bytes SACKed above it (``tcp_update_scoreboard``/``tcp_mark_head_lost``)."""
        above = self.sacked_out
        if above <= thresh:
            return
        for rec in self.recs:
            flags = rec[2]
            if flags & SACKED:
                above -= rec[1] - rec[0]
                if above <= thresh:
                    return
            elif not flags & LOST:
                self._set(rec, flags | LOST)

    def mark_head_lost(self, mss: int) -> None:
        """Mark the first un-SACKed segment lost (RFC 6675 4.3 / RFC 6582 fast retransmit)."""
        recs = self.recs
        for i, rec in enumerate(recs):
            if not rec[2] & SACKED:
                if rec[2] & LOST:
                    return
                if rec[1] - rec[0] > mss:
                    self._split(i, rec[0] + mss)
                self._set(rec, rec[2] | LOST)
                return

    def mark_lost_retrans(self) -> int:
        """A retransmission is lost when data sent after it has been SACKed
        (``tcp_mark_lost_retrans``); its LOST mark stays so it goes again.
        Returns how many records were found lost."""
        if not self.retrans_out or not self.high_sacked:
            return 0
        hs = self.high_sacked
        n = 0
        for rec in self.recs:
            if rec[0] >= hs:
                break
            if rec[2] & RETRANS and rec[3] < hs:
                self._set(rec, (rec[2] & ~RETRANS) | LOST)
                n += 1
        return n

    def timeout_mark_lost(self) -> bool:
        """RTO: everything not SACKed is lost and no retransmission is in flight
        (``tcp_timeout_mark_lost``). If the receiver reneged (the first record is
        SACKed: the ACK stopped at data it had SACKed) the SACK marks go too.
        Returns True for reneging."""
        recs = self.recs
        reneg = bool(recs) and bool(recs[0][2] & SACKED)
        for rec in recs:
            flags = rec[2]
            if flags & SACKED and not reneg:
                continue
            self._set(rec, (flags & EVER_RETRANS) | LOST)
        if reneg:
            self.high_sacked = 0
        return reneg

    def clear_lost(self) -> None:
        """Forget the LOST marks (``tcp_undo_cwnd_reduction`` with unmark_loss)."""
        for rec in self.recs:
            if rec[2] & LOST:
                self._set(rec, rec[2] & ~LOST)

    def clear(self) -> None:
        """Drop everything (a non-SACK path or a reset connection)."""
        self.recs.clear()
        self.sacked_out = self.lost_out = self.retrans_out = self.rtx_todo = 0
        self.high_sacked = 0
