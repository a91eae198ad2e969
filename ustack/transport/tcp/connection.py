"""``TcpConnection``: the transmission control block and its user calls.

The receive path is in input.py, the transmit path in output.py, the timers
in timers.py; this module holds the TCB (RFC 9293 section 3.3.1 names), the
user interface of RFC 9293 section 3.10 (OPEN, SEND, RECEIVE, CLOSE, ABORT
and shutdown) and what the socket layer reads (state, error, info()).
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from ustack.stats import Stats
from ustack.sysctl import Sysctl

from . import congestion
from .fastopen import TFO_CLIENT_NO_COOKIE, TFO_COOKIE_UNAVAILABLE, FastOpen
from .header import Segment
from .input import TCP_ATO_MIN, TcpInput
from .mem import TcpMem
from .metrics import TcpMetrics
from .options import TCP_MAX_WSCALE
from .output import TcpOutput
from .rcvqueue import RecvQueue
from .reassembly import OfoQueue
from .recovery import TcpRecovery
from .secure import ChallengeAckLimit
from .seq import after, seq_add, seq_sub
from .state import TcpState
from .timers import TCP_TIMEOUT_INIT, TCP_TIMEWAIT_LEN, TcpTimers

_SEND_STATES = frozenset((TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1,
                          TcpState.CLOSING, TcpState.LAST_ACK))
_SYN_STATES = frozenset((TcpState.SYN_SENT, TcpState.SYN_RECV))
_RST_ON_ABORT = frozenset((TcpState.SYN_RECV, TcpState.ESTABLISHED, TcpState.FIN_WAIT1,
                           TcpState.FIN_WAIT2, TcpState.CLOSE_WAIT, TcpState.CLOSING,
                           TcpState.LAST_ACK))


def _select_wscale(space: int) -> int:
    """Our window-scale shift: enough to offer *space* bytes (``tcp_select_initial_window``)."""
    wscale = 0
    while space > 65535 and wscale < TCP_MAX_WSCALE:
        space >>= 1
        wscale += 1
    return wscale


class TcpConnection(TcpInput, TcpOutput, TcpTimers, TcpRecovery, TcpMem):
    """One TCP connection, sans-IO.

    Every method that takes *now* may append segments to ``out`` and move
    ``next_deadline()``; see the package docstring for the contract.
    """

    def __init__(
        self,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        sysctl: Sysctl,
        stats: Stats,
        mss: int,
        now: float,
        iss: int | None = None,
        ca_name: str | None = None,
        ts_off: int | None = None,
    ) -> None:
        self.local_ip = local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.sysctl = sysctl
        self.stats = stats
        self.state = TcpState.CLOSED
        #: An OSError with the kernel's errno once the connection failed, else None.
        self.error: OSError | None = None
        #: Called when anything a blocked user may wait for changed.
        self.wakeup: Callable[[], None] | None = None
        #: Called at the end of a user call (send, recv, close, ...) that may have
        #: queued segments or moved the deadline, so the glue can flush ``out``.
        self.on_output: Callable[[], None] | None = None
        #: Segments to transmit, oldest first; the glue drains it after every call.
        self.out: list[Segment] = []
        #: The largest super-segment the route's device takes (TSO/GSO); 0 means
        #: MSS-sized segments only. Set by the glue (sk_setup_caps), and again
        #: when the device's features change.
        self.gso_max = 0
        #: The last size goal the sender worked with (``tp->xmit_size_goal_segs``
        #: times the MSS): what send-queue truesize is charged by.
        self.xmit_size_goal = 0
        #: An ACK made forward progress (or was a duplicate): the next segment
        #: out confirms the neighbour (``sk_dst_confirm``/``sk_dst_pending_confirm``).
        self.dst_pending_confirm = False
        #: The TcpListener this passive connection came from, while not yet accepted.
        self.listener: Any = None
        #: Last network error seen for this flow (sk_err_soft), reported instead of
        #: ETIMEDOUT if the connection later times out.
        self.soft_error: int | None = None
        self.orphan = False
        self._wake = False
        #: RFC 5961 / ACK-loop limits: when we last answered an out-of-window
        #: segment, and the stack-wide challenge-ACK budget (set by the glue).
        self.last_oow_ack_time: float | None = None
        self.challenge_limit: ChallengeAckLimit | None = None

        self.mss = mss  # what we advertise (advmss)
        self.snd_mss = min(mss, 536)
        self.rcv_mss = self.snd_mss
        wmem = sysctl["net.ipv4.tcp_wmem"]
        rmem = sysctl["net.ipv4.tcp_rmem"]
        self.sndbuf: int = wmem[1]
        self.rcvbuf: int = rmem[1]
        self.sndbuf_locked = False

        # Send sequence variables (RFC 9293 3.3.1); snd_max is the highest SND.NXT
        # ever sent, which SND.NXT falls back from after a retransmission timeout.
        self.iss = secrets.randbits(32) if iss is None else iss & 0xFFFFFFFF
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_wscale = 0
        self.max_window = 0
        self.snd_sml = self.iss
        self._sndq = bytearray()
        self._sndq_seq = seq_add(self.iss, 1)
        self._fin_queued = False
        self._shut_wr = False
        # Receive sequence variables; rcv_wup is RCV.NXT as of the last window sent.
        self.irs = 0
        self.rcv_nxt = self.rcv_wup = 0
        self.rcv_wnd = 0
        space = max(rmem[2], self.rcvbuf)
        self.rcv_wscale = _select_wscale(space) if sysctl["net.ipv4.tcp_window_scaling"] else 0
        self._rcvq = RecvQueue()
        self._ofo = OfoQueue()
        self._mem_init(now)
        self._fin_seq: int | None = None
        self.fin_received = False
        self._shut_rd = False
        # Negotiated options.
        self.wscale_ok = self.sack_ok = self.ts_ok = False
        self.ts_recent = 0
        # RFC 7323 7.1: TSval = ms clock + ts_off (tp->tsoffset), the 4-tuple's
        # offset from the glue (secure_tcp_seq_and_ts_off), random without one.
        self.ts_offset = secrets.randbits(32) if ts_off is None else ts_off & 0xFFFFFFFF
        # RTT and retransmission (RFC 6298).
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = TCP_TIMEOUT_INIT
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self.retransmits = 0
        self.backoff = 0
        self.probes_out = 0
        # Congestion control.
        #: The congestion control ops (TCP_CONGESTION); *ca_name* or the default.
        self.ca: congestion.CongestionOps = congestion.get(ca_name or congestion.DEFAULT)()
        self.cwnd = 0
        self.ssthresh = 0
        self.cwnd_acc = 0
        self.dupacks = 0
        self.in_recovery = False
        self.recover = self.iss
        self._recovery_init()
        congestion.init_transfer(self)
        # Delayed ACK (icsk_ack).
        self._ack_pending = False
        self._ack_now = False
        self.quick = 0
        self.ato = TCP_ATO_MIN
        self._ato_started = False
        self._last_data_recv = now
        # Timers.
        self._rto_at: float | None = None
        self._probe_at: float | None = None
        self._delack_at: float | None = None
        self._ka_at: float | None = None
        self._tw_at: float | None = None
        self.last_rcv = now
        # User options (setsockopt).
        self.nodelay = False
        self.cork = False
        self._keepalive = False
        self.keepidle = float(sysctl["net.ipv4.tcp_keepalive_time"])
        self.keepintvl = float(sysctl["net.ipv4.tcp_keepalive_intvl"])
        self.keepcnt: int = sysctl["net.ipv4.tcp_keepalive_probes"]
        # Per-connection counters for info().
        self.segs_in = self.segs_out = 0
        self.bytes_acked = self.bytes_received = 0
        self.total_retrans = 0
        self.lost = 0
        # TCP Fast Open (RFC 7413); the glue sets the stack's context and cookie cache.
        self.tfo: FastOpen | None = None
        self.metrics: TcpMetrics | None = None
        #: TCP_FASTOPEN_CONNECT: connect() returns at once, the first send rides the SYN.
        self.fastopen_connect = False
        #: connect() was deferred until the first send (``defer_connect``).
        self.defer_connect = False
        #: What our first SYN carries: (cookie option or None, exp format, data bytes).
        self._fastopen_req: tuple[bytes | None, bool, int] | None = None
        self.syn_fastopen = self.syn_fastopen_exp = self.syn_fastopen_ch = False
        self.syn_data = self.syn_data_acked = False
        #: Why active Fast Open did not work (TCP_INFO tcpi_fastopen_client_fail).
        self.fastopen_client_fail = 0
        #: Passive Fast Open: accepted (and allowed to send) before the handshake ends.
        self.fastopen_rsk = False
        self._fastopen_listener: Any = None
        #: The cookie our SYN-ACK carries, in the client's format.
        self._synack_cookie: tuple[bytes, bool] | None = None

    def __repr__(self) -> str:
        return (f"<TcpConnection {self.local_port}->{self.remote_port} {self.state.name} "
                f"una={self.snd_una} nxt={self.snd_nxt} rcv_nxt={self.rcv_nxt}>")

    # -- state helpers -------------------------------------------------------

    def state_can_send(self) -> bool:
        # A passive Fast Open child may send in SYN-RECEIVED (tcp_passive_fastopen).
        return self.state in _SEND_STATES or (self.fastopen_rsk
                                              and self.state is TcpState.SYN_RECV)

    def state_is_syn(self) -> bool:
        return self.state in _SYN_STATES

    def state_is_syn_recv(self) -> bool:
        return self.state is TcpState.SYN_RECV

    def fin_sent(self) -> bool:
        """Our FIN has been transmitted at least once."""
        return self._fin_queued and after(self.snd_max, seq_add(self._sndq_seq, len(self._sndq)))

    def fin_acked(self) -> bool:
        """Our FIN has been acknowledged."""
        return self._fin_queued and after(self.snd_una, seq_add(self._sndq_seq, len(self._sndq)))

    def _set_state(self, new: TcpState) -> None:
        """Change state and keep CurrEstab/EstabResets/AttemptFails (``tcp_set_state``)."""
        old = self.state
        if old is new:
            return
        mib = self.stats.tcp
        if new is TcpState.ESTABLISHED:
            mib["CurrEstab"] += 1
            if self._keepalive:
                self._ka_at = self.last_rcv + self.keepidle
        elif new is TcpState.CLOSE_WAIT and old is TcpState.SYN_RECV:
            mib["CurrEstab"] += 1
        elif old in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) and new is not TcpState.CLOSE_WAIT:
            mib["CurrEstab"] -= 1
            if new is TcpState.CLOSED:
                mib["EstabResets"] += 1
        if new is TcpState.CLOSED and old in _SYN_STATES:
            mib["AttemptFails"] += 1
        self.state = new
        self._wake = True

    def _done(self, err: int | None) -> None:
        """Move to CLOSED, stop every timer and record *err* (``tcp_done``)."""
        if err is not None and self.error is None:
            self.error = OSError(err, os.strerror(err))
        listener = self.listener
        self._set_state(TcpState.CLOSED)
        self._rto_at = self._probe_at = self._delack_at = self._ka_at = self._tw_at = None
        self._ack_pending = False
        self._ofo.clear()
        if listener is not None:
            listener._child_closed(self)
        self._fastopen_done()
        self._wake = True

    def _enter_time_wait(self, now: float) -> None:
        """TIME-WAIT for 2 * MSL (``tcp_time_wait``); only FIN retransmissions matter now."""
        self._set_state(TcpState.TIME_WAIT)
        self._rto_at = self._probe_at = self._delack_at = self._ka_at = None
        self._tw_at = now + TCP_TIMEWAIT_LEN

    def _queue_fin(self) -> None:
        """Queue our FIN behind the data and move to the next closing state."""
        self._fin_queued = True
        if self.state is TcpState.ESTABLISHED:
            self._set_state(TcpState.FIN_WAIT1)
        elif self.state is TcpState.CLOSE_WAIT:
            self._set_state(TcpState.LAST_ACK)

    def _sndbuf_expand(self) -> None:
        """Send-buffer autotuning (``tcp_sndbuf_expand``): room for two congestion
        windows of skbs (at least TCP_INIT_CWND), each MSS charged at its truesize
        rounded to a power of two; not under memory pressure."""
        if self.sndbuf_locked or (self.mem_account is not None and self.mem_account.pressure):
            return
        mss = max(self.snd_mss, 1)
        per_mss = 1 << (mss + 320 + 576 - 1).bit_length()  # roundup_pow_of_two(SKB_TRUESIZE)
        nr_segs = max(10, self.cwnd // mss)
        want = min(2 * nr_segs * per_mss, self.sysctl["net.ipv4.tcp_wmem"][2])
        if want > self.sndbuf:
            self.sndbuf = want

    def set_rcvbuf(self, size: int) -> None:
        """SO_RCVBUF (already doubled): lock it against autotuning; before the SYN it
        also bounds the window scale (``tcp_select_initial_window`` with window_clamp)."""
        self.rcvbuf = size
        self.rcvbuf_locked = True
        self.window_clamp = self.win_from_space(size)
        if self.state in (TcpState.CLOSED, TcpState.LISTEN) and self.rcv_wscale:
            rmem = self.sysctl
            space = max(rmem["net.ipv4.tcp_rmem"][2], rmem["net.core.rmem_max"])
            self.rcv_wscale = _select_wscale(min(space, self.window_clamp))
        self._wake = True

    def _flush_wakeup(self) -> None:
        if self._wake:
            self._wake = False
            if self.wakeup is not None:
                self.wakeup()

    def _user_done(self) -> None:
        self._flush_wakeup()
        if self.on_output is not None:
            self.on_output()

    def icmp_error(self, err: int) -> None:
        """A hard network error for this flow: ICMP unreachable or a failed neighbour.

        As ``tcp_v4_err``: fatal while connecting (connect fails with *err*),
        afterwards only remembered as the soft error that a later timeout
        reports. The glue drains ``out`` afterwards as after any call.
        """
        if self.state in _SYN_STATES and self.listener is None:
            self._done(err)
        elif self.state is not TcpState.CLOSED:
            self.soft_error = err
        self._flush_wakeup()

    # -- what the socket layer reads -----------------------------------------

    @property
    def readable_bytes(self) -> int:
        """Bytes ``recv`` can return now."""
        return len(self._rcvq)

    @property
    def recv_would_block(self) -> bool:
        """``recv`` would raise EAGAIN: nothing queued, no error, no end of stream."""
        return (not self._rcvq and self.error is None and not self.fin_received
                and not self._shut_rd and self.state is not TcpState.CLOSED)

    @property
    def eof(self) -> bool:
        """The peer's FIN arrived (or reading was shut down) and every byte was read."""
        return (self.fin_received or self._shut_rd) and not self._rcvq

    @property
    def send_space(self) -> int:
        """Free send-buffer bytes (truesize); 0 when full or sending is no longer possible."""
        if self._shut_wr or (self.state not in _SEND_STATES and not self.state_is_syn()):
            return 0
        if not self.stream_memory_free():
            return 0
        return max(self.sndbuf - self.wmem_queued, 0)

    @property
    def keepalive(self) -> bool:
        """SO_KEEPALIVE; enabling it arms the keepalive timer from the last receive."""
        return self._keepalive

    @keepalive.setter
    def keepalive(self, on: bool) -> None:
        self._keepalive = bool(on)
        self._ka_at = self.last_rcv + self.keepidle if on and not self.state_is_syn() else None

    # -- user calls (RFC 9293 3.10) -------------------------------------------

    def connect(self, now: float) -> None:
        """Active OPEN: send a SYN (``tcp_connect``); counts ActiveOpens.

        With TCP_FASTOPEN_CONNECT and a usable cookie (or the no-cookie
        mode) nothing goes out yet: the SYN waits for the first send and
        carries its data (``tcp_fastopen_defer_connect``). Without a cookie
        the SYN asks for one.
        """
        if self.state is not TcpState.CLOSED or self.snd_max != self.iss:
            raise OSError(errno.EISCONN, os.strerror(errno.EISCONN))
        self._set_state(TcpState.SYN_SENT)
        self._last_data_recv = now
        if self.fastopen_connect and self._fastopen_cookie_check(now):
            self.defer_connect = True
        else:
            self._tcp_connect(now)
        self._user_done()

    def _tcp_connect(self, now: float) -> None:
        self.defer_connect = False
        self.stats.tcp["ActiveOpens"] += 1
        self._send_syn(now)

    def _fastopen_cookie_check(self, now: float) -> bool:
        """May our SYN carry data? Prepares what it carries (``tcp_fastopen_cookie_check``)."""
        tfo, metrics = self.tfo, self.metrics
        if tfo is None or metrics is None:
            return False
        mss, cookie, exp = metrics.fastopen_get(self.remote_ip)
        # tcp_send_syn_data: room for data in the SYN beside the largest option space.
        space = min(self.mss, mss or self.mss) - 40
        if tfo.active_should_disable(now):
            # A blackhole was seen lately: a plain SYN, not even a cookie request.
            return False
        self.syn_fastopen_ch = tfo.disable_times > 0
        if tfo.mode & TFO_CLIENT_NO_COOKIE:
            self._fastopen_req = (None, False, space)
            return True
        if cookie:
            self._fastopen_req = (cookie, exp, space)
            return True
        self.fastopen_client_fail = TFO_COOKIE_UNAVAILABLE
        self._fastopen_req = (b"", exp, 0)
        return False

    def open_passive(self, syn: Segment, now: float,
                     synack_cookie: tuple[bytes, bool] | None = None,
                     fastopen: bool = False) -> None:
        """Become the SYN-RECEIVED child of a listener for the SYN *syn*; send the SYN-ACK.

        *synack_cookie* is the Fast Open cookie (and format) the SYN-ACK
        carries. With *fastopen* the SYN's data is accepted now and the
        SYN-ACK acknowledges it (``tcp_fastopen_create_child``).
        """
        self.create_openreq_child(syn, now)
        self._synack_cookie = synack_cookie
        if fastopen:
            self.fastopen_rsk = True
            self._fastopen_add_skb(syn)
        self._send_syn(now)

    def create_openreq_child(self, syn: Segment, now: float) -> None:
        """SYN-RECEIVED with what the peer's *syn* offered (``tcp_create_openreq_child``).

        Shared by a SYN that made a request (``open_passive``) and by the ACK of
        a SYN cookie, whose SYN is rebuilt from the cookie (listen.py).
        """
        self.irs = syn.seq
        self.rcv_nxt = self.rcv_wup = seq_add(syn.seq, 1)
        self.rcv_wnd = min(self.win_from_space(self.rcvbuf), 65535)
        self._negotiate(syn)
        self.snd_wnd = self.max_window = syn.window
        self.snd_wl1 = syn.seq
        self.last_rcv = self._last_data_recv = now
        self._set_state(TcpState.SYN_RECV)

    def _fastopen_add_skb(self, syn: Segment) -> None:
        """Queue the data of a Fast Open SYN for the application (``tcp_fastopen_add_skb``).

        A FIN in the SYN is not taken: the SYN-ACK does not acknowledge it,
        so the client sends it again after the handshake.
        """
        n = len(syn.payload)
        if not n:
            return
        self._rcvq_append(syn.payload)
        self.rcv_nxt = seq_add(self.rcv_nxt, n)
        self.bytes_received += n
        self.syn_data_acked = True
        self._wake = True

    def _fastopen_done(self) -> None:
        """The passive Fast Open child left SYN-RECEIVED (``reqsk_fastopen_remove``)."""
        listener = self._fastopen_listener
        if listener is not None:
            self._fastopen_listener = None
            listener._fastopen_remove()

    def _check_send(self) -> None:
        if self._shut_wr or (self.state not in _SEND_STATES and not self.state_is_syn()):
            if self.error is not None:
                raise self.error
            raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """SEND: queue as much of *data* as the send buffer takes and return that count.

        Returns 0 when the buffer is full. Raises the pending error, or EPIPE
        after shutdown(SHUT_WR)/close() or once the connection is gone.
        Data queued before the handshake completes is sent after it.
        """
        self._check_send()
        # sk_stream_memory_free: room in sndbuf (truesize) and under the notsent mark.
        n = min(len(data), self.send_space)
        if n <= 0:
            return 0
        if self.snd_una == self.snd_max and not self._sndq:
            # Sending restarts on an empty pipe (tcp_event_data_sent, CA_EVENT_TX_START).
            self.ca.cwnd_event(self, congestion.CA_EVENT_TX_START, now)
        self._sndq += data[:n] if n < len(data) else data
        self._mem_update()
        if self.defer_connect:
            # The deferred Fast Open connect: this data rides the SYN (tcp_sendmsg_fastopen).
            self._tcp_connect(now)
        self._write_xmit(now)
        self._user_done()
        return n

    def recv(self, n: int, now: float) -> bytes:
        """RECEIVE: up to *n* bytes in order; b"" only at end of stream.

        Raises the pending error (ECONNRESET, ETIMEDOUT, ...) once the queue
        is empty, and BlockingIOError (EAGAIN) when there is simply nothing
        yet. Reading sends the ACK that input left to the reader, or a window
        update when the window grew a lot (``tcp_cleanup_rbuf``).
        """
        q = self._rcvq
        if not q:
            if self.error is not None:
                raise self.error
            if self.recv_would_block:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            return b""
        data = q.take(n)
        self._rcvq_consumed(len(data))
        self._rcv_space_adjust(now)
        if self._ack_pending and seq_sub(self.rcv_nxt, self.rcv_wup) > self.rcv_mss:
            # tcp_cleanup_rbuf: the once-per-two-segments ACK input held back.
            self._send_ack(now)
        elif self.state in (TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2):
            # tcp_cleanup_rbuf: a read that at least doubles the window is announced now.
            cur = seq_sub(seq_add(self.rcv_wup, self.rcv_wnd), self.rcv_nxt)
            clamp = self.window_clamp or self.win_from_space(self.rcvbuf)
            free = self.win_from_space(self.rcvbuf - self.rmem_alloc)
            if 2 * cur <= clamp and free >= 2 * cur and free - cur >= self.rcv_mss:
                self._send_ack(now)
        self._user_done()
        return data

    def shutdown(self, how: int, now: float) -> None:
        """shutdown(2): SHUT_WR queues a FIN after the data; SHUT_RD ends reading."""
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._shut_rd = True
            self._wake = True
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True
            state = self.state
            if state is TcpState.SYN_SENT:
                self._done(None)
            elif state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                self._queue_fin()
                self._write_xmit(now)
            # In SYN-RECEIVED the FIN waits for ESTABLISHED (RFC 9293 3.10.4).
            self._wake = True
        self._user_done()

    def close(self, now: float) -> None:
        """CLOSE (``tcp_close``): FIN after the data, or RST if unread data is dropped.

        The connection becomes an orphan: it finishes the close handshake on
        its own, with tcp_orphan_retries and the tcp_fin_timeout limit on
        FIN-WAIT-2, and the glue forgets it once ``state`` is CLOSED.
        """
        self.orphan = True
        self._shut_rd = True
        state = self.state
        if state in (TcpState.CLOSED, TcpState.LISTEN):
            pass
        elif self._rcvq:
            # RFC 2525 2.17: closing with unread data resets (TCPAbortOnClose).
            self.stats.tcpext["TCPAbortOnClose"] += 1
            self._rcvq_purge()
            if state in _RST_ON_ABORT:
                self._send_rst(now)
            self._done(None)
        elif state is TcpState.SYN_SENT:
            self._done(None)
        elif not self._shut_wr:
            self._shut_wr = True
            if state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                self._queue_fin()
                self._write_xmit(now)
        if self.state is TcpState.FIN_WAIT2 and self._tw_at is None:
            self._tw_at = now + self.sysctl["net.ipv4.tcp_fin_timeout"]
        self._wake = True
        self._user_done()

    def abort(self, now: float) -> None:
        """ABORT: send RST if the peer knows us and drop everything (``tcp_disconnect``)."""
        if self.state in _RST_ON_ABORT:
            self._send_rst(now)
        self._rcvq_purge()
        self._sndq.clear()
        self._shut_wr = self._shut_rd = True
        self.orphan = True
        if self.state is not TcpState.CLOSED:
            self._done(None)
        self._user_done()

    def set_nodelay(self, on: bool, now: float) -> None:
        """TCP_NODELAY; turning it on pushes held data (``tcp_push_pending_frames``)."""
        self.nodelay = bool(on)
        if on:
            self._write_xmit(now)
        self._user_done()

    def set_cork(self, on: bool, now: float) -> None:
        """TCP_CORK: hold partial segments; uncorking pushes them."""
        self.cork = bool(on)
        if not on:
            self._write_xmit(now)
        self._user_done()

    def set_congestion_control(self, name: str) -> None:
        """TCP_CONGESTION (``tcp_set_congestion_control``): switch algorithms.

        As ``tcp_reinit_congestion_control``, the new algorithm starts with
        fresh private state while cwnd and ssthresh stay. An unknown name
        raises OSError(ENOENT).
        """
        try:
            factory = congestion.get(name)
        except KeyError:
            raise OSError(errno.ENOENT, f"congestion control {name!r} is not available") from None
        if name == self.ca.name:
            return
        ca = factory()
        ca.ca_state = self.ca.ca_state
        self.ca = ca
        ca.init(self)

    # -- TCP_INFO ------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Like TCP_INFO / ``ss -ti``: times in ms, cwnd in segments."""
        mss = self.snd_mss
        return {
            "state": self.state.name,
            "rto": round(self.rto * 1000, 3),
            "rtt": round((self.srtt or 0.0) * 1000, 3),
            "rttvar": round(self.rttvar * 1000, 3),
            "snd_cwnd": max(self.cwnd // mss, 1) if mss else 0,
            "ssthresh": self.ssthresh // mss if mss else 0,
            "snd_mss": mss,
            "rcv_mss": self.rcv_mss,
            "advmss": self.mss,
            "snd_wscale": self.snd_wscale,
            "rcv_wscale": self.rcv_wscale,
            "unacked": self.flight_size(),
            "retransmits": self.retransmits,
            "retrans": self.total_retrans,
            "lost": self.lost,
            "backoff": self.backoff,
            "probes": self.probes_out,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": self.rcv_wnd,
            "bytes_acked": self.bytes_acked,
            "bytes_received": self.bytes_received,
            "segs_in": self.segs_in,
            "segs_out": self.segs_out,
            "recv_q": len(self._rcvq),
            "send_q": len(self._sndq),
            "sndbuf": self.sndbuf,
            "rcvbuf": self.rcvbuf,
            "rmem_alloc": self.rmem_alloc,
            "wmem_queued": self.wmem_queued,
            "notsent": self.notsent_bytes(),
            "rcv_space": self.rcvq_space,
            "rcv_rtt": round(self.rcv_rtt * 1000, 3),
            "window_clamp": self.window_clamp,
            "wmem_alloc": self.wmem_alloc,
            "tsq_throttled": self.tsq_throttled,
            "ato": round(self.ato * 1000, 3),
            "ca": self.ca.name,
            # TCPI_OPT_SYN_DATA: our SYN's data (client) or the peer's (server) was taken.
            "syn_data_acked": self.syn_data_acked,
            "fastopen_client_fail": self.fastopen_client_fail,
        }
