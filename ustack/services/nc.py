"""The daemon side of ``ustack nc``: netcat over the stack, relayed to a client.

The client's stdin arrives on the control-socket stream in frames (4-byte
big-endian length, then data; a zero-length frame means stdin ended), so the
daemon can tell "stdin closed" from "client gone". Data is sent through a
socket of the stack (TCP or UDP, connecting or listening); what the peer
sends is written back to the stream unframed. Closing the stream ends the
session: the peer closed (TCP) or the session was torn down.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..sockets.tcp import TCP_FASTOPEN_CONNECT

Send = Callable[[dict[str, Any]], Awaitable[None]]
FRAME = struct.Struct("!I")
MAX_FRAME = 65536


class FrameReader:
    """Reads the client's frames; None once the client has gone."""

    def __init__(self, stream: trio.abc.ReceiveStream, leftover: bytes) -> None:
        self.stream = stream
        self.buf = bytearray(leftover)

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buf += data
        return True

    async def read(self) -> bytes | None:
        if not await self._fill(FRAME.size):
            return None
        (length,) = FRAME.unpack_from(self.buf)
        if length > MAX_FRAME:
            return None
        if not await self._fill(FRAME.size + length):
            return None
        data = bytes(self.buf[FRAME.size : FRAME.size + length])
        del self.buf[: FRAME.size + length]
        return data


async def _relay(stream: trio.abc.Stream, leftover: bytes,
                 to_peer: Callable[[bytes], Awaitable[Any]], stdin_eof: Callable[[], None],
                 from_peer: Callable[[], Awaitable[bytes]]) -> None:
    """Client frames go *to_peer*; what *from_peer* returns goes back, until it
    returns b"" (the peer closed) or the client goes away."""
    frames = FrameReader(stream, leftover)
    async with trio.open_nursery() as nursery:

        async def client_to_peer() -> None:
            while True:
                data = await frames.read()
                if data is None:
                    nursery.cancel_scope.cancel()  # the client went away
                    return
                if data:
                    await to_peer(data)
                else:
                    stdin_eof()

        nursery.start_soon(client_to_peer)
        while data := await from_peer():
            await stream.send_all(data)
        nursery.cancel_scope.cancel()


async def _open_tcp(stack: Any, listen: bool, host: str, port: int, send: Send,
                    fastopen: bool) -> Any:
    if not listen:
        conn = stack.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if fastopen:
                # TCP_FASTOPEN_CONNECT: with a cached cookie, stdin's first data rides the SYN.
                conn.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            await conn.connect((host, port))
        except BaseException:
            conn.close()
            raise
        return conn
    listener = stack.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await listener.bind((host, port))
        listener.listen(1)
        await send({"progress": "listening", "local": list(listener.getsockname())})
        conn, _ = await listener.accept()
        return conn
    finally:
        listener.close()


async def nc_tcp(stack: Any, listen: bool, host: str, port: int, half_close: bool,
                 send: Send, stream: trio.abc.Stream, leftover: bytes,
                 fastopen: bool = False) -> None:
    """Connect (or accept one connection) and relay until the peer or client closes.

    With *fastopen* the connect uses TCP Fast Open (TCP_FASTOPEN_CONNECT).
    """
    conn = await _open_tcp(stack, listen, host, port, send, fastopen)
    try:
        try:
            peer = conn.getpeername()
        except OSError:
            peer = (host, port)  # a deferred Fast Open connect: no SYN sent yet
        await send({"progress": "connected", "local": list(conn.getsockname()),
                    "peer": list(peer)})

        def stdin_eof() -> None:
            if half_close:
                conn.shutdown(socket.SHUT_WR)  # -N: stdin EOF becomes our FIN

        async def from_peer() -> bytes:
            return await conn.recv(65536)

        # The peer's EOF ends the session: netcat exits, whatever stdin still holds.
        await _relay(stream, leftover, conn.sendall, stdin_eof, from_peer)
    finally:
        conn.close()


async def nc_udp(stack: Any, listen: bool, host: str, port: int, send: Send,
                 stream: trio.abc.Stream, leftover: bytes) -> None:
    """Each frame from the client is one datagram; datagrams come back as bytes."""
    sock = stack.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        first = b""
        if listen:
            await sock.bind((host, port))
            await send({"progress": "listening", "local": list(sock.getsockname())})
            first, peer = await sock.recvfrom(65535)
            await sock.connect(peer)  # like nc -lu: the first sender is the peer
        else:
            await sock.connect((host, port))
        await send({"progress": "connected", "local": list(sock.getsockname()),
                    "peer": list(sock.getpeername())})
        if first:
            await stream.send_all(first)

        async def from_peer() -> bytes:
            while True:
                try:
                    data = await sock.recv(65535)
                except ConnectionRefusedError:
                    continue  # like nc -u: an ICMP error does not end the session
                if data:
                    return data  # an empty datagram is no EOF

        await _relay(stream, leftover, sock.send, lambda: None, from_peer)
    finally:
        sock.close()
