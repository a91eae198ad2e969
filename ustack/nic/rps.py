"""Receive packet steering and receive flow steering (net/core/dev.c).

RPS spreads received frames over more CPUs than the NIC has queues: after
the driver's poll (and GRO), ``netif_receive_skb`` hashes the frame's flow
and queues it on the backlog of one CPU from the receiving queue's
``rps_cpus`` set (``enqueue_to_backlog``); that CPU's backlog NAPI
(``process_backlog``) then runs the protocol stack for it. A backlog longer
than ``net.core.netdev_max_backlog`` drops the frame and counts the target
CPU's softnet_stat ``dropped``.

RFS refines the choice: a socket read records its flow's hash and the
reader's CPU in the sock flow table (``net.core.rps_sock_flow_entries``,
``sock_rps_record_flow``), and each RX queue's flow table
(``rps_flow_cnt``) moves the flow to that CPU once the frames already queued
on the old one are done, so a flow is never reordered (``get_rps_cpu``).

Every piece of state belongs to one :class:`Rps` (per stack) and its
:class:`RxQueueRps` / :class:`Backlog` objects (per queue, per CPU): nothing
is global.
"""

from __future__ import annotations

import contextvars
import struct
from collections import deque
from collections.abc import Callable

from ..buffer import Packet
from ..sysctl import Sysctl
from .napi import Cpus, Napi

ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
RPS_NO_CPU = 0xFFFF  # an unused rps_dev_flow (RPS_NO_CPU in the kernel)
_PORTS = struct.Struct("!HH")

FlowHash = Callable[[bytes, bytes, int, int], int]


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else n


def parse_cpumask(text: str, ncpus: int) -> int:
    """A hex CPU mask as sysfs rps_cpus takes it (``f``, ``0x3``, ``00000003``)."""
    try:
        mask = int(text.replace(",", ""), 16)
    except ValueError:
        raise ValueError(f"bad CPU mask {text!r}: expected hex, e.g. 3 for CPUs 0-1") from None
    if mask < 0 or mask >> ncpus:
        raise ValueError(f"CPU mask {text} names CPUs beyond the stack's {ncpus}")
    return mask


class RpsDevFlow:
    """One entry of an RX queue's flow table (``struct rps_dev_flow``)."""

    __slots__ = ("cpu", "last_qtail")

    def __init__(self) -> None:
        self.cpu = RPS_NO_CPU
        self.last_qtail = 0


class RxQueueRps:
    """What one RX queue steers by: its rps_cpus map and rps_flow_cnt table."""

    def __init__(self) -> None:
        self.cpus: list[int] = []  # rps_map: the CPUs of the mask, in order
        self.flows: list[RpsDevFlow] = []  # rps_dev_flow_table, a power of two long

    @property
    def mask(self) -> int:
        m = 0
        for c in self.cpus:
            m |= 1 << c
        return m


class Backlog:
    """One CPU's ``input_pkt_queue`` and the NAPI instance that drains it."""

    def __init__(self, cpu: int, weight: int, deliver: Callable[[Packet], None]) -> None:
        self.queue: deque[Packet] = deque()
        self.deliver = deliver
        # input_queue_head counts frames taken off, input_queue_tail frames put
        # on; RFS compares them to know when a flow's frames have all been run.
        self.input_queue_head = 0
        self.input_queue_tail = 0
        self.napi = Napi(f"backlog-{cpu}", self.process_backlog, weight, cpu)

    def process_backlog(self, quota: int) -> int:
        """``process_backlog``: run the stack for up to *quota* queued frames."""
        work = 0
        queue = self.queue
        while work < quota and queue:
            pkt = queue.popleft()
            self.input_queue_head += 1
            work += 1
            self.deliver(pkt)
        return work


