"""The device commands of the CLI: ``ustack ethtool``, ``rps``, ``tc``, ``link``, ``impair``.

What the kernel's ethtool, /sys/class/net/*/queues, tc and ip link show
and set, asked of a running stack over its control socket. Loaded only
when one of them runs, like cli_observe.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli import DEFAULT_TAP, UserError, _control_path, _final

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
    if args.set_coalesce:
        req["coalesce"] = _coalesce_changes(args.set_coalesce)
    result = _final(_control_path(args, args.tap), req)
    if args.set_features or args.set_rss or args.set_channels or args.set_coalesce:
        return 0
    if args.json:
        key = ("stats" if args.stats else "rings" if args.rings else "rss" if args.show_rss
               else "channels" if args.channels else "coalesce" if args.show_coalesce
               else "features")
        print(json.dumps(result[key], indent=2))
    elif args.show_rss:
        reta = result["rss"]["reta"]
        print(f"RX flow hash indirection table for {args.tap} with "
              f"{result['channels']['combined']} RX ring(s):")
        for i in range(0, len(reta), 8):
            print(f"{i:5}: " + "".join(f"{q:6}" for q in reta[i : i + 8]))
        print(f"RSS hash key:\n{result['rss']['key']}")
    elif args.show_coalesce:
        c = result["coalesce"]
        print(f"Coalesce parameters for {args.tap}:\n"
              f"Adaptive RX: {'on' if c['adaptive-rx'] else 'off'}  TX: n/a\n\n"
              f"rx-usecs: {c['rx-usecs']}\nrx-frames: {c['rx-frames']}")
        if c["adaptive-rx"]:
            for i, q in enumerate(c["queues"]):
                print(f"rx-queue-{i} (adaptive): rx-usecs {q['rx-usecs']} "
                      f"rx-frames {q['rx-frames']} profile {q['profile']} {q['tune-state']}")
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


def _coalesce_changes(words: list[str]) -> dict[str, Any]:
    """``-C rx-usecs N rx-frames N adaptive-rx on|off`` as a request."""
    if len(words) % 2:
        raise UserError("ethtool -C takes PARAM VALUE pairs: rx-usecs N, rx-frames N, "
                        "adaptive-rx on|off")
    changes: dict[str, Any] = {}
    for name, value in zip(words[::2], words[1::2], strict=True):
        if name == "adaptive-rx":
            if value not in ("on", "off"):
                raise UserError(f"ethtool -C adaptive-rx: expected on or off, got {value!r}")
            changes[name] = value == "on"
        elif name in ("rx-usecs", "rx-frames"):
            if not value.isdigit():
                raise UserError(f"ethtool -C {name}: expected a number, got {value!r}")
            changes[name] = int(value)
        else:
            raise UserError(f"ethtool -C: unknown parameter {name!r} "
                            "(rx-usecs, rx-frames, adaptive-rx)")
    return changes


def cmd_rps(args: argparse.Namespace) -> int:
    words = list(args.words)
    tap = words.pop(0) if len(words) % 3 == 1 else DEFAULT_TAP
    if len(words) % 3:
        raise UserError("usage: ustack rps [TAP] [rx-N rps_cpus MASK | rx-N rps_flow_cnt N] ...")
    changes = []
    for queue, name, value in zip(words[::3], words[1::3], words[2::3], strict=True):
        if not (queue.startswith("rx-") and queue[3:].isdigit()):
            raise UserError(f"ustack rps: expected rx-N, got {queue!r}")
        changes.append([int(queue[3:]), name, value])
    req: dict[str, Any] = {"cmd": "rps"}
    if changes:
        req["set"] = changes
    result = _final(_control_path(args, tap), req)
    if changes:
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{tap}: {result['cpus']} CPU(s), net.core.rps_sock_flow_entries = "
          f"{result['rps_sock_flow_entries']}")
    for q in result["queues"]:
        print(f"rx-{q['rx_queue']}: rps_cpus {q['rps_cpus']} rps_flow_cnt {q['rps_flow_cnt']}")
    return 0


_TC_USAGE = "usage: ustack tc [TAP] [show | replace root pfifo_fast|fq_codel]"


def _tap_words(words: list[str], verbs: tuple[str, ...]) -> tuple[str, list[str]]:
    """Split ``[TAP] VERB ...`` into the TAP (default tap0) and the rest."""
    words = list(words)
    tap = words.pop(0) if words and words[0] not in verbs else DEFAULT_TAP
    return tap, words


def cmd_tc(args: argparse.Namespace) -> int:
    """``tc -s qdisc show dev TAP`` and ``tc qdisc replace dev TAP root KIND``."""
    from .nic.qdisc import KINDS

    tap, words = _tap_words(args.words, ("show", "replace"))
    req: dict[str, Any] = {"cmd": "tc"}
    if words and words[0] == "replace":
        if len(words) != 3 or words[1] != "root" or words[2] not in KINDS:
            raise UserError(_TC_USAGE)
        req["kind"] = words[2]
    elif words not in ([], ["show"]):
        raise UserError(_TC_USAGE)
    result = _final(_control_path(args, tap), req)
    if "kind" in req:
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for row in result["queues"]:
        qd, bql = row["qdisc"], row["bql"]
        if qd["kind"] == "pfifo_fast":
            opts = f"bands {qd['bands']} priomap {' '.join(map(str, qd['priomap']))}"
        else:
            opts = (f"limit {qd['limit']}p flows {qd['flows']} quantum {qd['quantum']} "
                    f"target {qd['target_us'] / 1000:g}ms interval {qd['interval_us'] / 1000:g}ms")
        print(f"qdisc {qd['kind']} 0: dev {result['dev']} parent :{row['queue'] + 1} {opts}")
        print(f" Sent {qd['sent_bytes']} bytes {qd['sent_packets']} pkt (dropped "
              f"{qd['dropped']}, overlimits {qd['overlimits']} requeues {qd['requeues']})")
        print(f" backlog {qd['backlog_bytes']}b {qd['backlog_packets']}p "
              f"requeues {qd['requeues']}")
        if qd["kind"] == "fq_codel":
            print(f"  maxpacket {qd['maxpacket']} drop_overlimit {qd['drop_overlimit']} "
                  f"new_flow_count {qd['new_flow_count']} ecn_mark {qd['ecn_mark']}")
            print(f"  new_flows_len {qd['new_flows_len']} old_flows_len {qd['old_flows_len']}")
        print(f" tx-{row['queue']} byte_queue_limits: limit {bql['limit']} limit_min "
              f"{bql['limit_min']} limit_max {bql['limit_max']} inflight {bql['inflight']} "
              f"hold_time {bql['hold_time']}ms{' (queue stopped)' if row['stopped'] else ''}")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    """``ip link show TAP`` (the egress part) and ``ip link set TAP txqueuelen N``."""
    tap, words = _tap_words(args.words, ("show", "set"))
    req: dict[str, Any] = {"cmd": "tc"}
    if words and words[0] == "set":
        if len(words) != 3 or words[1] != "txqueuelen" or not words[2].isdigit():
            raise UserError("usage: ustack link [TAP] [show | set txqueuelen N]")
        req["txqueuelen"] = int(words[2])
    elif words not in ([], ["show"]):
        raise UserError("usage: ustack link [TAP] [show | set txqueuelen N]")
    result = _final(_control_path(args, tap), req)
    if "txqueuelen" in req:
        return 0
    info = {"dev": result["dev"], "mtu": result["mtu"], "txqueuelen": result["txqueuelen"],
            "qdisc": result["queues"][0]["qdisc"]["kind"], "queues": len(result["queues"])}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['dev']}: mtu {info['mtu']} qdisc {info['qdisc']} qlen "
              f"{info['txqueuelen']} queues {info['queues']}")
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
