"""The sending half of a connection (net/ipv4/tcp_output.c).

Every segment a connection emits goes through ``_transmit``
(``tcp_transmit_skb``): it fills in ACK, window and options, appends the
Segment to ``self.out`` and counts it. ``_write_xmit`` (``tcp_write_xmit``)
decides how much queued data may go now: the peer's window, the congestion
window, sender silly-window avoidance (RFC 1122 section 4.2.3.4) and Nagle
(RFC 896 with the kernel's Minshall variant, ``tcp_nagle_check``). Segments
are cut to ``size_goal`` bytes; that single value is what a TSO/GSO issue
raises to 64 KB (``tcp_xmit_size_goal``).
"""

from __future__ import annotations

from .header import ACK, FIN, PSH, RST, SYN, Segment
from .options import TcpOptions
from .secure import oow_rate_limited
from .seq import SEQ_HALF, SEQ_MASK, after, before, seq_add, seq_sub

# Room kept for headers below TCP in a super-segment (include/net/tcp.h).
MAX_TCP_HEADER = 320
TCP_MSS_DEFAULT = 536


def rst_for(seg: Segment) -> Segment | None:
    """The RST that answers *seg* when no connection wants it.

    RFC 9293 section 3.10.7.1 (``tcp_v4_send_reset``): if the segment has an
    ACK, the reset takes its sequence number from SEG.ACK; otherwise it has
    sequence 0 and acknowledges SEG.SEQ + SEG.LEN. Nothing answers a RST.
    The caller builds it with its own address as source and counts
    ``OutSegs`` and ``OutRsts`` (as ``tcp_v4_send_reset`` does).
    """
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dport, seg.sport, seg.ack, 0, RST, 0)
    return Segment(seg.dport, seg.sport, 0, seq_add(seg.seq, seg.seg_len), RST | ACK, 0)


