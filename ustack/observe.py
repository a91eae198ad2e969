"""The daemon's side of ``ustack capture``, ``ustack filter`` and ``ustack top``.

Capture streams over the control connection: after a ``started`` progress
line, every batch of captured packets is one progress line
(``{"progress": {"packets": [[time, point, base64 bytes, original length],
...], "dropped": N}}``), until the capture has its count or the client
half-closes its side (how the CLI stops on Ctrl-C); the last line is the
result with the totals. The taps come off when the request ends, however it
ends, so a vanished client leaves no cost behind.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .capfilter import FilterError
from .capture import DEFAULT_BUFFER, DEFAULT_SNAPLEN, Capture, CaptureError
from .net.netfilter import NetfilterError, Rule
from .stack import Stack

Send = Callable[[dict[str, Any]], Awaitable[None]]
# Packets per progress line at most, so one line stays a modest size.
_BATCH = 256


async def serve_capture(stack: Stack, request: dict[str, Any], send: Send,
                        stream: trio.abc.ReceiveStream) -> None:
    """Run one capture for a client; raises ValueError for a bad request."""
    try:
        cap = Capture(
            [str(p) for p in request.get("points") or ("rx", "tx")],
            str(request.get("filter") or ""),
            snaplen=int(request.get("snaplen", DEFAULT_SNAPLEN)),
            buffer=int(request.get("buffer", DEFAULT_BUFFER)),
            count=int(request.get("count", 0)),
        )
    except (CaptureError, FilterError, TypeError) as err:
        raise ValueError(str(err)) from None
    wake = trio.Event()

    def on_packet() -> None:
        wake.set()

    cap.on_packet = on_packet
    stopped = False

    async def watch_client() -> None:
        # The client half-closes (or goes away) to stop the capture.
        nonlocal stopped
        try:
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        stopped = True
        wake.set()

    await send({"progress": {"started": True, "linktype": cap.linktype,
                             "snaplen": cap.snaplen, "points": cap.points}})
    for point in cap.points:
        stack.add_tap(point, cap.tap)
    gone = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client)
            try:
                while True:
                    await wake.wait()
                    wake = trio.Event()
                    items = cap.drain()
                    for i in range(0, len(items), _BATCH):
                        await send({"progress": {"dropped": cap.dropped, "packets": [
                            [ts, point, base64.b64encode(data).decode(), orig]
                            for ts, point, data, orig in items[i : i + _BATCH]
                        ]}})
                    if cap.done or stopped:
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True  # the client went away without stopping first
            nursery.cancel_scope.cancel()
    finally:
        for point in cap.points:
            stack.remove_tap(point, cap.tap)
    if not gone:
        await send({"result": {"captured": cap.captured, "dropped": cap.dropped,
                               "seen": cap.seen}})


def filter_command(stack: Stack, request: dict[str, Any]) -> Any:
    """``ustack filter``: add, del, flush or list rules; returns the listing."""
    nf = stack.netfilter
    action = request.get("action", "list")
    try:
        if action == "add":
            rule = request.get("rule")
            if not isinstance(rule, dict):
                raise ValueError("malformed rule")
            nf.add_rule(str(request.get("chain", "")), Rule.parse(rule))
        elif action == "del":
            nf.delete_rule(str(request.get("chain", "")), int(request.get("number", 0)))
        elif action == "flush":
            chain = request.get("chain")
            nf.flush(None if chain is None else str(chain))
        elif action != "list":
            raise ValueError(f"unknown filter action {action!r}")
    except NetfilterError as err:
        raise ValueError(str(err)) from None
    return nf.listing()


def top_snapshot(stack: Stack, sockets: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything one ``ustack top`` frame shows, taken at one instant."""
    sysctl = stack.sysctl
    return {
        "time": stack.now(),
        "stat": stack.snapshot(),
        "rings": stack.dev.rings(),
        "tc": stack.dev.tc_show(),
        "sockets": sockets,
        "budget": {"netdev_budget": sysctl["net.core.netdev_budget"],
                   "dev_weight": sysctl["net.core.dev_weight"]},
    }
