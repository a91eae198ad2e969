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

from .sysctl import Sysctl, SysctlError

DEFAULT_TAP = "tap0"
CONTROL_HELP = "control socket (default /run/ustack/TAP.sock)"


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
    up.add_argument(
        "--ring-size", type=int, default=256, help="RX and TX descriptors per queue (default 256)"
    )
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
    _add_client_args(eth)

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
    nc.add_argument("--control", metavar="PATH", help=CONTROL_HELP)
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
    from .daemon import UpConfig, default_control_path
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
    if len(args.tap.encode()) > 15 or not args.tap or "/" in args.tap:
        raise UserError(f"bad interface name {args.tap!r}")
    sysctl = Sysctl()
    for item in args.sysctl:
        sysctl.assign(item)
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
        impair=args.impair,
    )


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
    return args.control or f"/run/ustack/{tap}.sock"


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
_GAUGES = {"sockstat"}


def _stat_diff(before: dict[str, Any], after: dict[str, Any],
               seconds: float) -> dict[str, Any]:
    """Counter growth over an interval and its rate, like nstat's delta output."""
    out: dict[str, Any] = {"link": after["link"], "seconds": seconds}
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
        f"queues {link['queues']}"
    )
    for group, counters in snap.items():
        shown = {k: v for k, v in counters.items() if v or args.zeros}
        if not shown:
            continue
        print(f"\n{group}:")
        for name, value in shown.items():
            print(f"    {name:<28} {value}")
    return 0


def cmd_sysctl(args: argparse.Namespace) -> int:
    if args.setting is None and args.tap.startswith("net."):
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
        print(f"{e['ip']} dev {args.tap}{lladdr} {e['state']}")
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
                f"\t skmem:(r{info['recv_q']},rb{info['rcvbuf']},t{info['send_q']},"
                f"tb{info['sndbuf']}) {info['ca']} wscale:{info['snd_wscale']},"
                f"{info['rcv_wscale']} rto:{info['rto']:g} rtt:{info['rtt']:g}/"
                f"{info['rttvar']:g} ato:{info['ato']:g} mss:{info['snd_mss']} "
                f"rcvmss:{info['rcv_mss']} advmss:{info['advmss']} cwnd:{info['snd_cwnd']} "
                f"ssthresh:{info['ssthresh']} bytes_acked:{info['bytes_acked']} "
                f"bytes_received:{info['bytes_received']} segs_out:{info['segs_out']} "
                f"segs_in:{info['segs_in']} unacked:{info['unacked']} "
                f"retrans:{info['retransmits']}/{info['retrans']} snd_wnd:{info['snd_wnd']} "
                f"rcv_wnd:{info['rcv_wnd']}" + (" orphan" if r.get("orphan") else "")
            )
        elif r["state"] == "LISTEN":
            print(f"\t syn_queue:{r['syn_queue']}")
    return 0


def _nc_target(args: argparse.Namespace) -> tuple[str, str, int]:
    """[TAP] [HOST] PORT -> (tap, host, port); HOST is optional only with -l."""
    words = list(args.args)
    if not 1 <= len(words) <= 3:
        raise UserError("usage: ustack nc [TAP] [-l] [-u] [-N] HOST PORT")
    try:
        port = int(words.pop())
    except ValueError:
        raise UserError(f"bad port {args.args[-1]!r}") from None
    if not 0 < port < 65536:
        raise UserError(f"bad port {port}: must be 1..65535")
    tap, host = DEFAULT_TAP, ""
    if len(words) == 2:
        tap, host = words
    elif len(words) == 1:
        try:
            ipaddress.IPv4Address(words[0])
            host = words[0]
        except ValueError:
            tap = words[0]
    if not host and not args.listen:
        raise UserError("ustack nc: a HOST is needed unless listening (-l)")
    return tap, host, port


def cmd_nc(args: argparse.Namespace) -> int:
    import select
    import struct
    import time

    tap, host, port = _nc_target(args)
    path = _control_path(args, tap)
    sock = _connect_control(path)
    req = {"cmd": "nc", "host": host, "port": port, "listen": args.listen, "udp": args.udp,
           "half_close": args.half_close}
    sock.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while True:  # status lines until "connected"; the rest is the peer's data
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise UserError("the daemon closed the connection")
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        msg = json.loads(line)
        if "error" in msg:
            raise UserError(msg["error"])
        if msg.get("progress") == "connected":
            break
    out = sys.stdout.buffer
    if buf:
        out.write(buf)
        out.flush()
    stdin_fd: int | None = sys.stdin.fileno() if sys.stdin is not None else None
    deadline: float | None = None
    while True:
        fds = [sock] + ([stdin_fd] if stdin_fd is not None else [])
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(fds, [], [], timeout)
        if not ready and deadline is not None:
            return 0
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return 0
            out.write(data)
            out.flush()
        if stdin_fd is not None and stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            sock.sendall(struct.pack("!I", len(data)) + data)
            if not data:
                stdin_fd = None
                if args.quit_after >= 0:
                    deadline = time.monotonic() + args.quit_after


