"""Software GRO: merge a TCP flow's segments within one NAPI poll.

Python pays per packet, not per byte, so a run of MTU-sized segments of one
flow is handed up as one super-segment of up to 64 KB: IP, TCP and the ACK
logic run once instead of ~44 times. The rules are the kernel's
(net/core/gro.c ``dev_gro_receive``/``napi_gro_complete``/``napi_gro_flush``,
net/ipv4/af_inet.c ``inet_gro_receive``, include/net/gro.h
``inet_gro_flush``, net/ipv4/tcp_offload.c ``tcp4_gro_receive`` and
``tcp_gro_receive``); only TCP over IPv4 without IP options is merged.

Per held flow only the first frame's headers and memoryview slices of every
segment's payload are kept; the super-segment is built with one join when
it is delivered (``napi_gro_complete``), so payload is copied once.

What a frame becomes, with the kernel's ``gro_result`` names as counters:

- ``gro_normal``: delivered at once, unchanged (not TCP/IPv4, IP options, a
  fragment, a bad checksum, a pure ACK, SYN/RST/URG/FIN/PSH with no held
  packet to join, a super-frame the link handed over already);
- ``gro_held``: kept as the head of a flow, waiting for the next segment;
- ``gro_merged``: appended to the held packet of its flow;
- ``gro_flushed``: a held packet delivered (by a segment that cannot join or
  ends the flow, by the flow cap, or by :meth:`Gro.flush` at the end of the
  poll). The histogram ``gro_segs_1``, ``gro_segs_2_4``, ``gro_segs_5_16``,
  ``gro_segs_17_64`` and ``gro_segs_65_up`` counts the segments per flushed
  packet (its sum equals ``gro_flushed``; 1448-byte segments fill 64 KB
  with 45, so ``65_up`` only sees small MSS).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..buffer import CHECKSUM_UNNECESSARY, Packet
from ..checksum import checksum_ok, internet_checksum

# (version/IHL, TOS, total length, id, frag_off, TTL, protocol) at the IP header.
_IPH = struct.Struct("!BBHHHBB")
# (seq, ack_seq, flag word) at TCP header offset 4. The flag word is the
# kernel's tcp_flag_word: data offset, reserved bits, flags and window.
_TCPH = struct.Struct("!III")
_TOT_LEN = struct.Struct("!H")

ETH_HLEN = 14
IP_DF = 0x4000
# frag_off bits that make a fragment (MF, offset) and the reserved bit.
_IP_FRAG = 0x3FFF
_IP_RESERVED = 0x8000
IPPROTO_TCP = 6

# TCP_FLAG_* within tcp_flag_word (include/uapi/linux/tcp.h).
TCP_FLAG_CWR = 0x00800000
TCP_FLAG_URG = 0x00200000
TCP_FLAG_PSH = 0x00080000
TCP_FLAG_RST = 0x00040000
TCP_FLAG_SYN = 0x00020000
TCP_FLAG_FIN = 0x00010000
# Bits of the flag word that may differ from the held packet's (everything
# else, the window included, must be equal).
_FLAGS_MAY_DIFFER = TCP_FLAG_CWR | TCP_FLAG_FIN | TCP_FLAG_PSH
_FLAGS_FINAL = TCP_FLAG_URG | TCP_FLAG_PSH | TCP_FLAG_RST | TCP_FLAG_SYN | TCP_FLAG_FIN

# MAX_GRO_SKBS: packets held per GRO list before the oldest is flushed.
MAX_GRO_SKBS = 8
# virtio-net/skb gso_type of a merged packet (SKB_GSO_TCPV4 / VIRTIO_NET_HDR_GSO_TCPV4).
GSO_TCPV4 = 1

COUNTERS = (
    "gro_merged", "gro_flushed", "gro_held", "gro_normal",
    "gro_segs_1", "gro_segs_2_4", "gro_segs_5_16", "gro_segs_17_64", "gro_segs_65_up",
)


def _segs_bucket(count: int) -> str:
    if count == 1:
        return "gro_segs_1"
    if count <= 4:
        return "gro_segs_2_4"
    if count <= 16:
        return "gro_segs_5_16"
    if count <= 64:
        return "gro_segs_17_64"
    return "gro_segs_65_up"


class _Held:
    """One held packet and what its merge checks compare against (NAPI_GRO_CB(p))."""

    __slots__ = (
        "pkt", "data_off", "parts", "next_seq", "mss", "count", "ip_len",
        "ip_id", "fixedid", "ack", "word", "opts", "tos", "ttl", "frag", "mac", "flags",
    )

    def __init__(
        self, pkt: Packet, data_off: int, payload: memoryview, next_seq: int, mss: int,
        tot_len: int, ip_id: int, ack: int, word: int, opts: bytes, tos: int, ttl: int,
        frag: int, mac: bytes,
    ) -> None:
        self.pkt = pkt
        self.data_off = data_off  # where the first segment's TCP payload starts in pkt.buf
        self.parts = [payload]
        self.next_seq = next_seq
        self.mss = mss  # skb_shinfo(p)->gso_size: the first segment's payload length
        self.count = 1
        self.ip_len = tot_len
        self.ip_id = ip_id
        self.fixedid = False
        self.ack = ack
        self.word = word
        self.opts = opts
        self.tos = tos
        self.ttl = ttl
        self.frag = frag
        self.mac = mac
        self.flags = 0  # FIN/PSH or'ed in from later segments


class Gro:
    """GRO state of one NAPI instance (struct gro_node)."""

    def __init__(self, deliver: Callable[[Packet], None], max_size: int = 65536) -> None:
        # netif_receive_skb: takes a frame with head == mac_off at its Ethernet header.
        self.deliver = deliver
        # gro_max_size (GRO_LEGACY_MAX_SIZE): a merged IP packet stays below it.
        self.max_size = max_size
        # ethtool -K gro off: every frame goes up at once (netif_elide_gro).
        self.enabled = True
        self.max_held = MAX_GRO_SKBS
        self.counters: dict[str, int] = {name: 0 for name in COUNTERS}
        # Held packets by (saddr, daddr, sport, dport), oldest first.
        self._held: dict[bytes, _Held] = {}

    @property
    def held(self) -> int:
        """How many packets are held now."""
        return len(self._held)

    def receive(self, pkt: Packet) -> None:
        """``napi_gro_receive``: merge *pkt* into its flow, hold it, or deliver it."""
        if not self.enabled:
            if self._held:
                self.flush()
            self._normal(pkt)
            return
        buf = pkt.buf
        m = pkt.head
        n = m + ETH_HLEN
        end = pkt.tail
        # dev_gro_receive: only ETH_P_IP has an offload here (no VLAN, no IPv6).
        if end - n < 40 or buf[m + 12] != 0x08 or buf[m + 13] != 0x00:
            self._normal(pkt)
            return
        vihl, tos, tot_len, ip_id, frag, ttl, proto = _IPH.unpack_from(buf, n)
        # inet_gro_receive: IPv4 without options, not a fragment, header checksum
        # good, a protocol with a GRO handler (UDP has none without a GRO socket).
        if vihl != 0x45 or proto != IPPROTO_TCP or frag & _IP_FRAG:
            self._normal(pkt)
            return
        # ip_fast_csum, inlined: a valid header's 16-bit words sum to 0xffff,
        # i.e. the (non-zero) header as one integer is a multiple of 0xffff.
        if int.from_bytes(buf[n : n + 20], "big") % 0xFFFF:
            self._normal(pkt)
            return
        t = n + 20
        seq, ack, word = _TCPH.unpack_from(buf, t + 4)
        thlen = (word >> 26) & 0x3C
        ip_end = n + tot_len
        # tcp_gro_pull_header: a whole TCP header inside the packet.
        if thlen < 20 or tot_len < 20 + thlen or ip_end > end:
            self._normal(pkt)
            return
        # inet_gro_receive's own flush: the IP length must be the frame's (no
        # Ethernet padding) and no reserved frag_off bit. A super-frame the link
        # handed over (skb_is_gso) is not merged either, as dev_gro_receive did
        # before 6.x; it still flushes its flow's held packet first.
        skb_flush = ip_end != end or frag & _IP_RESERVED or pkt.gso_size
        if not skb_flush and pkt.ip_summed != CHECKSUM_UNNECESSARY:
            # tcp4_gro_receive -> skb_gro_checksum_validate. With IHL 5 the
            # addresses (8 bytes, the pseudo-header's) run straight into the
            # TCP header, so one sum covers them; protocol and length are added.
            tcp_len = tot_len - 20
            if not checksum_ok(memoryview(buf)[n + 12 : ip_end], IPPROTO_TCP + tcp_len):
                # Not merged and the held packet stays: the normal path counts it.
                self._normal(pkt)
                return
            # skb_gro_incr_csum_unnecessary: verified once, not again by TCP.
            pkt.ip_summed = CHECKSUM_UNNECESSARY
        data_off = t + thlen
        length = ip_end - data_off
        # bytes() of a bytes slice is the slice itself; a bytearray's is copied.
        key = bytes(buf[n + 12 : t + 4])
        held = self._held
        p = held.get(key)
        if p is not None:
            # tcp_gro_receive: the held packet p and this segment.
            ip_off = (ip_id - p.ip_id) & 0xFFFF
            if p.count == 1 and frag & IP_DF and ip_off == 0:
                # inet_gro_flush: the second frame decides a fixed-ID (DF) flow.
                p.fixedid = True
            if (
                skb_flush
                or seq != p.next_seq
                or ack != p.ack
                or word & TCP_FLAG_CWR
                or (word ^ p.word) & ~_FLAGS_MAY_DIFFER
                # (len - 1) >= mss, unsigned: no empty and no oversized segment.
                or length == 0
                or length > p.mss
                # skb_gro_receive: -E2BIG at gro_max_size.
                or p.ip_len + length >= self.max_size
                # inet_gro_flush: all IP fields equal but length, checksum, id.
                or tos != p.tos
                or ttl != p.ttl
                or frag != p.frag
                or ip_off != (0 if p.fixedid else p.count)
                or buf[t + 20 : data_off] != p.opts
                # gro_list_prepare: same MAC header.
                or buf[m:n] != p.mac
            ):
                # Not the same flow any more: p goes up first (pp = p), then
                # this segment is judged on its own (mss = 1).
                del held[key]
                self._complete(p)
            else:
                p.parts.append(memoryview(buf)[data_off:ip_end])
                p.count += 1
                p.ip_len += length
                p.next_seq = (seq + length) & 0xFFFFFFFF
                p.flags |= word & (TCP_FLAG_FIN | TCP_FLAG_PSH)
                self.counters["gro_merged"] += 1
                # out_check_final: a short last segment or PSH/FIN ends the flow.
                if length < p.mss or word & _FLAGS_FINAL:
                    del held[key]
                    self._complete(p)
                return
        if skb_flush or length == 0 or word & _FLAGS_FINAL:
            self._normal(pkt)
            return
        if len(held) >= self.max_held:
            # gro_flush_oldest.
            oldest = next(iter(held))
            self._complete(held.pop(oldest))
        held[key] = _Held(
            pkt, data_off, memoryview(buf)[data_off:ip_end], (seq + length) & 0xFFFFFFFF,
            length, tot_len, ip_id, ack, word, bytes(buf[t + 20 : data_off]), tos, ttl, frag,
            bytes(buf[m:n]),
        )
        self.counters["gro_held"] += 1

    def flush(self) -> None:
        """``napi_gro_flush``: deliver every held packet, oldest first."""
        held = self._held
        if not held:
            return
        flows = list(held.values())
        held.clear()
        for p in flows:
            self._complete(p)

    def _normal(self, pkt: Packet) -> None:
        self.counters["gro_normal"] += 1
        self.deliver(pkt)

    def _complete(self, p: _Held) -> None:
        """``napi_gro_complete``: finish a held packet's headers and deliver it."""
        counters = self.counters
        counters["gro_flushed"] += 1
        count = p.count
        counters[_segs_bucket(count)] += 1
        first = p.pkt
        if count == 1:
            # A packet nothing joined goes up as it came (gso_size stays 0).
            self.deliver(first)
            return
        m = first.head
        buf = bytearray().join([memoryview(first.buf)[m : p.data_off], *p.parts])
        # inet_gro_complete: the new total length and header checksum; the
        # first segment's id and the rest of its header stay.
        n = ETH_HLEN
        _TOT_LEN.pack_into(buf, n + 2, p.ip_len)
        buf[n + 10] = buf[n + 11] = 0
        _TOT_LEN.pack_into(buf, n + 10, internet_checksum(memoryview(buf)[n : n + 20]))
        # tcp_gro_receive: tcp_flag_word(th2) |= flags & (FIN | PSH).
        buf[n + 20 + 13] |= p.flags >> 16
        pkt = Packet(buf)
        pkt.mac_off = 0
        pkt.queue = first.queue
        pkt.hash = first.hash
        pkt.vlan_tci = first.vlan_tci
        # tcp_gro_complete: one segment of count MSS-sized pieces, checksums
        # vouched for by the per-segment checks (the TCP field is left as the
        # first segment's; the kernel does not recompute it either).
        pkt.ip_summed = CHECKSUM_UNNECESSARY
        pkt.gso_size = p.mss
        pkt.gso_segs = count
        pkt.gso_type = GSO_TCPV4
        self.deliver(pkt)
