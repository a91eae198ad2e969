"""The ``ustack`` command.

``ustack up`` runs a stack in the foreground; every other subcommand is a
client of a running stack's control socket. User errors (bad address, not
root, TAP busy, no such stack, bad sysctl) are one line on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from .paths import default_control_path
from .sysctl import Sysctl, SysctlError

DEFAULT_TAP = "tap0"
CONTROL_HELP = "control socket (default $USTACK_RUN_DIR/TAP.sock, else /run/ustack/TAP.sock)"


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), never a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# ---- argument parsing -------------------------------------------------------


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH", help=CONTROL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ustack", description="A userspace TCP/IP stack on a Linux TAP device."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    up = sub.add_parser("up", help="create a TAP and run a stack on it (foreground)")
    up.add_argument("tap", nargs="?", default=DEFAULT_TAP, help="TAP name (default tap0)")
    up.add_argument("--addr", default="10.0.0.2/24",
        help="the stack's address (default 10.0.0.2/24)",
    )
    host = up.add_mutually_exclusive_group()
    host.add_argument(
        "--host-addr", default="10.0.0.1/24",
        help="address for the kernel side of the TAP (default 10.0.0.1/24)",
    )
    host.add_argument(
        "--no-host-config", action="store_true", help="leave the kernel side unconfigured"
    )
    up.add_argument("--gateway", help="default gateway of the stack")
    up.add_argument("--mtu", type=int, default=1500, help="MTU of both sides (default 1500)")
    up.add_argument("--queues", type=int, default=1, help="TAP queues (default 1)")
    up.add_argument("--cpus", type=int,
                    help="NAPI CPUs (softnet_data instances; default: one per queue); "
                    "with more CPUs than queues, RPS spreads flows over them")
    up.add_argument("--rps-cpus", metavar="MASK",
                    help="hex CPU mask every RX queue steers to, like "
                    "/sys/class/net/TAP/queues/rx-N/rps_cpus (default: all CPUs when "
                    "--cpus exceeds --queues, else 0 = RPS off)")
    up.add_argument("--rps-flow-cnt", type=int, default=0, metavar="N",
                    help="RFS flow table entries per RX queue (rps_flow_cnt; needs "
                    "net.core.rps_sock_flow_entries too; default 0)")
    up.add_argument("--vlan", action="append", default=[], metavar="ID:ADDR/PREFIX",
                    help="an 802.1Q sub-interface TAP.ID with this address, e.g. "
                    "100:10.0.100.2/24 (repeatable)")
    up.add_argument(
        "--ring-size", type=int, default=256, help="RX and TX descriptors per queue (default 256)"
    )
    up.add_argument("--txqueuelen", type=int, default=1000, metavar="N",
                    help="egress queue length in frames (pfifo_fast's limit per band), like "
                    "ip link set TAP txqueuelen N (default 1000)")
    up.add_argument("--mac", help="the stack's MAC address (default: random, locally administered)")
    up.add_argument(
        "--sysctl", action="append", default=[], metavar="NAME=VALUE",
        help="set a sysctl at start (repeatable)",
    )
    up.add_argument(
        "--serve", action="append", default=[], metavar="NAME[:PORT[:ARG]]",
        help="run a built-in service on the stack: echo:7, discard:9, chargen:19, "
        "http:80[:DIR] (repeatable)",
    )
    up.add_argument(
        "--offload", choices=("on", "off"),
        help="checksum and segmentation offload through the TAP's virtio-net header "
        "(default: on when the kernel accepts it)",
    )
    up.add_argument(
        "--impair", default="", metavar="SPEC",
        help="impair the wire, e.g. 'rx:loss=5%%,reorder=5%%;tx:delay=10ms,seed=7' "
        "(knobs: loss burst reorder depth dup corrupt delay jitter rate limit seed)",
    )
    up.add_argument("--control", metavar="PATH", help=CONTROL_HELP)

    stat = sub.add_parser("stat", help="counters: Ip/Icmp MIBs, softnet_stat, ethtool -S")
    stat.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    stat.add_argument(
        "-z", "--zeros", action="store_true", help="show zero counters too (like nstat -z)"
    )
    stat.add_argument(
        "--diff", type=float, metavar="SECONDS",
        help="show how much each counter grew over SECONDS, with its rate per second",
    )
    _add_client_args(stat)

    sysctl = sub.add_parser("sysctl", help="show or set sysctls of a running stack")
    sysctl.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    sysctl.add_argument("setting", nargs="?", metavar="NAME[=VALUE]")
    _add_client_args(sysctl)

    ping = sub.add_parser("ping", help="ICMP echo from the stack")
    ping.add_argument("args", nargs="+", metavar="[TAP] HOST")
    ping.add_argument("-c", dest="count", type=int, default=3, help="echo requests (default 3)")
    ping.add_argument("-s", dest="size", type=int, default=56, help="payload bytes (default 56)")
    ping.add_argument("-i", dest="interval", type=float, default=1.0, help="seconds between")
    _add_client_args(ping)

    neigh = sub.add_parser("neigh", help="the stack's neighbour (ARP) table, like ip neigh")
    neigh.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    _add_client_args(neigh)

    route = sub.add_parser("route", help="the stack's routing table, like ip route")
    route.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    _add_client_args(route)

    ss = sub.add_parser("ss", help="the stack's sockets, like ss -tuanmi")
    ss.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    _add_client_args(ss)

    tm = sub.add_parser("tcp_metrics",
                        help="the Fast Open cookie cache, like ip tcp_metrics show|flush")
    tm.add_argument("args", nargs="*", metavar="[TAP] [show|flush] [ADDR]")
    _add_client_args(tm)

    eth = sub.add_parser("ethtool", help="device features, counters and rings, like ethtool")
    eth.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    mode = eth.add_mutually_exclusive_group()
    mode.add_argument("-k", dest="show_features", action="store_true", help="show features")
    mode.add_argument("-K", dest="set_features", nargs="+", metavar="FEATURE on|off",
                      help="change features, e.g. -K gro off tso on")
    mode.add_argument("-S", dest="stats", action="store_true", help="device counters")
    mode.add_argument("-g", dest="rings", action="store_true", help="ring sizes")
    mode.add_argument("-x", dest="show_rss", action="store_true",
                      help="RSS hash key and indirection table")
    mode.add_argument("-X", dest="set_rss", nargs="+", metavar="equal N | weight W... | hkey K",
                      help="change the indirection table or key")
    mode.add_argument("-l", dest="channels", action="store_true", help="queue (channel) counts")
    mode.add_argument("-L", dest="set_channels", nargs=2, metavar=("combined", "N"),
                      help="use N queues (detaching the others from the TAP)")
    mode.add_argument("-c", dest="show_coalesce", action="store_true",
                      help="interrupt coalescing settings")
    mode.add_argument("-C", dest="set_coalesce", nargs="+", metavar="PARAM VALUE",
                      help="change coalescing: rx-usecs N, rx-frames N, adaptive-rx on|off "
                           "(on by default; rx-usecs/rx-frames apply with it off)")
    _add_client_args(eth)

    rps = sub.add_parser(
        "rps", help="RPS/RFS per RX queue: show, or set rps_cpus / rps_flow_cnt at run time",
        description="Like /sys/class/net/TAP/queues/rx-N/rps_cpus and rps_flow_cnt: "
        "ustack rps [TAP] [rx-N rps_cpus MASK] [rx-N rps_flow_cnt N] ...")
    rps.add_argument("words", nargs="*", metavar="[TAP] [rx-N ATTR VALUE ...]")
    _add_client_args(rps)

    tc = sub.add_parser("tc", help="egress qdiscs and byte queue limits, like "
                        "tc -s qdisc show dev TAP / tc qdisc replace dev TAP root KIND")
    tc.add_argument("words", nargs="*", metavar="[TAP] [show | replace root pfifo_fast|fq_codel]")
    _add_client_args(tc)

    link = sub.add_parser("link", help="the device's link settings, like ip link show / "
                          "ip link set TAP txqueuelen N")
    link.add_argument("words", nargs="*", metavar="[TAP] [set txqueuelen N]")
    _add_client_args(link)

    imp = sub.add_parser("impair", help="show or set the impairments of the stack's wire")
    imp.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    imp.add_argument("spec", nargs="?", metavar="SPEC",
                     help="new impairments (same syntax as up --impair; '' clears them)")
    _add_client_args(imp)

    nc = sub.add_parser("nc", help="netcat over the stack: stdin/stdout relayed via the daemon")
    nc.add_argument("args", nargs="+", metavar="[TAP] [HOST] PORT")
    nc.add_argument("-l", dest="listen", action="store_true", help="listen for one connection")
    nc.add_argument("-u", dest="udp", action="store_true", help="UDP instead of TCP")
    nc.add_argument("-N", dest="half_close", action="store_true",
                    help="shut down the network write side on stdin EOF")
    nc.add_argument("-q", dest="quit_after", type=float, default=-1.0, metavar="SECS",
                    help="after stdin EOF, quit after SECS (default: wait for the peer)")
    nc.add_argument("--fastopen", action="store_true",
                    help="connect with TCP Fast Open (TCP_FASTOPEN_CONNECT): with a cached "
                    "cookie the first data rides the SYN")
    nc.add_argument("--control", metavar="PATH", help=CONTROL_HELP)

    cap = sub.add_parser(
        "capture", help="capture packets at points of the path into a pcap file",
        description="Capture packets at points of a running stack's path into a classic "
        "pcap file that tcpdump -r and scapy read. Points: rx (frames off the RX "
        "ring, before GRO), gro (after GRO: super-segments), tx (frames to the link: TSO "
        "super-frames) have Ethernet headers; ip_rcv and ip_output are raw IPv4. The "
        "capture is bounded: packets that find the buffer (-B) full are dropped and counted.",
    )
    cap.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    cap.add_argument("-w", dest="write", required=True, metavar="FILE",
                     help="pcap file to write ('-': standard output)")
    cap.add_argument("-c", dest="count", type=int, metavar="N", help="stop after N packets")
    cap.add_argument("--point", action="append", metavar="POINT",
                     help="rx, gro, ip_rcv, ip_output, tx (repeatable or comma-separated; "
                     "default rx,tx)")
    cap.add_argument("--filter", default="", metavar="EXPR",
                     help="a tcpdump-like expression (not BPF): ip arp tcp udp icmp, "
                     "[src|dst] host ADDR | net CIDR | port N[-M], greater/less N, "
                     "len OP N, and/or/not, parentheses; e.g. 'tcp port 80'")
    cap.add_argument("-s", dest="snaplen", type=int, default=262144,
                     help="bytes kept per packet (default 262144)")
    cap.add_argument("-B", dest="buffer_kib", type=int, default=2048, metavar="KIB",
                     help="capture buffer in the daemon, KiB (default 2048)")
    cap.add_argument("--control", metavar="PATH", help=CONTROL_HELP)

    filt = sub.add_parser(
        "filter", help="netfilter-style rules on the IPv4 path, like a tiny iptables",
        description="ustack filter [TAP] add CHAIN [--proto P] [--src A] [--dst A] "
        "[--sport N[:M]] [--dport N[:M]] [--drop|--accept] | list | del CHAIN N | "
        "flush [CHAIN]. Chains: PREROUTING, INPUT, FORWARD (never sees packets: ustack does "
        "not forward), OUTPUT, POSTROUTING. A rule without --drop/--accept only counts.",
    )
    filt.add_argument("words", nargs="*", metavar="[TAP] ACTION [CHAIN] [N]")
    filt.add_argument("-p", "--proto", help="tcp, udp, icmp or a protocol number")
    filt.add_argument("-s", "--src", help="source address or CIDR")
    filt.add_argument("-d", "--dst", help="destination address or CIDR")
    filt.add_argument("--sport", help="source port or range N:M (tcp, udp)")
    filt.add_argument("--dport", help="destination port or range N:M (tcp, udp)")
    target = filt.add_mutually_exclusive_group()
    target.add_argument("--drop", dest="target", action="store_const", const="DROP")
    target.add_argument("--accept", dest="target", action="store_const", const="ACCEPT")
    _add_client_args(filt)

    top = sub.add_parser("top", help="live view of rings, NAPI, GRO, TCP and the busiest "
                         "sockets (q or Ctrl-C quits)")
    top.add_argument("tap", nargs="?", default=DEFAULT_TAP)
    top.add_argument("-n", dest="iterations", type=int, default=0,
                     help="stop after N refreshes (default: run until q or Ctrl-C)")
    top.add_argument("-d", dest="delay", type=float, default=1.0, metavar="SECS",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--control", metavar="PATH", help=CONTROL_HELP)
    return parser


# ---- ustack up ----------------------------------------------------------------


def _interface(text: str, what: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise UserError(f"bad {what} {text!r}: expected an IPv4 address/prefix") from None
    if "/" not in text:
        raise UserError(f"bad {what} {text!r}: give a prefix length, e.g. {text}/24")
    if iface.network.prefixlen > 30 or iface.ip in (
        iface.network.network_address, iface.network.broadcast_address
    ):
        raise UserError(f"bad {what} {text}: not a host address in a usable subnet")
    return iface


def _up_config(args: argparse.Namespace) -> Any:
    from .daemon import UpConfig
    from .net.ethernet import parse_mac
    from .nic.impair import parse_spec as parse_impair
    from .services import parse_spec

    addr = _interface(args.addr, "address")
    host_addr = None
    if not args.no_host_config:
        host_addr = _interface(args.host_addr, "host address")
        if host_addr.network != addr.network:
            raise UserError(f"host address {host_addr} is not in the stack's subnet {addr.network}")
        if host_addr.ip == addr.ip:
            raise UserError(f"host address and stack address are both {addr.ip}")
    gateway = None
    if args.gateway:
        try:
            gateway = ipaddress.IPv4Address(args.gateway)
        except ValueError:
            raise UserError(f"bad gateway {args.gateway!r}") from None
        if gateway not in addr.network:
            raise UserError(f"gateway {gateway} is not in {addr.network}")
    if not 68 <= args.mtu <= 65535:
        raise UserError(f"bad MTU {args.mtu}: must be 68..65535")
    try:
        parse_impair(args.impair)
    except ValueError as err:
        raise UserError(str(err)) from None
    if not 1 <= args.queues <= 256:
        raise UserError(f"bad queue count {args.queues}: must be 1..256")
    if not 1 <= args.ring_size <= 65536:
        raise UserError(f"bad ring size {args.ring_size}: must be 1..65536")
    if not 1 <= args.txqueuelen <= 2**31 - 1:
        raise UserError(f"bad txqueuelen {args.txqueuelen}: must be 1..{2**31 - 1}")
    if len(args.tap.encode()) > 15 or not args.tap or "/" in args.tap:
        raise UserError(f"bad interface name {args.tap!r}")
    sysctl = Sysctl()
    for item in args.sysctl:
        sysctl.assign(item)
    cpus, rps_cpus, vlans = _steering_config(args, addr)
    try:
        services = [parse_spec(spec) for spec in args.serve]
    except ValueError as err:
        raise UserError(str(err)) from None
    for spec in services:
        if spec.arg and not os.path.isdir(spec.arg):
            raise UserError(f"http document root {spec.arg} is not a directory")
    try:
        mac = parse_mac(args.mac) if args.mac else None
    except ValueError as err:
        raise UserError(str(err)) from None
    return UpConfig(
        tap=args.tap, addr=addr, host_addr=host_addr, gateway=gateway, mtu=args.mtu,
        queues=args.queues, ring_size=args.ring_size,
        control=args.control or default_control_path(args.tap),
        host_config=not args.no_host_config, mac=mac, sysctl=sysctl, services=services,
        offload=None if args.offload is None else args.offload == "on",
        impair=args.impair, cpus=cpus, rps_cpus=rps_cpus, rps_flow_cnt=args.rps_flow_cnt,
        vlans=vlans, txqueuelen=args.txqueuelen,
    )


def _steering_config(args: argparse.Namespace, addr: ipaddress.IPv4Interface
                     ) -> tuple[int, int, list[tuple[int, ipaddress.IPv4Interface]]]:
    """--cpus, --rps-cpus and --vlan, validated: (cpus, rps mask, [(vid, iface)])."""
    from .net.vlan import parse_vlan
    from .nic.rps import parse_cpumask

    cpus = args.queues if args.cpus is None else args.cpus
    if not 1 <= cpus <= 64:
        raise UserError(f"bad CPU count {cpus}: must be 1..64")
    if args.rps_cpus is None:
        rps_cpus = (1 << cpus) - 1 if cpus > args.queues else 0
    else:
        try:
            rps_cpus = parse_cpumask(args.rps_cpus, cpus)
        except ValueError as err:
            raise UserError(str(err)) from None
    if not 0 <= args.rps_flow_cnt <= 1 << 20:
        raise UserError(f"bad --rps-flow-cnt {args.rps_flow_cnt}: must be 0..{1 << 20}")
    vlans: list[tuple[int, ipaddress.IPv4Interface]] = []
    for text in args.vlan:
        try:
            vid, iface = parse_vlan(text)
        except ValueError as err:
            raise UserError(str(err)) from None
        for other_vid, other in [(0, addr), *vlans]:
            if other_vid == vid:
                raise UserError(f"VLAN {vid} given twice")
            if other.network.overlaps(iface.network):
                raise UserError(f"VLAN {vid}: {iface.network} overlaps {other.network}")
        vlans.append((vid, iface))
    return cpus, rps_cpus, vlans


def cmd_up(args: argparse.Namespace) -> int:
    import trio

    from .daemon import run_daemon
    from .errors import first_oserror

    cfg = _up_config(args)
    if os.geteuid() != 0:
        raise UserError("ustack up must run as root (it creates a TAP device)")
    try:
        trio.run(run_daemon, cfg)
    except BaseException as err:
        leaf = first_oserror(err)
        if leaf is None:
            raise
        raise UserError(leaf.strerror or str(leaf)) from None
    return 0


# ---- clients --------------------------------------------------------------------


def _control_path(args: argparse.Namespace, tap: str) -> str:
    return args.control or default_control_path(tap)


def _connect_control(path: str) -> socket.socket:
    """A connected control socket, or a UserError saying why not."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise UserError(f"no stack is running there (no control socket at {path})") from None
    except PermissionError:
        sock.close()
        raise UserError(f"permission denied on {path}: run as root") from None
    except OSError as err:
        sock.close()
        raise UserError(f"cannot reach a stack at {path}: {err.strerror or err}") from None
    return sock


