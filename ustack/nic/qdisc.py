"""Egress queue disciplines: where frames wait between the stack and a TX ring.

As in the kernel (net/core/dev.c ``__dev_queue_xmit`` -> ``q->enqueue`` ->
``__qdisc_run`` -> ``sch_direct_xmit`` -> ``ndo_start_xmit``), every TX queue
of the device has a root qdisc. A frame is enqueued; the device dequeues into
its ring for as long as the queue is not stopped (Byte Queue Limits, see
``dql.py``). While the qdisc is empty and the queue runs, a work-conserving
qdisc is bypassed (``TCQ_F_CAN_BYPASS``): the frame goes straight to the ring
and is only counted, which keeps the common path a ring push.

Two disciplines, chosen by ``net.core.default_qdisc`` when the device is made
and replaceable at run time (``ustack tc TAP replace root KIND``):

- ``pfifo_fast`` (net/sched/sch_generic.c): three FIFO bands picked from the
  IPv4 TOS through ``rt_tos2priority`` and ``prio2band``, band 0 first; each
  band holds at most ``txqueuelen`` frames (one ``skb_array`` of
  ``tx_queue_len`` per band since Linux 4.16), beyond that tail drop.
- ``fq_codel`` (net/sched/sch_fq_codel.c, include/net/codel_impl.h): frames
  hashed to 1024 flow queues served by deficit round robin with a quantum of
  one MTU frame, new flows before old ones; CoDel per flow (target 5 ms,
  interval 100 ms) drops from the head while the sojourn time stays above
  target; over ``limit`` (10240) frames the fattest flow loses up to half its
  bytes from the head. No ECN marking: ustack's TCP sends no ECT packets, so
  CoDel drops (``ecn_mark`` stays 0, truthfully).

Counters are those of ``tc -s qdisc``: sent bytes/packets, dropped,
overlimits, requeues, backlog bytes/packets, plus fq_codel's statistics.
A frame counts as sent when it is handed to the driver (bypass or dequeue),
so sent + dropped + backlog is exactly what went in. Every dropped frame is
freed with :func:`~ustack.buffer.skb_orphan`, so its destructor runs.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from typing import Any

from ..buffer import Packet, skb_orphan

KINDS = ("pfifo_fast", "fq_codel")
DEFAULT_TXQUEUELEN = 1000

# rt_tos2priority: ip_tos2prio[IPTOS_TOS(tos) >> 1] (net/ipv4/route.c), with
# TC_PRIO_BESTEFFORT 0, BULK 2, INTERACTIVE_BULK 4, INTERACTIVE 6.
IP_TOS2PRIO = (0, 0, 0, 0, 2, 2, 2, 2, 6, 6, 6, 6, 4, 4, 4, 4)
# sch_generic.c prio2band: priority -> band (0 is served first).
PRIO2BAND = (1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
PFIFO_FAST_BANDS = 3

ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100


def _l3_offset(pkt: Packet) -> tuple[int, int]:
    """(EtherType, offset of the network header) of a frame whose head is its MAC header."""
    buf, off = pkt.buf, pkt.head + 12
    if pkt.tail - pkt.head < 14:
        return 0, off
    et = buf[off] << 8 | buf[off + 1]
    if et == ETH_P_8021Q and pkt.tail - off >= 6:
        off += 4
        et = buf[off] << 8 | buf[off + 1]
    return et, off + 2


def skb_priority(pkt: Packet) -> int:
    """The frame's priority from its IPv4 TOS (``rt_tos2priority``); 0 for other frames."""
    et, off = _l3_offset(pkt)
    if et != ETH_P_IP or pkt.tail - off < 20:
        return 0
    return IP_TOS2PRIO[(pkt.buf[off + 1] & 0x1E) >> 1]


