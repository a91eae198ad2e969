"""NetDevice: the emulated NIC between a link (TAP or wire) and the stack.

Per queue it owns an RX ring, a TX ring and a NAPI instance. The receive
side works like a driver with interrupt mitigation: the link becoming
readable is the interrupt; the "DMA" copies waiting frames into the RX ring
(dropping, and counting ``rx_fifo_errors``, when the ring is full); NAPI
polls take frames off the ring, parse the virtio-net header into packet
metadata (nic/virtio.py) and hand each frame to the stack (``netif_receive_skb``). The
transmit side is ``ndo_start_xmit``: a frame goes onto the queue's TX ring,
and the ring is written to the link in one burst when the doorbell is rung
(at the end of a softirq round, or when the ring is full).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

from ..buffer import (
    CHECKSUM_PARTIAL,
    Packet,
    skb_checksum_help,
    skb_orphan,
)
from .coalesce import Coalesce
from .dql import Dql
from .features import GRO, GRO_HW, RX_CSUM, RX_VLAN, TSO, TX_CSUM, VLAN_FILTER, Features
from .gro import Gro
from .gso import gso_frames, gso_segment
from .impair import Impair, Impairment
from .napi import Napi, Softnet
from .qdisc import DEFAULT_TXQUEUELEN, Qdisc, make_qdisc
from .ring import Ring
from .rss import Rss
from .virtio import (
    gso_prefix,
    headers_len,
    parse_vnet_hdr,
    push_vnet_hdr,
    wire_form,
)
from .vlan import is_tagged, vlan_id, vlan_insert_tag, vlan_untag
from .xdp import COUNTERS as XDP_COUNTERS
from .xdp import XDP_PASS, XDP_TX, XdpBuff, XdpProg, run_xdp

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_ZLEN = 60  # minimum frame without FCS


class LinkQueue(Protocol):
    """What a driver needs from one queue of a link (TapQueue, WireEnd)."""

    def read_frame(self) -> bytes | None: ...
    def read_frames(self, limit: int) -> list[bytes]: ...
    def write_frame(self, frame: bytes | bytearray | memoryview) -> bool: ...
    async def wait_readable(self) -> None: ...


class QueueStats:
    """Per-queue counters, shown as ``rx_queue_N_*`` / ``tx_queue_N_*``."""

    __slots__ = ("rx_packets", "rx_bytes", "rx_drops", "tx_packets", "tx_bytes", "tx_drops")

    def __init__(self) -> None:
        self.rx_packets = self.rx_bytes = self.rx_drops = 0
        self.tx_packets = self.tx_bytes = self.tx_drops = 0


# Device-wide counters (struct rtnl_link_stats64 names, as ethtool -S and
# /proc/net/dev show them).
DEVICE_COUNTERS = (
    "rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "rx_length_errors",
    "rx_fifo_errors", "rx_missed_errors", "tx_packets", "tx_bytes", "tx_errors",
    "tx_dropped",
    # Offload work: super-frames the kernel handed us, TSO super-frames we
    # handed it, and software GSO (super-segments split, frames made).
    "rx_gro_hw_packets", "tx_tso_packets", "tx_gso_packets", "tx_gso_segments",
    # 802.1Q: frames of VLANs nobody subscribed to (rx-vlan-filter), and
    # tagged frames too short to hold their tag or with the reserved VLAN 4095.
    "rx_vlan_filtered", "rx_vlan_malformed",
)
# TUNSETOFFLOAD flags for the receive features (the kernel's TUN_F_* bits).
_TUN_F_CSUM = 0x01
_TUN_F_TSO = 0x02 | 0x04 | 0x08


class NetDevice:
    """An N-queue NIC whose wire is a list of link queues."""

    def __init__(
        self,
        name: str,
        mac: bytes,
        links: list[Any],
        softnet: Softnet,
        mtu: int = 1500,
        ring_size: int = 256,
        vnet_hdr_len: int = 0,
        hw_features: frozenset[str] = frozenset(),
        features: set[str] | None = None,
        set_offload: Callable[[int], None] | None = None,
        clock: Callable[[], float] | None = None,
        set_queue_attached: Callable[[int, bool], None] | None = None,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
    ) -> None:
        if not links:
            raise ValueError("a device needs at least one queue")
        if not 68 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} out of range 68..65535")
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.links = links
        self.softnet = softnet
        self.vnet_hdr_len = vnet_hdr_len
        self.rx_rings: list[Ring[bytes]] = [Ring(ring_size) for _ in links]
        self.tx_rings: list[Ring[Packet]] = [Ring(ring_size) for _ in links]
        self.qstats = [QueueStats() for _ in links]
        self.counters: dict[str, int] = {n: 0 for n in DEVICE_COUNTERS}
        weight = softnet.sysctl["net.core.dev_weight"]
        self.napi = [
            Napi(f"{name}-rx-{i}", self._make_poll(i), weight) for i in range(len(links))
        ]
        # netif_receive_skb: set by the stack; takes a frame with mac_off set.
        self.rx_handler: Callable[[Packet], None] = lambda pkt: None
        # One GRO context per NAPI instance, delivering to rx_handler; it may
        # match raw frames (MAC header after the virtio-net header) itself.
        self.gro = [Gro(self._gro_deliver) for _ in links]
        for gro in self.gro:
            gro.frame_vlen = vnet_hdr_len
        # Per queue: did the last DMA find the link empty (EAGAIN)? Then the
        # poll that follows has nothing new to read (see napi_poll).
        self._rx_dry = [False] * len(links)
        self._set_offload = set_offload
        # The wire's impairments, per queue and direction (None: a clean wire).
        self.clock = clock if clock is not None else (lambda: 0.0)
        self.rx_impair: list[Impairment | None] = [None] * len(links)
        self.tx_impair: list[Impairment | None] = [None] * len(links)
        self.impair_spec: tuple[Impair | None, Impair | None] = (None, None)
        self.impaired = False
        # Egress: a root qdisc per TX queue (net.core.default_qdisc), Byte
        # Queue Limits per TX ring, and the queue's __QUEUE_STATE_STACK_XOFF.
        self.txqueuelen = _check_txqueuelen(txqueuelen)
        self.qdiscs: list[Qdisc] = [
            make_qdisc(softnet.sysctl["net.core.default_qdisc"], txqueuelen, mtu) for _ in links]
        self.dql = [Dql() for _ in links]
        self.tx_stopped = [False] * len(links)
        self.rss = Rss(len(links))
        self._flow_cache: dict[tuple[bytes, bytes, int, int], int] = {}
        self._flow_cache_gen = -1
        # Queues in use (ethtool -L combined); the rest stay open but detached.
        self.active_queues = len(links)
        self._set_queue_attached = set_queue_attached
        # ethtool -c/-C: when each queue's interrupt fires after frames land.
        self.coalesce = Coalesce(
            len(links), lambda q: (self.qstats[q].rx_packets, self.qstats[q].rx_bytes))
        # VLAN ids with a sub-interface (ndo_vlan_rx_add_vid): rx-vlan-filter passes them.
        self.vlan_filter: set[int] = set()
        # The XDP program at the RX ring and its verdict counters (nic/xdp.py).
        self.xdp: XdpProg | None = None
        self.xdp_counters: dict[str, int] = {n: 0 for n in XDP_COUNTERS}
        # Capture taps at the ring and at the wire (capture.py); None: no capture.
        self.tap_rx: Callable[[memoryview], None] | None = None
        self.tap_tx: Callable[[memoryview], None] | None = None
        # Called after the features changed (the NETDEV_FEAT_CHANGE notifier).
        self.features_changed: list[Callable[[], None]] = []
        self.features = Features(hw_features, features)
        self.features.on_change = self._apply_features
        self._apply_features(self.features.active)
        softnet.post_round.append(self.flush_tx)

    @property
    def num_queues(self) -> int:
        return len(self.links)

    def set_channels(self, combined: int) -> None:
        """``ethtool -L combined N``: use the first N queues (at most those opened).

        Queues beyond N are detached from the TAP (TUNSETQUEUE), so the kernel
        stops using them, and the RETA is spread over the first N, so our own
        flows move too; frames already on a detached queue are still read.
        """
        if not 1 <= combined <= len(self.links):
            raise ValueError(f"combined {combined}: the device has {len(self.links)} queue(s)")
        if self._set_queue_attached is None and combined != len(self.links):
            raise ValueError("this link cannot change its queue count")
        self.rss.set_equal(combined)
        if self._set_queue_attached is not None:
            for q in range(len(self.links)):
                want = q < combined
                if want != (q < self.active_queues):
                    self._set_queue_attached(q, want)
        self.active_queues = combined

    def flow_queue(self, saddr: bytes, daddr: bytes, sport: int, dport: int) -> int:
        """The queue of a flow whose packets arrive from (saddr, sport) (RSS + RETA).

        Writing a flow's frames on this queue makes the TAP's flow table steer
        the kernel's replies to it too (accelerated RFS, FACTS.md).
        """
        if len(self.links) == 1:
            return 0
        rss = self.rss
        if self._flow_cache_gen != rss.generation or len(self._flow_cache) > 65536:
            # The table or key changed: every flow picks its queue anew
            # (netdev_pick_tx when the socket's cached queue is stale).
            self._flow_cache.clear()
            self._flow_cache_gen = rss.generation
        key = (saddr, daddr, sport, dport)
        q = self._flow_cache.get(key)
        if q is None:
            q = self._flow_cache[key] = rss.queue_of(rss.flow_hash(saddr, daddr, sport, dport))
        return q

    def _gro_deliver(self, pkt: Packet) -> None:
        self.rx_handler(pkt)

    def _apply_features(self, active: set[str]) -> None:
        """Tell the link and the GRO contexts what is on (ndo_set_features)."""
        for gro in self.gro:
            gro.enabled = GRO in active
        self.rx_vlan = RX_VLAN in active
        if self._set_offload is not None:
            flags = (_TUN_F_CSUM if RX_CSUM in active else 0) | (
                _TUN_F_TSO if GRO_HW in active else 0)
            self._set_offload(flags)
        for hook in self.features_changed:
            hook()

    @property
    def gso_max_size(self) -> int:
        """How big a TCP super-segment may be (``netif_sk_gso_max``); 0: MSS frames only."""
        return 65536 - 1 if (TSO in self.features or "generic-segmentation-offload"
                             in self.features) else 0

    @property
    def tx_csum(self) -> bool:
        """May TCP leave checksums to the device (NETIF_F_HW_CSUM over the vnet header)?"""
        return TX_CSUM in self.features and bool(self.vnet_hdr_len)

    # ---- receive ------------------------------------------------------------

    def dma_rx(self, q: int) -> int:
        """Move the frames waiting on link queue *q* into its RX ring.

        Reads at most one ring's worth per call, as a NIC's DMA engine can only
        fill the descriptors it has; frames that find the ring full are dropped
        and counted (``rx_fifo_errors``, the per-queue ``drops``).
        """
        link = self.links[q]
        ring = self.rx_rings[q]
        impair = self.rx_impair[q]
        if impair is None:
            frames = link.read_frames(ring.size)
            self._rx_dry[q] = len(frames) < ring.size
            moved = ring.push_many(frames)
            if moved < len(frames):
                self._rx_drop(q, len(frames) - moved)
            return moved
        moved = 0
        self._rx_dry[q] = False
        for _ in range(ring.size):
            frame = link.read_frame()
            if frame is None:
                self._rx_dry[q] = True
                break
            # The frame crosses the impaired stretch of wire before the NIC.
            for f in impair.submit(frame, self.clock()):
                moved += self._rx_place(q, f)
        return moved

    def _rx_place(self, q: int, frame: bytes) -> int:
        """Put one arriving frame in a descriptor, or drop it: the ring is full."""
        if self.rx_rings[q].push(frame):
            return 1
        self._rx_drop(q, 1)
        return 0

    def _rx_drop(self, q: int, frames: int) -> None:
        """*frames* found no free descriptor."""
        self.qstats[q].rx_drops += frames
        self.counters["rx_fifo_errors"] += frames
        self.counters["rx_dropped"] += frames

    # ---- the impaired wire ----------------------------------------------------

    def set_impair(self, rx: Impair | None, tx: Impair | None) -> None:
        """Impair the wire from now on (None: clean); each queue gets its own seed."""
        def make(knobs: Impair | None, q: int) -> Impairment | None:
            if knobs is None:
                return None
            seed = None if knobs.seed is None else knobs.seed + q
            imp = Impairment(dataclasses.replace(knobs, seed=seed))
            if self.vnet_hdr_len:
                imp.header_len = self.vnet_hdr_len + ETH_HLEN
                imp.wire_form = functools.partial(wire_form, vlen=self.vnet_hdr_len)
            return imp

        for q in range(len(self.links)):
            for frame in self._release_all(q):
                self.links[q].write_frame(frame)
            old = self.tx_impair[q]
            done = self._impair_completions(old, float("inf")) if old is not None else 0
            self.rx_impair[q] = make(rx, q)
            self.tx_impair[q] = make(tx, q)
            if done:
                self._tx_completed(q, done)
        self.impair_spec = (rx, tx)
        self.impaired = rx is not None or tx is not None
        self.flush_tx()

    def _release_all(self, q: int) -> list[bytes]:
        """Frames held on the TX side when impairments change go out now."""
        tx = self.tx_impair[q]
        return tx.poll(float("inf")) if tx is not None else []

    def impair_poll(self, now: float) -> list[int]:
        """Release held frames whose time has come; return the RX queues that got some."""
        woken = []
        for q in range(len(self.links)):
            rx = self.rx_impair[q]
            if rx is not None:
                placed = sum(self._rx_place(q, f) for f in rx.poll(now))
                if placed:
                    woken.append(q)
            tx = self.tx_impair[q]
            if tx is not None:
                for frame in tx.poll(now):
                    self._link_write(q, frame)
                done = self._impair_completions(tx, now)
                if done:
                    self._tx_completed(q, done)
                    self._tx_run(q)
        return woken

    def impair_deadline(self) -> float | None:
        """When impair_poll has something to release next."""
        if not self.impaired:
            return None
        deadlines = [i.next_deadline() for i in (*self.rx_impair, *self.tx_impair)
                     if i is not None]
        deadlines = [d for d in deadlines if d is not None]
        return min(deadlines) if deadlines else None

    def _make_poll(self, q: int) -> Callable[[int], int]:
        def poll(budget: int) -> int:
            return self.napi_poll(q, budget)

        return poll

    def napi_poll(self, q: int, budget: int) -> int:
        """The driver's NAPI poll: process up to *budget* frames of queue *q*.

        The ring is topped up from the link first, unless the interrupt's
        DMA, which ran just before, found the link empty: a second read
        would only return EAGAIN. Frames that land meanwhile raise the next
        interrupt, or are read by the repoll of a poll that used its whole
        budget.
        """
        if not self._rx_dry[q]:
            self.dma_rx(q)
        # Only the DMA right before a poll (the interrupt's) vouches for the
        # link; a later poll (repoll, busy poll, a scheduled queue) reads again.
        self._rx_dry[q] = False
        descs = self.rx_rings[q].descriptors
        work = min(budget, len(descs))
        if not work:
            self.gro[q].flush()
            return 0
        qs = self.qstats[q]
        counters = self.counters
        vlen = self.vnet_hdr_len
        max_frame = self.mtu + ETH_HLEN + VLAN_HLEN
        gro = self.gro[q]
        handler = gro.receive if gro.enabled else self.rx_handler
        # None unless an XDP program / a capture at "rx" is attached (nic/xdp.py, capture.py).
        xdp = self.xdp
        tap_rx = self.tap_rx
        # GRO's raw-frame fast path sees frames before any Packet exists, so
        # only when nothing else must see them first.
        merge = gro.receive_frame if gro.enabled and xdp is None and tap_rx is None else None
        pop = descs.popleft
        # rx_packets/rx_bytes are summed here and added once, after the loop.
        packets = nbytes = 0
        try:
            for _ in range(work):
                frame = pop()
                if merge is not None and merge(frame):
                    packets += 1
                    nbytes += len(frame)
                    continue
                n = len(frame) - vlen
                pkt = Packet(frame, vlen)
                pkt.queue = q
                # A frame shorter than its virtio-net header plus Ethernet is a
                # length error before any header is read (virtnet receive_buf).
                if vlen and n >= ETH_HLEN:
                    parse_vnet_hdr(pkt, frame, vlen)
                if n < ETH_HLEN or (n > max_frame and not pkt.gso_size):
                    counters["rx_length_errors"] += 1
                    counters["rx_errors"] += 1
                    qs.rx_drops += 1
                    continue
                packets += 1
                nbytes += len(frame)
                if pkt.gso_size:
                    counters["rx_gro_hw_packets"] += 1
                if xdp is not None:
                    pkt = self._run_xdp(xdp, q, pkt)
                    if pkt is None:
                        continue
                    frame = pkt.buf
                if tap_rx is not None:
                    tap_rx(memoryview(frame)[vlen:])
                pkt.mac_off = vlen
                if (self.rx_vlan and pkt.tail - pkt.head > 13 and pkt.buf[pkt.head + 12] == 0x81
                        and not self._vlan_rx(pkt)):
                    continue
                handler(pkt)
        finally:
            nbytes -= packets * vlen
            qs.rx_packets += packets
            qs.rx_bytes += nbytes
            counters["rx_packets"] += packets
            counters["rx_bytes"] += nbytes
        # napi_gro_flush at the end of each poll: nothing is held across polls.
        gro.flush()
        return work

    def _run_xdp(self, prog: XdpProg, q: int, pkt: Packet) -> Packet | None:
        """Run the XDP program on one frame; the packet to pass on, or None.

        As a driver does before it builds an skb: a dropped frame goes no
        further; an XDP_TX frame leaves on this queue's TX ring.
        """
        frame = pkt.buf
        vlen = self.vnet_hdr_len
        view = memoryview(frame)[vlen:]
        xdp = XdpBuff(view, q)
        action = run_xdp(prog, xdp, self.xdp_counters)
        if action == XDP_TX:
            out = Packet.alloc(xdp.data)
            out.mac_off = out.head
            out.queue = q
            # Straight to the TX ring, as a driver's XDP_TX does: no qdisc.
            self._ring_xmit(q, out)
            return None
        if action != XDP_PASS:
            return None
        if xdp.data is not view:
            # The program rewrote the frame: pass the new bytes up instead.
            new = Packet(bytes(frame[:vlen]) + bytes(xdp.data), vlen)
            new.queue = q
            new.ip_summed = pkt.ip_summed
            new.csum_start, new.csum_offset = pkt.csum_start, pkt.csum_offset
            new.gso_type, new.gso_size = pkt.gso_type, pkt.gso_size
            return new
        return pkt

    def _vlan_rx(self, pkt: Packet) -> bool:
        """rx-vlan-offload: strip the tag into ``pkt.vlan_tci``; False if dropped.

        With rx-vlan-filter, a VLAN without a sub-interface is dropped here,
        as a NIC's VLAN filter table does, and counted.
        """
        if not is_tagged(pkt):
            return True
        if not vlan_untag(pkt):
            self.counters["rx_vlan_malformed"] += 1
            return False
        vid = vlan_id(pkt)
        if vid and vid not in self.vlan_filter and VLAN_FILTER in self.features:
            self.counters["rx_vlan_filtered"] += 1
            return False
        return True

    # ---- transmit -----------------------------------------------------------

    def start_xmit(self, pkt: Packet) -> None:
        """``__dev_queue_xmit``: one frame (``pkt.head`` at its MAC header) into its queue.

        An empty work-conserving qdisc on a running queue is bypassed
        (``TCQ_F_CAN_BYPASS`` -> ``sch_direct_xmit``): the frame goes straight
        to the TX ring and is only counted. Otherwise it is enqueued, and the
        qdisc runs into the ring while BQL lets it.
        """
        q = pkt.queue % len(self.links)
        qdisc = self.qdiscs[q]
        if qdisc.can_bypass and not qdisc.qlen and not self.tx_stopped[q]:
            # The hot path: _ring_xmit inlined.
            n = pkt.tail - pkt.head
            qdisc.bytes += n
            qdisc.packets += 1
            ring = self.tx_rings[q]
            if not ring.free:
                self._flush_queue(q)
            ring.push(pkt)
            dql = self.dql[q]
            dql.last_obj_cnt = n
            dql.num_queued += n
            if dql.adj_limit < dql.num_queued:
                self.tx_stopped[q] = True
            return
        qdisc.enqueue(pkt, self.clock())
        self._qdisc_run(q)

    def _ring_xmit(self, q: int, pkt: Packet) -> None:
        """``ndo_start_xmit`` + ``netdev_tx_sent_queue``: one descriptor, charged to BQL."""
        ring = self.tx_rings[q]
        if not ring.free:
            # The ring is full: ring the doorbell now; the wire takes the batch
            # at once, so the descriptors are free again.
            self._flush_queue(q)
        ring.push(pkt)
        dql = self.dql[q]
        n = pkt.tail - pkt.head
        # dql_queued, inlined.
        dql.last_obj_cnt = n
        dql.num_queued += n
        if dql.adj_limit < dql.num_queued:
            # dql_avail < 0: netif_tx_stop_queue (__QUEUE_STATE_STACK_XOFF)
            # until completions make room; meanwhile frames wait in the qdisc.
            self.tx_stopped[q] = True

    def _qdisc_run(self, q: int) -> None:
        """``__qdisc_run``: dequeue into the ring while the queue is not stopped.

        The qdisc serves one TX queue (``TCQ_F_ONETXQUEUE``), so a stopped
        queue is not dequeued at all and nothing needs requeueing.
        """
        qdisc = self.qdiscs[q]
        stopped = self.tx_stopped
        if stopped[q]:
            return
        now = self.clock()
        while not stopped[q]:
            pkt = qdisc.dequeue(now)
            if pkt is None:
                return
            qdisc.bytes += len(pkt)
            qdisc.packets += 1
            self._ring_xmit(q, pkt)

    def flush_tx(self) -> None:
        """Ring every queue's doorbell: write the queued frames to the link."""
        for q, ring in enumerate(self.tx_rings):
            if ring:
                self._flush_queue(q)
                if not self.tx_stopped[q] and self.qdiscs[q].qlen:
                    self._tx_run(q)
            elif self.qdiscs[q].qlen:
                self._tx_run(q)

    def _tx_run(self, q: int) -> None:
        """Write queue *q*'s ring; while completions restart the queue, refill it.

        As ``netif_tx_wake_queue`` -> ``net_tx_action`` -> ``qdisc_run``: on a
        clean wire a frame completes when written, so the qdisc drains in one
        go; on an impaired wire completions come later (``impair_poll``).
        """
        ring = self.tx_rings[q]
        qdisc = self.qdiscs[q]
        while True:
            if ring:
                self._flush_queue(q)
            if self.tx_stopped[q] or not qdisc.qlen:
                return
            self._qdisc_run(q)

    def _tx_completed(self, q: int, nbytes: int) -> None:
        """``netdev_tx_completed_queue``: BQL learns what finished; the queue may wake."""
        dql = self.dql[q]
        dql.completed(nbytes, self.clock())
        if self.tx_stopped[q] and dql.avail() >= 0:
            self.tx_stopped[q] = False  # netif_tx_wake_queue; the caller runs the qdisc

    @staticmethod
    def _impair_completions(tx: Impairment, now: float) -> int:
        """Complete the frames the impaired wire is done with; return their queued bytes."""
        done = 0
        for owner, nbytes in tx.completed(now):  # type: ignore[misc]
            skb_orphan(owner)
            done += nbytes
        return done

    def _flush_queue(self, q: int) -> None:
        """Write the ring's frames to the link; complete them (destructor, BQL).

        On a clean wire a frame is complete once written; on an impaired one
        when the impairment lets it go. A dropped frame completes too.
        """
        link = self.links[q]
        qs = self.qstats[q]
        counters = self.counters
        vlen = self.vnet_hdr_len
        features = self.features
        impair = self.tx_impair[q]
        # A wire that corrupts frames gets them whole, as a NIC puts them on a
        # real wire: segmented and checksummed here, so the receiver's checksum
        # catches the flipped bit (the kernel would checksum corrupted data).
        corrupting = impair is not None and impair.knobs.corrupt > 0
        csum_offload = bool(vlen) and TX_CSUM in features and not corrupting
        done = 0  # bytes completed now (netdev_tx_completed_queue)
        for pkt in self.tx_rings[q].drain():
            n = pkt.tail - pkt.head
            token = None if impair is None else (pkt, n)
            if pkt.gso_size and n - headers_len(pkt) > pkt.gso_size:
                if (TSO in features and vlen and pkt.ip_summed == CHECKSUM_PARTIAL
                        and not corrupting):
                    # The kernel takes the super-frame whole (virtio GSO_TCPV4).
                    counters["tx_tso_packets"] += 1
                    self._write(link, qs, pkt, vlen, token)
                else:
                    # validate_xmit_skb -> skb_gso_segment: cut it here, in software.
                    # Segments nothing needs to see or change on the way out
                    # (capture, VLAN tag, impaired wire) go out as bare frames,
                    # virtio-net header included: no Packet per segment.
                    frames: list[bytearray] | None = None
                    segs: list[Packet] = []
                    try:
                        if impair is None and self.tap_tx is None and not pkt.vlan_tci:
                            frames = gso_frames(pkt, gso_prefix(pkt, vlen, csum_offload),
                                                csum_offload)
                        if frames is None:
                            segs = gso_segment(pkt, csum_offload=csum_offload)
                    except ValueError:
                        # Not TCP/IPv4 or malformed: the kernel drops it (-EINVAL).
                        qs.tx_drops += 1
                        counters["tx_dropped"] += 1
                        counters["tx_errors"] += 1
                        skb_orphan(pkt)
                        done += n
                        continue
                    counters["tx_gso_packets"] += 1
                    if frames is not None:
                        counters["tx_gso_segments"] += len(frames)
                        self._write_frames(link, qs, frames, vlen)
                    else:
                        counters["tx_gso_segments"] += len(segs)
                        last = segs[-1]
                        for seg in segs:
                            # The super-segment is done when its last segment is.
                            self._write(link, qs, seg, vlen, token if seg is last else None,
                                        csum_offload)
            else:
                pkt.gso_size = 0
                self._write(link, qs, pkt, vlen, token, csum_offload)
            if impair is None:
                if pkt.destructor is not None:
                    skb_orphan(pkt)
                done += n
        if impair is not None:
            done += self._impair_completions(impair, self.clock())
        if done:
            self._tx_completed(q, done)

    def _write_frames(self, link: Any, qs: QueueStats, frames: list[bytearray],
                      vlen: int) -> None:
        """Hand finished frames (virtio-net header first) to the link, one write each."""
        write = link.write_frame
        sent = nbytes = 0
        for frame in frames:
            n = len(frame) - vlen
            if n < ETH_ZLEN:
                # Padded with zeros to the Ethernet minimum, as _write does.
                frame += bytes(ETH_ZLEN - n)
                n = ETH_ZLEN
            if write(frame):
                sent += 1
                nbytes += n
            else:
                self._tx_error(qs)
        qs.tx_packets += sent
        qs.tx_bytes += nbytes
        counters = self.counters
        counters["tx_packets"] += sent
        counters["tx_bytes"] += nbytes

    def _write(self, link: Any, qs: QueueStats, pkt: Packet, vlen: int,
               token: object = None, csum_offload: bool | None = None) -> None:
        """Hand one frame to the link, finishing its checksum if the link cannot.

        *token* rides with the frame through an impaired wire and comes back
        as its TX completion. *csum_offload* False forces a software checksum.
        """
        if csum_offload is None:
            csum_offload = bool(vlen) and TX_CSUM in self.features
        if pkt.vlan_tci:
            # tx-vlan-offload: the NIC puts the descriptor's tag in the frame.
            vlan_insert_tag(pkt, pkt.vlan_tci)
            pkt.vlan_tci = 0
        if pkt.ip_summed == CHECKSUM_PARTIAL and not csum_offload:
            skb_checksum_help(pkt)
        n = len(pkt)
        if n < ETH_ZLEN:
            # Short frames are padded to the Ethernet minimum with zeros, as a
            # NIC does; never with stale buffer bytes (CVE-2003-0001, Etherleak).
            # A fresh buffer: the old one may still be exported to a memoryview
            # (a caller's checksum view), which forbids resizing it in place.
            pkt.buf = bytearray(pkt.buf[: pkt.tail]) + bytes(ETH_ZLEN - n)
            pkt.tail = len(pkt.buf)
            n = ETH_ZLEN
        if self.tap_tx is not None:
            self.tap_tx(pkt.data())
        if vlen:
            push_vnet_hdr(pkt, vlen)
        impair = self.tx_impair[pkt.queue % len(self.links)]
        if impair is None:
            if not link.write_frame(pkt.data()):
                self._tx_error(qs)
                return
        else:
            # Past the NIC the frame crosses the impaired stretch of wire.
            for frame in impair.submit(bytes(pkt.data()), self.clock(), token):
                self._link_write(pkt.queue % len(self.links), frame)
        qs.tx_packets += 1
        qs.tx_bytes += n
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += n

    def _link_write(self, q: int, frame: bytes) -> None:
        if not self.links[q].write_frame(frame):
            self._tx_error(self.qstats[q])

    def _tx_error(self, qs: QueueStats) -> None:
        qs.tx_drops += 1
        self.counters["tx_dropped"] += 1
        self.counters["tx_errors"] += 1

    # ---- egress queueing (tc, ip link set txqueuelen) -------------------------

    def set_qdisc(self, kind: str) -> None:
        """``tc qdisc replace dev DEV root KIND``: a fresh qdisc per TX queue.

        As qdisc_graft does, the old qdiscs are reset: frames still in them
        are freed (their destructors run), and the counters start over.
        """
        new = [make_qdisc(kind, self.txqueuelen, self.mtu) for _ in self.links]
        old, self.qdiscs = self.qdiscs, new
        for qdisc in old:
            qdisc.reset()

    def set_txqueuelen(self, txqueuelen: int) -> None:
        """``ip link set DEV txqueuelen N``: pfifo_fast's bands follow it."""
        self.txqueuelen = _check_txqueuelen(txqueuelen)
        for qdisc in self.qdiscs:
            qdisc.change_tx_queue_len(txqueuelen)

    def tc_show(self) -> list[dict[str, Any]]:
        """Per TX queue: the qdisc (``tc -s qdisc``) and BQL (``byte_queue_limits``)."""
        return [
            {"queue": q, "qdisc": self.qdiscs[q].show(), "bql": self.dql[q].show(),
             "stopped": self.tx_stopped[q], "ring": len(self.tx_rings[q])}
            for q in range(len(self.links))
        ]

    # ---- views --------------------------------------------------------------

    def ethtool_stats(self) -> dict[str, int]:
        """Counters as ``ethtool -S`` prints them: device totals, then per queue."""
        out = dict(self.counters)
        for side, impairs in (("rx", self.rx_impair), ("tx", self.tx_impair)):
            for imp in impairs:
                if imp is not None:
                    for name, value in imp.counters.items():
                        key = f"{side}_{name}"
                        out[key] = out.get(key, 0) + value
        for gro in self.gro:
            for name, value in gro.counters.items():
                out[f"rx_{name}"] = out.get(f"rx_{name}", 0) + value
        out.update(self.xdp_counters)
        for i, qs in enumerate(self.qstats):
            out[f"rx_queue_{i}_packets"] = qs.rx_packets
            out[f"rx_queue_{i}_bytes"] = qs.rx_bytes
            out[f"rx_queue_{i}_drops"] = qs.rx_drops
            # Interrupts, softirq polls and busy polls: frames per poll is the batch.
            out[f"rx_queue_{i}_interrupts"] = self.coalesce.queues[i].interrupts
            out[f"rx_queue_{i}_napi_polls"] = self.napi[i].polls
            out[f"rx_queue_{i}_busy_poll_packets"] = self.napi[i].busy_poll_packets
        for i, qs in enumerate(self.qstats):
            out[f"tx_queue_{i}_packets"] = qs.tx_packets
            out[f"tx_queue_{i}_bytes"] = qs.tx_bytes
            out[f"tx_queue_{i}_drops"] = qs.tx_drops
        return out

    def rings(self) -> dict[str, int]:
        """Ring sizes and fill, like ``ethtool -g`` plus the current occupancy."""
        return {
            "rx": self.rx_rings[0].size,
            "tx": self.tx_rings[0].size,
            **{f"rx_queue_{i}_fill": len(r) for i, r in enumerate(self.rx_rings)},
        }


def _check_txqueuelen(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**31 - 1:
        raise ValueError(f"bad txqueuelen {n!r}: must be 1..{2**31 - 1}")
    return n