def request(path: str, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Send one request to a daemon; yield each line of its answer."""
    sock = _connect_control(path)
    with sock:
        sock.sendall(json.dumps(req).encode() + b"\n")
        with sock.makefile("rb") as f:
            for line in f:
                msg = json.loads(line)
                if "error" in msg:
                    raise UserError(msg["error"])
                yield msg


def _final(path: str, req: dict[str, Any]) -> Any:
    result = None
    for msg in request(path, req):
        result = msg.get("result", result)
    return result


# Groups whose numbers are levels (gauges), not counters: --diff shows them as they are.
_GAUGES = {"sockstat", "file_nr"}


def _stat_diff(before: dict[str, Any], after: dict[str, Any],
               seconds: float) -> dict[str, Any]:
    """Counter growth over an interval and its rate, like nstat's delta output."""
    out: dict[str, Any] = {"link": after["link"], "seconds": seconds}
    before, after = _flat_rows(before), _flat_rows(after)
    for group, counters in after.items():
        if not isinstance(counters, dict) or group == "link":
            continue
        if group in _GAUGES:
            out[group] = counters
            continue
        prev = before.get(group, {})
        out[group] = {name: {"delta": value - prev.get(name, 0),
                             "rate": round((value - prev.get(name, 0)) / seconds, 1)}
                      for name, value in counters.items()}
    return out


# Groups with one row of counters per CPU, like /proc/net/softnet_stat.
_ROWS = {"softnet_stat_cpu"}


def _flat_rows(snap: dict[str, Any]) -> dict[str, Any]:
    """Per-CPU rows as flat ``cpuN.NAME`` counters, so --diff treats them like the rest."""
    return {group: ({f"{row}.{name}": v for row, values in counters.items()
                     for name, v in values.items()} if group in _ROWS else counters)
            for group, counters in snap.items()}


def _print_rows(group: str, rows: dict[str, dict[str, int]]) -> None:
    names = list(next(iter(rows.values())))
    print(f"\n{group}:")
    print("    " + f"{'cpu':<6}" + "".join(f"{n:>17}" for n in names))
    for row, values in rows.items():
        print("    " + f"{row:<6}" + "".join(f"{values[n]:>17}" for n in names))


def cmd_stat(args: argparse.Namespace) -> int:
    path = _control_path(args, args.tap)
    snap = _final(path, {"cmd": "stat"})
    if args.diff is not None:
        import time

        if not 0 < args.diff <= 3600:
            raise UserError("--diff takes 0 < SECONDS <= 3600")
        time.sleep(args.diff)
        diff = _stat_diff(snap, _final(path, {"cmd": "stat"}), args.diff)
        if args.json:
            print(json.dumps(diff, indent=2))
            return 0
        print(f"{args.tap}: counters over {args.diff:g} s (delta, per second)")
        for group, counters in diff.items():
            if group in ("link", "seconds"):
                continue
            if group in _GAUGES:
                rows = {k: f"{v}" for k, v in counters.items() if v or args.zeros}
            else:
                rows = {k: f"{d['delta']:>12} {d['rate']:>14.1f}/s"
                        for k, d in counters.items() if d["delta"] or args.zeros}
            if rows:
                print(f"\n{group}:")
                for name, text in rows.items():
                    print(f"    {name:<28} {text}")
        return 0
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    link = snap.pop("link")
    print(
        f"{link['name']}: {link['addr']} mac {link['mac']} mtu {link['mtu']} "
        f"queues {link['queues']}" + (f" cpus {link['cpus']}" if "cpus" in link else "")
        + "".join(f" {name} {addr}" for name, addr in link.get("vlans", {}).items())
    )
    for group, counters in snap.items():
        if group in _ROWS:
            _print_rows(group, counters)
            continue
        shown = {k: v for k, v in counters.items() if v or args.zeros}
        if not shown:
            continue
        print(f"\n{group}:")
        for name, value in shown.items():
            print(f"    {name:<28} {value}")
    return 0


def cmd_sysctl(args: argparse.Namespace) -> int:
    if args.setting is None and args.tap.startswith(("net.", "fs.", "ustack.")):
        # One word given and it is a sysctl name: it is NAME[=VALUE], not a TAP.
        args.tap, args.setting = DEFAULT_TAP, args.tap
    req: dict[str, Any] = {"cmd": "sysctl"}
    if args.setting:
        name, sep, value = args.setting.partition("=")
        req["name"] = name.strip()
        if sep:
            req["value"] = value.strip()
    result = _final(_control_path(args, args.tap), req)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name} = {value}")
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    if len(args.args) > 2:
        raise UserError("usage: ustack ping [TAP] HOST")
    tap, host = (args.args if len(args.args) == 2 else [DEFAULT_TAP, args.args[0]])
    if args.count < 1 or args.size < 0 or args.size > 65507:
        raise UserError("count must be >= 1 and size 0..65507")
    req = {"cmd": "ping", "host": host, "count": args.count, "size": args.size,
           "interval": args.interval}
    received = 0
    if not args.json:
        print(f"PING {host} {args.size}({args.size + 28}) bytes of data, from the stack on {tap}")
    results = []
    for msg in request(_control_path(args, tap), req):
        r = msg.get("progress")
        if r is None:
            continue
        results.append(r)
        if "time_ms" in r:
            received += 1
        if args.json:
            continue
        if "time_ms" in r:
            print(
                f"{r['bytes']} bytes from {r['from']}: icmp_seq={r['seq']} ttl={r['ttl']} "
                f"time={r['time_ms']} ms" + ("" if r["ok"] else " (DIFFERENT DATA)")
            )
        elif "error" in r:
            print(f"icmp_seq={r['seq']}: {r['error']}")
        else:
            print(f"icmp_seq={r['seq']}: no answer")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        loss = 100 * (len(results) - received) // max(1, len(results))
        print(f"--- {host} ping statistics ---")
        print(f"{len(results)} packets transmitted, {received} received, {loss}% packet loss")
    return 0 if received == len(results) else 1


