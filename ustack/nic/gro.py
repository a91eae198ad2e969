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

The driver offers each raw frame to :meth:`Gro.receive_frame` first: the
next segment of the flow held last is recognised by one masked compare of
its header bytes with the held frame's, its IP header checksum by
arithmetic on the three fields that may differ, and its TCP checksum by one
sum over the whole frame, without building a Packet. Anything else takes
:meth:`Gro.receive`; both reach the same verdicts.

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
from ..checksum import (
    FOLD_MAX,
    checksum_ok,
    csum_partial,
    csum_words,
    internet_checksum,
)

# (version/IHL, TOS, total length, id, frag_off, TTL, protocol) at the IP header.
_IPH = struct.Struct("!BBHHHBB")
# (seq, ack_seq, flag word) at TCP header offset 4. The flag word is the
# kernel's tcp_flag_word: data offset, reserved bits, flags and window.
_TCPH = struct.Struct("!III")
_TOT_LEN = struct.Struct("!H")
# (total length, id, header checksum, TCP seq) from IP header offset 2.
_FRAME_VAR = struct.Struct("!HH4xH12xI")

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


def _frame_mask(m: int, data_off: int) -> int:
    """Which bytes of a frame up to its TCP payload must equal the held frame's.

    All of them (virtio-net header, MAC header, IP and TCP headers with
    options) except those that change from segment to segment: IP total
    length, id and header checksum, TCP sequence number, checksum and urgent
    pointer (neither tcp_gro_receive nor inet_gro_flush compares the last).
    *m* is the MAC header's offset, *data_off* the payload's.
    """
    mask = bytearray(b"\xff" * data_off)
    n = m + ETH_HLEN
    t = n + 20
    for start, stop in ((n + 2, n + 6), (n + 10, n + 12), (t + 4, t + 8), (t + 16, t + 20)):
        mask[start:stop] = bytes(stop - start)
    return int.from_bytes(mask, "big")


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
        "key", "next_id", "frame_hdr", "frame_mask", "frame_n", "ip_var", "csum_valid",
        "csum_base",
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
        self.key = b""
        self.next_id = 0  # the IP id the next segment must carry
        # For Gro.receive_frame (None: this flow takes the full path only): the
        # first frame's bytes up to the payload under a mask of what must be
        # equal, its (total length + id + header checksum), and whether the
        # link vouched for its checksums.
        self.frame_hdr: int | None = None
        self.frame_mask = 0
        self.frame_n = 0  # the IP header's offset in the frame
        self.ip_var = 0
        self.csum_valid = False
        self.csum_base = 0


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
        # Where the MAC header starts in the raw frames the driver reads (its
        # virtio-net header length); None: no receive_frame fast path.
        self.frame_vlen: int | None = None
        # The held packet the last segment joined, if receive_frame may try it.
        self._fast: _Held | None = None
        # receive_frame's compare masks by header length (see _frame_mask).
        self._masks: dict[int, int] = {}

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
        link_valid = pkt.ip_summed == CHECKSUM_UNNECESSARY
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
                p.next_id = (p.ip_id + (0 if p.fixedid else p.count)) & 0xFFFF
                p.flags |= word & (TCP_FLAG_FIN | TCP_FLAG_PSH)
                self.counters["gro_merged"] += 1
                # out_check_final: a short last segment or PSH/FIN ends the flow.
                if length < p.mss or word & _FLAGS_FINAL:
                    del held[key]
                    self._complete(p)
                elif p.frame_hdr is not None:
                    self._fast = p
                return
        if skb_flush or length == 0 or word & _FLAGS_FINAL:
            self._normal(pkt)
            return
        if len(held) >= self.max_held:
            # gro_flush_oldest.
            oldest = next(iter(held))
            self._complete(held.pop(oldest))
        p = held[key] = _Held(
            pkt, data_off, memoryview(buf)[data_off:ip_end], (seq + length) & 0xFFFFFFFF,
            length, tot_len, ip_id, ack, word, bytes(buf[t + 20 : data_off]), tos, ttl, frag,
            bytes(buf[m:n]),
        )
        p.key = key
        p.next_id = (ip_id + 1) & 0xFFFF
        if (m == self.frame_vlen and not m & 1 and type(buf) is bytes and not pkt.vlan_tci
                and not word & TCP_FLAG_CWR):
            # A raw frame as the driver read it: later segments of the flow may
            # be matched against its bytes (receive_frame). An even header
            # offset keeps the frame's 16-bit words those of the checksum.
            mask = self._masks.get(data_off)
            if mask is None:
                mask = self._masks[data_off] = _frame_mask(m, data_off)
            p.frame_mask = mask
            p.frame_hdr = int.from_bytes(buf[:data_off], "big") & mask
            p.frame_n = n
            ip_var = tot_len + ip_id + ((buf[n + 10] << 8) | buf[n + 11])
            p.ip_var = ip_var % 0xFFFF
            p.csum_valid = link_valid
            # The words before the addresses but length, id and checksum, less
            # the pseudo-header's protocol and TCP length (total length - 20).
            p.csum_base = (csum_partial(memoryview(buf)[: n + 12]) - ip_var
                           - IPPROTO_TCP + 20) % 0xFFFF
            # The next segment may come straight here (with the next IP id,
            # which keeps the flow's ids incrementing: inet_gro_flush).
            self._fast = p
        self.counters["gro_held"] += 1

    def receive_frame(self, frame: bytes) -> bool:
        """Merge a raw frame into the flow the last segment joined; False: not here.

        The common case of a bulk flow, for the driver to try before it builds
        a Packet: the next in-order, MSS-or-shorter segment of the held flow,
        with every header byte that tcp_gro_receive and inet_gro_flush want
        equal (virtio-net and MAC headers, IP but length/id/checksum, ports,
        ack, flag word, window, options) equal, the expected IP id and valid
        checksums. Such a frame merges exactly as :meth:`receive` would merge
        it; on False nothing changed and the frame takes :meth:`receive`.
        """
        p = self._fast
        if p is None:
            return False
        hlen = p.data_off
        end = len(frame)
        if end <= hlen:
            return False
        n = p.frame_n
        tot_len, ip_id, ip_csum, seq = _FRAME_VAR.unpack_from(frame, n + 2)
        length = end - hlen
        if (
            seq != p.next_seq
            or tot_len != end - n
            or length > p.mss
            or ip_id != p.next_id
            or p.ip_len + length >= self.max_size
            # ip_fast_csum: every other header word equals the held packet's,
            # whose header summed to 0xffff, so only these three can differ.
            or (tot_len + ip_id + ip_csum - p.ip_var) % 0xFFFF
            or int.from_bytes(frame[:hlen], "big") & p.frame_mask != p.frame_hdr
        ):
            return False
        if not p.csum_valid:
            # skb_gro_checksum_validate, as receive does, but over the whole
            # frame: the words in front of the IP addresses are the held
            # frame's but for length, id and checksum, so their sum is known
            # (csum_base), and the length cancels the pseudo-header's.
            if end <= FOLD_MAX:
                if (csum_words(frame) - p.csum_base - ip_id - ip_csum) % 0xFFFF:
                    return False
            elif csum_partial(memoryview(frame)[n + 12 :], IPPROTO_TCP + tot_len - 20) != 0xFFFF:
                return False
        p.parts.append(memoryview(frame)[hlen:])
        p.count += 1
        p.ip_len += length
        p.next_seq = (seq + length) & 0xFFFFFFFF
        p.next_id = (ip_id + (not p.fixedid)) & 0xFFFF
        self.counters["gro_merged"] += 1
        if length < p.mss:
            del self._held[p.key]
            self._complete(p)
        return True

    def flush(self) -> None:
        """``napi_gro_flush``: deliver every held packet, oldest first."""
        held = self._held
        if not held:
            return
        flows = list(held.values())
        held.clear()
        self._fast = None
        for p in flows:
            self._complete(p)

    def _normal(self, pkt: Packet) -> None:
        self.counters["gro_normal"] += 1
        self.deliver(pkt)

    def _complete(self, p: _Held) -> None:
        """``napi_gro_complete``: finish a held packet's headers and deliver it."""
        if self._fast is p:
            self._fast = None
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
