"""TCP over IPv4: the glue between the sans-IO core and the stack (tcp_ipv4.c).

``tcp_v4_rcv`` checks the checksum, parses the segment, finds its connection
in the established hash (4-tuple), else a listener on the port, else answers
with a RST (``tcp_v4_send_reset``). After every call into a connection or
listener the glue drains what it queued (``out``) into ``ip_output`` and
re-arms its one timer in the stack's timer list. The bind table enforces the
kernel's port rules (``inet_csk_bind_conflict``) and picks ephemeral ports
(``inet_hash_connect``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from ..buffer import CHECKSUM_UNNECESSARY, Packet
from ..net.ipv4 import IPPROTO_TCP, Ipv4, iph_dst, iph_src
from ..stats import Stats
from ..sysctl import Sysctl
from ..timer import Timer, TimerList
from .ports import ephemeral_port
from .tcp import (
    TcpConnection,
    TcpListener,
    TcpState,
    build_segment,
    parse_segment,
    rst_for,
    tcp_checksum_ok,
)
from .tcp.fastopen import FastOpen
from .tcp.header import SYN
from .tcp.mem import TcpMemAccount
from .tcp.metrics import TcpMetrics
from .tcp.secure import ChallengeAckLimit, SecureSeq, TcpLimits
from .tcp.syncookies import SynCookies
from .udp import ANY

Key = tuple[bytes, int, bytes, int]  # local ip, local port, remote ip, remote port
# icmp_err_convert (net/ipv4/icmp.c) for ICMP_DEST_UNREACH codes.
_ICMP_UNREACH_ERRNO = {
    0: errno.ENETUNREACH, 1: errno.EHOSTUNREACH, 2: errno.ENOPROTOOPT,
    3: errno.ECONNREFUSED, 5: errno.EOPNOTSUPP, 6: errno.ENETUNREACH, 7: errno.EHOSTDOWN,
    9: errno.ENETUNREACH, 10: errno.EHOSTUNREACH, 11: errno.ENETUNREACH,
    12: errno.EHOSTUNREACH, 13: errno.EHOSTUNREACH,
}
SKB_GSO_TCPV4 = 1  # gso_type of a TCP/IPv4 super-segment (VIRTIO_NET_HDR_GSO_TCPV4)


class Binding:
    """One bound local address and port (an entry of the kernel's bind bucket)."""

    __slots__ = ("addr", "port", "reuseaddr", "listening", "released", "autobind")

    def __init__(self, addr: bytes, port: int, reuseaddr: bool, autobind: bool = False) -> None:
        self.addr = addr
        self.port = port
        self.reuseaddr = reuseaddr
        self.listening = False
        self.released = False
        #: Taken by connect() (``__inet_hash_connect``), not bind(): the port may be
        #: shared with other connections to other destinations.
        self.autobind = autobind


class _ConnectPortsInUse:
    """The ports ``__inet_hash_connect`` may not take for one flow.

    A port is usable when every socket on it got it from connect() (a bind
    bucket with fastreuse -1) and none of them has this flow's 4-tuple
    (``__inet_check_established``): so one local port serves connections to
    many destinations, as in Linux, and the range limits connections per
    destination, not in total.
    """

    def __init__(self, tcp: TcpV4, saddr: bytes, daddr: bytes, dport: int) -> None:
        self._tcp = tcp
        self._flow = (saddr, daddr, dport)

    def __contains__(self, port: int) -> bool:
        owners = self._tcp.bhash.get(port)
        if not owners:
            return False
        if not all(b.autobind for b in owners):
            return True
        saddr, daddr, dport = self._flow
        return (saddr, port, daddr, dport) in self._tcp.ehash


class TcpV4:
    """The TCP protocol of one stack: tables, demux, output, timers."""

    def __init__(self, sysctl: Sysctl, stats: Stats, ipv4: Ipv4, timers: TimerList,
                 clock: Callable[[], float],
                 offload: Callable[[], tuple[bool, int]] = lambda: (False, 0),
                 flow_queue: Callable[[bytes, bytes, int, int], int] = lambda *flow: 0,
                 ) -> None:
        self.sysctl = sysctl
        self.stats = stats
        self.ipv4 = ipv4
        self.timers = timers
        self.clock = clock
        # What the route's device does for us (sk_setup_caps): (TX checksum
        # offload, largest super-segment it takes; 0 = MSS-sized only).
        self.offload = offload
        self.tx_csum, self.gso_max = offload()
        # The device queue for a flow, by RSS of (remote, local): netdev_pick_tx.
        self.flow_queue = flow_queue
        self.ehash: dict[Key, TcpConnection] = {}
        self.listeners: dict[int, TcpListener] = {}
        self.bhash: dict[int, list[Binding]] = {}
        self._timers: dict[TcpConnection, Timer] = {}
        # The binding each connection keeps alive (released when it is gone).
        self._conn_binding: dict[TcpConnection, Binding] = {}
        # Initial sequence numbers (local ip, local port, remote ip, remote port)
        # -> ISS: RFC 6528 (secure_tcp_seq, tcp/secure.py); None: a random one each.
        self.secure = SecureSeq(clock)
        self.isn: Callable[[bytes, int, bytes, int], int] | None = self.secure.isn
        # RFC 5961 7: the stack-wide challenge-ACK budget (tcp_challenge_ack_limit).
        self.challenge_limit = ChallengeAckLimit(sysctl)
        # tcp_max_orphans and tcp_max_tw_buckets.
        self.limits = TcpLimits(sysctl, stats)
        # The SYN cookie secrets every listener of the stack uses (syncookie_secret).
        self.syncookies = SynCookies()
        # Fast Open: the namespace-wide keys and blackhole state, and the
        # per-destination cookie cache (``ip tcp_metrics``).
        self.fastopen = FastOpen(sysctl, stats)
        self.metrics = TcpMetrics()
        # tcp_memory_allocated against net.ipv4.tcp_mem, for every socket.
        self.mem = TcpMemAccount(sysctl, stats)
        # TCP Small Queues: each socket's tcp_wfree, and the sockets a TX
        # completion resumes, run like the kernel's TSQ tasklet from a timer.
        self._wfree: dict[TcpConnection, Callable[[Any], None]] = {}
        self._tsq_pending: dict[TcpConnection, None] = {}
        self._tsq_timer = Timer(self._tsq_handler)
        ipv4.protos[IPPROTO_TCP] = self.tcp_v4_rcv
        ipv4.err_handlers[IPPROTO_TCP] = self.tcp_v4_err

    def init_ts_off(self, laddr: bytes, lport: int, raddr: bytes, rport: int) -> int:
        """``tcp_v4_init_seq_and_ts_off``'s ts_off: the 4-tuple's TSval offset.

        0 unless net.ipv4.tcp_timestamps is 1: with 2 timestamps are on
        without random offsets, as ``secure_tcp_seq_and_ts_off`` does.
        """
        if self.sysctl["net.ipv4.tcp_timestamps"] != 1:
            return 0
        return self.secure.ts_off(laddr, lport, raddr, rport)

    @property
    def mss(self) -> int:
        """The MSS we advertise: route MTU minus IP and TCP headers (tcp_mss_to_mtu)."""
        return self.ipv4.mtu - 40

    # ---- receive ------------------------------------------------------------

    def tcp_v4_rcv(self, pkt: Packet) -> None:
        tcp = self.stats.tcp
        data = pkt.data()
        saddr = iph_src(pkt)
        daddr = iph_dst(pkt)
        if daddr not in self.ipv4.local_addrs:
            # TCP to a broadcast address is never ours (tcp_v4_rcv: pkt_type != HOST).
            self.stats.drop("TCP_NOT_UNICAST")
            return
        if pkt.ip_summed != CHECKSUM_UNNECESSARY and not tcp_checksum_ok(saddr, daddr, data):
            tcp["InCsumErrors"] += 1
            tcp["InErrs"] += 1
            return
        seg = parse_segment(data)
        if seg is None:
            tcp["InErrs"] += 1
            return
        tcp["InSegs"] += 1
        now = self.clock()
        conn = self.ehash.get((daddr, seg.dport, saddr, seg.sport))
        if conn is not None:
            reuse = conn.segment_arrives(seg, now)
            self.process(conn)
            if not reuse:
                return
            # A new SYN took over a TIME_WAIT pair (tcp_timewait_state_process
            # -> TCP_TW_SYN): the old connection is gone; the listener gets it.
        listener = self.listeners.get(seg.dport)
        if listener is not None and listener.local_ip in (ANY, daddr):
            child = listener.segment_arrives(seg, saddr, now, local_ip=daddr)
            self._drain(listener.out, daddr, saddr)
            if child is not None:
                self._adopt(child, listener)
            return
        rst = rst_for(seg)
        if rst is not None:
            tcp["OutSegs"] += 1
            tcp["OutRsts"] += 1
            self._xmit(rst, daddr, saddr)

    def tcp_v4_err(self, icmp_type: int, code: int, info: int, quoted: memoryview) -> None:
        """``tcp_v4_err``: an ICMP error (or neighbour failure) about one of our segments.

        Destination unreachable maps to an errno as icmp_err_convert does;
        the connection fails with it while connecting, else keeps it as its
        soft error. Fragmentation-needed (PMTU) is not acted on yet.
        """
        if icmp_type != 3 or code == 4:  # ICMP_DEST_UNREACH, not ICMP_FRAG_NEEDED
            return
        ihl = (quoted[0] & 0x0F) * 4
        if len(quoted) < ihl + 8:
            return
        saddr = bytes(quoted[12:16])
        daddr = bytes(quoted[16:20])
        sport = (quoted[ihl] << 8) | quoted[ihl + 1]
        dport = (quoted[ihl + 2] << 8) | quoted[ihl + 3]
        conn = self.ehash.get((saddr, sport, daddr, dport))
        if conn is None:
            return
        err = _ICMP_UNREACH_ERRNO.get(code, errno.EHOSTUNREACH)
        conn.icmp_error(err)
        self.process(conn)

    # ---- output and timers --------------------------------------------------

    def offload_changed(self) -> None:
        """The device's features changed (``netdev_features_change``): every
        socket takes the new TX checksum and super-segment limits."""
        self.tx_csum, self.gso_max = self.offload()
        for conn in self._timers:
            conn.gso_max = self.gso_max

    def _xmit(self, seg: Any, saddr: bytes, daddr: bytes, mss: int = 0, queue: int = 0,
              owner: TcpConnection | None = None) -> None:
        """``tcp_transmit_skb`` + ``ip_queue_xmit`` for one segment.

        With TX checksum offload the segment leaves CHECKSUM_PARTIAL; one
        longer than *mss* is a super-segment (gso_size = mss) that the device
        hands to the kernel whole (TSO) or cuts in software (GSO). A data
        segment is charged to its *owner* until the device completes it
        (``skb_set_owner_w`` / ``tcp_wfree``): TCP Small Queues.
        """
        csum_offload = self.tx_csum
        gso = mss and len(seg.payload) > mss and not seg.flags & SYN
        # A super-segment is always left CHECKSUM_PARTIAL, as tcp_v4_send_check
        # leaves every skb: TSO finishes it in the kernel, software GSO sums
        # each segment it cuts, so a full sum over 64 KB here would be wasted.
        pkt = build_segment(seg, saddr, daddr, csum_partial_offload=csum_offload or gso)
        if gso:
            pkt.gso_size = mss
            pkt.gso_type = SKB_GSO_TCPV4
        pkt.queue = queue
        # skb_set_dst_pending_confirm: an ACK that made progress confirms the neighbour.
        confirm = owner is not None and owner.dst_pending_confirm
        if confirm:
            owner.dst_pending_confirm = False
        if owner is not None and seg.payload:
            owner.tsq_queued(pkt.truesize)
            pkt.destructor = self._wfree.get(owner)
        self.ipv4.ip_output(pkt, daddr, IPPROTO_TCP, src=saddr, df=True, confirm=confirm)

    def _drain(self, out: list, saddr: bytes, daddr: bytes, mss: int = 0,
               queue: int = 0, owner: TcpConnection | None = None) -> None:
        if not out:
            return
        segs = out[:]
        out.clear()
        for seg in segs:
            self._xmit(seg, saddr, daddr, mss, queue, owner)

    def _tcp_wfree(self, conn: TcpConnection, pkt: Any) -> None:
        """``tcp_wfree``: a packet of *conn* left the device. A throttled socket is
        resumed from the TSQ tasklet, never from inside the transmit path."""
        if conn.tsq_completed(pkt.truesize) and conn not in self._tsq_pending:
            self._tsq_pending[conn] = None
            self.timers.mod_timer(self._tsq_timer, self.clock())

    def _tsq_handler(self, now: float) -> None:
        """``tcp_tsq_handler`` for every socket a completion resumed."""
        pending = list(self._tsq_pending)
        self._tsq_pending.clear()
        for conn in pending:
            if conn in self._timers:
                conn.tsq_write(now)
                self.process(conn)

    def process(self, conn: TcpConnection) -> None:
        """After any call into *conn*: transmit, re-arm its timer, forget it if closed."""
        if conn.orphan or conn.state is TcpState.TIME_WAIT:
            self.limits.check(conn, self.clock())
        if conn.out:
            queue = self.flow_queue(conn.remote_ip, conn.local_ip, conn.remote_port,
                                    conn.local_port)
            self._drain(conn.out, conn.local_ip, conn.remote_ip, conn.snd_mss, queue, conn)
        timer = self._timers.get(conn)
        if conn.state is TcpState.CLOSED:
            self._unhash(conn)
            return
        if timer is not None:
            self.timers.mod_timer(timer, conn.next_deadline())

    def _on_timer(self, conn: TcpConnection, now: float) -> None:
        conn.on_timer(now)
        self.process(conn)

    def _hash(self, conn: TcpConnection) -> None:
        key = (conn.local_ip, conn.local_port, conn.remote_ip, conn.remote_port)
        self.ehash[key] = conn
        timer = Timer(lambda now, c=conn: self._on_timer(c, now))
        self._timers[conn] = timer
        conn.on_output = lambda c=conn: self.process(c)
        conn.gso_max = self.gso_max
        conn.tfo = self.fastopen
        conn.metrics = self.metrics
        conn.mem_account = self.mem
        self._wfree[conn] = lambda pkt, c=conn: self._tcp_wfree(c, pkt)
        conn.challenge_limit = self.challenge_limit

    def _unhash(self, conn: TcpConnection) -> None:
        key = (conn.local_ip, conn.local_port, conn.remote_ip, conn.remote_port)
        if self.ehash.get(key) is conn:
            del self.ehash[key]
        timer = self._timers.pop(conn, None)
        if timer is not None:
            self.timers.mod_timer(timer, None)
        self._wfree.pop(conn, None)
        self._tsq_pending.pop(conn, None)
        if conn.mem_account is not None:
            # The socket's memory no longer counts against tcp_mem (sk_mem_reclaim).
            conn.mem_account.charge(-conn._charged)
            conn._charged = 0
            conn.mem_account = None
        binding = self._conn_binding.pop(conn, None)
        if binding is not None and binding.released:
            self._remove_binding(binding)
        self.limits.forget(conn)

    def _adopt(self, child: TcpConnection, listener: TcpListener) -> None:
        """A listener made a SYN-RECEIVED child: hash it; it shares the port."""
        # tcp_assign_congestion_control: the system default (or the listener's choice).
        child.set_congestion_control(getattr(listener, "ca_name", None)
                                     or self.sysctl["net.ipv4.tcp_congestion_control"])
        self._hash(child)
        parent = next((b for b in self.bhash.get(listener.port, ()) if b.listening), None)
        binding = Binding(child.local_ip, child.local_port,
                          parent.reuseaddr if parent is not None else False)
        binding.released = True  # owned by the connection alone until accepted
        self.bhash.setdefault(child.local_port, []).append(binding)
        self._conn_binding[child] = binding
        self.process(child)

    # ---- ports --------------------------------------------------------------

    def bind(self, addr: bytes, port: int, reuseaddr: bool,
             flow: tuple[bytes, bytes, int] | None = None) -> Binding:
        """``inet_csk_get_port``: claim (addr, port); port 0 picks an ephemeral one.

        *flow* (source, destination, destination port) is given by connect:
        the port then follows RFC 6056's double-hash (``__inet_hash_connect``).
        """
        if addr != ANY and addr not in self.ipv4.local_addrs:
            raise OSError(errno.EADDRNOTAVAIL, "cannot assign requested address")
        if port == 0 and flow is not None:
            # connect() on an unbound socket: a port this flow may share.
            port = ephemeral_port(self.sysctl, _ConnectPortsInUse(self, *flow), flow)
            binding = Binding(addr, port, reuseaddr, autobind=True)
            self.bhash.setdefault(port, []).append(binding)
            return binding
        if port == 0:
            port = ephemeral_port(self.sysctl, self.bhash, flow)
        for other in self.bhash.get(port, ()):
            if other.addr != addr and ANY not in (other.addr, addr):
                continue
            # SO_REUSEADDR on both lets a port be shared unless one of them listens.
            if not (reuseaddr and other.reuseaddr and not other.listening):
                raise OSError(errno.EADDRINUSE, "address already in use")
        binding = Binding(addr, port, reuseaddr)
        self.bhash.setdefault(port, []).append(binding)
        return binding

    def _remove_binding(self, binding: Binding) -> None:
        entries = self.bhash.get(binding.port)
        if entries and binding in entries:
            entries.remove(binding)
            if not entries:
                del self.bhash[binding.port]

    def release(self, binding: Binding, conn: TcpConnection | None) -> None:
        """The socket owning *binding* closed; free it once *conn* is gone too."""
        binding.released = True
        binding.listening = False
        if conn is None or conn not in self._timers:
            self._remove_binding(binding)
        else:
            self._conn_binding[conn] = binding

    # ---- user operations ----------------------------------------------------

    def connect(self, binding: Binding | None, daddr: bytes, dport: int, reuseaddr: bool,
                setup: Callable[[TcpConnection], None] | None = None,
                ) -> tuple[TcpConnection, Binding]:
        """``tcp_v4_connect``: pick the source, hash the connection, send the SYN.

        *setup* applies socket options to the new connection before its SYN
        is built (the MSS and window it advertises depend on them).
        """
        route = self.ipv4.routes.lookup(daddr)
        if route is None:
            self.stats.ip["OutNoRoutes"] += 1
            raise OSError(errno.ENETUNREACH, "network is unreachable")
        if binding is None:
            binding = self.bind(ANY, 0, reuseaddr, (route.src, daddr, dport))
        # The route's preferred source (a VLAN sub-interface has its own).
        saddr = route.src if binding.addr == ANY else binding.addr
        key = (saddr, binding.port, daddr, dport)
        if key in self.ehash:
            raise OSError(errno.EADDRNOTAVAIL, "4-tuple already in use")
        iss = self.isn(saddr, binding.port, daddr, dport) if self.isn is not None else None
        conn = TcpConnection(saddr, binding.port, daddr, dport, self.sysctl, self.stats,
                             self.mss, self.clock(), iss,
                             ca_name=self.sysctl["net.ipv4.tcp_congestion_control"],
                             ts_off=self.init_ts_off(saddr, binding.port, daddr, dport))
        self._hash(conn)
        if setup is not None:
            setup(conn)
        conn.connect(self.clock())
        self.process(conn)
        return conn, binding

    def listen(self, binding: Binding, backlog: int) -> TcpListener:
        """``inet_csk_listen_start``: the port must not be shared with a listener."""
        for other in self.bhash.get(binding.port, ()):
            if other is not binding and (other.listening or not other.reuseaddr
                                         or not binding.reuseaddr):
                if other.addr == binding.addr or ANY in (other.addr, binding.addr):
                    raise OSError(errno.EADDRINUSE, "address already in use")
        listener = TcpListener(binding.addr, binding.port, backlog, self.sysctl, self.stats,
                               self.mss)
        binding.listening = True
        listener.isn = self.isn
        listener.ts_off = self.init_ts_off
        listener.syncookies = self.syncookies
        listener.enable_fastopen(self.fastopen)
        self.listeners[binding.port] = listener
        return listener

    def close_listener(self, listener: TcpListener) -> None:
        if self.listeners.get(listener.port) is listener:
            del self.listeners[listener.port]
        for child in listener.close(self.clock()):
            self.process(child)

    def accepted(self, conn: TcpConnection) -> Binding:
        """An accepted child's binding now belongs to its socket."""
        binding = self._conn_binding.pop(conn, None)
        if binding is None:
            binding = Binding(conn.local_ip, conn.local_port, False)
            self.bhash.setdefault(conn.local_port, []).append(binding)
        binding.released = False
        return binding

    def connections(self) -> list[TcpConnection]:
        return list(self.ehash.values())