def cmd_neigh(args: argparse.Namespace) -> int:
    entries = _final(_control_path(args, args.tap), {"cmd": "neigh"})
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        lladdr = f" lladdr {e['mac']}" if e.get("mac") else ""
        print(f"{e['ip']} dev {e.get('dev', args.tap)}{lladdr} {e['state']}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    routes = _final(_control_path(args, args.tap), {"cmd": "route"})
    if args.json:
        print(json.dumps(routes, indent=2))
    else:
        print("\n".join(routes))
    return 0


def cmd_ss(args: argparse.Namespace) -> int:
    rows = _final(_control_path(args, args.tap), {"cmd": "ss"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'Netid':<6}{'State':<12}{'Recv-Q':>7}{'Send-Q':>8}  "
          f"{'Local Address:Port':<22}{'Peer Address:Port':<22}")
    for r in rows:
        print(f"{r['netid']:<6}{r['state']:<12}{r['recv_q']:>7}{r['send_q']:>8}  "
              f"{r['local']:<22}{r['peer']:<22}")
        info = r.get("info")
        if r["netid"] == "tcp" and info:
            print(
                f"\t skmem:(r{info.get('rmem_alloc', 0)},rb{info['rcvbuf']},"
                f"t{info.get('wmem_alloc', 0)},tb{info['sndbuf']},"
                f"w{info.get('wmem_queued', 0)}) {info['ca']} wscale:{info['snd_wscale']},"
                f"{info['rcv_wscale']} rto:{info['rto']:g} rtt:{info['rtt']:g}/"
                f"{info['rttvar']:g} ato:{info['ato']:g} mss:{info['snd_mss']} "
                f"rcvmss:{info['rcv_mss']} advmss:{info['advmss']} cwnd:{info['snd_cwnd']} "
                f"ssthresh:{info['ssthresh']} bytes_acked:{info['bytes_acked']} "
                f"bytes_received:{info['bytes_received']} segs_out:{info['segs_out']} "
                f"segs_in:{info['segs_in']} unacked:{info['unacked']} "
                f"retrans:{info['retransmits']}/{info['retrans']} snd_wnd:{info['snd_wnd']} "
                f"rcv_wnd:{info['rcv_wnd']} rcv_rtt:{info.get('rcv_rtt', 0):g} "
                f"rcv_space:{info.get('rcv_space', 0)} notsent:{info.get('notsent', 0)}"
                + (" orphan" if r.get("orphan") else "")
                + (" TSQ_THROTTLED" if info.get("tsq_throttled") else "")
                + (" fastopen" if info.get("syn_data_acked") else "")
            )
        elif r["state"] == "LISTEN":
            fastopen = (f" fastopen:{r['fastopen_qlen']}/{r['fastopen_max_qlen']}"
                        if r.get("fastopen_max_qlen") else "")
            print(f"\t syn_queue:{r['syn_queue']}{fastopen}")
    return 0


def cmd_tcp_metrics(args: argparse.Namespace) -> int:
    """``ip tcp_metrics``-style view of the client's Fast Open cookie cache."""
    words = list(args.args)
    tap = DEFAULT_TAP
    if words and words[0] not in ("show", "flush") and not _is_ipv4(words[0]):
        tap = words.pop(0)
    action = words.pop(0) if words and words[0] in ("show", "flush") else "show"
    addr = words.pop(0) if words else None
    if words or (addr is not None and not _is_ipv4(addr)):
        raise UserError("usage: ustack tcp_metrics [TAP] [show|flush] [ADDR]")
    req: dict[str, Any] = {"cmd": "tcp_metrics", "action": action}
    if addr:
        req["addr"] = addr
    result = _final(_control_path(args, tap), req)
    if args.json:
        print(json.dumps(result, indent=2))
    elif action == "show":
        for r in result:
            parts = [r["dst"], f"age {r['age']:.3f}sec"]
            if "fo_mss" in r:
                parts.append(f"fo_mss {r['fo_mss']}")
            if "fo_cookie" in r:
                parts.append(f"fo_cookie {r['fo_cookie']}" + (" (exp)" if r.get("fo_exp")
                                                              else ""))
            if "fo_syn_drops" in r:
                parts.append(f"fo_syn_drops {r['fo_syn_drops']}/"
                             f"{r['fo_syn_drops_ago']:.3f}sec ago")
            print(" ".join(parts))
    return 0


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _observe(name: str, args: argparse.Namespace) -> int:
    from . import cli_observe

    return getattr(cli_observe, name)(args)


def _nc(args: argparse.Namespace) -> int:
    from .cli_nc import cmd_nc

    return cmd_nc(args)


def _nic(name: str, args: argparse.Namespace) -> int:
    from . import cli_nic

    return getattr(cli_nic, name)(args)


def cmd_top(args: argparse.Namespace) -> int:
    """``ustack top``: snapshots from the control socket, rendered by ustack/top.py."""
    from .top import run_top

    if args.iterations < 0 or not 0.1 <= args.delay <= 3600:
        raise UserError("top takes -n N >= 0 and -d SECS in 0.1..3600")
    path = _control_path(args, args.tap)
    first = True

    def fetch() -> Any:
        nonlocal first
        try:
            snap = _final(path, {"cmd": "top"})
            if snap is None:  # the daemon closed the connection without an answer
                raise UserError("no answer")
            return snap
        except (UserError, OSError, ValueError) as err:
            if first and isinstance(err, UserError):
                raise
            raise UserError(f"lost the stack's control socket at {path}") from err
        finally:
            first = False

    try:
        run_top(fetch, args.tap, args.iterations, args.delay)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how top is left, like q
    return 0


COMMANDS = {
    "up": cmd_up,
    "stat": cmd_stat,
    "sysctl": cmd_sysctl,
    "ping": cmd_ping,
    "neigh": cmd_neigh,
    "route": cmd_route,
    "ss": cmd_ss,
    "nc": _nc,
    "ethtool": lambda args: _nic("cmd_ethtool", args),
    "impair": lambda args: _nic("cmd_impair", args),
    "tc": lambda args: _nic("cmd_tc", args),
    "link": lambda args: _nic("cmd_link", args),
    "rps": lambda args: _nic("cmd_rps", args),
    "capture": lambda args: _observe("cmd_capture", args),
    "filter": lambda args: _observe("cmd_filter", args),
    "top": cmd_top,
    "tcp_metrics": cmd_tcp_metrics,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, SysctlError) as err:
        print(f"ustack: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
