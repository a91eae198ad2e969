"""Stack: one NetDevice, the net layer and the timers, on one trio loop.

The loop is the CPU: per queue an "interrupt" task waits for the link to be
readable, DMAs frames into the RX ring and schedules the queue's NAPI; the
softirq task runs ``net_rx_action`` rounds while NAPI instances are
scheduled (yielding to the loop between rounds, like ksoftirqd); the timer
task runs the one timer list; the TX doorbell is rung at the end of every
softirq round and, for frames sent from process context (timers, users),
by the TX task on the next turn of the loop, so frames are written in bursts.

Upward delivery is by handler tables, as in Linux: EtherType -> handler
(``ptype``) here, IP protocol -> handler (``inet_protos``) in ``Ipv4``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from .buffer import Packet
from .capture import POINTS, CaptureError, Tap, TapList, with_vlan_tag
from .net.arp import ArpTable
from .net.ethernet import (
    BROADCAST,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    eth_header,
    eth_type_trans,
    mac_str,
)
from .net.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_EXC_FRAGTIME,
    ICMP_PROT_UNREACH,
    ICMP_TIME_EXCEEDED,
    Icmp,
)
from .net.ipv4 import LIMITED_BROADCAST, Ipv4, ip_str
from .net.netfilter import Netfilter
from .net.route import Route, RouteTable
from .net.vlan import VlanDev
from .nic.device import NetDevice
from .nic.features import TX_VLAN
from .nic.impair import Impair
from .nic.napi import Cpus, cpu_relax, napi_busy_poll
from .nic.rps import Rps
from .nic.vlan import VLAN_VID_MASK, vlan_insert_tag, vlan_untag
from .nic.xdp import XdpProg
from .socket import make_socket, use_for_trio
from .stats import Stats
from .sysctl import Sysctl
from .timer import Timer, TimerList
from .transport.tcp_ipv4 import TcpV4
from .transport.udp import Udp

log = logging.getLogger(__name__)
# __do_softirq restarts at most this many times before waking ksoftirqd.
MAX_SOFTIRQ_RESTART = 10


def qdisc_totals(queues: list[dict[str, Any]]) -> dict[str, Any]:
    """The egress qdiscs' ``tc -s`` counters and BQL state summed over the TX queues."""
    names = ("sent_bytes", "sent_packets", "dropped", "overlimits", "requeues",
             "backlog_bytes", "backlog_packets")
    out: dict[str, Any] = {n: sum(row["qdisc"][n] for row in queues) for n in names}
    out["bql_limit"] = sum(row["bql"]["limit"] for row in queues)
    out["bql_inflight"] = sum(row["bql"]["inflight"] for row in queues)
    out["queues_stopped"] = sum(row["stopped"] for row in queues)
    return out


def random_mac() -> bytes:
    """A random locally administered unicast MAC (02:xx:xx:xx:xx:xx)."""
    return bytes([0x02]) + os.urandom(5)


