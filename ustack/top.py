"""``ustack top``: a live view of the receive path, TCP and the busiest sockets.

:func:`render` is a pure function of two snapshots (the control socket's
``top`` answer, taken an interval apart): rates are the growth of the
kernel-named counters between them, divided by the stack's own clock. So a
frame can be rendered and checked headless (``rich.console.Console(record=
True)``); :func:`run_top` only fetches snapshots once a second and redraws.

What is shown, and where the numbers come from:

- per RX queue: ring fill (``ethtool -g`` size, descriptors in use now),
  frames and drops per second, NAPI polls per second and the frames each
  poll took against its weight (``dev_weight``): the budget use;
- per CPU (``softnet_stat``): frames processed and ``time_squeeze`` per
  second (rounds that ended with work left), against ``netdev_budget``;
- GRO: frames in per packet out (the merge ratio) and the kernel's
  super-frames (``rx_gro_hw_packets``);
- TCP: segments in/out, ``RetransSegs``, ``TCPTimeouts``, ``TCPFastRetrans``;
- per TX queue: the root qdisc's backlog, sent and dropped (``tc -s qdisc``)
  and BQL's inflight bytes against its limit (``byte_queue_limits``);
- the busiest TCP sockets by bytes moved in the interval, with ``ss -ti``'s
  state, cwnd, srtt, receive/send queue over rcvbuf/sndbuf and retransmits.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

BUSIEST = 8


def _rate(cur: dict[str, Any], prev: dict[str, Any] | None, key: str, dt: float) -> float:
    if prev is None or dt <= 0:
        return 0.0
    return max(0, cur.get(key, 0) - prev.get(key, 0)) / dt


def _delta(cur: dict[str, Any], prev: dict[str, Any] | None, key: str) -> int:
    return cur.get(key, 0) - (prev or {}).get(key, 0)


def _fmt(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.1f}M"
    if rate >= 1e4:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.0f}"


def _bytes(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}T"


def render(cur: dict[str, Any], prev: dict[str, Any] | None = None, tap: str = "") -> Group:
    """One frame of ``ustack top`` from the snapshot *cur* and the one before it."""
    dt = cur["time"] - prev["time"] if prev is not None else 0.0
    stat = cur["stat"]
    pstat = prev["stat"] if prev is not None else None
    eth = stat["ethtool"]
    peth = pstat["ethtool"] if pstat is not None else None
    link = stat["link"]
    rings = cur["rings"]
    weight = cur["budget"]["dev_weight"]
    head = Text.assemble(
        ("ustack top", "bold"), f"  {tap or link['name']}  {link['addr']}  mtu {link['mtu']}  ",
        (f"interval {dt:.1f} s" if prev is not None else "first sample", "dim"),
        ("   q: quit", "dim"),
    )

    queues = Table(title="RX queues (ring, NAPI)", title_justify="left", expand=True)
    for col in ("queue", "ring fill", "rx pkt/s", "drops/s", "polls/s", "frames/poll",
                "budget use"):
        queues.add_column(col, justify="right" if col != "queue" else "left")
    for q in range(link["queues"]):
        fill = rings.get(f"rx_queue_{q}_fill", 0)
        size = rings.get("rx", 0) or 1
        frames = _delta(eth, peth, f"rx_queue_{q}_packets")
        polls = _delta(eth, peth, f"rx_queue_{q}_napi_polls")
        per_poll = frames / polls if polls > 0 else 0.0
        has_polls = f"rx_queue_{q}_napi_polls" in eth
        queues.add_row(
            f"rx-{q}", f"{fill}/{size} {100 * fill // size}%",
            _fmt(_rate(eth, peth, f"rx_queue_{q}_packets", dt)),
            _fmt(_rate(eth, peth, f"rx_queue_{q}_drops", dt)),
            _fmt(_rate(eth, peth, f"rx_queue_{q}_napi_polls", dt)) if has_polls else "-",
            f"{per_poll:.1f}" if has_polls else "-",
            f"{100 * per_poll / weight:.0f}% of {weight}" if has_polls else "-",
        )

    cpus = Table(title=f"softnet (netdev_budget {cur['budget']['netdev_budget']})",
                 title_justify="left", expand=True)
    for col in ("cpu", "processed/s", "time_squeeze/s", "time_squeeze", "dropped"):
        cpus.add_column(col, justify="right" if col != "cpu" else "left")
    rows = stat.get("softnet_stat_cpu") or {"all": stat["softnet_stat"]}
    prows = (pstat.get("softnet_stat_cpu") or {"all": pstat["softnet_stat"]}) if pstat else {}
    for name, sd in rows.items():
        psd = prows.get(name)
        cpus.add_row(name, _fmt(_rate(sd, psd, "processed", dt)),
                     _fmt(_rate(sd, psd, "time_squeeze", dt)), str(sd.get("time_squeeze", 0)),
                     str(sd.get("dropped", 0)))

    gro_in = sum(_delta(eth, peth, f"rx_gro_{k}") for k in ("merged", "held", "normal"))
    gro_out = sum(_delta(eth, peth, f"rx_gro_{k}") for k in ("flushed", "normal"))
    tcp, ptcp = stat["Tcp"], pstat["Tcp"] if pstat else None
    ext = stat["TcpExt"]
    path = Table(title="GRO and TCP", title_justify="left", expand=True)
    for col in ("GRO frames/packet", "hw super-frames/s", "TCP in seg/s", "out seg/s",
                "RetransSegs/s", "TCPTimeouts", "TCPFastRetrans", "CurrEstab"):
        path.add_column(col, justify="right")
    path.add_row(
        f"{gro_in / gro_out:.2f}" if gro_out > 0 else "-",
        _fmt(_rate(eth, peth, "rx_gro_hw_packets", dt)),
        _fmt(_rate(tcp, ptcp, "InSegs", dt)), _fmt(_rate(tcp, ptcp, "OutSegs", dt)),
        _fmt(_rate(tcp, ptcp, "RetransSegs", dt)), str(ext.get("TCPTimeouts", 0)),
        str(ext.get("TCPFastRetrans", 0)), str(tcp.get("CurrEstab", 0)),
    )

    tc = Table(title="qdisc and BQL (TX queues)", title_justify="left", expand=True)
    for col in ("queue", "qdisc", "backlog", "sent pkt/s", "dropped/s", "dropped",
                "BQL inflight/limit", "stopped"):
        tc.add_column(col, justify="left" if col in ("queue", "qdisc") else "right")
    ptc = {row["queue"]: row["qdisc"] for row in (prev or {}).get("tc", ())}
    for row in cur.get("tc", ()):
        qd, old = row["qdisc"], ptc.get(row["queue"])
        tc.add_row(
            f"tx-{row['queue']}", qd["kind"],
            f"{qd['backlog_packets']}p {_bytes(qd['backlog_bytes'])}",
            _fmt(_rate(qd, old, "sent_packets", dt)), _fmt(_rate(qd, old, "dropped", dt)),
            str(qd["dropped"]), f"{_bytes(row['bql']['inflight'])}/{_bytes(row['bql']['limit'])}",
            "yes" if row["stopped"] else "no",
        )

    socks = Table(title="busiest TCP sockets", title_justify="left", expand=True)
    for col in ("local", "peer", "state", "MB/s", "cwnd", "srtt ms", "rmem (q/buf)",
                "wmem (q/buf)", "retrans"):
        socks.add_column(col, justify="left" if col in ("local", "peer", "state") else "right")
    before = {(r["local"], r["peer"]): r.get("info", {}) for r in
              (prev["sockets"] if prev is not None else [])}

    def moved(row: dict[str, Any]) -> int:
        info = row["info"]
        old = before.get((row["local"], row["peer"]), {})
        return (info["bytes_acked"] + info["bytes_received"]
                - old.get("bytes_acked", 0) - old.get("bytes_received", 0))

    conns = [r for r in cur["sockets"] if r["netid"] == "tcp" and r.get("info")]
    conns.sort(key=moved, reverse=True)
    for r in conns[:BUSIEST]:
        info = r["info"]
        socks.add_row(
            r["local"], r["peer"], info["state"],
            f"{moved(r) / dt / 1e6:.2f}" if dt > 0 else "-", str(info["snd_cwnd"]),
            f"{info['rtt']:g}", f"{_bytes(info['recv_q'])}/{_bytes(info['rcvbuf'])}",
            f"{_bytes(info['send_q'])}/{_bytes(info['sndbuf'])}", str(info["retrans"]),
        )
    if not conns:
        socks.add_row("(no TCP connections)", "", "", "", "", "", "", "", "")
    return Group(head, queues, cpus, path, tc, socks)


def run_top(fetch: Callable[[], dict[str, Any]], tap: str, iterations: int = 0,
            interval: float = 1.0) -> None:
    """Redraw every *interval* seconds until q, Ctrl-C or *iterations* frames.

    *fetch* returns a snapshot and raises (the caller's error) when the
    control socket is lost. On a terminal the view takes the screen (rich
    ``Live``) and reads keys raw; otherwise each frame is printed in turn.
    """
    from rich.live import Live

    tty = sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    console = Console()
    prev = None
    cur = fetch()
    shown = 0
    if not tty:
        # Not a terminal (a pipe, a test): print frames one after another,
        # wide enough for the socket table unless COLUMNS says otherwise.
        if "COLUMNS" not in os.environ:
            console.width = 120
        while True:
            time.sleep(interval)
            prev, cur = cur, fetch()
            console.print(render(cur, prev, tap))
            shown += 1
            if iterations and shown >= iterations:
                return
    import termios
    import tty as ttymod

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setcbreak(fd)
        with Live(render(cur, None, tap), console=console, screen=True,
                  auto_refresh=False) as live:
            while True:
                ready, _, _ = select.select([fd], [], [], interval)
                if ready and os.read(fd, 1) in (b"q", b"Q"):
                    return
                if not ready:
                    prev, cur = cur, fetch()
                    live.update(render(cur, prev, tap), refresh=True)
                    shown += 1
                    if iterations and shown >= iterations:
                        return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
