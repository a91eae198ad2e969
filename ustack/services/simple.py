"""echo (RFC 862), discard (RFC 863) and chargen (RFC 864), TCP and UDP."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

# RFC 864: lines of 72 printable characters, each starting one further along.
_PRINTABLE = bytes(range(32, 127))
# TCP_FASTOPEN queue length of the daemon's TCP services (nginx-style fastopen=256).
TFO_QLEN = 256


def chargen_line(n: int) -> bytes:
    start = n % len(_PRINTABLE)
    rotated = _PRINTABLE[start:] + _PRINTABLE[:start]
    return rotated[:72] + b"\r\n"


async def _tcp_server(stack: Any, port: int, handler: Callable[[Any], Awaitable[None]],
                      task_status: Any) -> None:
    """Listen on *port* over TCP and run *handler* per connection until cancelled."""
    listener = stack.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind(("", port))
    listener.listen(128)
    # Fast Open queue as a server would configure it; the server side works
    # once net.ipv4.tcp_fastopen has bit 0x2 (the kernel's default is client only).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, TFO_QLEN)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_guarded, conn, handler)
    finally:
        listener.close()


async def _guarded(conn: Any, handler: Callable[[Any], Awaitable[None]]) -> None:
    """Run one connection's handler; whatever happens ends only that connection."""
    try:
        await handler(conn)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer reset or went away
    except Exception:
        log.exception("service connection failed; closed it")
    finally:
        conn.close()


async def _udp_server(stack: Any, port: int, reply: Callable[[bytes], bytes | None]) -> None:
    sock = stack.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("", port))
    try:
        while True:
            data, addr = await sock.recvfrom(65535)
            answer = reply(data)
            if answer is not None:
                try:
                    await sock.sendto(answer, addr)
                except OSError:
                    pass
    finally:
        sock.close()


async def _echo_tcp(conn: Any) -> None:
    while True:
        data = await conn.recv(65536)
        if not data:
            # The client half-closed: finish our side too (RFC 862 ends on close).
            conn.shutdown(socket.SHUT_WR)
            return
        await conn.sendall(data)


async def _discard_tcp(conn: Any) -> None:
    while await conn.recv(1 << 18):
        pass


async def _chargen_tcp(conn: Any) -> None:
    block = b"".join(chargen_line(i) for i in range(len(_PRINTABLE)))
    while True:
        await conn.sendall(block)


async def _serve_both(stack: Any, port: int, tcp_handler: Callable[[Any], Awaitable[None]],
                      udp_reply: Callable[[bytes], bytes | None], task_status: Any) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_tcp_server, stack, port, tcp_handler)
        nursery.start_soon(_udp_server, stack, port, udp_reply)
        task_status.started()


async def serve_echo(stack: Any, port: int, arg: str | None = None,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await _serve_both(stack, port, _echo_tcp, lambda d: d, task_status)


async def serve_discard(stack: Any, port: int, arg: str | None = None,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await _serve_both(stack, port, _discard_tcp, lambda d: None, task_status)


async def serve_chargen(stack: Any, port: int, arg: str | None = None,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    # RFC 864 UDP: answer each datagram with one of 0..512 characters.
    await _serve_both(stack, port, _chargen_tcp, lambda d: (chargen_line(len(d)) * 7)[:512],
                      task_status)