class Stack:
    """A TCP/IP stack instance bound to one device."""

    def __init__(
        self,
        links: list[Any],
        addr: ipaddress.IPv4Interface,
        *,
        name: str = "tap0",
        gateway: ipaddress.IPv4Address | None = None,
        mtu: int = 1500,
        mac: bytes | None = None,
        sysctl: Sysctl | None = None,
        ring_size: int = 256,
        vnet_hdr_len: int = 0,
        hw_features: frozenset[str] = frozenset(),
        features: set[str] | None = None,
        set_offload: Callable[[int], None] | None = None,
        set_queue_attached: Callable[[int, bool], None] | None = None,
        cpus: int | None = None,
        vlans: list[tuple[int, ipaddress.IPv4Interface]] | None = None,
        txqueuelen: int = 1000,
    ) -> None:
        # The clock of the trio run the stack is running in (see now()).
        self._clock: trio.abc.Clock | None = None
        self.sysctl = sysctl if sysctl is not None else Sysctl()
        self.stats = Stats()
        #: Open sockets, the first field of /proc/sys/fs/file-nr (bounded by fs.file-max).
        self.nr_files = 0
        self.mac = mac if mac is not None else random_mac()
        self.addr = addr
        # One softnet_data per "CPU"; by default one CPU per queue (--cpus).
        self.softnet = Cpus(self.sysctl, cpus if cpus is not None else len(links))
        self.dev = NetDevice(
            name, self.mac, links, self.softnet, mtu=mtu, ring_size=ring_size,
            vnet_hdr_len=vnet_hdr_len, hw_features=hw_features, features=features,
            set_offload=set_offload, clock=self.now, set_queue_attached=set_queue_attached,
            txqueuelen=txqueuelen,
        )
        # Queue q's interrupt is affine to CPU q (mod the CPU count).
        for q, napi in enumerate(self.dev.napi):
            napi.cpu = q % len(self.softnet)
        # RPS/RFS sit between the driver's poll (after GRO) and the protocols.
        self.rps = Rps(self.softnet, self.sysctl, len(links), self.dev.rss.flow_hash,
                       self.netif_receive_skb)
        self.rps.on_change = self._rps_changed
        self._rps_changed()
        self.routes = RouteTable()
        self.routes.add(Route(addr.network, None, addr.ip.packed, name, mtu))
        if gateway is not None:
            self.routes.add(
                Route(ipaddress.IPv4Network("0.0.0.0/0"), gateway.packed, addr.ip.packed, name, mtu)
            )
        self.timers = TimerList()
        self.arp = ArpTable(self.sysctl, self.stats, self.mac, addr.ip.packed)
        self.ipv4 = Ipv4(
            self.sysctl, self.stats, addr, self.routes, mtu, self.neigh_output, self.now
        )
        self.icmp = Icmp(self.sysctl, self.stats, self.ipv4, self.now)
        self.ipv4.neigh_confirm = self._neigh_confirm
        self.ipv4.unknown_proto = lambda pkt: self.icmp.icmp_send(
            pkt, ICMP_DEST_UNREACH, ICMP_PROT_UNREACH
        )
        self.ipv4.frag_expired = lambda quote: self.icmp.send_error(
            quote[12:16], ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME, quote
        )
        self.udp = Udp(self.sysctl, self.stats, self.ipv4, self.icmp, self.dev.flow_queue)
        self.tcp = TcpV4(self.sysctl, self.stats, self.ipv4, self.timers, self.now,
                         lambda: (self.dev.tx_csum, self.dev.gso_max_size),
                         self.dev.flow_queue)
        self.dev.features_changed.append(self.tcp.offload_changed)
        # ptype_base: EtherType -> handler.
        self.ptype: dict[int, Callable[[Packet], None]] = {
            ETH_P_IP: self.ipv4.ip_rcv,
            ETH_P_ARP: self.arp_rcv,
        }
        self._arp_timer = Timer(self._arp_expired)
        # rx-vlan-offload off: tagged frames are untagged here (skb_vlan_untag).
        self.ptype[ETH_P_8021Q] = self.vlan_untag_rcv
        # VLAN sub-interfaces by id and by name (--vlan ID:ADDR/PREFIX).
        self.vlans: dict[int, VlanDev] = {}
        self._vlan_by_dev: dict[str, VlanDev] = {}
        for vid, iface in vlans or ():
            self.add_vlan(vid, iface)
        self._frag_timer = Timer(self._frag_expired)
        self._impair_timer = Timer(self._impair_release)
        self._in_softirq = False
        self._softirq_event = trio.Event()
        self._timer_scope: trio.CancelScope | None = None
        self.softnet.raise_softirq = self._raise_softirq
        self.softnet.post_round.append(self.after_rx)
        self.timers.on_earlier = self._timer_earlier
        self.started = trio.Event()
        # Capture taps by point (capture.py); each layer holds None while its point has none.
        self.tap_gro: Callable[[memoryview], None] | None = None
        self._taps: dict[str, TapList] = {}
        # Netfilter hooks; the IP layer holds them only while a hook or rule exists.
        self.netfilter = Netfilter(self.stats)
        self.netfilter.on_change = self._nf_changed

    def now(self) -> float:
        """The stack's clock: trio's, so tests can run on MockClock.

        While the stack runs, the run's clock is asked directly: the same
        time as ``trio.current_time()`` for two calls fewer on every packet.
        """
        clock = self._clock
        return clock.current_time() if clock is not None else trio.current_time()

    # ---- the loop ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the stack until cancelled: IRQ tasks, ksoftirqd, timers."""
        self._clock = trio.lowlevel.current_clock()
        try:
            await self._run(task_status)
        finally:
            self._clock = None

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            for q in range(self.dev.num_queues):
                nursery.start_soon(self._irq_loop, q)
            nursery.start_soon(self._ksoftirqd)
            nursery.start_soon(self._timer_loop)
            # Announce ourselves (arp_send of a gratuitous ARP at NETDEV_UP).
            self.arp.gratuitous()
            self._arp_flush()
            for vlan in self.vlans.values():
                vlan.arp.gratuitous()
                self._arp_flush(vlan)
            self.started.set()
            task_status.started()

    async def _irq_loop(self, q: int) -> None:
        """The queue's interrupt: DMA, schedule NAPI, run the softirq on the way out."""
        napi = self.dev.napi[q]
        link = self.dev.links[q]
        ring = self.dev.rx_rings[q]
        coalesce = self.dev.coalesce
        while True:
            # The frames land; the interrupt fires when coalescing says so.
            await coalesce.irq_wait(q, link, self.dev.dma_rx, ring.__len__, ring.size)
            done = trio.Event()
            napi.on_complete = done.set
            # The interrupt stays masked until the poll completes (napi_complete_done).
            self.softnet.napi_schedule(napi)
            # irq_exit -> invoke_softirq: the softirq runs here, no task switch.
            self.do_softirq()
            if self.dev.impaired:
                self.timers.mod_timer(self._impair_timer, self.dev.impair_deadline())
            if not done.is_set():
                await done.wait()

    def _raise_softirq(self) -> None:
        """NAPI was scheduled: the interrupt path runs the softirq itself."""

    def do_softirq(self) -> None:
        """``__do_softirq``: a few net_rx_action rounds, then leave the rest to ksoftirqd."""
        if self._in_softirq:
            return
        self._in_softirq = True
        try:
            for _ in range(MAX_SOFTIRQ_RESTART):
                if not self.softnet.net_rx_action():
                    break
        finally:
            self._in_softirq = False
        if self.softnet.poll_list:
            self._softirq_event.set()  # wakeup_softirqd

    async def _ksoftirqd(self) -> None:
        """Rounds left over by the interrupt path, yielding to other tasks between them."""
        while True:
            await self._softirq_event.wait()
            self._softirq_event = trio.Event()
            while self.softnet.poll_list:
                # Between rounds other tasks run, as ksoftirqd yields the CPU.
                await trio.sleep(0)
                self.do_softirq()

    async def _timer_loop(self) -> None:
        """Sleep until the earliest timer, run what expired, repeat."""
        while True:
            deadline = self.timers.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if self.timers.run_expired(self.now()):
                self.dev.flush_tx()

    def _timer_earlier(self, deadline: float) -> None:
        """A timer became the earliest: move the sleeper's wake-up, no task switch."""
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def kick_tx(self) -> None:
        """Ring the TX doorbell for frames sent from process context.

        Inside a softirq round the doorbell rings once at the round's end;
        outside one, as dev_queue_xmit does, the driver transmits at once.
        """
        if not self._in_softirq:
            self.dev.flush_tx()
            if self.dev.impaired:
                self.timers.mod_timer(self._impair_timer, self.dev.impair_deadline())

    # ---- receive ----------------------------------------------------------

    def netif_receive_skb(self, pkt: Packet) -> None:
        """Deliver one frame from the NIC to the protocol of its EtherType."""
        if self.tap_gro is not None:
            # ptype_all taps (__netif_receive_skb_core): the frame as GRO made it.
            self.tap_gro(with_vlan_tag(pkt.data(), pkt.vlan_tci))
        ethertype = eth_type_trans(pkt, self.mac)
        if pkt.vlan_tci & VLAN_VID_MASK:
            # vlan_do_receive: the frame belongs to its VLAN's sub-interface.
            vlan = self.vlans.get(pkt.vlan_tci & VLAN_VID_MASK)
            if vlan is None:
                self.stats.drop("VLAN_NODEV")
                return
            handler = vlan.ptype.get(ethertype)
        else:
            handler = self.ptype.get(ethertype)
        if handler is None:
            # No protocol handler: the kernel counts rx_nohandler on the device.
            self.stats.drop("UNHANDLED_PROTO")
            return
        try:
            handler(pkt)
        except Exception:
            # A frame must never take the stack down. Every malformed input
            # has its own counter; reaching this one is a bug, which the
            # fuzz tests check never happens, but the stack keeps running.
            self.stats.drop("INTERNAL_ERROR")
            log.exception("receive path failed on a frame; dropped")

    def _rps_changed(self) -> None:
        """The driver hands frames to RPS only while some RX queue steers."""
        self.dev.rx_handler = (self.rps.netif_receive_skb if self.rps.enabled
                               else self.netif_receive_skb)

    def arp_rcv(self, pkt: Packet, vlan: VlanDev | None = None) -> None:
        arp = self.arp if vlan is None else vlan.arp
        if not arp.arp_rcv(pkt.data(), self.now(), pkt.pkt_type):
            self.stats.drop("ARP_INVALID")
        self._arp_flush(vlan)

    # ---- VLAN sub-interfaces ----------------------------------------------

    def add_vlan(self, vid: int, iface: ipaddress.IPv4Interface) -> VlanDev:
        """``ip link add link DEV name DEV.VID type vlan id VID`` plus its address."""
        name = f"{self.dev.name}.{vid}"
        if vid in self.vlans:
            raise ValueError(f"VLAN {vid} exists already")
        for route in self.routes.routes():
            if route.gateway is None and route.network.overlaps(iface.network):
                raise ValueError(f"VLAN {vid}: {iface.network} overlaps {route.network} "
                                 f"on {route.dev}")
        arp = ArpTable(self.sysctl, self.stats, self.mac, iface.ip.packed)
        vlan = VlanDev(vid, iface, name, arp, Timer(lambda now: None))
        vlan.arp_timer.callback = lambda now: self._arp_expired(now, vlan)
        vlan.ptype = {ETH_P_IP: self.ipv4.ip_rcv, ETH_P_ARP: lambda pkt: self.arp_rcv(pkt, vlan)}
        self.vlans[vid] = vlan
        self._vlan_by_dev[name] = vlan
        self.routes.add(Route(iface.network, None, iface.ip.packed, name, self.dev.mtu))
        self.ipv4.add_address(iface)
        self.dev.vlan_filter.add(vid)
        return vlan

    def vlan_untag_rcv(self, pkt: Packet) -> None:
        """A frame still tagged (rx-vlan-offload off): untag it, then another round."""
        pkt.head = pkt.mac_off
        if pkt.vlan_tci:
            # A second tag (802.1ad stacking): no stacked sub-interfaces here.
            self.stats.drop("VLAN_NODEV")
            return
        if not vlan_untag(pkt):
            self.stats.drop("VLAN_MALFORMED")
            return
        self.netif_receive_skb(pkt)

    # ---- transmit ---------------------------------------------------------

    def neigh_output(self, pkt: Packet, nexthop: bytes) -> None:
        """``ip_finish_output2``: resolve the next hop's MAC and transmit."""
        vlan = self._vlan_of(nexthop)
        if vlan is not None:
            self._vlan_neigh_output(vlan, pkt, nexthop)
            return
        if nexthop == LIMITED_BROADCAST or nexthop == self.ipv4.broadcast:
            self._xmit(pkt, BROADCAST, ETH_P_IP)
            return
        now = self.now()
        mac = self.arp.connected(nexthop, now)
        if mac is not None:
            self._xmit(pkt, mac, ETH_P_IP)
            return
        mac = self.arp.resolve(nexthop, pkt, now)
        if mac is not None:
            self._xmit(pkt, mac, ETH_P_IP)
        self._arp_flush()

    def _vlan_of(self, nexthop: bytes) -> VlanDev | None:
        """The VLAN sub-interface whose route reaches *nexthop*, if any."""
        if not self.vlans:
            return None
        route = self.routes.lookup(nexthop)
        return self._vlan_by_dev.get(route.dev) if route is not None else None

    def _neigh_confirm(self, nexthop: bytes) -> None:
        """``neigh_confirm`` in the table of the device that reaches *nexthop*."""
        vlan = self._vlan_of(nexthop)
        (self.arp if vlan is None else vlan.arp).confirm(nexthop, self.now())

    def _xmit(self, pkt: Packet, dst_mac: bytes, ethertype: int) -> None:
        eth_header(pkt, dst_mac, self.mac, ethertype)
        self.dev.start_xmit(pkt)
        self.kick_tx()

    def _vlan_neigh_output(self, vlan: VlanDev, pkt: Packet, nexthop: bytes) -> None:
        if nexthop == LIMITED_BROADCAST or nexthop == vlan.broadcast:
            self._vlan_xmit(vlan, pkt, BROADCAST, ETH_P_IP)
            return
        mac = vlan.arp.resolve(nexthop, pkt, self.now())
        if mac is not None:
            self._vlan_xmit(vlan, pkt, mac, ETH_P_IP)
        self._arp_flush(vlan)

    def _vlan_xmit(self, vlan: VlanDev, pkt: Packet, dst_mac: bytes, ethertype: int) -> None:
        """``vlan_dev_hard_start_xmit``: tag the frame with the sub-interface's id."""
        eth_header(pkt, dst_mac, self.mac, ethertype)
        if TX_VLAN in self.dev.features:
            pkt.vlan_tci = vlan.vid  # the NIC inserts it (tx-vlan-offload)
        else:
            vlan_insert_tag(pkt, vlan.vid)
        self.dev.start_xmit(pkt)
        self.kick_tx()

    def _arp_flush(self, vlan: VlanDev | None = None) -> None:
        """Send what a neighbour table produced and re-arm its timer."""
        arp = self.arp if vlan is None else vlan.arp
        if vlan is None:
            xmit = self._xmit
        else:
            def xmit(pkt: Packet, dst_mac: bytes, ethertype: int) -> None:
                self._vlan_xmit(vlan, pkt, dst_mac, ethertype)
        while arp.out:
            dst_mac, arp_packet = arp.out.pop(0)
            xmit(Packet.alloc(arp_packet), dst_mac, ETH_P_ARP)
        while arp.ready:
            dst_mac, pkt = arp.ready.pop(0)
            xmit(pkt, dst_mac, ETH_P_IP)
        if arp.failed:
            failed = arp.failed[:]
            arp.failed.clear()
            for pkt in failed:
                # A packet whose next hop never answered: its sender learns it.
                self.stats.drop("NEIGH_FAILED")
                self.ipv4.link_failure(pkt)
        timer = self._arp_timer if vlan is None else vlan.arp_timer
        self.timers.mod_timer(timer, arp.next_deadline())

    def _arp_expired(self, now: float, vlan: VlanDev | None = None) -> None:
        (self.arp if vlan is None else vlan.arp).timer(now)
        self._arp_flush(vlan)

    def _frag_expired(self, now: float) -> None:
        self.ipv4.frag_timer(now)
        self.timers.mod_timer(self._frag_timer, self.ipv4.reasm.next_deadline())

    def after_rx(self) -> None:
        """Re-arm timers whose deadline receive or transmit work may have changed."""
        self.timers.mod_timer(self._frag_timer, self.ipv4.reasm.next_deadline())
        if self.dev.impaired:
            self.timers.mod_timer(self._impair_timer, self.dev.impair_deadline())

    def set_impair(self, rx: Impair | None, tx: Impair | None) -> None:
        """Impair this stack's wire from now on, both directions (None: clean)."""
        self.dev.set_impair(rx, tx)
        self.timers.mod_timer(self._impair_timer, self.dev.impair_deadline())

    def _impair_release(self, now: float) -> None:
        """Frames held by the impaired wire are due: deliver or transmit them."""
        for q in self.dev.impair_poll(now):
            self.softnet.napi_schedule(self.dev.napi[q])
        self.do_softirq()
        self.timers.mod_timer(self._impair_timer, self.dev.impair_deadline())

    # ---- users ------------------------------------------------------------

    async def ping(
        self, dst: str, count: int = 3, size: int = 56, interval: float = 1.0,
        timeout: float = 2.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Echo *count* times like ``ping -c``, yielding one result per request."""
        target = ipaddress.IPv4Address(dst).packed
        ident = random.getrandbits(16)
        while ident in self.icmp.echo_handlers:
            ident = random.getrandbits(16)
        payload = bytes(i & 0xFF for i in range(size))
        sent: dict[int, float] = {}
        got: dict[int, trio.Event] = {}
        results: dict[int, dict[str, Any]] = {}

        def on_reply(src: bytes, seq: int, data: bytes, ttl: int) -> None:
            if seq in sent and seq not in results and src == target:
                results[seq] = {
                    "seq": seq, "from": ip_str(src), "bytes": len(data) + 8, "ttl": ttl,
                    "time_ms": round((self.now() - sent[seq]) * 1000, 3),
                    "ok": data == payload,
                }
                got[seq].set()

        self.icmp.echo_handlers[ident] = on_reply
        try:
            for seq in range(1, count + 1):
                sent[seq] = self.now()
                got[seq] = trio.Event()
                err = self.icmp.send_echo(target, ident, seq, payload)
                self.kick_tx()
                if err:
                    yield {"seq": seq, "error": os.strerror(err)}
                else:
                    with trio.move_on_after(timeout):
                        await got[seq].wait()
                    yield results.get(seq, {"seq": seq, "timeout": True})
                if seq < count:
                    await trio.sleep(max(0.0, sent[seq] + interval - self.now()))
        finally:
            del self.icmp.echo_handlers[ident]

    def socket(self, family: int = 2, type: int = 1, proto: int = 0) -> Any:
        """``socket(2)``: a trio-native socket on this stack (see ustack.socket)."""
        return make_socket(self, family, type, proto)

    def use_for_trio(self) -> None:
        """Make this stack trio's socket factory for the current ``trio.run``."""
        use_for_trio(self)

    async def napi_busy_loop(self, q: int, usecs: int, ready: Callable[[], bool]) -> None:
        """``napi_busy_loop``: poll queue *q* from the calling task until *ready* or *usecs*.

        A socket with SO_BUSY_POLL takes its queue's frames itself instead of
        sleeping until the interrupt and softirq bring them; frames taken so
        are counted in TcpExt BusyPollRxPackets and per queue. While it polls
        it owns the NAPI instance (NAPI_STATE_SCHED), so the interrupt cannot
        schedule it; at the end it hands the instance back to the softirq
        (``busy_poll_stop``), which polls what is left and re-arms the interrupt.
        """
        napi = self.dev.napi[q % len(self.dev.napi)]
        end = self.now() + usecs / 1e6
        owned = False
        try:
            while not ready():
                if not owned and not napi.scheduled:
                    napi.scheduled = owned = True
                if owned:
                    work = napi_busy_poll(napi)
                    if work:
                        self.stats.tcpext["BusyPollRxPackets"] += work
                        # RPS backlogs it filled and the TX doorbell.
                        self.do_softirq()
                if ready() or self.now() >= end:
                    return
                await cpu_relax()
        finally:
            if owned:
                napi.scheduled = False
                self.softnet.napi_schedule(napi)
                self.do_softirq()

    # ---- observing and filtering the path -------------------------------------

    def _tap_owner(self, point: str) -> tuple[Any, str]:
        owners = {"rx": (self.dev, "tap_rx"), "gro": (self, "tap_gro"),
                  "ip_rcv": (self.ipv4, "tap_rcv"), "ip_output": (self.ipv4, "tap_output"),
                  "tx": (self.dev, "tap_tx")}
        if point not in owners:
            raise CaptureError(f"unknown capture point {point!r} (points: {', '.join(POINTS)})")
        return owners[point]

    def add_tap(self, point: str, tap: Tap) -> None:
        """Call ``tap(point, data)`` for every packet at *point* (see capture.py)."""
        owner, attr = self._tap_owner(point)
        taps = self._taps.setdefault(point, TapList(point))
        taps.taps.append(tap)
        setattr(owner, attr, taps)

    def remove_tap(self, point: str, tap: Tap) -> None:
        """Detach *tap*; the point costs nothing again once its last tap is gone."""
        owner, attr = self._tap_owner(point)
        taps = self._taps.get(point)
        if taps is None or tap not in taps.taps:
            raise CaptureError(f"no such tap at {point}")
        taps.taps.remove(tap)
        if not taps.taps:
            del self._taps[point]
            setattr(owner, attr, None)

    def _nf_changed(self) -> None:
        self.ipv4.nf = self.netfilter if self.netfilter.active else None

    def set_xdp(self, prog: XdpProg | None) -> None:
        """Attach an XDP program to the RX ring of every queue (None detaches it)."""
        self.dev.xdp = prog

    def neighbours(self) -> list[dict[str, Any]]:
        """Every neighbour table's entries; a VLAN's carry its sub-interface as ``dev``."""
        entries = self.arp.entries()
        for vlan in self.vlans.values():
            entries += [{**e, "dev": vlan.name} for e in vlan.arp.entries()]
        return entries

    def file_alloc(self) -> None:
        """Account one more open socket (``alloc_empty_file``): ENFILE past fs.file-max."""
        self.file_check()
        self.nr_files += 1

    def file_check(self) -> None:
        """Raise ENFILE, counted, if no socket may be opened now."""
        if self.nr_files >= self.sysctl["fs.file-max"]:
            self.stats.file_max_reached += 1
            raise OSError(errno.ENFILE, "too many open files in system (fs.file-max)")

    def sockstat(self) -> dict[str, int]:
        """Sockets in use, like /proc/net/sockstat: sockets used, TCP inuse, orphan,
        tw, alloc and mem (pages charged against net.ipv4.tcp_mem), UDP inuse."""
        conns = self.tcp.connections()
        tw = sum(1 for c in conns if c.state.name == "TIME_WAIT")
        udp = sum(len(socks) for socks in self.udp.ports.values())
        return {
            "sockets_used": len(conns) - tw + len(self.tcp.listeners) + udp,
            "TCP_inuse": len(conns) - tw + len(self.tcp.listeners),
            "TCP_orphan": sum(1 for c in conns if c.orphan and c.state.name != "TIME_WAIT"),
            "TCP_tw": tw,
            # Every TCP socket including listeners and TIME-WAIT, and tcp_mem pages.
            "TCP_alloc": len(conns) + len(self.tcp.listeners),
            "TCP_mem": self.tcp.mem.pages,
            "UDP_inuse": udp,
        }

    def snapshot(self) -> dict[str, Any]:
        """Every counter, grouped like the kernel's files, for ``ustack stat``."""
        snap = self.stats.snapshot()
        snap["sockstat"] = self.sockstat()
        snap["file_nr"] = {"allocated": self.nr_files, "max": self.sysctl["fs.file-max"],
                           "limit_reached": self.stats.file_max_reached}
        snap["softnet_stat"] = dict(self.softnet.stat)
        # /proc/net/softnet_stat: one row per CPU, with its backlog length.
        backlogs = self.rps.backlog_lengths()
        snap["softnet_stat_cpu"] = {
            f"cpu{sd.cpu}": {**sd.stat, "backlog_len": backlogs[sd.cpu]}
            for sd in self.softnet.cpu
        }
        snap["ethtool"] = self.dev.ethtool_stats()
        snap["qdisc"] = qdisc_totals(self.dev.tc_show())
        snap["link"] = {
            "name": self.dev.name, "mac": mac_str(self.mac), "mtu": self.dev.mtu,
            "addr": str(self.addr), "queues": self.dev.num_queues, "cpus": len(self.softnet),
            "vlans": {v.name: str(v.iface) for v in self.vlans.values()},
        }
        return snap
