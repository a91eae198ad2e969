"""The control socket: how ``ustack stat|sysctl|ping|neigh`` reach a daemon.

A Unix stream socket speaking JSON lines. The client sends one request
``{"cmd": NAME, ...arguments}``; the daemon answers with zero or more
progress lines (``{"progress": ...}``, e.g. one per ping reply) and ends with
one line that holds either ``{"result": ...}`` or ``{"error": MESSAGE}``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .net.ipv4 import ip_str
from .nic.coalesce import CoalesceError
from .nic.features import FeatureError
from .nic.impair import ImpairError, format_spec, parse_spec
from .nic.qdisc import KINDS as QDISC_KINDS
from .nic.rps import parse_cpumask
from .nic.rss import RssError
from .observe import filter_command, serve_capture, top_snapshot
from .services.nc import nc_tcp, nc_udp
from .stack import Stack
from .sysctl import SysctlError, format_value

MAX_REQUEST = 64 * 1024
log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ControlError(Exception):
    """A request the daemon refuses; its message goes back to the client."""


class ControlServer:
    """Serves requests for one stack."""

    def __init__(self, stack: Stack, path: str) -> None:
        self.stack = stack
        self.path = path
        self.handlers: dict[str, Callable[[dict[str, Any], Send], Awaitable[Any]]] = {
            "stat": self._stat,
            "sysctl": self._sysctl,
            "ping": self._ping,
            "neigh": self._neigh,
            "route": self._route,
            "ss": self._ss,
            "ethtool": self._ethtool,
            "impair": self._impair,
            "rps": self._rps,
            "filter": self._filter,
            "top": self._top,
            "tcp_metrics": self._tcp_metrics,
            "tc": self._tc,
        }

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the control path until cancelled; remove it afterwards."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            listener = trio.SocketListener(sock)
            task_status.started()
            await trio.serve_listeners(self._client, [listener])
        finally:
            sock.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _client(self, stream: trio.abc.Stream) -> None:
        async with stream:
            async def send(obj: dict[str, Any]) -> None:
                await stream.send_all(json.dumps(obj).encode() + b"\n")

            try:
                request, leftover = await self._read_request(stream)
                if request.get("cmd") == "nc":
                    await self._nc(request, send, stream, leftover)
                    return
                if request.get("cmd") == "capture":
                    await serve_capture(self.stack, request, send, stream)
                    return
                handler = self.handlers.get(request.get("cmd", ""))
                if handler is None:
                    raise ControlError(f"unknown command {request.get('cmd')!r}")
                result = await handler(request, send)
                await send({"result": result})
            except (ControlError, SysctlError, ValueError, OSError) as err:
                try:
                    await send({"error": str(err)})
                except trio.BrokenResourceError:
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except Exception as err:
                # A bug in one request must not stop the stack; report it.
                log.exception("control request failed")
                try:
                    await send({"error": f"internal error: {err!r}"})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    @staticmethod
    async def _read_request(stream: trio.abc.ReceiveStream) -> tuple[dict[str, Any], bytes]:
        data = b""
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ControlError("request too large")
        line, _, leftover = data.partition(b"\n")
        try:
            request = json.loads(line or b"{}")
        except json.JSONDecodeError as err:
            raise ControlError(f"malformed request: {err}") from None
        if not isinstance(request, dict):
            raise ControlError("malformed request: not an object")
        return request, leftover

    # ---- commands -----------------------------------------------------------

    async def _stat(self, request: dict[str, Any], send: Send) -> Any:
        return self.stack.snapshot()

    async def _sysctl(self, request: dict[str, Any], send: Send) -> Any:
        sysctl = self.stack.sysctl
        name = request.get("name")
        value = request.get("value")
        if name is None:
            return {k: format_value(v) for k, v in sysctl.items()}
        if value is not None:
            sysctl.set(name, str(value))
        return {name: format_value(sysctl[name])}

    async def _ping(self, request: dict[str, Any], send: Send) -> Any:
        host = str(request.get("host", ""))
        count = int(request.get("count", 3))
        size = int(request.get("size", 56))
        interval = float(request.get("interval", 1.0))
        if not 1 <= count <= 100000:
            raise ControlError("count must be 1..100000")
        if not 0 <= size <= 65507:
            raise ControlError("size must be 0..65507")
        if interval < 0.001:
            raise ControlError("interval must be at least 0.001 s")
        results = []
        async for r in self.stack.ping(host, count=count, size=size, interval=interval):
            results.append(r)
            await send({"progress": r})
        return results

    async def _neigh(self, request: dict[str, Any], send: Send) -> Any:
        return self.stack.neighbours()

    async def _route(self, request: dict[str, Any], send: Send) -> Any:
        return [r.describe() for r in self.stack.routes.routes()]

    async def _ethtool(self, request: dict[str, Any], send: Send) -> Any:
        """ethtool -k / -K / -S / -g on the stack's device."""
        dev = self.stack.dev
        rss = request.get("rss")
        if rss:
            try:
                if "equal" in rss:
                    dev.rss.set_equal(int(rss["equal"]))
                elif "weight" in rss:
                    dev.rss.set_weights([int(w) for w in rss["weight"]])
                if "hkey" in rss:
                    dev.rss.set_key(bytes.fromhex(str(rss["hkey"]).replace(":", "")))
            except (RssError, ValueError, TypeError) as err:
                raise ControlError(str(err)) from None
        coalesce = request.get("coalesce")
        if coalesce is not None:
            if not isinstance(coalesce, dict):
                raise ControlError("malformed coalescing changes")
            try:
                dev.coalesce.set(coalesce)
            except CoalesceError as err:
                raise ControlError(str(err)) from None
        combined = request.get("combined")
        if combined is not None:
            try:
                dev.set_channels(int(combined))
            except (ValueError, OSError) as err:
                raise ControlError(str(err)) from None
        changes = request.get("set")
        if changes:
            if not isinstance(changes, dict):
                raise ControlError("malformed feature changes")
            try:
                dev.features.set({str(k): bool(v) for k, v in changes.items()})
            except FeatureError as err:
                raise ControlError(str(err)) from None
        return {
            "features": [[n, on, fixed] for n, on, fixed in dev.features.listing()],
            "stats": dev.ethtool_stats(),
            "rings": dev.rings(),
            "rss": {"key": dev.rss.key.hex(":"), "reta": dev.rss.reta},
            "channels": {"combined": dev.active_queues, "max_combined": dev.num_queues},
            "coalesce": dev.coalesce.show(),
        }

    async def _rps(self, request: dict[str, Any], send: Send) -> Any:
        """Show or set each RX queue's rps_cpus / rps_flow_cnt (their sysfs files)."""
        rps = self.stack.rps
        changes = request.get("set") or []
        if not isinstance(changes, list):
            raise ControlError("malformed rps changes")
        for change in changes:
            try:
                q, name, value = int(change[0]), str(change[1]), str(change[2])
                if name == "rps_cpus":
                    rps.set_rps_cpus(q, parse_cpumask(value, len(rps.cpus)))
                elif name == "rps_flow_cnt":
                    rps.set_flow_cnt(q, int(value))
                else:
                    raise ControlError(f"unknown queue attribute {name!r} "
                                       "(rps_cpus, rps_flow_cnt)")
            except (ValueError, TypeError, IndexError) as err:
                raise ControlError(str(err)) from None
        return {"cpus": len(rps.cpus), "queues": rps.queue_config(),
                "rps_sock_flow_entries": self.stack.sysctl["net.core.rps_sock_flow_entries"]}

    async def _impair(self, request: dict[str, Any], send: Send) -> Any:
        """Show or replace the wire's impairments (``ustack impair``)."""
        spec = request.get("spec")
        if spec is not None:
            try:
                rx, tx = parse_spec(str(spec))
            except ImpairError as err:
                raise ControlError(str(err)) from None
            self.stack.set_impair(rx, tx)
        stats = self.stack.dev.ethtool_stats()
        return {
            "spec": format_spec(*self.stack.dev.impair_spec),
            "counters": {k: v for k, v in stats.items() if "impair" in k},
        }

    async def _tc(self, request: dict[str, Any], send: Send) -> Any:
        """``tc -s qdisc show|replace root KIND`` and ``ip link set txqueuelen N``."""
        dev = self.stack.dev
        kind = request.get("kind")
        if kind is not None:
            if kind not in QDISC_KINDS:
                raise ControlError(f"unknown qdisc {kind!r} (use {' or '.join(QDISC_KINDS)})")
            dev.set_qdisc(kind)
        txqueuelen = request.get("txqueuelen")
        if txqueuelen is not None:
            if isinstance(txqueuelen, bool) or not isinstance(txqueuelen, int):
                raise ControlError(f"bad txqueuelen {txqueuelen!r}: not an integer")
            dev.set_txqueuelen(txqueuelen)
        return {"dev": dev.name, "mtu": dev.mtu, "txqueuelen": dev.txqueuelen,
                "queues": dev.tc_show()}

    async def _tcp_metrics(self, request: dict[str, Any], send: Send) -> Any:
        """``ip tcp_metrics show|flush [ADDR]``: the Fast Open cookie cache."""
        metrics = self.stack.tcp.metrics
        addr = request.get("addr")
        daddr = None
        if addr:
            try:
                daddr = ipaddress.IPv4Address(str(addr)).packed
            except ValueError:
                raise ControlError(f"bad address {addr!r}") from None
        if request.get("action") == "flush":
            return {"flushed": metrics.flush(daddr)}
        rows = metrics.show(self.stack.now())
        if addr:
            rows = [r for r in rows if r["dst"] == str(addr)]
        return rows

    async def _filter(self, request: dict[str, Any], send: Send) -> Any:
        return filter_command(self.stack, request)

    async def _top(self, request: dict[str, Any], send: Send) -> Any:
        return top_snapshot(self.stack, sockets_table(self.stack))

    async def _ss(self, request: dict[str, Any], send: Send) -> Any:
        return sockets_table(self.stack)

    async def _nc(self, request: dict[str, Any], send: Send, stream: trio.abc.Stream,
                  leftover: bytes) -> None:
        """``ustack nc``: connect or listen on the stack, then relay raw bytes.

        After one ``{"progress": "connected", ...}`` line the control
        connection carries the data: what the client writes goes to the peer;
        what the peer sends comes back. The client's EOF (stdin closed)
        half-closes the TCP connection when ``half_close`` (-N) is set.
        """
        host = str(request.get("host") or "")
        port = int(request.get("port", 0))
        if not 0 < port < 65536:
            raise ControlError(f"bad port {port}")
        if request.get("udp"):
            await nc_udp(self.stack, bool(request.get("listen")), host, port, send, stream,
                         leftover)
        else:
            await nc_tcp(self.stack, bool(request.get("listen")), host, port,
                         bool(request.get("half_close")), send, stream, leftover,
                         fastopen=bool(request.get("fastopen")))