# ethtool's short names for -K (ethtool(8): "tso", "gso", "gro", "rx", "tx", "sg", "lro").
_FEATURE_ALIASES = {
    "rx": "rx-checksumming", "tx": "tx-checksumming", "sg": "scatter-gather",
    "tso": "tcp-segmentation-offload", "gso": "generic-segmentation-offload",
    "gro": "generic-receive-offload", "lro": "large-receive-offload",
}


def cmd_ethtool(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"cmd": "ethtool"}
    if args.set_features:
        words = args.set_features
        if len(words) % 2:
            raise UserError("ethtool -K takes FEATURE on|off pairs")
        changes = {}
        for name, value in zip(words[::2], words[1::2], strict=True):
            if value not in ("on", "off"):
                raise UserError(f"ethtool -K {name}: expected on or off, got {value!r}")
            changes[_FEATURE_ALIASES.get(name, name)] = value == "on"
        req["set"] = changes
    if args.set_rss:
        words = args.set_rss
        if words[0] == "equal" and len(words) == 2 and words[1].isdigit():
            req["rss"] = {"equal": int(words[1])}
        elif words[0] == "weight" and len(words) > 1 and all(w.isdigit() for w in words[1:]):
            req["rss"] = {"weight": [int(w) for w in words[1:]]}
        elif words[0] == "hkey" and len(words) == 2:
            req["rss"] = {"hkey": words[1]}
        else:
            raise UserError("ethtool -X takes: equal N | weight W0 W1 ... | hkey KEY")
    if args.set_channels:
        word, count = args.set_channels
        if word != "combined" or not count.isdigit():
            raise UserError("ethtool -L takes: combined N")
        req["combined"] = int(count)
    result = _final(_control_path(args, args.tap), req)
    if args.set_features or args.set_rss or args.set_channels:
        return 0
    if args.json:
        key = ("stats" if args.stats else "rings" if args.rings else "rss" if args.show_rss
               else "channels" if args.channels else "features")
        print(json.dumps(result[key], indent=2))
    elif args.show_rss:
        reta = result["rss"]["reta"]
        print(f"RX flow hash indirection table for {args.tap} with "
              f"{result['channels']['combined']} RX ring(s):")
        for i in range(0, len(reta), 8):
            print(f"{i:5}: " + "".join(f"{q:6}" for q in reta[i : i + 8]))
        print(f"RSS hash key:\n{result['rss']['key']}")
    elif args.channels:
        print(f"Channel parameters for {args.tap}:\nPre-set maximums:\n"
              f"Combined:\t{result['channels']['max_combined']}\nCurrent hardware settings:\n"
              f"Combined:\t{result['channels']['combined']}")
    elif args.stats:
        print("NIC statistics:")
        for name, value in result["stats"].items():
            print(f"     {name}: {value}")
    elif args.rings:
        print(f"Ring parameters for {args.tap}:")
        for name, value in result["rings"].items():
            print(f"{name}:\t{value}")
    else:
        print(f"Features for {args.tap}:")
        for name, on, fixed in result["features"]:
            print(f"{name}: {'on' if on else 'off'}{' [fixed]' if fixed else ''}")
    return 0


def cmd_impair(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"cmd": "impair"}
    if args.spec is None and (":" in args.tap or "=" in args.tap):
        args.tap, args.spec = DEFAULT_TAP, args.tap  # one word given: it is the SPEC
    if args.spec is not None:
        req["spec"] = args.spec
    result = _final(_control_path(args, args.tap), req)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"impair: {result['spec'] or 'none'}")
    for name, value in result["counters"].items():
        print(f"    {name:<28} {value}")
    return 0


COMMANDS = {
    "up": cmd_up,
    "stat": cmd_stat,
    "sysctl": cmd_sysctl,
    "ping": cmd_ping,
    "neigh": cmd_neigh,
    "route": cmd_route,
    "ss": cmd_ss,
    "nc": cmd_nc,
    "ethtool": cmd_ethtool,
    "impair": cmd_impair,
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