class TcpOutput:
    """Mixin of :class:`TcpConnection` with the transmit path."""

    # -- primitives ---------------------------------------------------------

    def _ts_now(self, now: float) -> int:
        """Our TSval clock: milliseconds plus a per-connection offset (RFC 7323 7.1)."""
        return (int(now * 1000) + self.ts_offset) & SEQ_MASK

    @property
    def size_goal(self) -> int:
        """Bytes per segment the sender builds (``tcp_xmit_size_goal``).

        One MSS, unless the device takes super-segments (``gso_max``: TSO
        or GSO): then as many whole MSS as fit in gso_max less the headers
        (MAX_TCP_HEADER) and in half the largest window the peer offered
        (``tcp_bound_to_half_wnd``), and about a millisecond of the pacing
        rate (``tcp_tso_autosize``): slow paths get small super-segments,
        which keeps TCP Small Queues' two-skb minimum small too.
        """
        mss = self.snd_mss
        gso = self.gso_max
        if gso <= mss:
            return mss
        goal = gso - 1 - MAX_TCP_HEADER
        if self.max_window > TCP_MSS_DEFAULT:
            goal = min(goal, self.max_window >> 1)
        srtt = self.srtt
        if srtt:
            # tcp_tso_autosize: pacing_rate >> sk_pacing_shift, plus gso_max >> (rtt /
            # 2**tcp_tso_rtt_log us) so low-RTT flows keep full super-segments;
            # at least tcp_min_tso_segs (2). The kernel takes min_rtt; srtt here.
            auto = int(self.pacing_rate() or 0) >> 10
            r = int(srtt * 1e6) >> 9
            if r < 32:
                auto += gso >> r
            goal = min(goal, max(auto, 2 * mss))
        return max(mss, goal - goal % mss)

    def flight_size(self) -> int:
        """Bytes sent and not yet acknowledged (RFC 5681 FlightSize)."""
        return seq_sub(self.snd_nxt, self.snd_una)

    def _free_window(self) -> int:
        """The window the free receive buffer can offer (``__tcp_select_window``'s
        free space): ``tcp_space`` after truesize charges, within what the
        window field and the clamp allow."""
        free = self.win_from_space(self.rcvbuf - self.rmem_alloc)
        limit = 65535 << self.rcv_wscale
        if self.window_clamp and limit > self.window_clamp:
            limit = self.window_clamp
        return free if free < limit else limit

    def _select_window(self) -> int:
        """The 16-bit window field to send now (``tcp_select_window``).

        The offer is the free receive-buffer space, moved only in steps of at
        least min(rcvbuf / 2, MSS) (receiver SWS avoidance, RFC 1122
        4.2.3.3, ``__tcp_select_window``) and never so that the right edge
        already offered moves left (RFC 9293 3.8.6.2.2).
        """
        cur = seq_sub(seq_add(self.rcv_wup, self.rcv_wnd), self.rcv_nxt)
        if cur < 0:
            cur = 0
        free = self._free_window()
        ws = self.rcv_wscale
        full = self.win_from_space(self.rcvbuf)
        new = cur if free - cur < min(full >> 1, self.rcv_mss) else free
        wire = new >> ws
        if (wire << ws) < cur:
            wire += 1
        if wire > 65535:
            wire = 65535
        ext = self.stats.tcpext
        if free <= 0 < cur:
            ext["TCPWantZeroWindowAdv"] += 1  # wanted zero, but the edge may not move left
        if wire == 0:
            if self.rcv_wnd:
                ext["TCPToZeroWindowAdv"] += 1
        elif self.rcv_wnd == 0:
            ext["TCPFromZeroWindowAdv"] += 1
        self.rcv_wnd = wire << ws
        self.rcv_wup = self.rcv_nxt
        return wire

    def _transmit(self, flags: int, seq: int, payload: bytes | bytearray, now: float) -> None:
        """Emit one segment (``tcp_transmit_skb``); every ACK-bearing one carries our window."""
        opts = None
        if self.ts_ok:
            opts = TcpOptions(ts_val=self._ts_now(now), ts_ecr=self.ts_recent)
        if self.sack_ok and (self._ofo or self._dsack) and flags & ACK:
            limit = 3 if self.ts_ok else 4
            if payload:
                # The blocks must fit beside the data within the MSS (the kernel
                # shrinks the data instead, tcp_current_mss): 4 bytes of kind,
                # length and padding, 8 per block.
                limit = min(limit, (self.snd_mss - len(payload) - 4) // 8)
            if limit > 0:
                if opts is None:
                    opts = TcpOptions()
                blocks = self._ofo.sack_blocks(limit) if self._ofo else []
                if self._dsack is not None:
                    # RFC 2883: the D-SACK block first, sent once (tcp_options_write).
                    blocks = [self._dsack, *blocks[: limit - 1]]
                    self._dsack = None
                opts.sack = blocks
        if flags & ACK:
            window = self._select_window()
            ack = self.rcv_nxt
            # tcp_event_ack_sent: this segment acknowledges all we owe.
            self._ack_pending = False
            self._ack_now = False
            self._delack_at = None
            if self.quick:
                self.quick -= 1
        else:
            window = 0
            ack = 0
        self.out.append(Segment(self.local_port, self.remote_port, seq, ack, flags, window,
                                opts, payload))
        self.segs_out += 1
        mib = self.stats.tcp
        mib["OutSegs"] += 1
        if flags & RST:
            mib["OutRsts"] += 1

    def _send_ack(self, now: float) -> None:
        """A pure ACK (``tcp_send_ack``).

        It carries the highest sequence number sent (``tcp_acceptable_seq``;
        BSD's snd_max), not a SND.NXT that a timeout moved back: a peer that
        already has those bytes would find an older number unacceptable and
        drop the ACK with it.
        """
        self._transmit(ACK, self.snd_max, b"", now)

    def _send_challenge_ack(self, now: float) -> None:
        """RFC 5961 challenge ACK (``tcp_send_challenge_ack``), rate limited (RFC 5961 7).

        First the connection's own out-of-window ACK limit
        (tcp_invalid_ratelimit, TCPACKSkippedChallenge), then the stack-wide
        budget of tcp_challenge_ack_limit per second.
        """
        if oow_rate_limited(self.last_oow_ack_time, now, self.sysctl):
            self.stats.tcpext["TCPACKSkippedChallenge"] += 1
            return
        self.last_oow_ack_time = now
        if self.challenge_limit is not None and not self.challenge_limit.allow(now):
            return
        self.stats.tcpext["TCPChallengeACK"] += 1
        self._send_ack(now)

    def _send_dupack_oow(self, seg: Segment, now: float, counter: str) -> None:
        """ACK an out-of-window segment unless rate limited (``tcp_oow_rate_limited``).

        Data without SYN is never part of an ACK loop and is always answered;
        anything else at most once per tcp_invalid_ratelimit, counted in
        *counter* (TCPACKSkippedSeq, TCPACKSkippedPAWS, ...) when skipped.
        """
        if not seg.payload or seg.flags & SYN:
            if oow_rate_limited(self.last_oow_ack_time, now, self.sysctl):
                self.stats.tcpext[counter] += 1
                return
            self.last_oow_ack_time = now
        self._send_ack(now)

    def _send_syn(self, now: float) -> None:
        """SYN (``tcp_connect``) or SYN-ACK (``tcp_make_synack``) with our options.

        The first SYN of a Fast Open connect carries the cookie (or a cookie
        request) and, with a cookie, the first queued data
        (``tcp_send_syn_data``); retransmitted SYNs carry neither.
        """
        opts = TcpOptions(mss=self.mss)
        payload = b""
        if self.state_is_syn_recv():
            flags, ack = SYN | ACK, self.rcv_nxt
            if self.wscale_ok:
                opts.wscale = self.rcv_wscale
            opts.sack_ok = self.sack_ok
            if self.ts_ok:
                opts.ts_val, opts.ts_ecr = self._ts_now(now), self.ts_recent
            if self._synack_cookie is not None:
                opts.fastopen, opts.fastopen_exp = self._synack_cookie
            self._ack_pending = False
        else:
            flags, ack = SYN, 0
            sysctl = self.sysctl
            if sysctl["net.ipv4.tcp_window_scaling"]:
                opts.wscale = self.rcv_wscale
            opts.sack_ok = bool(sysctl["net.ipv4.tcp_sack"])
            if sysctl["net.ipv4.tcp_timestamps"]:
                opts.ts_val = self._ts_now(now)
            req = self._fastopen_req
            if req is not None:
                self._fastopen_req = None
                cookie, exp, space = req
                if cookie is not None:
                    # tcp_syn_options: the cookie (b"" asks for one) in its format.
                    opts.fastopen, opts.fastopen_exp = cookie, exp
                    self.syn_fastopen, self.syn_fastopen_exp = True, exp
                if space > 0 and self._sndq:
                    payload = bytes(self._sndq[:space])
                    self.syn_data = True
        # RFC 7323 2.2: the window in a SYN is never scaled.
        window = min(self.win_from_space(self.rcvbuf), 65535)
        self.out.append(Segment(self.local_port, self.remote_port, self.iss, ack, flags,
                                window, opts, payload))
        self.segs_out += 1
        self.stats.tcp["OutSegs"] += 1
        if self.snd_max == self.iss:
            self.snd_nxt = self.snd_max = seq_add(self.iss, 1 + len(payload))
            self._rtt_seq, self._rtt_time = seq_add(self.iss, 1), now
        else:
            self._count_retrans()
        if self._rto_at is None:
            self._rto_at = now + self.rto

    def _send_rst(self, now: float) -> None:
        """Reset the peer (``tcp_send_active_reset``) from the highest sequence sent."""
        self._transmit(RST | ACK, self.snd_max, b"", now)

    def _count_retrans(self, segs: int = 1) -> None:
        self.stats.tcp["RetransSegs"] += segs
        self.total_retrans += segs
        # Karn's algorithm (RFC 6298 section 3): no RTT sample from a retransmission.
        self._rtt_seq = None

    # -- data ---------------------------------------------------------------

    def _send_data(self, seq: int, n: int, fin: bool, now: float) -> None:
        """Send *n* queued bytes from *seq* (plus FIN) and account for them."""
        off = seq_sub(seq, self._sndq_seq)
        payload = self._sndq[off : off + n] if n else b""
        flags = ACK
        end = seq_add(seq, n)
        if fin:
            flags |= FIN
            end = seq_add(end, 1)
        if n and off + n == len(self._sndq):
            flags |= PSH
        self._transmit(flags, seq, payload, now)
        retrans = before(seq, self.snd_max)
        if retrans:
            # RetransSegs counts segments, a super-segment as its gso_segs.
            self._count_retrans(max(-(-n // self.snd_mss), 1))
        elif self._rtt_seq is None and not self.ts_ok:
            self._rtt_seq, self._rtt_time = end, now
        if n < self.snd_mss or n % self.snd_mss:
            # tcp_minshall_update: this skb ends in a partial segment.
            self.snd_sml = end
        if after(end, self.snd_nxt):
            self.snd_nxt = end
        if after(end, self.snd_max):
            self.snd_max = end
        self._tcp_sent(seq, end, retrans, now)
        if self._rto_at is None:
            self._rto_at = now + self.rto
        self._probe_at = None

    def _write_xmit(self, now: float) -> None:
        """Send what the windows, SWS avoidance, Nagle and cork allow (``tcp_write_xmit``)."""
        if not self.state_can_send():
            return
        sndq_end = (self._sndq_seq + len(self._sndq)) & SEQ_MASK
        mss = self.snd_mss
        if ((sndq_end - self.snd_nxt) & SEQ_MASK) > mss or self.xmit_size_goal < mss:
            # tcp_send_mss -> tcp_xmit_size_goal; a sub-MSS queue cannot use more.
            self.xmit_size_goal = self.size_goal
        goal = self.xmit_size_goal
        fin_pending = self._fin_queued
        if self.sack_ok and self.sb.rtx_todo:
            # Lost data first (RFC 6675 NextSeg rule 1), then new data.
            self._xmit_retransmit_queue(now)
        # Pipe, not FlightSize, is what cwnd limits (recovery.py _left_out).
        left_out = self._left_out()
        snd_una = self.snd_una
        wnd_end = (snd_una + self.snd_wnd) & SEQ_MASK
        while True:
            snd_nxt = self.snd_nxt
            # seq_sub, inlined: the signed 32-bit distances of the loop.
            unsent = ((sndq_end - snd_nxt + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            wnd_avail = ((wnd_end - snd_nxt + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            if unsent <= 0:
                # Only the FIN may be left; it needs one byte of window (RFC 9293 3.8.6).
                if fin_pending and unsent == 0 and wnd_avail > 0:
                    self._send_data(snd_nxt, 0, True, now)
                break
            in_flight = ((snd_nxt - snd_una + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            room = self.cwnd - in_flight + left_out
            n = min(unsent, goal, wnd_avail, room)
            if n <= 0:
                break
            last = n == unsent
            if n > mss:
                # tcp_mss_split_point: a super-segment carries whole MSS; a
                # sub-MSS tail rides along only at the queue's end, and only
                # when Nagle would let it go on its own.
                tail = n % mss
                if tail and (not last or (not fin_pending and self._nagle_holds(in_flight,
                                                                               snd_nxt))):
                    n -= tail
                    last = False
            elif n < mss:
                if not last:
                    # Window- or cwnd-limited piece of a longer queue: RFC 1122
                    # 4.2.3.4 sends it only if it is half the largest window seen.
                    if n < room and n >= (self.max_window >> 1) > 0:
                        pass
                    else:
                        break
                elif not fin_pending and self._nagle_holds(in_flight, snd_nxt):
                    break
            if self.wmem_alloc and self._small_queue_check(n, in_flight):
                break  # TCP Small Queues: wait for the device (tcp_write_xmit)
            self._send_data(snd_nxt, n, last and fin_pending and wnd_avail > n, now)
        if self.snd_nxt == self.snd_una and (
            seq_sub(sndq_end, self.snd_nxt) > 0 or (fin_pending and not self.fin_sent())
        ):
            # Nothing in flight, data waits for the window: persist (tcp_check_probe_timer).
            if self._probe_at is None and not self.cork:
                self._probe_at = now + self._backoff_rto()

    def _nagle_holds(self, in_flight: int, snd_nxt: int) -> bool:
        """``tcp_nagle_check`` with ``tcp_minshall_check``: hold a small segment
        while corked, or while an earlier small one is unacknowledged."""
        return self.cork or (
            not self.nodelay and in_flight > 0 and after(self.snd_sml, self.snd_una)
            and not after(self.snd_sml, snd_nxt)
        )

    def _retransmit_head(self, now: float) -> None:
        """Resend the first unacked segment, even beyond the window (``tcp_retransmit_skb``)."""
        if self.state_is_syn():
            self._send_syn(now)
            return
        if self.sack_ok and self.sb.rtx_todo:
            # With a scoreboard: the first lost, un-SACKed segment.
            self._xmit_retransmit_queue(now, force=True)
            return
        sndq_end = seq_add(self._sndq_seq, len(self._sndq))
        # One MSS: after a timeout cwnd is one segment (RFC 5681 3.1).
        n = min(self.snd_mss, max(seq_sub(sndq_end, self.snd_una), 0))
        fin = self._fin_queued and seq_add(self.snd_una, n) == sndq_end
        if n or fin:
            self._send_data(self.snd_una, n, fin, now)

    def _write_wakeup(self, now: float) -> bool:
        """Window probe (``tcp_write_wakeup``): new data if the window has room, else an old byte.

        Returns True when a segment went out.
        """
        if not self.state_can_send():
            return False
        wnd_avail = seq_sub(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt)
        sndq_end = seq_add(self._sndq_seq, len(self._sndq))
        unsent = seq_sub(sndq_end, self.snd_nxt)
        if wnd_avail > 0 and (unsent > 0 or (self._fin_queued and not self.fin_sent())):
            n = min(unsent, wnd_avail, self.snd_mss)
            fin = self._fin_queued and n == unsent and wnd_avail > n
            self._send_data(self.snd_nxt, n, fin, now)
            return True
        # tcp_xmit_probe_skb: SEG.SEQ = SND.UNA - 1 makes the peer answer with an ACK.
        self._transmit(ACK, seq_add(self.snd_una, -1), b"", now)
        return True
