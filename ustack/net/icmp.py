"""ICMP (net/ipv4/icmp.c): echo, error messages with rate limits, ping.

``icmp_rcv`` validates and counts every message (the Icmp MIB), answers echo
requests, hands echo replies to the ping user waiting for that identifier,
and passes errors that quote a datagram of ours to the protocol that sent it
(``icmp_unreach`` -> err_handler). ``icmp_send`` builds error messages under
the RFC 1122 3.2.2 rules (never about an ICMP error, a broadcast, or a
non-first fragment) and the kernel's two rate limits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..buffer import Packet
from ..checksum import checksum_ok, internet_checksum
from ..stats import Stats
from ..sysctl import Sysctl
from .ipv4 import IP_OFFSET, IPPROTO_ICMP, LIMITED_BROADCAST, Ipv4, iph_dst, iph_src, iph_ttl

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
ICMP_TIMESTAMP = 13
ICMP_TIMESTAMPREPLY = 14

# Codes of ICMP_DEST_UNREACH.
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
# Code of ICMP_TIME_EXCEEDED.
ICMP_EXC_FRAGTIME = 1

_ERRORS = {ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED,
           ICMP_PARAMETERPROB}
# Bits of net.ipv4.icmp_ratemask; the kernel's default 6168 limits these types.
_IN_COUNTER = {
    ICMP_DEST_UNREACH: "InDestUnreachs",
    ICMP_TIME_EXCEEDED: "InTimeExcds",
    ICMP_PARAMETERPROB: "InParmProbs",
    ICMP_SOURCE_QUENCH: "InSrcQuenchs",
    ICMP_REDIRECT: "InRedirects",
    ICMP_ECHO: "InEchos",
    ICMP_ECHOREPLY: "InEchoReps",
    ICMP_TIMESTAMP: "InTimestamps",
    ICMP_TIMESTAMPREPLY: "InTimestampReps",
}
_OUT_COUNTER = {
    ICMP_DEST_UNREACH: "OutDestUnreachs",
    ICMP_TIME_EXCEEDED: "OutTimeExcds",
    ICMP_ECHO: "OutEchos",
    ICMP_ECHOREPLY: "OutEchoReps",
}
_HDR = struct.Struct("!BBHHH")
# How many bytes of the offending datagram an error quotes: RFC 1812 4.3.2.3
# allows up to 576 bytes in all, which is what the kernel sends.
_QUOTE_MAX = 576 - 20 - 8
# Per-destination bucket depth (XRLIM_BURST_FACTOR in net/ipv4/icmp.c).
_XRLIM_BURST_FACTOR = 6

# ping user callback: (source address, sequence, payload, ttl).
EchoHandler = Callable[[bytes, int, bytes, int], None]


class _TokenBucket:
    """A token bucket refilled with time, as icmp_global_allow / inet_peer_xrlim_allow."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Icmp:
    """ICMP for one IPv4 layer."""

    def __init__(self, sysctl: Sysctl, stats: Stats, ipv4: Ipv4, clock: Callable[[], float]):
        self.sysctl = sysctl
        self.stats = stats
        self.ipv4 = ipv4
        self.clock = clock
        self.echo_handlers: dict[int, EchoHandler] = {}
        # Full at start: the first refill sees an infinitely old stamp.
        self._global = _TokenBucket(0, float("-inf"))
        self._peers: dict[bytes, _TokenBucket] = {}
        ipv4.protos[IPPROTO_ICMP] = self.icmp_rcv

    # ---- receive ------------------------------------------------------------

    def icmp_rcv(self, pkt: Packet) -> None:
        """Validate and dispatch one ICMP message (``icmp_rcv``)."""
        icmp = self.stats.icmp
        icmp["InMsgs"] += 1
        data = pkt.data()
        if len(data) < 8:
            icmp["InErrors"] += 1
            return
        if not checksum_ok(data):
            icmp["InCsumErrors"] += 1
            icmp["InErrors"] += 1
            return
        icmp_type = data[0]
        counter = _IN_COUNTER.get(icmp_type)
        if counter is not None:
            icmp[counter] += 1
        if icmp_type == ICMP_ECHO:
            self._echo_reply(pkt, data)
        elif icmp_type == ICMP_ECHOREPLY:
            ident, seq = struct.unpack_from("!HH", data, 4)
            handler = self.echo_handlers.get(ident)
            if handler is not None:
                handler(iph_src(pkt), seq, bytes(data[8:]), iph_ttl(pkt))
        elif icmp_type in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB):
            self._deliver_error(data)

    def _echo_reply(self, pkt: Packet, data: memoryview) -> None:
        """``icmp_echo``: answer with the same identifier, sequence and data."""
        if self.sysctl["net.ipv4.icmp_echo_ignore_all"]:
            return
        dst = iph_dst(pkt)
        if (dst == LIMITED_BROADCAST or dst in self.ipv4.broadcasts) and self.sysctl[
            "net.ipv4.icmp_echo_ignore_broadcasts"
        ]:
            return
        reply = Packet.alloc(data)
        body = memoryview(reply.buf)[reply.head :]
        body[0] = ICMP_ECHOREPLY
        body[1] = 0
        body[2:4] = b"\x00\x00"
        struct.pack_into("!H", reply.buf, reply.head + 2, internet_checksum(body))
        reply.queue = pkt.queue
        self._xmit(reply, iph_src(pkt), ICMP_ECHOREPLY)

    def _deliver_error(self, data: memoryview) -> None:
        """``icmp_unreach``: tell the protocol whose datagram is quoted."""
        if len(data) < 8 + 20:
            self.stats.icmp["InErrors"] += 1
            return
        quoted = data[8:]
        ihl = (quoted[0] & 0x0F) * 4
        if quoted[0] >> 4 != 4 or ihl < 20 or len(quoted) < ihl + 8:
            self.stats.icmp["InErrors"] += 1
            return
        handler = self.ipv4.err_handlers.get(quoted[9])
        if handler is not None:
            info = struct.unpack_from("!H", data, 6)[0]
            handler(data[0], data[1], info, quoted)

    # ---- transmit -----------------------------------------------------------

    def icmp_send(self, orig: Packet, icmp_type: int, code: int, info: int = 0) -> None:
        """Send an error about *orig* (net_off at its IP header), if allowed."""
        buf = orig.buf
        off = orig.net_off
        dst = iph_src(orig)
        if orig.pkt_type != 0 or iph_dst(orig) == LIMITED_BROADCAST or (
                iph_dst(orig) in self.ipv4.broadcasts):
            return  # never about a broadcast or multicast (RFC 1122 3.2.2)
        if ((buf[off + 6] << 8) | buf[off + 7]) & IP_OFFSET:
            return  # only about the first fragment
        ihl = (buf[off] & 0x0F) * 4
        if buf[off + 9] == IPPROTO_ICMP:
            inner = off + ihl
            if orig.tail - inner < 1 or buf[inner] in _ERRORS or buf[inner] > 18:
                return  # never about an ICMP error
        end = min(orig.tail, off + ihl + _QUOTE_MAX)
        self.send_error(dst, icmp_type, code, bytes(buf[off:end]), info, orig.queue)

    def send_error(
        self, dst: bytes, icmp_type: int, code: int, quote: bytes, info: int = 0, queue: int = 0
    ) -> None:
        """Build and send an error quoting *quote*, subject to the rate limits."""
        if not self._allow(dst, icmp_type):
            return
        pkt = Packet.alloc(bytes(8) + quote[:_QUOTE_MAX + 60])
        _HDR.pack_into(pkt.buf, pkt.head, icmp_type, code, 0, info >> 16, info & 0xFFFF)
        body = memoryview(pkt.buf)[pkt.head :]
        struct.pack_into("!H", pkt.buf, pkt.head + 2, internet_checksum(body))
        pkt.queue = queue
        self._xmit(pkt, dst, icmp_type)

    def send_echo(self, dst: bytes, ident: int, seq: int, payload: bytes) -> int:
        """Send an echo request (the ping socket's sendmsg); return 0 or an errno."""
        pkt = Packet.alloc(bytes(8) + payload)
        _HDR.pack_into(pkt.buf, pkt.head, ICMP_ECHO, 0, 0, ident, seq)
        body = memoryview(pkt.buf)[pkt.head :]
        struct.pack_into("!H", pkt.buf, pkt.head + 2, internet_checksum(body))
        return self._xmit(pkt, dst, ICMP_ECHO)

    def _xmit(self, pkt: Packet, dst: bytes, icmp_type: int) -> int:
        icmp = self.stats.icmp
        icmp["OutMsgs"] += 1
        counter = _OUT_COUNTER.get(icmp_type)
        if counter is not None:
            icmp[counter] += 1
        err = self.ipv4.ip_output(pkt, dst, IPPROTO_ICMP)
        if err:
            icmp["OutErrors"] += 1
        return err

    def _allow(self, dst: bytes, icmp_type: int) -> bool:
        """icmp_global_allow and icmpv4_xrlim_allow for rate-limited types."""
        if icmp_type > 31 or not (self.sysctl["net.ipv4.icmp_ratemask"] >> icmp_type) & 1:
            return True
        now = self.clock()
        g = self._global
        rate = self.sysctl["net.ipv4.icmp_msgs_per_sec"]
        if rate:
            burst = self.sysctl["net.ipv4.icmp_msgs_burst"]
            g.tokens = min(burst, g.tokens + (now - g.stamp) * rate)
            g.stamp = now
            if g.tokens < 1:
                self.stats.icmp["OutRateLimitGlobal"] += 1
                return False
            g.tokens -= 1
        interval = self.sysctl["net.ipv4.icmp_ratelimit"] / 1000
        if interval <= 0:
            return True
        peer = self._peers.get(dst)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            peer = self._peers[dst] = _TokenBucket(_XRLIM_BURST_FACTOR, now)
        peer.tokens = min(_XRLIM_BURST_FACTOR, peer.tokens + (now - peer.stamp) / interval)
        peer.stamp = now
        if peer.tokens < 1:
            self.stats.icmp["OutRateLimitHost"] += 1
            return False
        peer.tokens -= 1
        return True