class Qdisc:
    """What every discipline keeps: the ``struct Qdisc`` counters."""

    kind = ""
    # TCQ_F_CAN_BYPASS: an empty qdisc may hand a frame straight to the driver.
    can_bypass = False

    def __init__(self) -> None:
        self.bytes = 0  # bstats: sent
        self.packets = 0
        self.drops = 0  # qstats
        self.overlimits = 0
        # dev_requeue_skb counts here when a driver refuses a frame; ustack's
        # never does (a full ring is written at once), so this stays 0.
        self.requeues = 0
        self.backlog = 0  # bytes
        self.qlen = 0  # frames

    def enqueue(self, pkt: Packet, now: float) -> None:
        raise NotImplementedError

    def dequeue(self, now: float) -> Packet | None:
        raise NotImplementedError

    def _purge(self) -> list[Packet]:
        """Take every frame the discipline holds."""
        raise NotImplementedError

    def drop(self, pkt: Packet) -> None:
        """``qdisc_drop``: count and free one frame (its destructor runs)."""
        self.drops += 1
        skb_orphan(pkt)

    def reset(self) -> int:
        """``qdisc_reset``: free every queued frame (as when the qdisc is replaced)."""
        pkts = self._purge()
        for pkt in pkts:
            skb_orphan(pkt)
        self.qlen = self.backlog = 0
        return len(pkts)

    def change_tx_queue_len(self, txqueuelen: int) -> None:
        """``ip link set DEV txqueuelen N`` reached this qdisc (most ignore it)."""

    def show(self) -> dict[str, Any]:
        """``tc -s qdisc show``: kind, options and counters."""
        return {
            "kind": self.kind, "sent_bytes": self.bytes, "sent_packets": self.packets,
            "dropped": self.drops, "overlimits": self.overlimits, "requeues": self.requeues,
            "backlog_bytes": self.backlog, "backlog_packets": self.qlen,
        }


class PfifoFast(Qdisc):
    """Three strict-priority FIFO bands of at most ``limit`` frames each."""

    kind = "pfifo_fast"
    can_bypass = True

    def __init__(self, limit: int = DEFAULT_TXQUEUELEN) -> None:
        super().__init__()
        self.limit = limit
        self.bands: list[deque[Packet]] = [deque() for _ in range(PFIFO_FAST_BANDS)]

    def enqueue(self, pkt: Packet, now: float) -> None:
        band = self.bands[PRIO2BAND[skb_priority(pkt)]]
        if len(band) >= self.limit:
            self.drop(pkt)  # pfifo_fast_enqueue: skb_array full -> qdisc_drop
            return
        band.append(pkt)
        self.qlen += 1
        self.backlog += len(pkt)

    def dequeue(self, now: float) -> Packet | None:
        for band in self.bands:
            if band:
                pkt = band.popleft()
                self.qlen -= 1
                self.backlog -= len(pkt)
                return pkt
        return None

    def _purge(self) -> list[Packet]:
        pkts = [p for band in self.bands for p in band]
        for band in self.bands:
            band.clear()
        return pkts

    def change_tx_queue_len(self, txqueuelen: int) -> None:
        """``pfifo_fast_change_tx_queue_len``: resize each band; frames beyond the new size go.

        ptr_ring_resize keeps the oldest frames and frees the newest.
        """
        self.limit = txqueuelen
        for band in self.bands:
            while len(band) > txqueuelen:
                pkt = band.pop()
                self.qlen -= 1
                self.backlog -= len(pkt)
                self.drop(pkt)

    def show(self) -> dict[str, Any]:
        return {**super().show(), "bands": PFIFO_FAST_BANDS, "limit": self.limit,
                "priomap": list(PRIO2BAND)}


class _Flow:
    """One fq_codel flow queue with its CoDel state (``struct fq_codel_flow``)."""

    __slots__ = ("q", "deficit", "backlog", "listed", "count", "lastcount", "dropping",
                 "drop_next", "first_above_time", "ldelay")

    def __init__(self) -> None:
        self.q: deque[tuple[Packet, float]] = deque()  # (frame, enqueue time)
        self.deficit = 0
        self.backlog = 0
        self.listed = False  # on new_flows or old_flows
        # struct codel_vars
        self.count = 0
        self.lastcount = 0
        self.dropping = False
        self.drop_next = 0.0
        self.first_above_time = 0.0  # 0: the sojourn time is below target
        self.ldelay = 0.0


