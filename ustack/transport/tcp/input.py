"""The receiving half of a connection (net/ipv4/tcp_input.c).

``segment_arrives`` is RFC 9293 section 3.10.7 for every state but LISTEN
(see listen.py) and CLOSED (the glue answers with ``rst_for``): SYN-SENT
(``tcp_rcv_synsent_state_process``), then for the synchronized states the
PAWS test (RFC 7323 5.3), the acceptability test, RST, SYN, ACK
(``tcp_ack``), data (``tcp_data_queue``) and FIN (``tcp_fin``), and finally
the ACK decision (``__tcp_ack_snd_check``).
"""

from __future__ import annotations

import errno

from . import congestion
from .fastopen import TFO_DATA_NOT_ACKED, TFO_SYN_RETRANSMITTED
from .header import ACK, FIN, PSH, RST, SYN, Segment
from .mem import truesize
from .output import rst_for
from .sack import FLAG_DATA_SACKED
from .seq import after, before, between, seq_add, seq_sub
from .state import TcpState

# include/net/tcp.h
TCP_ATO_MIN = 0.040
TCP_DELACK_MAX = 0.200
TCP_MAX_QUICKACKS = 16
# RFC 9293 3.7.1: the MSS assumed when the peer sends no MSS option.
TCP_DEFAULT_MSS = 536

_DATA_STATES = frozenset((TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2))


