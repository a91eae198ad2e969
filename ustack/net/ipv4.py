"""IPv4 receive and transmit (net/ipv4/ip_input.c, ip_output.c).

Receive: ``ip_rcv`` validates the header the way ``ip_rcv_core`` does
(counting each failure in the Ip MIB), decides whether the packet is for this
host (``ip_route_input``: forwarding is off, so anything else is an address
error), reassembles fragments and hands the payload to the protocol handler
registered for its protocol number (``inet_protos``). Transmit: ``ip_output``
routes, writes the header, fragments when the packet exceeds the route MTU,
and passes each packet to the neighbour layer.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable

from ..buffer import CHECKSUM_PARTIAL, Packet, skb_checksum_help
from ..checksum import internet_checksum
from ..stats import Stats
from ..sysctl import Sysctl
from .ethernet import PACKET_OTHERHOST
from .frag import Reassembler, fragment
from .netfilter import NF_INET_LOCAL_IN, NF_INET_PRE_ROUTING, Netfilter
from .route import RouteTable

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET = 0x1FFF
IPHDR = struct.Struct("!BBHHHBBH4s4s")
_U16 = struct.Struct("!H")
IP_HLEN = 20

# Option types (RFC 791 section 3.1).
IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_LSRR = 131
IPOPT_SSRR = 137

LIMITED_BROADCAST = b"\xff\xff\xff\xff"

# A protocol handler takes a packet whose head is at the transport header and
# whose net_off points at the IP header (struct net_protocol's handler).
ProtoHandler = Callable[[Packet], None]
# Called for an ICMP error quoting a datagram of this protocol (err_handler):
# (ICMP type, code, info, quoted IP header + payload).
ErrHandler = Callable[[int, int, int, memoryview], None]


def iph_src(pkt: Packet) -> bytes:
    """The source address of the packet's IP header."""
    off = pkt.net_off + 12
    return bytes(pkt.buf[off : off + 4])


def iph_dst(pkt: Packet) -> bytes:
    """The destination address of the packet's IP header."""
    off = pkt.net_off + 16
    return bytes(pkt.buf[off : off + 4])


def iph_ttl(pkt: Packet) -> int:
    return pkt.buf[pkt.net_off + 8]


def ip_str(addr: bytes) -> str:
    return str(ipaddress.IPv4Address(addr))


def _options_ok(opts: memoryview) -> bool:
    """Structural check of IP options (``__ip_options_compile``), no source routes.

    Source-routed packets are refused, as with the kernel's default
    accept_source_route = 0.
    """
    i = 0
    n = len(opts)
    while i < n:
        kind = opts[i]
        if kind == IPOPT_END:
            return True
        if kind == IPOPT_NOOP:
            i += 1
            continue
        if i + 1 >= n:
            return False
        length = opts[i + 1]
        if length < 2 or i + length > n:
            return False
        if kind in (IPOPT_LSRR, IPOPT_SSRR):
            return False
        i += length
    return True


