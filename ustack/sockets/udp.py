"""UDP sockets (SOCK_DGRAM) over ``ustack.transport.udp``."""

from __future__ import annotations

import errno
import operator
import socket as _stdlib
from typing import TYPE_CHECKING, Any

import trio

from ..transport.udp import ANY, UdpSock
from .base import (
    IPPROTO_UDP,
    MSG_DONTWAIT,
    MSG_PEEK,
    SOCK_DGRAM,
    SOCK_MIN_RCVBUF,
    SOCK_MIN_SNDBUF,
    SOL_SOCKET,
    StackSocket,
    format_address,
    parse_address,
    sock_buf_size,
)

if TYPE_CHECKING:
    from ..stack import Stack


class UdpSocket(StackSocket):
    """A UDP socket (SOCK_DGRAM)."""

    _type = SOCK_DGRAM
    _proto = IPPROTO_UDP

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack)
        self.sk = UdpSock(stack.sysctl)
        self.sk.wakeup = self._wake

    async def bind(self, address: Any) -> None:
        self._check_open()
        addr, port = parse_address(address)
        self.stack.udp.bind(self.sk, addr, port)
        await trio.lowlevel.checkpoint()

    async def connect(self, address: Any) -> None:
        """Fix the peer (``ip4_datagram_connect``): send() goes there, recv() filters."""
        self._check_open()
        addr, port = parse_address(address, allow_any=False)
        if self.sk.local is None:
            self.stack.udp.bind(self.sk, ANY, 0)
        self.sk.remote = (addr, port)
        await trio.lowlevel.checkpoint()

    def _flow(self) -> tuple[bytes, bytes, int, int] | None:
        local, remote = self.sk.local, self.sk.remote
        if local is None or remote is None or local[0] == ANY:
            return None
        return (remote[0], local[0], remote[1], local[1])

    def getsockname(self) -> tuple[str, int]:
        self._check_open()
        return format_address(self.sk.local)

    def getpeername(self) -> tuple[str, int]:
        self._check_open()
        if self.sk.remote is None:
            raise OSError(errno.ENOTCONN, "socket is not connected")
        return format_address(self.sk.remote)

    async def sendto(self, data: Any, *args: Any) -> int:
        """``sendto(data[, flags], address)``."""
        self._check_open()
        if len(args) == 1:
            address = args[0]
        elif len(args) == 2:
            address = args[1]
        else:
            raise TypeError("sendto(data[, flags], address)")
        await trio.lowlevel.checkpoint()
        self._raise_pending()
        return self.stack.udp.sendto(self.sk, memoryview(data), parse_address(address, False))

    async def send(self, data: Any, flags: int = 0) -> int:
        self._check_open()
        if self.sk.remote is None:
            raise OSError(errno.EDESTADDRREQ, "destination address required")
        await trio.lowlevel.checkpoint()
        self._raise_pending()
        return self.stack.udp.sendto(self.sk, memoryview(data), self.sk.remote)

    def _raise_pending(self) -> None:
        err = self.sk.take_error()
        if err is not None:
            raise err

    async def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        """Receive one datagram; excess beyond *bufsize* is discarded, as in the kernel."""
        bufsize = operator.index(bufsize)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        self._check_open()
        if self._recv_busy:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._recv_busy = True
        try:
            self._rps_record_flow()
            polled = False
            while True:
                self._raise_pending()
                if self.sk.rx_queue:
                    if flags & MSG_PEEK:
                        data, addr = self.sk.rx_queue[0]
                    else:
                        data, addr = self.sk.dequeue()  # type: ignore[misc]
                    await trio.lowlevel.checkpoint()
                    return data[:bufsize], format_address(addr)
                if flags & MSG_DONTWAIT:
                    raise BlockingIOError(errno.EAGAIN, "resource temporarily unavailable")
                if not polled:
                    # __skb_recv_udp: busy-poll the queue once before sleeping.
                    polled = True
                    await self._busy_poll(lambda: bool(self.sk.rx_queue or self.sk.error))
                    continue
                await self._wait()
        finally:
            self._recv_busy = False

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return (await self.recvfrom(bufsize, flags))[0]

    def is_readable(self) -> bool:
        return bool(self.sk.rx_queue) or self.sk.error is not None

    async def wait_writable(self) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()

    def listen(self, backlog: int = 128) -> None:
        raise OSError(errno.EOPNOTSUPP, "operation not supported on a datagram socket")

    async def accept(self) -> Any:
        raise OSError(errno.EOPNOTSUPP, "operation not supported on a datagram socket")

    def shutdown(self, flag: int) -> None:
        self._check_open()
        if self.sk.remote is None:
            raise OSError(errno.ENOTCONN, "socket is not connected")
        if flag in (_stdlib.SHUT_WR, _stdlib.SHUT_RDWR):
            self._shut_wr = True

    def close(self) -> None:
        if self._fd < 0:
            return
        self.stack.udp.unhash(self.sk)
        self._mark_closed()

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        v = self._int_value(value)
        if self._common_setsockopt(level, optname, v):
            return
        sysctl = self.stack.sysctl
        if level == SOL_SOCKET and optname == _stdlib.SO_BROADCAST:
            self.sk.broadcast = bool(v)
        elif level == SOL_SOCKET and optname == _stdlib.SO_REUSEADDR:
            self.sk.reuseaddr = bool(v)
        elif level == SOL_SOCKET and optname == _stdlib.SO_RCVBUF:
            self.sk.rcvbuf = sock_buf_size(v, sysctl["net.core.rmem_max"], SOCK_MIN_RCVBUF)
        elif level == SOL_SOCKET and optname == _stdlib.SO_SNDBUF:
            self.sk.sndbuf = sock_buf_size(v, sysctl["net.core.wmem_max"], SOCK_MIN_SNDBUF)
        else:
            raise OSError(errno.ENOPROTOOPT, "protocol not available")

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int:
        self._check_open()
        common = self._common_getsockopt(level, optname)
        if common is not None:
            return common
        if level == SOL_SOCKET:
            values = {
                _stdlib.SO_BROADCAST: int(self.sk.broadcast),
                _stdlib.SO_REUSEADDR: int(self.sk.reuseaddr),
                _stdlib.SO_RCVBUF: self.sk.rcvbuf,
                _stdlib.SO_SNDBUF: self.sk.sndbuf,
                _stdlib.SO_ACCEPTCONN: 0,
            }
            if optname == _stdlib.SO_ERROR:
                err = self.sk.take_error()
                return err.errno if err is not None and err.errno else 0
            if optname in values:
                return values[optname]
        raise OSError(errno.ENOPROTOOPT, "protocol not available")
