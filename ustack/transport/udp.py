"""UDP (net/ipv4/udp.c): datagrams, the port table, errors by ICMP.

``udp_rcv`` validates length and checksum (counting InErrors/InCsumErrors),
finds the socket (a connected socket's exact 4-tuple before a bound one, as
``__udp4_lib_lookup`` scores them), queues the datagram within the socket's
receive buffer (RcvbufErrors when full), or answers with ICMP port
unreachable (NoPorts). ``udp_err`` reports a port unreachable to the
connected socket that caused it, as ECONNREFUSED. ``UdpSock`` is the
protocol control block; the socket API in ``ustack.socket`` wraps it.
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from collections.abc import Callable

from ..buffer import Packet
from ..checksum import csum_fold, csum_partial, pseudo_header_sum
from ..net.icmp import ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, Icmp
from ..net.ipv4 import IPPROTO_UDP, LIMITED_BROADCAST, Ipv4, iph_dst, iph_src
from ..stats import Stats
from ..sysctl import Sysctl
from .ports import ephemeral_port

UDP_HLEN = 8
_UDPH = struct.Struct("!HHHH")
ANY = b"\x00\x00\x00\x00"
# Per-datagram bookkeeping charged to the receive buffer besides the payload
# (the kernel charges skb truesize; this approximates its overhead).
DATAGRAM_OVERHEAD = 256

Address = tuple[bytes, int]


class UdpSock:
    """One UDP socket's state (``struct udp_sock``)."""

    def __init__(self, sysctl: Sysctl) -> None:
        self.local: Address | None = None
        self.remote: Address | None = None
        self.rcvbuf = sysctl["net.core.rmem_default"]
        self.sndbuf = sysctl["net.core.wmem_default"]
        self.broadcast = False
        self.reuseaddr = False
        self.rx_queue: deque[tuple[bytes, Address]] = deque()
        self.rmem = 0
        self.error: OSError | None = None
        self.closed = False
        # Called when data or an error arrives, to wake a blocked reader.
        self.wakeup: Callable[[], None] = lambda: None

    def dequeue(self) -> tuple[bytes, Address] | None:
        """Take the oldest datagram and release its receive-buffer charge."""
        if not self.rx_queue:
            return None
        data, addr = self.rx_queue.popleft()
        self.rmem -= len(data) + DATAGRAM_OVERHEAD
        return data, addr

    def take_error(self) -> OSError | None:
        """Report a pending error once (``sock_error`` clears sk_err)."""
        err, self.error = self.error, None
        return err


