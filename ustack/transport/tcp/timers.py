"""Connection timers (net/ipv4/tcp_timer.c) and the RTT estimator.

A connection keeps one deadline per timer: retransmission (``_rto_at``,
``tcp_retransmit_timer``), zero-window probe (``_probe_at``,
``tcp_probe_timer``), delayed ACK (``_delack_at``, ``tcp_delack_timer``),
keepalive (``_ka_at``, ``tcp_keepalive_timer``) and TIME-WAIT / orphaned
FIN-WAIT-2 (``_tw_at``, the timewait socket of tcp_minisocks.c). The glue
asks ``next_deadline()`` and calls ``on_timer(now)`` once that time has
come; calling it early or twice is harmless.
"""

from __future__ import annotations

import errno

from .seq import seq_add, seq_sub
from .state import TcpState

# RFC 6298 2.1 / include/net/tcp.h TCP_TIMEOUT_INIT
TCP_TIMEOUT_INIT = 1.0
# include/net/tcp.h TCP_TIMEWAIT_LEN: 2 * MSL
TCP_TIMEWAIT_LEN = 60.0
# tcp_orphan_retries(): 0 means 8 for a live peer.
TCP_ORPHAN_RETRIES_DEFAULT = 8

_KEEPALIVE_OFF = frozenset((TcpState.CLOSED, TcpState.SYN_SENT, TcpState.SYN_RECV,
                            TcpState.LISTEN, TcpState.TIME_WAIT))


