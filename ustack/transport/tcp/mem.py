"""Socket memory: receive/send buffer accounting, window from free space, autotuning.

The kernel charges every queued sk_buff's truesize (data plus struct
overhead) to the socket: ``sk_rmem_alloc`` for what waits to be read or sits
out of order, ``sk_wmem_queued`` for what waits to be sent or acknowledged,
and both to the protocol-wide ``tcp_memory_allocated`` that ``net.ipv4.tcp_mem``
bounds. ustack keeps its queues as byte arrays, so it charges each arriving
segment as the skbs it came in would be: its bytes plus SKB_TRUESIZE
overhead per wire frame (a GRO super-segment of 45 frames costs 45
overheads). Small segments therefore cost more buffer than their payload,
which is what makes a receive buffer fill before its byte count does.

What the window offers is ``tcp_win_from_space(rcvbuf - rmem_alloc)``
(``tcp_adv_win_scale``: 1 gives half of the free space to the window, the
other half to overhead), and ``tcp_rcv_space_adjust`` (dynamic right-sizing)
grows rcvbuf from the bytes the application reads per RTT, up to
``tcp_rmem[2]``, unless SO_RCVBUF locked it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .seq import seq_sub

#: SKB_TRUESIZE(0) on x86-64: struct sk_buff plus struct skb_shared_info, aligned.
SKB_TRUESIZE_OVERHEAD = 576
#: include/net/tcp.h TCP_INIT_CWND: the first measure of rcvq_space.
TCP_INIT_CWND = 10
PAGE_SIZE = 4096
#: sk_pacing_shift: TCP Small Queues allow ~1 ms (2**-10 s) of the pacing rate.
SK_PACING_SHIFT = 10
#: tcp_collapse repacks queued data into skbs of about a page (SKB_MAX_ORDER(0, 0)).
COLLAPSE_SIZE = 4096


def truesize(nbytes: int, mss: int) -> int:
    """What *nbytes* arriving in frames of *mss* bytes cost as skbs (at least one)."""
    frames = -(-nbytes // mss) if mss > 0 else 1
    return nbytes + max(frames, 1) * SKB_TRUESIZE_OVERHEAD


class TcpMemAccount:
    """``tcp_memory_allocated`` and ``tcp_memory_pressure``, stack-wide (tcp_mem in pages)."""

    def __init__(self, sysctl: Any, stats: Any) -> None:
        self.sysctl = sysctl
        self.stats = stats
        self.allocated = 0  # bytes charged by every TCP socket
        self.pressure = False

    @property
    def pages(self) -> int:
        return -(-self.allocated // PAGE_SIZE)

    def charge(self, delta: int) -> None:
        """Add *delta* bytes; enter or leave memory pressure (``sk_enter_memory_pressure``)."""
        self.allocated += delta
        low, high, _ = self.sysctl["net.ipv4.tcp_mem"]
        pages = self.pages
        if not self.pressure and pages > high:
            self.pressure = True
            self.stats.tcpext["TCPMemoryPressures"] += 1
        elif self.pressure and pages < low:
            self.pressure = False

    def over_limit(self, extra: int) -> bool:
        """Would *extra* more bytes pass tcp_mem[2] (``__sk_mem_raise_allocated`` fails)?"""
        return -(-(self.allocated + extra) // PAGE_SIZE) > self.sysctl["net.ipv4.tcp_mem"][2]


class TcpMem:
    """Mixin of :class:`TcpConnection`: rmem/wmem accounting and receive autotuning."""

    def _mem_init(self, now: float) -> None:
        # Charged truesize of each chunk of the receive queue: [bytes left, truesize].
        self._rcvq_chunks: deque[list[int]] = deque()
        self._rcvq_charge = 0
        self._ofo_charge = 0  # truesize of what the out-of-order queue holds
        self._charged = 0  # what this socket has charged to the stack-wide account
        #: The stack-wide tcp_mem account (set by the glue); None: no global limit.
        self.mem_account: TcpMemAccount | None = None
        #: SO_RCVBUF was set: no autotuning, and it bounds the window scale.
        self.rcvbuf_locked = False
        #: The largest window we will offer (``window_clamp``).
        self.window_clamp = 0
        # tcp_rcv_space_adjust state (rcvq_space) and the receiver's RTT estimate.
        self.rcvq_space = 0
        self._rcvq_space_copied = 0
        self._rcvq_space_time = now
        self.rcv_rtt = 0.0
        #: Bytes the application has read (the kernel's copied_seq, as a count).
        self.copied = 0
        #: TCP_NOTSENT_LOWAT; 0 means net.ipv4.tcp_notsent_lowat.
        self.notsent_lowat = 0
        #: ``sk_wmem_alloc``: truesize of our packets in the qdisc and device (TSQ).
        self.wmem_alloc = 0
        #: TSQ_THROTTLED: waiting for a TX completion before sending more.
        self.tsq_throttled = False

    # -- conversions -----------------------------------------------------------

    def win_from_space(self, space: int) -> int:
        """``tcp_win_from_space``: the window *space* bytes of buffer can offer."""
        scale = self.sysctl["net.ipv4.tcp_adv_win_scale"]
        if space <= 0:
            return 0
        return space >> -scale if scale <= 0 else space - (space >> scale)

    def space_from_win(self, win: int) -> int:
        """The buffer a window of *win* bytes needs (the inverse of win_from_space)."""
        scale = self.sysctl["net.ipv4.tcp_adv_win_scale"]
        if scale <= 0:
            return win << -scale
        return -(-(win << scale) // ((1 << scale) - 1))

    # -- the receive queue's charge ------------------------------------------

    @property
    def rmem_alloc(self) -> int:
        """``sk_rmem_alloc``: truesize of the receive queue and the out-of-order queue."""
        return self._rcvq_charge + (self._ofo_charge if self._ofo else 0)

    @property
    def wmem_queued(self) -> int:
        """``sk_wmem_queued``: truesize of the send queue (unsent and unacknowledged)."""
        n = len(self._sndq)
        return truesize(n, self.xmit_size_goal or self.snd_mss) if n else 0

    def _rcvq_append(self, data: Any, charge: int | None = None) -> None:
        """Queue in-order *data* for the reader and charge it (``tcp_queue_rcv``).

        *charge* is the truesize it already had (moved from the out-of-order
        queue); by default that of the segment it arrived in.
        """
        n = len(data)
        self._rcvq.append(data)
        ts = truesize(n, self.rcv_mss) if charge is None else charge
        self._rcvq_chunks.append([n, ts])
        self._rcvq_charge += ts
        self._mem_update()

    def _ofo_insert(self, rcv_nxt: int, seq: int, data: Any) -> int:
        """Hold out-of-order *data*, charged as the skb it came in; new bytes stored."""
        if not self._ofo:
            self._ofo_charge = 0
        stored = self._ofo.insert(rcv_nxt, seq, data)
        if stored:
            self._ofo_charge += truesize(len(data), self.rcv_mss)
            self._mem_update()
        return stored

    def _ofo_uncharge(self, nbytes: int) -> int:
        """*nbytes* left the out-of-order queue: their share of its charge, removed."""
        held = self._ofo.nbytes + nbytes
        share = self._ofo_charge * nbytes // held if held else 0
        self._ofo_charge -= share
        return share

    def _rcvq_consumed(self, n: int) -> None:
        """The reader took *n* bytes: free the chunks it emptied (``skb_free``)."""
        chunks = self._rcvq_chunks
        self.copied += n
        while n and chunks:
            head = chunks[0]
            if head[0] > n:
                head[0] -= n
                break
            n -= head[0]
            self._rcvq_charge -= head[1]
            chunks.popleft()
        self._mem_update()

    def _rcvq_purge(self) -> None:
        """Drop everything unread (close, abort, reset)."""
        self._rcvq.clear()
        self._rcvq_chunks.clear()
        self._rcvq_charge = 0
        self._mem_update()

    def _mem_update(self) -> None:
        """Tell the stack-wide account how much this socket holds now."""
        account = self.mem_account
        if account is not None:
            now_charged = self.rmem_alloc + self.wmem_queued
            if now_charged != self._charged:
                account.charge(now_charged - self._charged)
                self._charged = now_charged

    # -- receive memory limits (tcp_try_rmem_schedule, tcp_prune_queue) ----

    def _rmem_schedule(self, nbytes: int) -> bool:
        """May a segment of *nbytes* be queued? Prune out-of-order data to make room.

        As ``tcp_try_rmem_schedule``: over rcvbuf, ``tcp_prune_queue`` runs
        (PruneCalled); the receive queue is already collapsed here, so what
        it can free is the out-of-order queue, highest sequence first
        (``tcp_prune_ofo_queue``, OfoPruned). If that is not enough the
        segment is dropped (RcvPruned). Past tcp_mem[2] it is dropped too
        (TCPRcvQDrop).
        """
        need = truesize(nbytes, self.rcv_mss)
        account = self.mem_account
        if account is not None and account.over_limit(need):
            self.stats.tcpext["TCPRcvQDrop"] += 1
            return False
        if self.rmem_alloc + need <= self.rcvbuf:
            return True
        ext = self.stats.tcpext
        ext["PruneCalled"] += 1
        self._collapse()
        if self.rmem_alloc + need <= self.rcvbuf:
            return True
        if self._ofo:
            ext["OfoPruned"] += 1
            while self._ofo and self.rmem_alloc + need > self.rcvbuf:
                self._ofo_uncharge(self._ofo.drop_last())
            self._mem_update()
        if self.rmem_alloc + need <= self.rcvbuf:
            return True
        ext["RcvPruned"] += 1
        return False

    def _collapse(self) -> None:
        """``tcp_collapse`` / ``tcp_collapse_ofo_queue``: repack many small skbs into
        page-sized ones, so their overhead stops eating the buffer."""
        n = len(self._rcvq)
        if n:
            packed = truesize(n, COLLAPSE_SIZE)
            if packed < self._rcvq_charge:
                self._rcvq_chunks = deque([[n, packed]])
                self._rcvq_charge = packed
        if self._ofo:
            packed = sum(truesize(seq_sub(e, s), COLLAPSE_SIZE)
                         for s, e in self._ofo.intervals())
            if packed < self._ofo_charge:
                self._ofo_charge = packed
        self._mem_update()

    # -- receive-buffer autotuning (tcp_rcv_space_adjust) -------------------

    def _rcv_space_init(self, now: float) -> None:
        """``tcp_init_buffer_space``: the first measure is the initial window."""
        self.rcvq_space = min(self.rcv_wnd or self.win_from_space(self.rcvbuf),
                              TCP_INIT_CWND * self.mss)
        self._rcvq_space_copied = self.copied
        self._rcvq_space_time = now
        if not self.window_clamp:
            self.window_clamp = self.win_from_space(self._rcvbuf_max())

    def _rcvbuf_max(self) -> int:
        return self.rcvbuf if self.rcvbuf_locked else max(self.rcvbuf,
                                                          self.sysctl["net.ipv4.tcp_rmem"][2])

    def _rcv_rtt_sample(self, ts_ecr: int, now: float) -> None:
        """``tcp_rcv_rtt_measure_ts``: the receiver's RTT from its echoed timestamp."""
        rtt = ((self._ts_now(now) - ts_ecr) & 0xFFFFFFFF) / 1000.0
        if rtt >= 600.0:
            return
        rtt = max(rtt, 0.001)
        self.rcv_rtt = rtt if not self.rcv_rtt else self.rcv_rtt * 0.875 + rtt * 0.125

    def _rcv_space_adjust(self, now: float) -> None:
        """Dynamic right-sizing (``tcp_rcv_space_adjust``): once per receiver RTT,
        grow rcvbuf so the window covers twice what the reader took, plus growth."""
        if not self.rcvq_space:
            self._rcv_space_init(now)
            return
        rtt = self.rcv_rtt or (self.srtt or 0.0)
        if not rtt or now - self._rcvq_space_time < rtt:
            return
        copied = self.copied - self._rcvq_space_copied
        if copied > self.rcvq_space:
            if (self.sysctl["net.ipv4.tcp_moderate_rcvbuf"] and not self.rcvbuf_locked
                    and not (self.mem_account is not None and self.mem_account.pressure)):
                rcvwin = 2 * copied + 16 * self.mss
                grow = rcvwin * (copied - self.rcvq_space) // max(self.rcvq_space, 1)
                rcvwin += 2 * grow
                rcvbuf = min(self.space_from_win(rcvwin), self.sysctl["net.ipv4.tcp_rmem"][2])
                if rcvbuf > self.rcvbuf:
                    self.rcvbuf = rcvbuf
                    self.window_clamp = self.win_from_space(rcvbuf)
            self.rcvq_space = copied
        self._rcvq_space_copied = self.copied
        self._rcvq_space_time = now

    # -- send memory (sk_stream_memory_free, tcp_stream_memory_free) --------

    def notsent_bytes(self) -> int:
        """Queued bytes not yet sent (``write_seq - snd_nxt``)."""
        return max(len(self._sndq) - seq_sub(self.snd_nxt, self._sndq_seq), 0)

    def _notsent_lowat(self) -> int:
        return self.notsent_lowat or self.sysctl["net.ipv4.tcp_notsent_lowat"]

    def stream_memory_free(self, wake: bool = False) -> bool:
        """May the application queue more? (``sk_stream_memory_free``).

        The send buffer must have room and, with TCP_NOTSENT_LOWAT, the unsent
        bytes must be under the mark; for a wakeup under half of it
        (``tcp_stream_memory_free(sk, wake=1)``).
        """
        if self.wmem_queued >= self.sndbuf:
            return False
        return (self.notsent_bytes() << int(wake)) < self._notsent_lowat()

    def stream_writeable(self) -> bool:
        """``sk_stream_is_writeable``: wake a blocked writer only once a third of
        the buffer is free (free >= queued / 2, ``sk_stream_min_wspace``)."""
        queued = self.wmem_queued
        return self.sndbuf - queued >= queued >> 1 and self.stream_memory_free(wake=True)

    # -- TCP Small Queues (tcp_small_queue_check, tcp_wfree, tcp_tsq_handler) --

    def pacing_rate(self) -> float | None:
        """``tcp_update_pacing_rate``: cwnd per srtt, doubled in slow start, else 1.2x."""
        if not self.srtt:
            return None
        factor = 2.0 if self.cwnd < self.ssthresh // 2 else 1.2
        return factor * self.cwnd / self.srtt

    def tsq_limit(self, nbytes: int) -> int:
        """Bytes this socket may have below it: ~1 ms at the pacing rate, at least two
        skbs, at most net.ipv4.tcp_limit_output_bytes."""
        limit = 2 * truesize(nbytes, max(self.snd_mss, 1))
        rate = self.pacing_rate()
        cap = self.sysctl["net.ipv4.tcp_limit_output_bytes"]
        pacing = int(rate) >> SK_PACING_SHIFT if rate is not None else cap
        return min(max(limit, pacing), cap)

    def _small_queue_check(self, nbytes: int, in_flight: int) -> bool:
        """``tcp_small_queue_check``: hold the next segment while too much of ours waits
        in the qdisc and rings; a TX completion resumes us (``tcp_wfree``)."""
        if self.wmem_alloc <= self.tsq_limit(nbytes) or not self.sysctl[
                "ustack.tcp_small_queues"]:
            return False
        if in_flight <= self.xmit_size_goal:
            return False  # the retransmit queue is empty or holds one skb: always send
        if not self.tsq_throttled:
            self.tsq_throttled = True
            self.stats.tsq["throttled"] += 1
        return True

    def tsq_queued(self, size: int) -> None:
        """One of our packets (*size* truesize) went into the qdisc (``skb_set_owner_w``)."""
        self.wmem_alloc += size

    def tsq_completed(self, size: int) -> bool:
        """``tcp_wfree``: a packet left the device. True when the socket waits for it."""
        self.wmem_alloc -= size
        return self.tsq_throttled

    def tsq_write(self, now: float) -> None:
        """``tcp_tsq_handler``: resume a throttled socket."""
        if self.tsq_throttled:
            self.tsq_throttled = False
            self.stats.tsq["resumed"] += 1
            self._write_xmit(now)