class Udp:
    """The UDP protocol of one stack."""

    def __init__(self, sysctl: Sysctl, stats: Stats, ipv4: Ipv4, icmp: Icmp,
                 flow_queue: Callable[[bytes, bytes, int, int], int] = lambda *flow: 0,
                 ) -> None:
        self.sysctl = sysctl
        # The device queue of a flow (RSS of its receive direction), as for TCP.
        self.flow_queue = flow_queue
        self.stats = stats
        self.ipv4 = ipv4
        self.icmp = icmp
        self.ports: dict[int, list[UdpSock]] = {}
        ipv4.protos[IPPROTO_UDP] = self.udp_rcv
        ipv4.err_handlers[IPPROTO_UDP] = self.udp_err

    # ---- the port table -----------------------------------------------------

    def bind(self, sock: UdpSock, addr: bytes, port: int) -> None:
        """``udp_v4_get_port``: bind, choosing an ephemeral port for 0."""
        if sock.local is not None:
            raise OSError(errno.EINVAL, "socket is already bound")
        if addr not in (ANY, LIMITED_BROADCAST) and addr not in self.ipv4.local_addrs:
            raise OSError(errno.EADDRNOTAVAIL, "cannot assign requested address")
        if port == 0:
            port = ephemeral_port(self.sysctl, self.ports)
        elif not 0 < port < 65536:
            raise OSError(errno.EINVAL, f"bad port {port}")
        for other in self.ports.get(port, ()):
            overlap = other.local is not None and (
                other.local[0] == addr or ANY in (other.local[0], addr)
            )
            if overlap and not (sock.reuseaddr and other.reuseaddr):
                raise OSError(errno.EADDRINUSE, "address already in use")
        sock.local = (addr, port)
        self.ports.setdefault(port, []).append(sock)

    def unhash(self, sock: UdpSock) -> None:
        """Remove a closed socket from the port table."""
        sock.closed = True
        if sock.local is None:
            return
        socks = self.ports.get(sock.local[1], [])
        if sock in socks:
            socks.remove(sock)
        if not socks:
            self.ports.pop(sock.local[1], None)

    def lookup(self, saddr: bytes, sport: int, daddr: bytes, dport: int) -> UdpSock | None:
        """``__udp4_lib_lookup``: the best-scoring socket for a datagram."""
        best = None
        best_score = -1
        for sock in self.ports.get(dport, ()):
            assert sock.local is not None
            score = 0
            laddr = sock.local[0]
            if laddr != ANY:
                if laddr != daddr:
                    continue
                score += 2
            if sock.remote is not None:
                if sock.remote != (saddr, sport):
                    continue
                score += 4
            if score > best_score:
                best, best_score = sock, score
        return best

    # ---- receive ------------------------------------------------------------

    def udp_rcv(self, pkt: Packet) -> None:
        """Validate one datagram and queue it to its socket (``__udp4_lib_rcv``)."""
        udp = self.stats.udp
        buf = pkt.buf
        off = pkt.head
        length = len(pkt)
        if length < UDP_HLEN:
            udp["InErrors"] += 1
            return
        sport, dport, ulen, csum = _UDPH.unpack_from(buf, off)
        if ulen < UDP_HLEN or ulen > length:
            udp["InErrors"] += 1
            return
        # The IP payload may be longer than the UDP datagram: trim (udp_rcv).
        pkt.trim(ulen)
        saddr = iph_src(pkt)
        daddr = iph_dst(pkt)
        if csum and not pkt.ip_summed:
            total = csum_partial(memoryview(buf)[off : off + ulen],
                                 pseudo_header_sum(saddr, daddr, IPPROTO_UDP, ulen))
            if total != 0xFFFF:
                udp["InCsumErrors"] += 1
                udp["InErrors"] += 1
                return
        sock = self.lookup(saddr, sport, daddr, dport)
        if sock is None:
            if daddr == LIMITED_BROADCAST or daddr in self.ipv4.broadcasts:
                udp["IgnoredMulti"] += 1
                return
            udp["NoPorts"] += 1
            self.icmp.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
            return
        size = ulen - UDP_HLEN
        if sock.rmem + size + DATAGRAM_OVERHEAD > sock.rcvbuf:
            # __udp_queue_rcv_skb: the receive buffer is full.
            udp["RcvbufErrors"] += 1
            udp["InErrors"] += 1
            return
        sock.rx_queue.append((bytes(buf[off + UDP_HLEN : off + ulen]), (saddr, sport)))
        sock.rmem += size + DATAGRAM_OVERHEAD
        udp["InDatagrams"] += 1
        sock.wakeup()

    def udp_err(self, icmp_type: int, code: int, info: int, quoted: memoryview) -> None:
        """``__udp4_lib_err``: port unreachable becomes ECONNREFUSED on a connected socket."""
        ihl = (quoted[0] & 0x0F) * 4
        saddr = bytes(quoted[12:16])
        daddr = bytes(quoted[16:20])
        sport, dport = struct.unpack_from("!HH", quoted, ihl)
        sock = self.lookup(daddr, dport, saddr, sport)
        if sock is None or sock.remote is None:
            # RFC 1122 4.1.3.3: errors go only to connected sockets (inet->recverr off).
            return
        if icmp_type == ICMP_DEST_UNREACH and code == ICMP_PORT_UNREACH:
            sock.error = ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
        elif icmp_type == ICMP_DEST_UNREACH:
            sock.error = OSError(errno.EHOSTUNREACH, "no route to host")
        else:
            return
        sock.wakeup()

    # ---- transmit -----------------------------------------------------------

    def sendto(self, sock: UdpSock, data: bytes | memoryview, dst: Address) -> int:
        """``udp_sendmsg``: build and send one datagram; return bytes sent."""
        daddr, dport = dst
        if not 0 < dport < 65536:
            raise OSError(errno.EINVAL, f"bad destination port {dport}")
        if len(data) > 65507:
            raise OSError(errno.EMSGSIZE, "message too long")
        if len(data) > sock.sndbuf:
            raise OSError(errno.EMSGSIZE, "message larger than the send buffer")
        if (daddr == LIMITED_BROADCAST or daddr == self.ipv4.broadcast) and not sock.broadcast:
            raise OSError(errno.EACCES, "permission denied (SO_BROADCAST is off)")
        if sock.local is None:
            self.bind(sock, ANY, 0)
        assert sock.local is not None
        saddr = sock.local[0]
        if saddr in (ANY, LIMITED_BROADCAST):
            # The route's preferred source (a VLAN sub-interface has its own).
            route = self.ipv4.routes.lookup(daddr)
            saddr = route.src if route is not None else self.ipv4.addr
        ulen = UDP_HLEN + len(data)
        pkt = Packet.alloc(data)
        off = pkt.push(UDP_HLEN)
        _UDPH.pack_into(pkt.buf, off, sock.local[1], dport, ulen, 0)
        total = csum_partial(memoryview(pkt.buf)[off:], pseudo_header_sum(saddr, daddr,
                                                                           IPPROTO_UDP, ulen))
        # RFC 768: a computed checksum of zero is sent as all ones.
        struct.pack_into("!H", pkt.buf, off + 6, csum_fold(total) or 0xFFFF)
        pkt.queue = self.flow_queue(daddr, saddr, dport, sock.local[1])
        # IP_PMTUDISC_WANT: DF when the datagram fits the MTU, else fragment.
        err = self.ipv4.ip_output(pkt, daddr, IPPROTO_UDP, src=saddr,
                                  df=ulen + 20 <= self.ipv4.mtu)
        if err:
            raise OSError(err, errno.errorcode.get(err, "error"))
        self.stats.udp["OutDatagrams"] += 1
        return len(data)
