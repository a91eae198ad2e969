"""``TcpListener``: the LISTEN state, the SYN queue and the accept queue.

RFC 9293 section 3.10.7.2 plus the kernel's two queues
(``tcp_conn_request``, ``tcp_check_req``, ``inet_csk_complete_hashdance``):
a SYN creates a child :class:`TcpConnection` in SYN-RECEIVED (the request
sock of the kernel, here a full connection from the start) and
``segment_arrives`` returns it so the glue can enter it in its 4-tuple
table; from then on the glue hands that flow's segments to the child. When
the child's handshake completes it moves to the accept queue, or, if that is
full, its final ACK is dropped (ListenOverflows, ListenDrops) and it keeps
retransmitting SYN-ACKs as the kernel does with tcp_abort_on_overflow = 0.

SYN cookies (syncookies.py; ``tcp_conn_request``, ``tcp_syn_flood_action``,
``cookie_v4_check``): with net.ipv4.tcp_syncookies = 1 (the default) a SYN
that finds the SYN queue full, and with 2 every SYN, is answered with a
SYN-ACK whose ISN is a cookie and nothing is kept (TCPReqQFullDoCookies,
SyncookiesSent); with 0 it is dropped (TCPReqQFullDrop). While cookies have
been sent in the last two minutes (``tcp_synq_no_recent_overflow``) an ACK
for an unknown flow is checked as a cookie: a valid one creates the child
with the MSS, window scale, SACK and timestamps the cookie carries and
completes its handshake at once (SyncookiesRecv); a bad one
(SyncookiesFailed) is answered with a RST like any stray ACK.

Fast Open (RFC 7413, ``tcp_try_fastopen``): on a listener with a Fast Open
queue (TCP_FASTOPEN, or every listener with tcp_fastopen bit 0x400), a SYN
with a valid cookie creates a child that takes the SYN's data, acknowledges
it in the SYN-ACK and goes straight to the accept queue; a cookie request
is answered with a cookie in the SYN-ACK.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from ustack.stats import Stats
from ustack.sysctl import Sysctl

from .connection import TcpConnection
from .fastopen import (
    TFO_SERVER_COOKIE_NOT_REQD,
    TFO_SERVER_ENABLE,
    TFO_SERVER_WO_SOCKOPT1,
    FastOpen,
)
from .header import ACK, RST, SYN, Segment
from .options import TcpOptions
from .output import TCP_MSS_DEFAULT, rst_for
from .seq import seq_add
from .state import TcpState
from .syncookies import (
    TCP_SYNCOOKIE_VALID,
    SynCookies,
    cookie_init_timestamp,
    cookie_timestamp_decode,
)

log = logging.getLogger(__name__)


class TcpListener:
    """A listening socket's protocol state on (local_ip, port)."""

    def __init__(self, local_ip: bytes, port: int, backlog: int, sysctl: Sysctl,
                 stats: Stats, mss: int = 1460) -> None:
        self.local_ip = local_ip
        self.port = port
        self.sysctl = sysctl
        self.stats = stats
        #: MSS children advertise (the route MTU minus 40).
        self.mss = mss
        self.state = TcpState.LISTEN
        #: RSTs for stray ACKs, drained by the glue like a connection's ``out``.
        self.out: list[Segment] = []
        #: Called when the accept queue gains a connection.
        self.wakeup: Callable[[], None] | None = None
        #: Socket options children inherit (accept() returns a copy of the listener's).
        self.sndbuf: int | None = None
        self.rcvbuf: int | None = None
        self.nodelay = False
        self.keepalive = False
        #: Initial sequence number generator (local_ip, port, remote_ip, remote_port) -> ISS,
        #: the role of the kernel's secure_tcp_seq; None picks a random one.
        self.isn: Callable[[bytes, int, bytes, int], int] | None = None
        #: TSval offset generator (local_ip, port, remote_ip, remote_port) -> ts_off,
        #: the kernel's init_seq_and_ts_off; None: children pick a random one.
        self.ts_off: Callable[[bytes, int, bytes, int], int] | None = None
        self._syn_queue: set[TcpConnection] = set()
        self._accept_queue: deque[TcpConnection] = deque()
        #: The stack's Fast Open context (set by the glue); None disables Fast Open.
        self.tfo: FastOpen | None = None
        #: Fast Open children not yet past the handshake, and their limit
        #: (``fastopenq.qlen`` / ``max_qlen``; 0 means Fast Open is off here).
        self.fastopen_qlen = 0
        self.fastopen_max_qlen = 0
        #: The stack's SYN cookie secrets (the glue sets the stack-wide one).
        self.syncookies = SynCookies()
        #: When cookies were last sent (``tcp_synq_overflow``'s ts_recent_stamp).
        self._last_overflow: float | None = None
        #: "Possible SYN flooding" was reported once (``queue->synflood_warned``).
        self.synflood_warned = False
        self.listen(backlog)

    def listen(self, backlog: int) -> None:
        """(Re)set the backlog; capped by net.core.somaxconn like ``__sys_listen``."""
        self.backlog = max(0, min(backlog, self.sysctl["net.core.somaxconn"]))

    def enable_fastopen(self, tfo: FastOpen) -> None:
        """Attach the stack's Fast Open context (``inet_listen``): with tcp_fastopen
        bits 0x400 and 0x2 every listener gets a Fast Open queue of its backlog."""
        self.tfo = tfo
        mode = tfo.mode
        if (mode & TFO_SERVER_WO_SOCKOPT1 and mode & TFO_SERVER_ENABLE
                and not self.fastopen_max_qlen):
            self.fastopen_queue_tune(self.backlog)

    def fastopen_queue_tune(self, qlen: int) -> None:
        """TCP_FASTOPEN: the Fast Open queue length, capped by somaxconn."""
        self.fastopen_max_qlen = max(0, min(qlen, self.sysctl["net.core.somaxconn"]))
        if self.tfo is not None and self.fastopen_max_qlen:
            self.tfo.init_key_once()

    @property
    def syn_queue_len(self) -> int:
        return len(self._syn_queue)

    @property
    def accept_queue_len(self) -> int:
        return len(self._accept_queue)

    def _acceptq_is_full(self) -> bool:
        # sk_acceptq_is_full: strictly more than the backlog, so listen(n) holds n + 1.
        return len(self._accept_queue) > self.backlog

    def _reqsk_queue_is_full(self) -> bool:
        # inet_csk_reqsk_queue_is_full: strictly more than the backlog.
        return len(self._syn_queue) > self.backlog

    def _syn_flood_action(self, syncookies: int) -> bool:
        """``tcp_syn_flood_action``: send a cookie (True) or drop the SYN (False)."""
        ext = self.stats.tcpext
        if syncookies:
            ext["TCPReqQFullDoCookies"] += 1
        else:
            ext["TCPReqQFullDrop"] += 1
        if not self.synflood_warned and syncookies != 2:
            self.synflood_warned = True
            log.info("Possible SYN flooding on port %d. %s.  Check SNMP counters.", self.port,
                     "Sending cookies" if syncookies else "Dropping request")
        return bool(syncookies)

    def segment_arrives(self, seg: Segment, remote_ip: bytes, now: float,
                        local_ip: bytes | None = None) -> TcpConnection | None:
        """LISTEN processing of a segment with no connection of its own.

        Returns the new child when *seg* is an acceptable SYN (SYN-RECEIVED,
        its ``out`` holding the SYN-ACK) or an ACK carrying a valid SYN
        cookie (already ESTABLISHED and in the accept queue), else None. A
        SYN answered with a cookie leaves its SYN-ACK in ``self.out``, as
        does the RST for a stray ACK. *local_ip* is the destination address
        of *seg* (for a listener bound to 0.0.0.0).
        """
        flags = seg.flags
        if flags & RST:
            return None
        lip = local_ip or self.local_ip
        if flags & ACK:
            if not flags & SYN:
                # tcp_v4_cookie_check: the ACK may complete a cookie handshake.
                taken, child = self._cookie_v4_check(seg, remote_ip, lip, now)
                if taken:
                    return child
            rst = rst_for(seg)
            if rst is not None:
                self.out.append(rst)
                self.stats.tcp["OutSegs"] += 1
                self.stats.tcp["OutRsts"] += 1
            return None
        if not flags & SYN or self.state is not TcpState.LISTEN:
            return None
        return self._conn_request(seg, remote_ip, lip, now)

    def _conn_request(self, seg: Segment, remote_ip: bytes, lip: bytes,
                      now: float) -> TcpConnection | None:
        """``tcp_conn_request``: a SYN for the listener."""
        ext = self.stats.tcpext
        syncookies = self.sysctl["net.ipv4.tcp_syncookies"]
        want_cookie = False
        if syncookies == 2 or self._reqsk_queue_is_full():
            want_cookie = self._syn_flood_action(syncookies)
            if not want_cookie:
                ext["ListenDrops"] += 1
                return None
        if self._acceptq_is_full():
            ext["ListenOverflows"] += 1
            ext["ListenDrops"] += 1
            return None
        if want_cookie:
            self._send_cookie_synack(seg, remote_ip, lip, now)
            return None
        if not syncookies:
            # Without cookies the last quarter of tcp_max_syn_backlog is not handed out.
            max_syn = self.sysctl["net.ipv4.tcp_max_syn_backlog"]
            if max_syn - len(self._syn_queue) < (max_syn >> 2):
                ext["ListenDrops"] += 1
                return None
        iss = self.isn(lip, self.port, remote_ip, seg.sport) if self.isn is not None else None
        child = self._new_child(lip, remote_ip, seg.sport, iss, now,
                                self._init_ts_off(lip, remote_ip, seg.sport))
        child.listener = self
        fastopen, synack_cookie = self._try_fastopen(seg, remote_ip, lip)
        child.open_passive(seg, now, synack_cookie, fastopen)
        if self.keepalive:
            child.keepalive = True
        if fastopen:
            # tcp_conn_request: a Fast Open child goes straight to the accept queue.
            ext["TCPFastOpenPassive"] += 1
            self.stats.tcp["PassiveOpens"] += 1
            self.fastopen_qlen += 1
            child.listener = None
            child._fastopen_listener = self
            self._accept_queue.append(child)
            if self.wakeup is not None:
                self.wakeup()
        else:
            self._syn_queue.add(child)
        return child

    def _init_ts_off(self, lip: bytes, remote_ip: bytes, rport: int) -> int | None:
        """The 4-tuple's TSval offset (``tcp_conn_request``: ``tcp_rsk(req)->ts_off``)."""
        return self.ts_off(lip, self.port, remote_ip, rport) if self.ts_off is not None else None

    def _new_child(self, lip: bytes, remote_ip: bytes, rport: int, iss: int | None,
                   now: float, ts_off: int | None) -> TcpConnection:
        """A connection for (lip, port, remote_ip, rport) with the options children inherit."""
        child = TcpConnection(lip, self.port, remote_ip, rport, self.sysctl, self.stats,
                              self.mss, now, iss, ts_off=ts_off)
        if self.sndbuf is not None:
            child.sndbuf, child.sndbuf_locked = self.sndbuf, True
        if self.rcvbuf is not None:
            child.set_rcvbuf(self.rcvbuf)
        child.nodelay = self.nodelay
        return child

    # -- SYN cookies (net/ipv4/syncookies.c) ----------------------------------

    def _send_cookie_synack(self, syn: Segment, remote_ip: bytes, lip: bytes,
                            now: float) -> None:
        """Answer *syn* with a cookie SYN-ACK and keep nothing.

        As ``tcp_conn_request`` with want_cookie: the request is built, its
        SYN-ACK (ISN = ``cookie_init_sequence``, TCP_SYNACK_COOKIE) sent and
        the request freed. Without a timestamp in the SYN its window scale
        and SACK are cleared (``tcp_clear_options``): nothing could carry them.
        """
        opts = syn.options
        ts = (opts is not None and opts.ts_val is not None
              and bool(self.sysctl["net.ipv4.tcp_timestamps"]))
        peer_mss = opts.mss if opts is not None and opts.mss else TCP_MSS_DEFAULT
        iss, _ = self.syncookies.init_sequence(remote_ip, lip, syn.sport, self.port, syn.seq,
                                               peer_mss, now)
        # cookie_init_sequence: tcp_synq_overflow, then the counter.
        self._last_overflow = now
        self.stats.tcpext["SyncookiesSent"] += 1
        if not ts:
            syn = Segment(syn.sport, syn.dport, syn.seq, 0, SYN, syn.window,
                          TcpOptions(mss=opts.mss if opts is not None else None))
        # Nothing is kept, so the offset must come back from the 4-tuple alone
        # (without a generator: none, as with tcp_timestamps = 2).
        ts_off = self._init_ts_off(lip, remote_ip, syn.sport) or 0
        req = self._new_child(lip, remote_ip, syn.sport, iss, now, ts_off)
        req.open_passive(syn, now)
        synack = req.out[-1]
        if ts:
            # tcp_make_synack for TCP_SYNACK_COOKIE: TSval carries WS/SACK/ECN
            # (cookie_init_timestamp) plus the 4-tuple's ts_off.
            synack.options.ts_val = seq_add(cookie_init_timestamp(
                now, req.snd_wscale if req.wscale_ok else None, req.sack_ok), ts_off)
        self.out.append(synack)

    def _cookie_v4_check(self, seg: Segment, remote_ip: bytes, lip: bytes,
                         now: float) -> tuple[bool, TcpConnection | None]:
        """``cookie_v4_check`` of an ACK for an unknown flow.

        Returns (taken, child). Not taken: no cookie of ours (cookies off, none
        sent lately, or a bad one), and LISTEN answers it with a RST. Taken
        with a child: the handshake is complete and the child ESTABLISHED in
        the accept queue. Taken without one: the accept queue is full and
        the ACK is dropped (``tcp_v4_syn_recv_sock``: ListenOverflows).
        """
        if not self.sysctl["net.ipv4.tcp_syncookies"] or self.state is not TcpState.LISTEN:
            return False, None
        last = self._last_overflow
        # tcp_synq_no_recent_overflow: only while cookies were sent in the last
        # TCP_SYNCOOKIE_VALID (a second of slack before, as the kernel allows).
        if last is None or not last - 1.0 <= now <= last + TCP_SYNCOOKIE_VALID:
            return False, None
        ext = self.stats.tcpext
        mss = self.syncookies.check(remote_ip, lip, seg.sport, self.port, seg.seq, seg.ack, now)
        if not mss:
            ext["SyncookiesFailed"] += 1
            return False, None
        ext["SyncookiesRecv"] += 1
        iss = seq_add(seg.ack, -1)
        opts = seg.options
        sysctl = self.sysctl
        # tcp_parse_options on a non-established socket sees a timestamp only
        # while tcp_timestamps is on.
        tsval = (opts.ts_val if opts is not None and sysctl["net.ipv4.tcp_timestamps"]
                 else None)
        tsecr = None
        ts_off = self._init_ts_off(lip, remote_ip, seg.sport) or 0
        if tsval is not None:
            # cookie_tcp_check: the echoed TSval less the 4-tuple's ts_off.
            tsecr = seq_add(opts.ts_ecr, -ts_off) if opts.ts_ecr else 0
        co = cookie_timestamp_decode(tsecr, bool(sysctl["net.ipv4.tcp_timestamps"]),
                                     bool(sysctl["net.ipv4.tcp_sack"]),
                                     bool(sysctl["net.ipv4.tcp_window_scaling"]))
        if co is None:
            return False, None
        if self._acceptq_is_full():
            ext["ListenOverflows"] += 1
            ext["ListenDrops"] += 1
            return True, None
        # tcp_create_openreq_child from the request the cookie stands for: the
        # peer's SYN was SEG.SEQ - 1, our SYN-ACK's ISS the cookie. ECN is not
        # negotiated by ustack (cookie_ecn_ok with tcp_ecn off drops the bit).
        syn = Segment(seg.sport, seg.dport, seq_add(seg.seq, -1), 0, SYN, seg.window,
                      TcpOptions(mss=mss, wscale=co.wscale, sack_ok=co.sack_ok,
                                 ts_val=tsval if co.ts_ok else None))
        # tcp_get_cookie_sock: the child's tsoffset is that ts_off. Its first RTT
        # sample comes from the echoed cookie TSval, up to 63 ms behind the clock
        # (its low bits carry options), as in the kernel: tcp_rcv_state_process
        # -> tcp_synack_rtt_meas(sk, NULL) -> tcp_ack_update_rtt's TSecr fallback.
        child = self._new_child(lip, remote_ip, seg.sport, iss, now, ts_off)
        child.create_openreq_child(syn, now)
        child.snd_nxt = child.snd_max = seq_add(iss, 1)
        child.listener = self
        # tcp_child_process: the ACK (and any data on it) completes the handshake.
        child.segment_arrives(seg, now)
        if self.keepalive:
            child.keepalive = True
        return True, child

    def _fastopen_queue_check(self) -> bool:
        """``tcp_fastopen_queue_check``: Fast Open on, and its queue not full."""
        if not self.fastopen_max_qlen:
            return False
        if self.fastopen_qlen >= self.fastopen_max_qlen:
            self.stats.tcpext["TCPFastOpenListenOverflow"] += 1
            return False
        return True

    def _try_fastopen(self, syn: Segment, client: bytes,
                      server: bytes) -> tuple[bool, tuple[bytes, bool] | None]:
        """``tcp_try_fastopen``: (take the SYN's data?, the cookie for the SYN-ACK or None)."""
        tfo = self.tfo
        if tfo is None:
            return False, None
        opts = syn.options
        foc = opts.fastopen if opts is not None else None
        exp = foc is not None and opts.fastopen_exp
        ext = self.stats.tcpext
        if foc == b"":
            ext["TCPFastOpenCookieReqd"] += 1
        mode = tfo.mode
        if not (mode & TFO_SERVER_ENABLE and (syn.payload or foc is not None)
                and self._fastopen_queue_check()):
            return False, None
        if mode & TFO_SERVER_COOKIE_NOT_REQD:
            return True, None
        if foc is None:
            return False, None  # data without a cookie: a normal handshake
        valid = tfo.cookie_gen(client, server)
        if foc == b"":
            return False, (valid, exp)
        ret = tfo.cookie_check(foc, client, server)
        if ret == 0:
            # A wrong cookie: no data taken, the SYN-ACK brings a valid one.
            ext["TCPFastOpenPassiveFail"] += 1
            return False, (valid, exp)
        if ret == 2:
            # Valid under the backup key: hand out the primary key's cookie.
            ext["TCPFastOpenPassiveAltKey"] += 1
            return True, (valid, exp)
        return True, None

    def _fastopen_remove(self) -> None:
        """A Fast Open child completed its handshake or died (``reqsk_fastopen_remove``)."""
        if self.fastopen_qlen:
            self.fastopen_qlen -= 1

    def accept(self) -> TcpConnection | None:
        """The oldest fully established connection, or None."""
        if not self._accept_queue:
            return None
        return self._accept_queue.popleft()

    def close(self, now: float) -> list[TcpConnection]:
        """Stop listening (``inet_csk_listen_stop``).

        Embryonic children vanish silently; connections not yet accepted are
        aborted with a RST. Returns all of them so the glue can drain their
        ``out`` and forget them.
        """
        self.state = TcpState.CLOSED
        gone = list(self._syn_queue) + list(self._accept_queue)
        for child in list(self._syn_queue):
            child.listener = None
            child._done(None)
        self._syn_queue.clear()
        while self._accept_queue:
            self._accept_queue.popleft().abort(now)
        return gone

    # -- called by children --------------------------------------------------

    def _child_may_complete(self, child: TcpConnection) -> bool:
        """May *child*'s final ACK complete the handshake? (``tcp_v4_syn_recv_sock``)."""
        if self._acceptq_is_full():
            self.stats.tcpext["ListenOverflows"] += 1
            self.stats.tcpext["ListenDrops"] += 1
            return False
        return True

    def _child_established(self, child: TcpConnection) -> None:
        """Move *child* from the SYN queue to the accept queue."""
        self._syn_queue.discard(child)
        child.listener = None
        self._accept_queue.append(child)
        if self.wakeup is not None:
            self.wakeup()

    def _child_closed(self, child: TcpConnection) -> None:
        """A SYN-RECEIVED child died (RST or SYN-ACK retries exhausted)."""
        self._syn_queue.discard(child)