class TcpInput:
    """Mixin of :class:`TcpConnection` with the receive path."""

    def segment_arrives(self, seg: Segment, now: float) -> bool:
        """Process one segment addressed to this connection.

        *seg* must already have passed the checksum. Whatever needs sending
        is appended to ``out``; check ``next_deadline()`` afterwards.

        Returns True only when a TIME-WAIT connection gave way to a new SYN
        (``tcp_timewait_state_process``, TCP_TW_SYN): it is now CLOSED and the
        glue should hand the same segment to the listener. Otherwise False.
        """
        self.segs_in += 1
        self.last_rcv = now
        state = self.state
        reuse = False
        if state is TcpState.SYN_SENT:
            self._rcv_synsent(seg, now)
        elif state is TcpState.TIME_WAIT and self._tw_syn(seg):
            self._done(None)
            reuse = True
        elif state is TcpState.CLOSED:
            rst = rst_for(seg)
            if rst is not None:
                self.out.append(rst)
                self.stats.tcp["OutSegs"] += 1
                self.stats.tcp["OutRsts"] += 1
        elif state is not TcpState.LISTEN:
            self._rcv_state_process(seg, now)
        self._flush_wakeup()
        return reuse

    def _tw_syn(self, seg: Segment) -> bool:
        """A SYN that may open a new incarnation despite TIME-WAIT (RFC 6191 / kernel).

        Its sequence number must lie beyond what the old connection used, or
        its timestamp must be newer than the last one seen.
        """
        if seg.flags & (SYN | ACK | RST) != SYN:
            return False
        if after(seg.seq, self.rcv_nxt):
            return True
        opts = seg.options
        return (self.ts_ok and opts is not None and opts.ts_val is not None
                and after(opts.ts_val, self.ts_recent))

    # -- SYN-SENT -------------------------------------------------------------

    def _negotiate(self, seg: Segment) -> None:
        """Adopt what the peer's SYN offered (``tcp_parse_options`` on a SYN)."""
        opts = seg.options
        peer_mss = TCP_DEFAULT_MSS
        sysctl = self.sysctl
        if opts is not None:
            if opts.mss:
                peer_mss = opts.mss
            self.wscale_ok = opts.wscale is not None and bool(
                sysctl["net.ipv4.tcp_window_scaling"])
            self.sack_ok = opts.sack_ok and bool(sysctl["net.ipv4.tcp_sack"])
            self.ts_ok = opts.ts_val is not None and bool(sysctl["net.ipv4.tcp_timestamps"])
            if self.ts_ok:
                self.ts_recent = opts.ts_val
        if self.wscale_ok:
            self.snd_wscale = opts.wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0
        # tcp_sync_mss: the effective MSS leaves room for the timestamp option.
        self.snd_mss = max(min(self.mss, peer_mss) - (12 if self.ts_ok else 0), 64)
        self.rcv_mss = self.snd_mss
        congestion.init_transfer(self)

    def _rcv_synsent(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.3 (``tcp_rcv_synsent_state_process``)."""
        flags = seg.flags
        if flags & ACK and (not after(seg.ack, self.iss) or after(seg.ack, self.snd_max)):
            if not flags & RST:
                self._transmit(RST, seg.ack, b"", now)
            return
        if flags & RST:
            if flags & ACK:
                self._done(errno.ECONNREFUSED)
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_wup = seq_add(seg.seq, 1)
        self.rcv_wnd = min(self.win_from_space(self.rcvbuf), 65535)
        self._negotiate(seg)
        self.snd_wnd = self.max_window = seg.window
        self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
        if flags & ACK:
            self._ack_rtt_sample(seg, seq_add(self.iss, 1), now)
            self.snd_una = seg.ack
            self._syn_data_acked(seg.ack)
            self._rto_at = None
            self.retransmits = self.backoff = 0
            if self.syn_fastopen or self.syn_data:
                self._rcv_fastopen_synack(seg, now)
            self._set_state(TcpState.ESTABLISHED)
            self._enter_quickack()
            if seg.payload or flags & FIN:
                self._rcv_data_and_fin(seq_add(seg.seq, 1), seg.payload, bool(flags & FIN), now)
            self._ack_now = self._ack_pending = True
            self._after_input(now)
        else:
            # Simultaneous open: SYN-RECEIVED, answer with SYN-ACK.
            self._set_state(TcpState.SYN_RECV)
            self._send_syn(now)

    def _syn_data_acked(self, ack: int) -> None:
        """Free the send-queue bytes the handshake's ACK covered (SYN data, TFO child data)."""
        n = seq_sub(ack, self._sndq_seq)
        if n > 0:
            n = min(n, len(self._sndq))
            del self._sndq[:n]
            self._sndq_seq = seq_add(self._sndq_seq, n)
            self.bytes_acked += n
            self._wake = True

    def _rcv_fastopen_synack(self, synack: Segment, now: float) -> None:
        """The SYN-ACK of an active Fast Open (``tcp_rcv_fastopen_synack``).

        Caches the server's cookie and MSS for the destination; when the
        SYN's data was not acknowledged, counts TCPFastOpenActiveFail and
        sends the data again at once, else TCPFastOpenActive.
        """
        opts = synack.options
        cookie = opts.fastopen if opts is not None and opts.fastopen else None
        exp = bool(cookie) and opts.fastopen_exp
        data_lost = self.syn_data and before(self.snd_una, self.snd_max)
        syn_drop = False
        try_exp = 0
        if not self.syn_fastopen:
            cookie = None  # an unsolicited cookie is ignored
        elif self.total_retrans:
            # The SYN timed out and the SYN-ACK neither has a cookie nor acks
            # the data: the server presumably saw only our plain SYN retries.
            syn_drop = cookie is None and data_lost
        elif cookie is None and not self.syn_data:
            # We asked for a cookie and got none: try the other option format next.
            try_exp = 2 if self.syn_fastopen_exp else 1
        if self.metrics is not None:
            self.metrics.fastopen_set(self.remote_ip, opts.mss if opts and opts.mss else 0,
                                      cookie, exp, syn_drop, try_exp, now)
        if data_lost:
            self.fastopen_client_fail = (TFO_SYN_RETRANSMITTED if self.total_retrans
                                         else TFO_DATA_NOT_ACKED)
            # tcp_non_congestion_loss_retransmit: resend the data without a cwnd cut.
            self.snd_nxt = self.snd_una
            self.stats.tcpext["TCPFastOpenActiveFail"] += 1
            return
        self.syn_data_acked = self.syn_data
        if self.syn_data_acked:
            self.stats.tcpext["TCPFastOpenActive"] += 1
            if self.syn_fastopen_ch and self.tfo is not None:
                self.tfo.active_reenable()

    # -- synchronized states ------------------------------------------------

    def _rcv_established_fast(self, seg: Segment, now: float) -> bool:
        """``tcp_rcv_established``'s header prediction; False: take the slow path.

        The prediction holds for an in-order segment of an ESTABLISHED
        connection with only ACK (and PSH) set, the window unchanged, a
        timestamp that passes PAWS and no SACK blocks, while nothing waits
        out of order and the receive window is open (``tcp_fast_path_check``).
        Such a segment needs none of RFC 9293's other checks: it is a pure ACK
        that advances SND.UNA (TCPHPAcks), or in-order data that fits the
        window and receive memory (TCPHPHits), whose ACK may advance SND.UNA
        too. The steps left are the slow path's, in its order.
        """
        if (self.state is not TcpState.ESTABLISHED or seg.flags & ~PSH != ACK
                or seg.seq != self.rcv_nxt or self._ofo or not self.rcv_wnd
                or self.orphan or self._fin_seq is not None
                or seg.window << self.snd_wscale != self.snd_wnd):
            return False
        opts = seg.options
        if self.ts_ok:
            if (opts is None or opts.ts_val is None or opts.sack
                    or before(opts.ts_val, self.ts_recent)):
                return False
        elif opts is not None:
            return False
        seq = seg.seq
        ack = seg.ack
        payload = seg.payload
        plen = len(payload)
        advances = after(ack, self.snd_una) and not after(ack, self.snd_max)
        if plen:
            if ack != self.snd_una and not advances:
                return False
            room = seq_sub(seq_add(self.rcv_wup, self.rcv_wnd), seq)
            need = truesize(plen, self.rcv_mss)
            account = self.mem_account
            if (plen > room or self.rmem_alloc + need > self.rcvbuf
                    or (account is not None and account.over_limit(need))):
                return False
        elif not advances:
            return False
        if advances:
            self._tcp_ack(seg, now, fast=True)
        else:
            # tcp_update_wl: the window is the same, its sequence moves on.
            self.probes_out = 0
            if before(self.snd_wl1, seq) or (self.snd_wl1 == seq
                                             and not before(ack, self.snd_wl2)):
                self.snd_wl1, self.snd_wl2 = seq, ack
        if self.ts_ok and not after(seq, self.rcv_wup):
            # tcp_store_ts_recent; tcp_rcv_rtt_measure_ts for full segments.
            self.ts_recent = opts.ts_val
            if plen >= self.rcv_mss and opts.ts_ecr:
                self._rcv_rtt_sample(opts.ts_ecr, now)
        if plen:
            # tcp_queue_rcv + tcp_event_data_recv: the in-order branch of tcp_data_queue.
            self.stats.tcpext["TCPHPHits"] += 1
            if self._rcvq:
                self.stats.tcpext["TCPRcvCoalesce"] += 1
            self._rcvq_append(payload)
            self.rcv_nxt = seq_add(seq, plen)
            self.bytes_received += plen
            if plen > self.rcv_mss:
                self.rcv_mss = min(plen, self.mss)
            self._event_data_recv(now)
            self._wake = True
            self._ack_pending = True
        self._after_input(now)
        return True

    def _rcv_state_process(self, seg: Segment, now: float) -> None:
        """RFC 9293 3.10.7.4 for SYN-RECEIVED and the synchronized states."""
        if self._rcv_established_fast(seg, now):
            return
        flags = seg.flags
        state = self.state
        seq = seg.seq
        if state is TcpState.SYN_RECV and flags & (SYN | ACK | RST) == SYN and seq == self.irs:
            # A retransmitted SYN: answer with the SYN-ACK again (tcp_check_req).
            self._send_syn(now)
            return
        opts = seg.options
        if (self.ts_ok and opts is not None and opts.ts_val is not None and not flags & RST
                and before(opts.ts_val, self.ts_recent)):
            # PAWS, RFC 7323 5.3 (tcp_paws_discard): an old duplicate.
            self.stats.tcpext["PAWSEstab"] += 1
            if seg.payload and before(seq, self.rcv_nxt):
                # tcp_send_dupack: an old duplicate is reported as a D-SACK (RFC 2883).
                self._dsack_set(seq, seq_add(seq, min(len(seg.payload),
                                                      seq_sub(self.rcv_nxt, seq))))
            self._send_dupack_oow(seg, now, "TCPACKSkippedPAWS")
            return
        # First: the acceptability test (tcp_sequence / RFC 9293 table).
        plen = len(seg.payload)
        seg_len = plen + (1 if flags & SYN else 0) + (flags & FIN)
        wnd = seq_sub(seq_add(self.rcv_wup, self.rcv_wnd), self.rcv_nxt)
        rel = seq_sub(seq, self.rcv_nxt)
        if wnd <= 0:
            ok = seg_len == 0 and rel == 0
        elif seg_len == 0:
            ok = 0 <= rel < wnd
        else:
            ok = (0 <= rel < wnd) or (0 <= rel + seg_len - 1 < wnd)
        if not ok:
            if flags & RST:
                # Out of window: ignored (RFC 5961 3.2), counted as a drop reason.
                self.stats.drop("TCP_INVALID_SEQUENCE")
                return
            if flags & SYN and state is not TcpState.TIME_WAIT:
                # RFC 5961 4.2: any SYN in a synchronized state is challenged
                # (tcp_validate_incoming -> syn_challenge).
                self.stats.tcpext["TCPSYNChallenge"] += 1
                self._send_challenge_ack(now)
                return
            if state is TcpState.TIME_WAIT and flags & FIN:
                # A retransmitted FIN: ACK it and restart 2 MSL (tcp_timewait_state_process),
                # whatever the out-of-window ACK limit says (TCP_TW_ACK is not limited).
                self._tw_at = now + self.TCP_TIMEWAIT_LEN
                self._send_ack(now)
                return
            if wnd <= 0 and rel == 0 and not flags & SYN and flags & ACK:
                # RFC 9293: with a zero window still process the ACK (and RST/URG).
                self._tcp_ack(seg, now)
                self._after_input(now)
            if plen and before(seq, self.rcv_nxt):
                # tcp_send_dupack: report the old duplicate as a D-SACK (RFC 2883).
                self._dsack_set(seq, seq_add(seq, plen))
            self._send_dupack_oow(seg, now, "TCPACKSkippedTimeWait"
                                  if state is TcpState.TIME_WAIT else "TCPACKSkippedSeq")
            return
        # Second: RST (RFC 5961 3.2: exact match resets, in-window challenges).
        if flags & RST:
            if rel != 0:
                self._send_challenge_ack(now)
                return
            self._tcp_reset()
            return
        # Fourth: SYN in a synchronized state (RFC 5961 4).
        if flags & SYN:
            self.stats.tcpext["TCPSYNChallenge"] += 1
            self._send_challenge_ack(now)
            return
        # Fifth: the ACK field.
        if not flags & ACK:
            self.stats.drop("TCP_FLAGS")
            return
        if state is TcpState.SYN_RECV:
            if not between(seg.ack, seq_add(self.snd_una, 1), self.snd_max):
                self._transmit(RST, seg.ack, b"", now)
                return
            if self.listener is not None and not self.listener._child_may_complete(self):
                return
            self.snd_wnd = self.max_window = seg.window << self.snd_wscale
            self.snd_wl1, self.snd_wl2 = seq, seg.ack
            self._ack_rtt_sample(seg, seg.ack, now)
            self.snd_una = seg.ack
            # A Fast Open child may have sent data already; some may be unacked.
            self._syn_data_acked(seg.ack)
            self._rto_at = None if seg.ack == self.snd_max else now + self.rto
            self.retransmits = self.backoff = 0
            self._fastopen_done()
            self._set_state(TcpState.ESTABLISHED)
            if self.listener is not None:
                self.stats.tcp["PassiveOpens"] += 1
                self.listener._child_established(self)
            if self._shut_wr:
                self._queue_fin()
            state = self.state
        elif not self._tcp_ack(seg, now):
            return
        if state is TcpState.FIN_WAIT1 and self.fin_acked():
            self._set_state(TcpState.FIN_WAIT2)
            if self.orphan:
                self._tw_at = now + self.sysctl["net.ipv4.tcp_fin_timeout"]
            state = TcpState.FIN_WAIT2
        elif state is TcpState.CLOSING and self.fin_acked():
            self._enter_time_wait(now)
            return
        elif state is TcpState.LAST_ACK and self.fin_acked():
            self._done(None)
            return
        # RFC 7323 4.3: remember the peer's TSval when the segment covers Last.ACK.sent.
        if (self.ts_ok and opts is not None and opts.ts_val is not None
                and not after(seq, self.rcv_wup)):
            self.ts_recent = opts.ts_val
            if plen >= self.rcv_mss and opts.ts_ecr:
                # tcp_rcv_rtt_measure_ts: the receiver's RTT, for autotuning.
                self._rcv_rtt_sample(opts.ts_ecr, now)
        # Seventh and eighth: data and FIN. After the peer's FIN (CLOSE-WAIT and
        # later) text is ignored; a retransmitted FIN fails the acceptability test.
        if (plen or flags & FIN) and state in _DATA_STATES:
            if self.orphan and plen and after(seq_add(seq, plen), self.rcv_nxt):
                # Data after close(): tcp_rcv_state_process resets (TCPAbortOnData).
                self.stats.tcpext["TCPAbortOnData"] += 1
                self._send_rst(now)
                self._done(None)
                return
            self._rcv_data_and_fin(seq, seg.payload, bool(flags & FIN), now)
        self._after_input(now)

    def _after_input(self, now: float) -> None:
        """Send what the ACK made possible, then decide on our own ACK."""
        self._write_xmit(now)
        if self._ack_pending:
            self._ack_snd_check(now)

    # -- ACK processing ------------------------------------------------------

    def _ack_rtt_sample(self, seg: Segment, ack: int, now: float) -> float | None:
        """Take an RTT sample from the echoed timestamp or the timed segment (RFC 6298/7323).

        Returns the sample (seconds), or None when there was none.
        """
        opts = seg.options
        if self.ts_ok and opts is not None and opts.ts_ecr:
            rtt = ((self._ts_now(now) - opts.ts_ecr) & 0xFFFFFFFF) / 1000.0
            if rtt < 600.0:
                self._rtt_estimator(rtt)
                return rtt
        elif self._rtt_seq is not None and not before(ack, self._rtt_seq):
            rtt = now - self._rtt_time
            self._rtt_estimator(rtt)
            self._rtt_seq = None
            return rtt
        return None

    def _tcp_ack(self, seg: Segment, now: float, fast: bool = False) -> bool:
        """RFC 9293 fifth check in ESTABLISHED and later (``tcp_ack``); False drops the segment.

        *fast*: called from header prediction (no FLAG_SLOWPATH), where an ACK
        that advances SND.UNA counts TCPHPAcks instead of TCPPureAcks.
        """
        ack = seg.ack
        snd_una = self.snd_una
        if after(ack, self.snd_max):
            # Acknowledges something not yet sent: drop it (tcp_ack); outside
            # ESTABLISHED answer with a challenge ACK (tcp_rcv_state_process,
            # RFC 5961 5.2), rate limited so two confused ends cannot loop.
            if self.state is not TcpState.ESTABLISHED:
                self._send_challenge_ack(now)
            return False
        if before(ack, snd_una):
            # RFC 5961 5.2: an ACK older than what the peer may still hold
            # (SND.UNA - MAX.SND.WND, never below what was sent) is a blind
            # injection: challenge it and drop the segment.
            if before(ack, seq_add(snd_una, -min(self.max_window, self.bytes_acked))):
                self._send_challenge_ack(now)
                return False
            # An old duplicate ACK: ignore it, keep the data (RFC 9293).
            return True
        self.probes_out = 0
        # Window update (RFC 9293 3.10.7.4, tcp_ack_update_window).
        wnd = seg.window << self.snd_wscale
        wnd_changed = False
        if before(self.snd_wl1, seg.seq) or (
            self.snd_wl1 == seg.seq and not before(ack, self.snd_wl2)
        ):
            if wnd != self.snd_wnd:
                wnd_changed = True
                self.snd_wnd = wnd
                if wnd > self.max_window:
                    self.max_window = wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
        acked = seq_sub(ack, snd_una)
        if fast:
            self.stats.tcpext["TCPHPAcks"] += 1
        elif not seg.payload:
            self.stats.tcpext["TCPPureAcks"] += 1
        flag = 0
        opts = seg.options
        if self.sack_ok and opts is not None and opts.sack:
            flag = self._sacktag(opts.sack, ack, snd_una)
        prior_in_flight = seq_sub(self.snd_nxt, snd_una)
        if acked == 0:
            # RFC 5681 2: a duplicate ACK carries no data and no window change.
            dup = (not seg.payload and not seg.flags & (SYN | FIN) and not wnd_changed
                   and self.snd_nxt != snd_una)
            if dup or flag & FLAG_DATA_SACKED:
                # tcp_ack: a duplicate or SACK progress confirms the path (sk_dst_confirm).
                self.dst_pending_confirm = True
            if dup or flag:
                self._fastretrans_alert(seg, flag, 0, dup, prior_in_flight, now)
            return True
        rtt = None
        if self.ts_ok or self._rtt_seq is not None:
            rtt = self._ack_rtt_sample(seg, ack, now)
        # tcp_clean_rtx_queue: free acknowledged bytes of the send queue.
        data_acked = seq_sub(ack, self._sndq_seq)
        if data_acked > 0:
            if data_acked > len(self._sndq):
                data_acked = len(self._sndq)
            del self._sndq[:data_acked]
            self._sndq_seq = seq_add(self._sndq_seq, data_acked)
            self.bytes_acked += data_acked
            self._wake = True
        self.snd_una = ack
        self.dst_pending_confirm = True  # FLAG_ACKED: forward progress (sk_dst_confirm)
        if before(self.snd_nxt, ack):
            self.snd_nxt = ack
        self.retransmits = 0
        self.backoff = 0
        self.dupacks = 0
        # tcp_clean_rtx_queue -> ca pkts_acked, with the RTT sample.
        self.ca.pkts_acked(self, acked, rtt, now)
        self._rto_at = None if self.snd_una == self.snd_max else now + self.rto
        # tcp_fastretrans_alert (recovery.py): recovery, undo, cwnd growth.
        self._fastretrans_alert(seg, flag, acked, False, prior_in_flight, now)
        return True

    def _tcp_reset(self) -> None:
        """The peer reset us (``tcp_reset``): the errno depends on the state."""
        state = self.state
        if state is TcpState.SYN_RECV and self.listener is not None:
            # RFC 9293: a passive open returns to LISTEN; the child just goes.
            self._done(None)
        elif state is TcpState.CLOSE_WAIT:
            self._done(errno.EPIPE)
        elif state is TcpState.TIME_WAIT:
            self.stats.tcpext["TWKilled"] += 1
            self._done(None)
        else:
            refused = state is TcpState.SYN_RECV and not self.fastopen_rsk
            self._done(errno.ECONNREFUSED if refused else errno.ECONNRESET)

    # -- data and FIN --------------------------------------------------------

    def _rcv_data_and_fin(self, seq: int, payload: bytes | memoryview, fin: bool,
                          now: float) -> None:
        """Queue in-window data in order or out of order; handle FIN (``tcp_data_queue``)."""
        rcv_nxt = self.rcv_nxt
        rel = seq_sub(seq, rcv_nxt)
        n = len(payload)
        right = seq_sub(seq_add(self.rcv_wup, self.rcv_wnd), rcv_nxt)
        if rel + n > right:
            # Beyond the window we offered: keep what fits; a FIN past it is not seen.
            keep = right - rel
            payload = payload[: keep if keep > 0 else 0]
            n = len(payload)
            fin = False
        if fin:
            self._fin_seq = seq_add(seq, n)
        if rel <= 0:
            if rel + n <= 0 and not (fin and rel + n == 0):
                # Entirely old: a retransmission; ACK at once (tcp_send_dupack).
                self.stats.tcpext["DelayedACKLost"] += 1
                if n:
                    self._dsack_set(seq, seq_add(seq, n))
                self._ack_now = True
                self._ack_pending = True
                return
            if n + rel > 0:
                if rel:
                    # Partly old (tcp_data_queue): D-SACK the duplicate part.
                    self._dsack_set(seq, rcv_nxt)
                data = payload[-rel:] if rel else payload
                if not self._rmem_schedule(len(data)):
                    # No receive memory left: drop it, the peer resends (tcp_data_queue).
                    self._ack_now = self._ack_pending = True
                    return
                if self._rcvq:
                    # Appended to data the user has not read yet (tcp_try_coalesce).
                    self.stats.tcpext["TCPRcvCoalesce"] += 1
                self._rcvq_append(data)
                got = len(data)
                self.rcv_nxt = seq_add(rcv_nxt, got)
                self.bytes_received += got
                if got > self.rcv_mss:
                    # tcp_measure_rcv_mss: the peer's segment size, at most our advmss.
                    self.rcv_mss = min(got, self.mss)
                self._event_data_recv(now)
                if self._ofo:
                    # RFC 5681 4.2: ACK at once when a hole is filled.
                    self._ofo_queue()
                    self._ack_now = True
                self._wake = True
        else:
            if n and not self._rmem_schedule(n):
                # tcp_data_queue_ofo: no memory for it even after pruning.
                self.stats.tcpext["TCPOFODrop"] += 1
            elif n:
                self.stats.tcpext["TCPOFOQueue"] += 1
                if not self._ofo_insert(rcv_nxt, seq, payload):
                    # All of it was already held (tcp_data_queue_ofo): D-SACK it.
                    self._dsack_set(seq, seq_add(seq, n))
            # RFC 5681 4.2: out-of-order data is answered by an immediate duplicate ACK.
            self._enter_quickack()
            self._ack_now = True
        self._ack_pending = True
        if self._fin_seq is not None and self._fin_seq == self.rcv_nxt:
            self._tcp_fin(now)

    def _ofo_queue(self) -> None:
        """Move data that became in-order from the out-of-order queue (``tcp_ofo_queue``)."""
        data = self._ofo.pop_ready(self.rcv_nxt)
        while data is not None:
            self._rcvq_append(data, self._ofo_uncharge(len(data)))
            self.rcv_nxt = seq_add(self.rcv_nxt, len(data))
            self.bytes_received += len(data)
            data = self._ofo.pop_ready(self.rcv_nxt)

    def _tcp_fin(self, now: float) -> None:
        """The peer's FIN is in order (``tcp_fin``, RFC 9293 eighth check)."""
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self._fin_seq = None
        self.fin_received = True
        self._ofo.clear()
        self._ack_now = True
        self._ack_pending = True
        self._wake = True
        state = self.state
        if state is TcpState.ESTABLISHED:
            self._set_state(TcpState.CLOSE_WAIT)
        elif state is TcpState.FIN_WAIT1:
            if self.fin_acked():
                self._enter_time_wait(now)
            else:
                self._set_state(TcpState.CLOSING)
        elif state is TcpState.FIN_WAIT2:
            self._enter_time_wait(now)

    # -- ACK scheduling ------------------------------------------------------

    def _enter_quickack(self) -> None:
        """ACK every segment for a while (``tcp_enter_quickack_mode``)."""
        self.quick = max(self.quick, min(self.rcv_wnd // (2 * self.rcv_mss) or 1,
                                         TCP_MAX_QUICKACKS))
        self.ato = TCP_ATO_MIN

    def _event_data_recv(self, now: float) -> None:
        """Adapt the delayed-ACK timeout to the arrival rate (``tcp_event_data_recv``)."""
        m = now - self._last_data_recv
        self._last_data_recv = now
        if not self._ato_started:
            self._ato_started = True
            self._enter_quickack()
        elif m <= TCP_ATO_MIN / 2:
            self.ato = self.ato / 2 + TCP_ATO_MIN / 2
        elif m < self.ato:
            self.ato = min(self.ato / 2 + m, self.rto)
        elif m > self.rto:
            # Idle for more than an RTO: the peer restarts slow start; ACK quickly.
            self._enter_quickack()

    def _ack_snd_check(self, now: float) -> None:
        """Send the ACK now or arm the delayed-ACK timer (``__tcp_ack_snd_check``).

        More than one full segment unacknowledged is ACKed at once only if the
        window the free buffer offers now is no smaller than the one last
        advertised ("right edge of window advances far enough"); while unread
        data shrinks it, the reader's next read sends the ACK
        (``tcp_cleanup_rbuf``), or else the delayed-ACK timer. The kernel's
        rcvlowat clause (ACK if less than SO_RCVLOWAT is unread) never holds
        here: there is no SO_RCVLOWAT, and the segment just queued is unread.
        The kernel also caps the offer at rcv_ssthresh, which ustack does not
        keep; in a bulk flow under way it has grown to the free space anyway.
        """
        if (self._ack_now or self.quick
                or (seq_sub(self.rcv_nxt, self.rcv_wup) > self.rcv_mss
                    and self._free_window() >= self.rcv_wnd)):
            self._send_ack(now)
        elif self._delack_at is None:
            self._delack_at = now + min(max(self.ato, TCP_ATO_MIN), TCP_DELACK_MAX)
