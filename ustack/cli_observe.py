"""The clients of ``ustack capture`` and ``ustack filter`` (see cli.py for the parser)."""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
from typing import Any, BinaryIO

from .capfilter import FilterError, compile_filter
from .capture import CaptureError, PcapWriter, points_linktype
from .cli import DEFAULT_TAP, UserError, _connect_control, _control_path, _final
from .net.netfilter import HOOKS, NetfilterError, Rule


class _Lines:
    """Lines from a socket, read with plain ``recv`` so Ctrl-C loses nothing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        msg = json.loads(line)
        if "error" in msg:
            raise UserError(msg["error"])
        return msg


def cmd_capture(args: argparse.Namespace) -> int:
    """Capture packets at points of a running stack into a pcap file."""
    points = [p for item in args.point or ["rx,tx"] for p in item.split(",") if p]
    try:
        linktype = points_linktype(points)
        compile_filter(args.filter)
    except (CaptureError, FilterError) as err:
        raise UserError(str(err)) from None
    if args.count is not None and args.count < 1:
        raise UserError("-c takes a packet count >= 1")
    if not 1 <= args.snaplen <= 262144:
        raise UserError("-s takes a snaplen 1..262144")
    if not 1 <= args.buffer_kib <= 1 << 20:
        raise UserError("-B takes a buffer size in KiB, 1..1048576")
    sock = _connect_control(_control_path(args, args.tap))
    req = {"cmd": "capture", "points": points, "filter": args.filter, "snaplen": args.snaplen,
           "count": args.count or 0, "buffer": args.buffer_kib * 1024}
    out: BinaryIO | None = None
    written = 0
    result: dict[str, Any] | None = None
    with sock:
        sock.sendall(json.dumps(req).encode() + b"\n")
        lines = _Lines(sock)
        stopping = False
        writer = None
        while True:
            try:
                msg = lines.next()
            except KeyboardInterrupt:
                if stopping:
                    break  # a second Ctrl-C: leave at once
                # Ask the daemon to stop; it sends what it holds and the totals.
                stopping = True
                sock.shutdown(socket.SHUT_WR)
                continue
            if msg is None:
                break
            if "result" in msg:
                result = msg["result"]
                break
            progress = msg.get("progress") or {}
            if progress.get("started"):
                try:
                    out = (sys.stdout.buffer if args.write == "-"
                           else open(args.write, "wb"))  # noqa: SIM115
                except OSError as err:
                    raise UserError(f"cannot write {args.write}: {err.strerror}") from None
                writer = PcapWriter(out, linktype, args.snaplen)
                if args.write != "-":
                    print(f"ustack: capturing on {args.tap} at {', '.join(points)}, "
                          f"snapshot length {args.snaplen} bytes", file=sys.stderr, flush=True)
                continue
            if writer is not None:
                for ts, _point, data, orig in progress.get("packets", ()):
                    writer.write(ts, base64.b64decode(data), orig)
                    written += 1
                writer.flush()
        if out is not None and out is not sys.stdout.buffer:
            out.close()
    if result is None:
        if stopping:
            print(f"{written} packets captured", file=sys.stderr)
            return 0
        raise UserError("lost the stack's control socket during the capture")
    print(f"{written} packets captured\n{result['dropped']} packets dropped by the "
          f"capture buffer", file=sys.stderr)
    return 0


_ACTIONS = ("add", "del", "delete", "list", "flush")


def cmd_filter(args: argparse.Namespace) -> int:
    """``ustack filter [TAP] add|del|list|flush ...``: the tiny iptables."""
    words = list(args.words)
    tap = DEFAULT_TAP
    if words and words[0] not in _ACTIONS:
        tap = words.pop(0)
    if not words:
        words = ["list"]
    action, rest = words[0], words[1:]
    if action not in _ACTIONS:
        raise UserError(f"filter: unknown action {action!r} (add, del, list, flush)")
    req: dict[str, Any] = {"cmd": "filter", "action": "del" if action == "delete" else action}
    rule_opts = (args.proto, args.src, args.dst, args.sport, args.dport, args.target)
    if action != "add" and any(o is not None for o in rule_opts):
        raise UserError(f"filter {action}: rule options go with add only")
    if action == "add":
        if len(rest) != 1:
            raise UserError(f"usage: ustack filter [TAP] add CHAIN [match...] "
                            f"[--drop|--accept] (chains: {', '.join(HOOKS)})")
        rule = {"proto": args.proto, "src": args.src, "dst": args.dst, "sport": args.sport,
                "dport": args.dport, "target": args.target}
        rule = {k: v for k, v in rule.items() if v is not None}
        try:
            Rule.parse(rule)
        except NetfilterError as err:
            raise UserError(str(err)) from None
        req["chain"] = _chain(rest[0])
        req["rule"] = rule
    elif action in ("del", "delete"):
        if len(rest) == 2 and rest[1].isdigit():
            req["chain"], req["number"] = _chain(rest[0]), int(rest[1])
        else:
            raise UserError("usage: ustack filter [TAP] del CHAIN N (N as listed)")
    elif action == "flush":
        if len(rest) > 1:
            raise UserError("usage: ustack filter [TAP] flush [CHAIN]")
        if rest:
            req["chain"] = _chain(rest[0])
    elif rest:
        raise UserError("usage: ustack filter [TAP] list")
    listing = _final(_control_path(args, tap), req)
    if action != "list":
        return 0
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for i, chain in enumerate(listing):
        hooks = f", {chain['hooks']} Python hook(s)" if chain["hooks"] else ""
        print(("\n" if i else "") + f"Chain {chain['chain']} (policy {chain['policy']} "
              f"{chain['packets']} packets, {chain['bytes']} bytes{hooks})")
        print(f"{'num':>4} {'pkts':>8} {'bytes':>10} {'target':<7} {'prot':<5} "
              f"{'source':<18} {'destination':<18}")
        for n, r in enumerate(chain["rules"], 1):
            ports = "".join(f" {k[0]}pt:{r[k]}" for k in ("sport", "dport") if r[k])
            print(f"{n:>4} {r['packets']:>8} {r['bytes']:>10} {r['target']:<7} "
                  f"{r['proto']:<5} {r['src']:<18} {r['dst']:<18}{ports}")
    return 0


def _chain(word: str) -> str:
    name = word.upper()
    if name not in HOOKS:
        raise UserError(f"filter: no chain {word!r} (chains: {', '.join(HOOKS)})")
    return name
