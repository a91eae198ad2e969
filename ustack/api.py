"""The in-process entry point: ``async with ustack.open_stack(...) as stack``.

Creates (or attaches to) the TAP, configures the kernel side, starts the
stack's tasks in a nursery, and on exit stops them and removes what it
created. The daemon (``ustack up``) is this plus a control socket.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .link.host import HostLink
from .link.tap import Tap
from .nic.features import GRO_HW, RX_CSUM, SOFTWARE, TSO, TX_CSUM
from .nic.impair import parse_spec
from .stack import Stack
from .sysctl import Sysctl


@asynccontextmanager
async def open_stack(
    tap: str = "tap0",
    addr: str = "10.0.0.2/24",
    host_addr: str | None = "10.0.0.1/24",
    *,
    gateway: str | None = None,
    mtu: int = 1500,
    queues: int = 1,
    ring_size: int = 256,
    mac: bytes | None = None,
    sysctl: Sysctl | None = None,
    host_config: bool = True,
    offload: bool | None = None,
    impair: str = "",
    cpus: int | None = None,
    rps_cpus: int = 0,
    rps_flow_cnt: int = 0,
    vlans: list[tuple[int, ipaddress.IPv4Interface]] | None = None,
    txqueuelen: int = 1000,
) -> AsyncIterator[Stack]:
    """Run a stack on TAP *tap* for the duration of the ``async with`` block.

    *host_addr* is given to the kernel's side of the TAP (None: bring it up
    without an address; ``host_config=False``: leave the kernel side alone).
    *offload*: True turns on every offload the kernel accepts through the
    virtio-net header (checksums, TSO both ways), False keeps MTU frames
    with full checksums on the wire (software GSO/GRO still on), None (the
    default) is True when the kernel accepts it. *impair* is an impairment
    spec (``ustack up --impair``) for the stack's wire. *cpus* is the number
    of NAPI CPUs (default: one per queue); *rps_cpus* the CPU mask every RX
    queue steers to with RPS and *rps_flow_cnt* its RFS table size;
    *vlans* lists ``(VLAN id, address)`` sub-interfaces. *txqueuelen* bounds
    the egress qdisc (``ip link set DEV txqueuelen N``).
    Raises OSError subclasses with one-line messages (TAP busy, not root).
    """
    rx_impair, tx_impair = parse_spec(impair)
    iface = ipaddress.IPv4Interface(addr)
    host_iface = ipaddress.IPv4Interface(host_addr) if host_addr else None
    gw = ipaddress.IPv4Address(gateway) if gateway else None
    existed = os.path.exists(f"/sys/class/net/{tap}")
    link = Tap(tap, queues=queues, vnet_hdr=True)
    host: HostLink | None = None
    try:
        if host_config:
            host = HostLink(tap)
            host.configure(host_iface, mtu)
        rx_offload = link.probe_offload()
        if offload and not rx_offload:
            raise OSError(95, f"the kernel refuses offloads on {tap} (TUNSETOFFLOAD)")
        hw = frozenset({TX_CSUM, TSO} | ({RX_CSUM, GRO_HW} if rx_offload else set()))
        enabled = None if offload or offload is None else set(SOFTWARE)
        stack = Stack(link.queues, iface, name=tap, gateway=gw, mtu=mtu, mac=mac,
                      sysctl=sysctl, ring_size=ring_size, vnet_hdr_len=link.vnet_hdr_len,
                      hw_features=hw, features=enabled, set_offload=link.set_offload,
                      set_queue_attached=link.set_queue_attached if queues > 1 else None,
                      cpus=cpus, vlans=vlans or [], txqueuelen=txqueuelen)
        for q in range(queues):
            stack.rps.set_rps_cpus(q, rps_cpus)
            stack.rps.set_flow_cnt(q, rps_flow_cnt)
        stack.dev.set_impair(rx_impair, tx_impair)
        async with trio.open_nursery() as nursery:
            await nursery.start(stack.run)
            try:
                yield stack
            finally:
                nursery.cancel_scope.cancel()
    finally:
        link.close()
        if host is not None:
            host.teardown(remove_link=not existed)