class Ipv4:
    """The IPv4 layer of one interface with one address."""

    def __init__(
        self,
        sysctl: Sysctl,
        stats: Stats,
        iface: ipaddress.IPv4Interface,
        routes: RouteTable,
        mtu: int,
        output: Callable[[Packet, bytes], None],
        clock: Callable[[], float],
    ) -> None:
        self.sysctl = sysctl
        self.stats = stats
        self.iface = iface
        self.addr = iface.ip.packed
        self.broadcast = iface.network.broadcast_address.packed
        # Every local address and subnet broadcast, VLAN sub-interfaces' too.
        self.local_addrs = {self.addr}
        self.broadcasts = {self.broadcast}
        self.routes = routes
        self.mtu = mtu
        # neigh_output(pkt, nexthop): resolve the next hop, add L2, transmit.
        self.output = output
        self.clock = clock
        self.protos: dict[int, ProtoHandler] = {}
        self.err_handlers: dict[int, ErrHandler] = {}
        # Called for a datagram to an unknown protocol (the ICMP layer answers
        # with protocol unreachable); set by the stack.
        self.unknown_proto: Callable[[Packet], None] = lambda pkt: None
        # Called with the bytes to quote when a fragment queue times out.
        self.frag_expired: Callable[[bytes], None] = lambda quote: None
        # neigh_confirm(nexthop): the neighbour layer's confirmation; set by the stack.
        self.neigh_confirm: Callable[[bytes], None] = lambda nexthop: None
        self.reasm = Reassembler(sysctl, stats)
        # Netfilter hooks (net/netfilter.py), set by the stack only while any is in use.
        self.nf: Netfilter | None = None
        # Capture taps at ip_rcv and ip_output (capture.py); None: no capture.
        self.tap_rcv: Callable[[memoryview], None] | None = None
        self.tap_output: Callable[[memoryview], None] | None = None
        self._ident = random.getrandbits(16)

    def add_address(self, iface: ipaddress.IPv4Interface) -> None:
        """Another local address (a VLAN sub-interface's); packets to it are ours."""
        self.local_addrs.add(iface.ip.packed)
        self.broadcasts.add(iface.network.broadcast_address.packed)

    # ---- receive ------------------------------------------------------------

    def ip_rcv(self, pkt: Packet) -> None:
        """``ip_rcv`` + ``ip_rcv_finish``: validate, route, deliver or drop."""
        if self.tap_rcv is not None:
            self.tap_rcv(pkt.data())
        ip = self.stats.ip
        if pkt.pkt_type == PACKET_OTHERHOST:
            # Not addressed to our MAC: dropped before it is counted (ip_rcv_core).
            self.stats.drop("OTHERHOST")
            return
        ip["InReceives"] += 1
        buf = pkt.buf
        off = pkt.head
        length = len(pkt)
        if length < IP_HLEN:
            ip["InHdrErrors"] += 1
            return
        ver_ihl = buf[off]
        ihl = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != 4 or ihl < IP_HLEN or length < ihl:
            ip["InHdrErrors"] += 1
            return
        view = memoryview(buf)
        # ip_fast_csum, inlined: a valid (non-zero) header's words sum to 0xffff,
        # i.e. the header as one integer is a multiple of 0xffff.
        if int.from_bytes(buf[off : off + ihl], "big") % 0xFFFF:
            self.stats.ipext["InCsumErrors"] += 1
            ip["InHdrErrors"] += 1
            return
        tot_len = (buf[off + 2] << 8) | buf[off + 3]
        if tot_len > length:
            self.stats.ipext["InTruncatedPkts"] += 1
            return
        if tot_len < ihl:
            ip["InHdrErrors"] += 1
            return
        if ihl > IP_HLEN and not _options_ok(view[off + IP_HLEN : off + ihl]):
            ip["InHdrErrors"] += 1
            return
        self.stats.ipext["InOctets"] += tot_len
        pkt.trim(tot_len)
        pkt.net_off = off
        if self.nf is not None and not self.nf.hook(NF_INET_PRE_ROUTING,
                                                    view[off : off + tot_len]):
            return
        # bytes(): a GRO'd or untagged frame's buffer is a bytearray, whose
        # slices cannot be looked up in the address sets.
        src = bytes(buf[off + 12 : off + 16])
        dst = bytes(buf[off + 16 : off + 20])
        if src[0] == 127 or src[0] >= 224 or src == LIMITED_BROADCAST or src in self.broadcasts:
            # A martian source (ip_route_input_slow: martian_source).
            self.stats.drop("IP_INVALID_SOURCE")
            return
        if dst in self.local_addrs:
            pass
        elif dst == LIMITED_BROADCAST or dst in self.broadcasts:
            self.stats.ipext["InBcastPkts"] += 1
        elif dst[0] >= 224 and dst[0] < 240:
            # No multicast group is joined: nothing here listens to it.
            self.stats.ipext["InMcastPkts"] += 1
            self.stats.drop("IP_INADDRERRORS")
            return
        else:
            # Not ours and forwarding is off: ip_error counts InAddrErrors.
            ip["InAddrErrors"] += 1
            return
        proto = buf[off + 9]
        frag = (buf[off + 6] << 8) | buf[off + 7]
        if frag & (IP_MF | IP_OFFSET):
            # ip_local_deliver -> ip_defrag: only a whole datagram goes up.
            whole = self.reasm.add(
                view[off : off + ihl], view[off + ihl : off + tot_len], self.clock()
            )
            if whole is None:
                return
            pkt = Packet(whole)
            pkt.net_off = off = 0
            ihl = (whole[0] & 0x0F) * 4
        pkt.head = off + ihl
        pkt.trans_off = pkt.head
        self.ip_local_deliver(pkt, proto)

    def ip_local_deliver(self, pkt: Packet, proto: int) -> None:
        """``ip_local_deliver`` + ``_finish``: the INPUT hook, then the protocol."""
        if self.nf is not None and not self.nf.hook(
            NF_INET_LOCAL_IN, memoryview(pkt.buf)[pkt.net_off : pkt.tail]
        ):
            return
        handler = self.protos.get(proto)
        if handler is None:
            self.stats.ip["InUnknownProtos"] += 1
            self.unknown_proto(pkt)
            return
        self.stats.ip["InDelivers"] += 1
        handler(pkt)

    def link_failure(self, pkt: Packet) -> None:
        """``ipv4_link_failure``: the next hop never answered ARP for *pkt*.

        The kernel sends itself an ICMP host unreachable about the packet, so
        the socket that sent it learns EHOSTUNREACH through its protocol's
        error handler; locally this is a direct call of that handler.
        """
        off = pkt.net_off
        if off < 0 or bytes(pkt.buf[off + 12 : off + 16]) not in self.local_addrs:
            return
        ihl = (pkt.buf[off] & 0x0F) * 4
        handler = self.err_handlers.get(pkt.buf[off + 9])
        if handler is not None:
            # ICMP_DEST_UNREACH (3), ICMP_HOST_UNREACH (1).
            handler(3, 1, 0, memoryview(bytes(pkt.buf[off : min(pkt.tail, off + ihl + 8)])))

    def frag_timer(self, now: float) -> None:
        """Expire fragment queues (``ip_expire``), answering with ICMP time exceeded."""
        for quote in self.reasm.expire(now):
            self.frag_expired(quote)

    # ---- transmit -----------------------------------------------------------

    def next_ident(self, segs: int = 1) -> int:
        """The IP id for a packet; a GSO packet reserves one per segment
        (``ip_select_ident_segs``), so its segments' ids never repeat the next one's."""
        ident = (self._ident + 1) & 0xFFFF
        self._ident = (self._ident + segs) & 0xFFFF
        return ident

    def ip_output(
        self,
        pkt: Packet,
        dst: bytes,
        proto: int,
        src: bytes | None = None,
        ttl: int | None = None,
        tos: int = 0,
        df: bool = False,
        confirm: bool = False,
    ) -> int:
        """Send *pkt* (head at its transport header) to *dst*; return 0 or an errno.

        ``ip_queue_xmit`` / ``ip_build_and_send_pkt``: route, build the header,
        fragment if needed (``ip_fragment``; with DF a too-big packet is
        refused with EMSGSIZE, counted FragFails), hand to the neighbour layer.
        *confirm*: the sender saw forward progress (``skb->dst_pending_confirm``),
        so the next hop's neighbour entry is confirmed (``sock_confirm_neigh``).
        """
        ip = self.stats.ip
        ip["OutRequests"] += 1
        route = self.routes.lookup(dst)
        if route is None and dst != LIMITED_BROADCAST:
            ip["OutNoRoutes"] += 1
            return 101  # ENETUNREACH
        if src is None:
            src = route.src if route is not None else self.addr
        mtu = route.mtu if route is not None else self.mtu
        nexthop = route.nexthop(dst) if route is not None else dst
        if confirm:
            self.neigh_confirm(nexthop)
        if ttl is None:
            ttl = self.sysctl["net.ipv4.ip_default_ttl"]
        payload_len = len(pkt)
        tot_len = IP_HLEN + payload_len
        pkt.trans_off = pkt.head
        if pkt.ip_summed == CHECKSUM_PARTIAL:
            pkt.csum_start = pkt.head
        off = pkt.push(IP_HLEN)
        pkt.net_off = off
        if tot_len <= mtu or pkt.gso_size:
            segs = -(-payload_len // pkt.gso_size) if pkt.gso_size else 1
            IPHDR.pack_into(
                pkt.buf, off, 0x45, tos, tot_len, self.next_ident(segs), IP_DF if df else 0,
                ttl, proto, 0, src, dst,
            )
            # ip_send_check: the header sum as one big-integer reduction, folded.
            buf = pkt.buf
            csum = (0xFFFF - int.from_bytes(buf[off : off + IP_HLEN], "big") % 0xFFFF) % 0xFFFF
            _U16.pack_into(buf, off + 10, csum)
            if self.nf is not None and not self.nf.local_out(memoryview(pkt.buf)[off : pkt.tail]):
                return 1  # EPERM, as ip_local_out returns for NF_DROP
            self.stats.ipext["OutOctets"] += tot_len
            ip["OutTransmits"] += 1
            if self.tap_output is not None:
                self.tap_output(pkt.data())
            self.output(pkt, nexthop)
            return 0
        if df or tot_len > 65535:
            ip["FragFails"] += 1
            return 90  # EMSGSIZE
        if pkt.ip_summed == CHECKSUM_PARTIAL:
            skb_checksum_help(pkt)
        header = IPHDR.pack(0x45, tos, tot_len, self.next_ident(), 0, ttl, proto, 0, src, dst)
        if self.nf is not None:
            # The output hooks see the whole datagram, before ip_fragment.
            pkt.buf[off : off + IP_HLEN] = header
            struct.pack_into("!H", pkt.buf, off + 10, internet_checksum(header))
            if not self.nf.local_out(memoryview(pkt.buf)[off : pkt.tail]):
                return 1  # EPERM
        pieces = fragment(header, memoryview(pkt.buf)[off + IP_HLEN : pkt.tail], mtu)
        ip["FragOKs"] += 1
        ip["FragCreates"] += len(pieces)
        for piece in pieces:
            fpkt = Packet.alloc(piece)
            fpkt.net_off = fpkt.head
            fpkt.queue = pkt.queue
            self.stats.ipext["OutOctets"] += len(piece)
            ip["OutTransmits"] += 1
            if self.tap_output is not None:
                self.tap_output(fpkt.data())
            self.output(fpkt, nexthop)
        return 0
