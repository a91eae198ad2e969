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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ustack.stats import Stats
from ustack.sysctl import Sysctl

from .connection import TcpConnection
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
        self.listen(backlog)

    def listen(self, backlog: int) -> None:
        """(Re)set the backlog; capped by net.core.somaxconn like ``__sys_listen``."""
        self.backlog = max(0, min(backlog, self.sysctl["net.core.somaxconn"]))

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
            child.rcvbuf = self.rcvbuf
        child.nodelay = self.nodelay
        child.listener = self
        child.open_passive(seg, now)
        if self.keepalive:
            child.keepalive = True
        self._syn_queue.add(child)
        return child

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