class Rps:
    """RPS/RFS for one device, delivering to *deliver* (``__netif_receive_skb``)."""

    def __init__(self, cpus: Cpus, sysctl: Sysctl, nqueues: int, flow_hash: FlowHash,
                 deliver: Callable[[Packet], None]) -> None:
        self.cpus = cpus
        self.sysctl = sysctl
        self.flow_hash = flow_hash
        self.deliver = deliver
        self.rx_queues = [RxQueueRps() for _ in range(nqueues)]
        weight = sysctl["net.core.dev_weight"]
        self.backlogs = [Backlog(i, weight, deliver) for i in range(len(cpus))]
        # rps_cpu_mask: enough low bits of a sock flow entry to name a CPU.
        self.cpu_mask = _roundup_pow_of_two(len(cpus)) - 1
        self._sock_flows: list[int] = []
        # The CPU a task runs on (sched_setaffinity), for sock_rps_record_flow.
        self.task_cpu: contextvars.ContextVar[int] = contextvars.ContextVar(
            f"ustack-cpu-{id(self)}", default=0)
        self.enabled = False
        # Told when RPS turns on or off, so the caller can skip it while off.
        self.on_change: Callable[[], None] = lambda: None

    # ---- configuration (/sys/class/net/DEV/queues/rx-N/) ----------------------------

    def set_rps_cpus(self, q: int, mask: int) -> None:
        """``rps_cpus`` of RX queue *q*: the CPUs its frames may be steered to."""
        if not 0 <= q < len(self.rx_queues):
            raise ValueError(f"no RX queue {q}: the device has {len(self.rx_queues)}")
        if mask < 0 or mask >> len(self.cpus):
            raise ValueError(f"CPU mask {mask:x} names CPUs beyond the stack's {len(self.cpus)}")
        self.rx_queues[q].cpus = [c for c in range(len(self.cpus)) if mask >> c & 1]
        self._update()

    def set_flow_cnt(self, q: int, count: int) -> None:
        """``rps_flow_cnt`` of RX queue *q* (rounded up to a power of two; 0: no RFS)."""
        if not 0 <= q < len(self.rx_queues):
            raise ValueError(f"no RX queue {q}: the device has {len(self.rx_queues)}")
        if not 0 <= count <= 1 << 20:
            raise ValueError(f"rps_flow_cnt {count} out of range 0..{1 << 20}")
        self.rx_queues[q].flows = [RpsDevFlow() for _ in range(_roundup_pow_of_two(count))]
        self._update()

    def _update(self) -> None:
        enabled = any(rq.cpus or rq.flows for rq in self.rx_queues)
        for backlog in self.backlogs:
            backlog.napi.weight = self.sysctl["net.core.dev_weight"]
        if enabled != self.enabled:
            self.enabled = enabled
            self.on_change()

    def queue_config(self) -> list[dict[str, int | str]]:
        return [{"rx_queue": i, "rps_cpus": f"{rq.mask:x}", "rps_flow_cnt": len(rq.flows)}
                for i, rq in enumerate(self.rx_queues)]

    def _sock_flow_table(self) -> list[int]:
        """The rps_sock_flow_table, resized when the sysctl changed (as its handler does)."""
        want = _roundup_pow_of_two(self.sysctl["net.core.rps_sock_flow_entries"])
        if len(self._sock_flows) != want:
            self._sock_flows = [RPS_NO_CPU] * want
        return self._sock_flows

    # ---- receive -----------------------------------------------------------------------

    def netif_receive_skb(self, pkt: Packet) -> None:
        """``netif_receive_skb_internal``: steer to a backlog, or deliver here."""
        if not self.enabled:
            self.deliver(pkt)
            return
        rq = self.rx_queues[pkt.queue % len(self.rx_queues)]
        cpu, rflow = self.get_rps_cpu(rq, pkt)
        if cpu < 0:
            self.deliver(pkt)
            return
        self.enqueue_to_backlog(pkt, cpu, rflow)

    def skb_get_hash(self, pkt: Packet) -> int:
        """The flow hash of a frame whose head is at its MAC header (0: none).

        Software hashing as the flow dissector does for a NIC that gives no
        hash (the TAP gives none), with the device's Toeplitz key: the 4-tuple
        for unfragmented TCP/UDP, the address pair for other IPv4.
        """
        if pkt.hash:
            return pkt.hash
        buf = pkt.buf
        off = pkt.head + 12
        if len(buf) < off + 2:
            return 0
        ethertype = (buf[off] << 8) | buf[off + 1]
        if ethertype == ETH_P_8021Q and len(buf) >= off + 6:
            off += 4
            ethertype = (buf[off] << 8) | buf[off + 1]
        ip = off + 2
        if ethertype != ETH_P_IP or pkt.tail < ip + 20 or buf[ip] >> 4 != 4:
            return 0
        saddr = bytes(buf[ip + 12 : ip + 16])
        daddr = bytes(buf[ip + 16 : ip + 20])
        ihl = (buf[ip] & 0x0F) * 4
        proto = buf[ip + 9]
        fragmented = ((buf[ip + 6] << 8) | buf[ip + 7]) & 0x3FFF
        if proto in (6, 17) and not fragmented and pkt.tail >= ip + ihl + 4:
            sport, dport = _PORTS.unpack_from(buf, ip + ihl)
            h = self.flow_hash(saddr, daddr, sport, dport)
        else:
            h = self.flow_hash(saddr, daddr, -1, -1)
        pkt.hash = h
        return h

    def get_rps_cpu(self, rq: RxQueueRps, pkt: Packet) -> tuple[int, RpsDevFlow | None]:
        """``get_rps_cpu``: the CPU for *pkt* (-1: this one, no backlog) and its flow entry."""
        if not rq.cpus and not rq.flows:
            return -1, None
        h = self.skb_get_hash(pkt)
        if not h:
            return -1, None
        ncpus = len(self.cpus)
        table = self._sock_flow_table() if rq.flows else []
        if table:
            ident = table[h & (len(table) - 1)]
            if ident != RPS_NO_CPU and not (ident ^ h) & ~self.cpu_mask:
                next_cpu = ident & self.cpu_mask
                rflow = rq.flows[h & (len(rq.flows) - 1)]
                tcpu = rflow.cpu
                # Move the flow only when the old CPU has run every frame of it
                # that it queued, so the flow is never reordered.
                if tcpu != next_cpu and (
                    tcpu >= ncpus
                    or self.backlogs[tcpu].input_queue_head - rflow.last_qtail >= 0
                ):
                    tcpu = next_cpu
                    if next_cpu < ncpus:
                        rflow.last_qtail = self.backlogs[next_cpu].input_queue_head
                    rflow.cpu = next_cpu
                if tcpu < ncpus:
                    return tcpu, rflow
        if rq.cpus:
            # reciprocal_scale: the hash's high bits pick one CPU of the map.
            return rq.cpus[(h * len(rq.cpus)) >> 32], None
        return -1, None

    def enqueue_to_backlog(self, pkt: Packet, cpu: int, rflow: RpsDevFlow | None) -> bool:
        """Queue *pkt* on *cpu*'s backlog; False (counted ``dropped``) when it is full."""
        backlog = self.backlogs[cpu]
        sd = self.cpus.cpu[cpu]
        # Its frames are processed (or dropped) there, not on this CPU; a GRO
        # packet counts the frames it merged, as the driver's poll did.
        self.cpus.cpu[self.cpus.current].steered += max(1, pkt.gso_segs)
        if len(backlog.queue) > self.sysctl["net.core.netdev_max_backlog"]:
            sd.stat["dropped"] += 1
            return False
        backlog.queue.append(pkt)
        backlog.input_queue_tail += 1
        if rflow is not None:
            rflow.last_qtail = backlog.input_queue_tail
        if not backlog.napi.scheduled:
            if cpu != self.cpus.current:
                # Another CPU's backlog: the IPI that wakes it (rps_trigger_softirq).
                sd.stat["received_rps"] += 1
            self.cpus.napi_schedule(backlog.napi)
        return True

    # ---- sockets -----------------------------------------------------------------------

    def sock_rps_record_flow(self, flow_hash: int) -> None:
        """A socket of flow *flow_hash* is read on the calling task's CPU: remember it."""
        if not flow_hash:
            return
        table = self._sock_flow_table()
        if not table:
            return
        val = (flow_hash & ~self.cpu_mask) | self.task_cpu.get() % len(self.cpus)
        index = flow_hash & (len(table) - 1)
        if table[index] != val:
            table[index] = val

    def sched_setaffinity(self, cpu: int) -> None:
        """Run the calling task (and the tasks it starts from now on) on *cpu*."""
        if not 0 <= cpu < len(self.cpus):
            raise ValueError(f"no CPU {cpu}: the stack has {len(self.cpus)}")
        self.task_cpu.set(cpu)

    def backlog_lengths(self) -> list[int]:
        return [len(b.queue) for b in self.backlogs]
