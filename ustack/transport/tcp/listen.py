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
SYN cookies are a later issue: with a full SYN queue a SYN is dropped.

Fast Open (RFC 7413, ``tcp_try_fastopen``): on a listener with a Fast Open
queue (TCP_FASTOPEN, or every listener with tcp_fastopen bit 0x400), a SYN
with a valid cookie creates a child that takes the SYN's data, acknowledges
it in the SYN-ACK and goes straight to the accept queue; a cookie request
is answered with a cookie in the SYN-ACK.
"""

from __future__ import annotations

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
from .output import rst_for
from .state import TcpState


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
        self._syn_queue: set[TcpConnection] = set()
        self._accept_queue: deque[TcpConnection] = deque()
        #: The stack's Fast Open context (set by the glue); None disables Fast Open.
        self.tfo: FastOpen | None = None
        #: Fast Open children not yet past the handshake, and their limit
        #: (``fastopenq.qlen`` / ``max_qlen``; 0 means Fast Open is off here).
        self.fastopen_qlen = 0
        self.fastopen_max_qlen = 0
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
        # inet_csk_reqsk_queue_is_full, plus tcp_conn_request's rule that without
        # SYN cookies the last quarter of tcp_max_syn_backlog is not handed out.
        qlen = len(self._syn_queue)
        max_syn = self.sysctl["net.ipv4.tcp_max_syn_backlog"]
        return qlen > self.backlog or max_syn - qlen < (max_syn >> 2)

    def segment_arrives(self, seg: Segment, remote_ip: bytes, now: float,
                        local_ip: bytes | None = None) -> TcpConnection | None:
        """LISTEN processing of a segment with no connection of its own.

        Returns the new SYN-RECEIVED child (whose ``out`` holds the SYN-ACK)
        when *seg* is an acceptable SYN, else None. A stray ACK is answered
        with a RST in ``self.out``. *local_ip* is the destination address of
        *seg* (for a listener bound to 0.0.0.0).
        """
        flags = seg.flags
        if flags & RST:
            return None
        if flags & ACK:
            rst = rst_for(seg)
            if rst is not None:
                self.out.append(rst)
                self.stats.tcp["OutSegs"] += 1
                self.stats.tcp["OutRsts"] += 1
            return None
        if not flags & SYN or self.state is not TcpState.LISTEN:
            return None
        ext = self.stats.tcpext
        if self._reqsk_queue_is_full():
            ext["TCPReqQFullDrop"] += 1
            ext["ListenDrops"] += 1
            return None
        if self._acceptq_is_full():
            ext["ListenOverflows"] += 1
            ext["ListenDrops"] += 1
            return None
        lip = local_ip or self.local_ip
        iss = self.isn(lip, self.port, remote_ip, seg.sport) if self.isn is not None else None
        child = TcpConnection(lip, self.port, remote_ip, seg.sport, self.sysctl, self.stats,
                              self.mss, now, iss)
        if self.sndbuf is not None:
            child.sndbuf, child.sndbuf_locked = self.sndbuf, True
        if self.rcvbuf is not None:
            child.set_rcvbuf(self.rcvbuf)
        child.nodelay = self.nodelay
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