class FqCodel(Qdisc):
    """Flow queues with DRR and CoDel (the kernel's fq_codel defaults)."""

    kind = "fq_codel"

    def __init__(self, quantum: int = 1514, limit: int = 10240, flows: int = 1024,
                 target: float = 0.005, interval: float = 0.100, drop_batch: int = 64) -> None:
        super().__init__()
        self.quantum = quantum
        self.limit = limit
        self.flows_cnt = flows
        self.target = target
        self.interval = interval
        self.drop_batch = drop_batch
        # CoDel leaves a queue of at most one MTU frame alone (params->mtu).
        self.mtu = quantum
        self.flows: dict[int, _Flow] = {}
        self.new_flows: deque[_Flow] = deque()
        self.old_flows: deque[_Flow] = deque()
        self.new_flow_count = 0
        self.drop_overlimit = 0
        self.ecn_mark = 0
        self.maxpacket = 0

    def classify(self, pkt: Packet) -> int:
        """``fq_codel_hash``: the flow bucket of a frame from its 5-tuple.

        The kernel hashes with a random perturbation; a fixed CRC keeps tests
        deterministic.
        """
        buf = pkt.buf
        et, off = _l3_offset(pkt)
        if et == ETH_P_IP and pkt.tail - off >= 20:
            ihl = (buf[off] & 0x0F) * 4
            proto = buf[off + 9]
            key = bytes(buf[off + 9 : off + 20])  # protocol, checksum, addresses
            key = key[:1] + key[3:]
            frag = (buf[off + 6] << 8 | buf[off + 7]) & 0x1FFF
            if proto in (6, 17) and not frag and pkt.tail - off >= ihl + 4:
                key += bytes(buf[off + ihl : off + ihl + 4])
        else:
            key = bytes(buf[pkt.head : pkt.head + 14])
        return zlib.crc32(key) % self.flows_cnt

    def enqueue(self, pkt: Packet, now: float) -> None:
        idx = self.classify(pkt)
        flow = self.flows.get(idx)
        if flow is None:
            flow = self.flows[idx] = _Flow()
        n = len(pkt)
        flow.q.append((pkt, now))
        flow.backlog += n
        self.backlog += n
        self.qlen += 1
        if not flow.listed:
            flow.listed = True
            flow.deficit = self.quantum
            self.new_flows.append(flow)
            self.new_flow_count += 1
        if self.qlen <= self.limit:
            return
        prev = self.qlen
        self._drop_fattest()
        self.drop_overlimit += prev - self.qlen

    def _drop_fattest(self) -> None:
        """``fq_codel_drop``: from the flow with the most bytes, drop up to half of them."""
        fat = max(self.flows.values(), key=lambda f: f.backlog)
        threshold = fat.backlog >> 1
        dropped = i = 0
        while fat.q:
            pkt, _ = fat.q.popleft()
            dropped += len(pkt)
            i += 1
            self.drop(pkt)
            if i >= self.drop_batch or dropped >= threshold:
                break
        fat.backlog -= dropped
        self.backlog -= dropped
        self.qlen -= i

    def _pop(self, flow: _Flow) -> tuple[Packet, float] | None:
        if not flow.q:
            return None
        item = flow.q.popleft()
        n = len(item[0])
        flow.backlog -= n
        self.backlog -= n
        self.qlen -= 1
        return item

    def _should_drop(self, item: tuple[Packet, float] | None, flow: _Flow, now: float) -> bool:
        """``codel_should_drop``: has the sojourn time stayed above target for an interval?"""
        if item is None:
            flow.first_above_time = 0.0
            return False
        n = len(item[0])
        flow.ldelay = now - item[1]
        if n > self.maxpacket:
            self.maxpacket = n
        if flow.ldelay < self.target or self.backlog <= self.mtu:
            flow.first_above_time = 0.0
            return False
        if flow.first_above_time == 0.0:
            flow.first_above_time = now + self.interval
            return False
        return now >= flow.first_above_time

    def _control_law(self, t: float, count: int) -> float:
        """Next drop time: the interval shrinks with the square root of the drop count."""
        return t + self.interval / math.sqrt(count)

    def _codel_dequeue(self, flow: _Flow, now: float) -> Packet | None:
        """``codel_dequeue`` on one flow: head drops while the standing queue lasts."""
        item = self._pop(flow)
        if item is None:
            flow.dropping = False
            return None
        drop = self._should_drop(item, flow, now)
        if flow.dropping:
            if not drop:
                flow.dropping = False  # sojourn time below target: leave dropping state
            else:
                while flow.dropping and now >= flow.drop_next:
                    flow.count += 1
                    assert item is not None
                    self.drop(item[0])
                    item = self._pop(flow)
                    if not self._should_drop(item, flow, now):
                        flow.dropping = False
                    else:
                        flow.drop_next = self._control_law(flow.drop_next, flow.count)
        elif drop:
            self.drop(item[0])
            item = self._pop(flow)
            self._should_drop(item, flow, now)
            flow.dropping = True
            # Re-enter dropping near the old rate if it was recent.
            delta = flow.count - flow.lastcount
            if delta > 1 and now - flow.drop_next < 16 * self.interval:
                flow.count = delta
            else:
                flow.count = 1
            flow.lastcount = flow.count
            flow.drop_next = self._control_law(now, flow.count)
        return item[0] if item is not None else None

    def dequeue(self, now: float) -> Packet | None:
        """``fq_codel_dequeue``: DRR over new flows, then old flows."""
        while True:
            head = self.new_flows if self.new_flows else self.old_flows
            if not head:
                return None
            flow = head[0]
            if flow.deficit <= 0:
                flow.deficit += self.quantum
                head.popleft()
                self.old_flows.append(flow)
                continue
            pkt = self._codel_dequeue(flow, now)
            if pkt is None:
                head.popleft()
                if head is self.new_flows and self.old_flows:
                    # A new flow that emptied goes to old_flows, so it cannot
                    # starve them by coming back as "new" at once.
                    self.old_flows.append(flow)
                else:
                    flow.listed = False
                continue
            flow.deficit -= len(pkt)
            return pkt

    def _purge(self) -> list[Packet]:
        pkts = [p for flow in self.flows.values() for p, _ in flow.q]
        self.flows.clear()
        self.new_flows.clear()
        self.old_flows.clear()
        return pkts

    def show(self) -> dict[str, Any]:
        return {
            **super().show(), "limit": self.limit, "flows": self.flows_cnt,
            "quantum": self.quantum, "target_us": round(self.target * 1e6),
            "interval_us": round(self.interval * 1e6), "maxpacket": self.maxpacket,
            "drop_overlimit": self.drop_overlimit, "new_flow_count": self.new_flow_count,
            "ecn_mark": self.ecn_mark, "new_flows_len": len(self.new_flows),
            "old_flows_len": len(self.old_flows),
        }


def make_qdisc(kind: str, txqueuelen: int = DEFAULT_TXQUEUELEN, mtu: int = 1500) -> Qdisc:
    """A fresh root qdisc of *kind* (``qdisc_create_dflt``); ValueError for an unknown kind."""
    if kind == "pfifo_fast":
        return PfifoFast(txqueuelen)
    if kind == "fq_codel":
        # psched_mtu: the device MTU plus its link-layer header.
        return FqCodel(quantum=mtu + 14)
    raise ValueError(f"unknown qdisc {kind!r} (use {' or '.join(KINDS)})")
