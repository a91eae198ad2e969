"""``ustack up``: a stack on a TAP, in the foreground, with its control socket.

Creates (or attaches to) the TAP, configures the kernel side, runs the stack
and the control server on one trio loop, prints one line when ready, and on
SIGINT/SIGTERM stops and removes what it created: the TAP (when ustack made
it), the kernel-side address and the control socket.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
from dataclasses import dataclass, field

import trio

from .api import open_stack
from .control import ControlServer
from .errors import first_oserror
from .net.ethernet import mac_str
from .services import ServiceSpec, run_service
from .sysctl import Sysctl


@dataclass
class UpConfig:
    """Everything ``ustack up`` was asked for, already validated."""

    tap: str
    addr: ipaddress.IPv4Interface
    host_addr: ipaddress.IPv4Interface | None
    gateway: ipaddress.IPv4Address | None
    mtu: int
    queues: int
    ring_size: int
    control: str
    host_config: bool = True
    services: list[ServiceSpec] = field(default_factory=list)
    offload: bool | None = None
    impair: str = ""
    mac: bytes | None = None
    sysctl: Sysctl = field(default_factory=Sysctl)
    cpus: int = 1
    rps_cpus: int = 0
    rps_flow_cnt: int = 0
    vlans: list[tuple[int, ipaddress.IPv4Interface]] = field(default_factory=list)
    txqueuelen: int = 1000


async def run_daemon(cfg: UpConfig) -> None:
    """Run until SIGINT/SIGTERM; raise OSError subclasses for set-up failures."""
    async with open_stack(
        cfg.tap, str(cfg.addr), str(cfg.host_addr) if cfg.host_addr else None,
        gateway=str(cfg.gateway) if cfg.gateway else None, mtu=cfg.mtu, queues=cfg.queues,
        ring_size=cfg.ring_size, mac=cfg.mac, sysctl=cfg.sysctl, host_config=cfg.host_config,
        offload=cfg.offload, impair=cfg.impair, cpus=cfg.cpus, rps_cpus=cfg.rps_cpus,
        rps_flow_cnt=cfg.rps_flow_cnt, vlans=cfg.vlans, txqueuelen=cfg.txqueuelen,
    ) as stack:
        control = ControlServer(stack, cfg.control)
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                for spec in cfg.services:
                    try:
                        await nursery.start(run_service, spec, stack)
                    except BaseException as err:
                        leaf = first_oserror(err)
                        if leaf is None:
                            raise
                        raise OSError(leaf.errno, f"cannot start {spec.name} on port "
                                      f"{spec.port}: {leaf.strerror or leaf}") from None
                await nursery.start(control.serve)
                kernel = str(cfg.host_addr) if cfg.host_addr else "not configured"
                print(
                    f"ustack: {cfg.tap} ready: stack {cfg.addr} mac {mac_str(stack.mac)}, "
                    f"kernel side {kernel}, mtu {cfg.mtu}, queues {cfg.queues}, "
                    f"cpus {cfg.cpus}, "
                    + "".join(f"vlan {vid} {iface}, " for vid, iface in cfg.vlans) +
                    f"offload {'on' if stack.dev.tx_csum else 'off'}, "
                    f"control {cfg.control}"
                    + "".join(f", {s.name} on {s.port}" for s in cfg.services),
                    flush=True,
                )
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    print(f"ustack: {cfg.tap} stopped", file=sys.stderr, flush=True)