def sockets_table(stack: Stack) -> list[dict[str, Any]]:
    """Every socket like ``ss -tuanmi``: state, queues, addresses, TCP info."""
    rows: list[dict[str, Any]] = []
    tcp = stack.tcp
    for listener in tcp.listeners.values():
        rows.append({
            "netid": "tcp", "state": "LISTEN", "recv_q": listener.accept_queue_len,
            "send_q": listener.backlog, "local": _addr(listener.local_ip, listener.port),
            "peer": "0.0.0.0:*", "syn_queue": listener.syn_queue_len,
            "fastopen_qlen": listener.fastopen_qlen,
            "fastopen_max_qlen": listener.fastopen_max_qlen,
        })
    for conn in tcp.connections():
        info = conn.info()
        rows.append({
            "netid": "tcp", "state": info["state"], "recv_q": info["recv_q"],
            "send_q": info["send_q"], "local": _addr(conn.local_ip, conn.local_port),
            "peer": _addr(conn.remote_ip, conn.remote_port), "orphan": conn.orphan,
            "info": info,
        })
    for socks in stack.udp.ports.values():
        for sk in socks:
            assert sk.local is not None
            rows.append({
                "netid": "udp", "state": "ESTAB" if sk.remote else "UNCONN",
                "recv_q": sk.rmem, "send_q": 0, "local": _addr(*sk.local),
                "peer": _addr(*sk.remote) if sk.remote else "0.0.0.0:*",
                "info": {"rcvbuf": sk.rcvbuf, "sndbuf": sk.sndbuf},
            })
    return rows


def _addr(ip: bytes, port: int) -> str:
    return f"{ip_str(ip)}:{port}"