class TcpTimers:
    """Mixin of :class:`TcpConnection` with the timers."""

    TCP_TIMEWAIT_LEN = TCP_TIMEWAIT_LEN

    def next_deadline(self) -> float | None:
        """The earliest time ``on_timer`` has work to do, or None."""
        best = None
        for t in (self._rto_at, self._probe_at, self._delack_at, self._ka_at, self._tw_at):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_timer(self, now: float) -> None:
        """Run every timer whose deadline is at or before *now*."""
        if self._tw_at is not None and self._tw_at <= now:
            self._tw_timer(now)
        if self._delack_at is not None and self._delack_at <= now:
            self._delack_timer(now)
        if self._rto_at is not None and self._rto_at <= now:
            self._retransmit_timer(now)
        if self._probe_at is not None and self._probe_at <= now:
            self._probe_timer(now)
        if self._ka_at is not None and self._ka_at <= now:
            self._keepalive_timer(now)
        self._flush_wakeup()

    # -- RTT -----------------------------------------------------------------

    @property
    def rto_min(self) -> float:
        return self.sysctl["net.ipv4.tcp_rto_min_us"] / 1e6

    @property
    def rto_max(self) -> float:
        return self.sysctl["net.ipv4.tcp_rto_max_ms"] / 1e3

    def _rtt_estimator(self, rtt: float) -> None:
        """RFC 6298 section 2 (``tcp_rtt_estimator``, ``tcp_set_rto``).

        As in the kernel, the variance term is at least tcp_rto_min, so the
        RTO is SRTT plus max(4 * RTTVAR, rto_min); a valid sample also ends
        any backoff (``tcp_ack_update_rtt``).
        """
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(self.srtt + max(4 * self.rttvar, self.rto_min), self.rto_max)
        self.backoff = 0

    def _backoff_rto(self) -> float:
        """RTO shifted by the probe backoff, capped (``inet_csk_rto_backoff``)."""
        return min(self.rto * (1 << min(self.backoff, 16)), self.rto_max)

    def _max_retries(self) -> int:
        """How many unanswered retransmissions or probes end the connection."""
        sysctl = self.sysctl
        state = self.state
        if state is TcpState.SYN_SENT:
            return sysctl["net.ipv4.tcp_syn_retries"]
        if state is TcpState.SYN_RECV:
            return sysctl["net.ipv4.tcp_synack_retries"]
        if self.orphan:
            return sysctl["net.ipv4.tcp_orphan_retries"] or TCP_ORPHAN_RETRIES_DEFAULT
        return sysctl["net.ipv4.tcp_retries2"]

    def _write_err(self) -> None:
        """Give up: the soft error if there was one, else ETIMEDOUT (``tcp_write_err``)."""
        self.stats.tcpext["TCPAbortOnTimeout"] += 1
        if self.state is TcpState.SYN_RECV and self.listener is not None:
            self._done(None)
        else:
            self._done(self.soft_error or errno.ETIMEDOUT)

    # -- handlers ------------------------------------------------------------

    def _retransmit_timer(self, now: float) -> None:
        """RTO expiry (``tcp_retransmit_timer``): back off, enter loss, resend the head."""
        self._rto_at = None
        if self.snd_una == self.snd_max:
            return
        if self.syn_fastopen or self.syn_data or self.syn_data_acked:
            self._fastopen_detect_blackhole(now)
        if self.snd_wnd == 0 and not self.orphan and not self.state_is_syn():
            # The peer shrank its window to zero under our data: the retransmissions
            # are window probes and a live peer is never timed out; only silence for
            # longer than twice the maximum RTO is (tcp_rtx_probe0_timed_out).
            if now - self.last_rcv > 2 * self.rto_max:
                self._write_err()
                return
        elif self.retransmits >= self._max_retries():
            self._write_err()
            return
        self.stats.tcpext["TCPTimeouts"] += 1
        if not self.state_is_syn():
            # tcp_enter_loss (recovery.py): ssthresh once per loss episode, cwnd
            # to one segment (RFC 5681 3.1), everything un-SACKed is lost.
            self._enter_loss(now)
        self.retransmits += 1
        # RFC 6298 5.5: back off the timer.
        self.rto = min(self.rto * 2, self.rto_max)
        self._retransmit_head(now)
        if self._rto_at is None:
            self._rto_at = now + self.rto

    def _fastopen_detect_blackhole(self, now: float) -> None:
        """``tcp_fastopen_active_detect_blackhole``: a Fast Open connection that times
        out for the third time (or gives up earlier) pauses active Fast Open."""
        retransmits = self.retransmits
        expired = retransmits >= self._max_retries()
        if (retransmits == 2 or (retransmits < 2 and expired)) and self.tfo is not None:
            self.tfo.active_disable(now)

    def _probe_timer(self, now: float) -> None:
        """Zero-window probe (``tcp_probe_timer``, ``tcp_send_probe0``)."""
        self._probe_at = None
        sndq_end = seq_add(self._sndq_seq, len(self._sndq))
        waiting = seq_sub(sndq_end, self.snd_nxt) > 0 or (self._fin_queued and not self.fin_sent())
        if self.snd_nxt != self.snd_una or not waiting:
            self.probes_out = 0
            return
        if self.probes_out >= self._max_retries():
            self._write_err()
            return
        self.stats.tcpext["TCPWinProbe"] += 1
        self._write_wakeup(now)
        self.probes_out += 1
        self.backoff += 1
        if self.snd_nxt == self.snd_una:
            self._probe_at = now + self._backoff_rto()

    def _delack_timer(self, now: float) -> None:
        """Delayed-ACK expiry (``tcp_delack_timer_handler``)."""
        self._delack_at = None
        if self._ack_pending and self.state is not TcpState.CLOSED:
            # Not interactive: lengthen the next delay (ato << 1, capped by the RTO).
            self.ato = min(self.ato * 2, self.rto)
            self.stats.tcpext["DelayedACKs"] += 1
            self._send_ack(now)

    def _keepalive_timer(self, now: float) -> None:
        """Keepalive (``tcp_keepalive_timer``): probe an idle peer, give up after keepcnt."""
        self._ka_at = None
        if not self._keepalive or self.state in _KEEPALIVE_OFF:
            return
        if self.snd_una != self.snd_max or self._sndq or self._fin_queued:
            # Data in flight or queued: the retransmission timer watches the peer.
            self._ka_at = now + self.keepidle
            return
        elapsed = now - self.last_rcv
        if elapsed < self.keepidle:
            self.probes_out = 0
            self._ka_at = self.last_rcv + self.keepidle
            return
        if self.probes_out >= self.keepcnt:
            self._send_rst(now)
            self._write_err()
            return
        self.stats.tcpext["TCPKeepAlive"] += 1
        self._write_wakeup(now)
        self.probes_out += 1
        self._ka_at = now + self.keepintvl

    def _tw_timer(self, now: float) -> None:
        """End of TIME-WAIT (counted as ``TW``) or of an orphan's FIN-WAIT-2 (tcp_fin_timeout)."""
        self._tw_at = None
        if self.state is TcpState.TIME_WAIT:
            self.stats.tcpext["TW"] += 1
            self._done(None)
        elif self.state is TcpState.FIN_WAIT2 and self.orphan:
            self._done(None)
