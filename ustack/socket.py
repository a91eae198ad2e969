"""The socket API: trio-native sockets with BSD names, over a ustack Stack.

``stack.socket(AF_INET, SOCK_STREAM)`` returns a :class:`TcpSocket`,
``SOCK_DGRAM`` a :class:`UdpSocket`. Both subclass ``trio.socket.SocketType``
and keep trio's socket contract (FACTS.md), so :func:`use_for_trio` can make
the stack trio's socket factory and unmodified trio code
(``trio.open_tcp_stream``, ``trio.serve_tcp``) runs over ustack. Errors are
``OSError`` with the kernel's errno. Blocking means awaiting a wakeup that the
protocol core triggers when data, buffer space or state changes.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket as _stdlib
from typing import TYPE_CHECKING, Any

import trio

from .transport.udp import ANY, UdpSock

if TYPE_CHECKING:
    from .stack import Stack

AF_INET = _stdlib.AF_INET
SOCK_STREAM = _stdlib.SOCK_STREAM
SOCK_DGRAM = _stdlib.SOCK_DGRAM
SOL_SOCKET = _stdlib.SOL_SOCKET
IPPROTO_TCP = _stdlib.IPPROTO_TCP
IPPROTO_UDP = _stdlib.IPPROTO_UDP
MSG_DONTWAIT = _stdlib.MSG_DONTWAIT
MSG_PEEK = _stdlib.MSG_PEEK
# SOCK_NONBLOCK and SOCK_CLOEXEC may be or'ed into a type (socket(2)).
_TYPE_MASK = 0xF
SOCK_MIN_RCVBUF = 2048 + 256
SOCK_MIN_SNDBUF = 2 * (2048 + 256)

# Pseudo file descriptors: non-negative while open, as trio expects, and far
# above real descriptors so nobody mistakes one for the other.
_fds = itertools.count(1 << 20)


def parse_address(address: Any, allow_any: bool = True) -> tuple[bytes, int]:
    """An AF_INET ``(host, port)`` to (4 address bytes, port); OSError if invalid."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise OSError(errno.EINVAL, "AF_INET address must be a (host, port) tuple")
    host, port = address
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OSError(errno.EINVAL, f"bad port {port!r}")
    if host in ("", None) and allow_any:
        return ANY, port
    if host == "<broadcast>":
        return b"\xff\xff\xff\xff", port
    try:
        return ipaddress.IPv4Address(host).packed, port
    except (ValueError, ipaddress.AddressValueError):
        # No resolver inside the stack: names are resolved before they reach it.
        raise _stdlib.gaierror(_stdlib.EAI_NONAME, f"cannot resolve {host!r}") from None


def format_address(addr: tuple[bytes, int] | None) -> tuple[str, int]:
    if addr is None:
        return ("0.0.0.0", 0)
    return (str(ipaddress.IPv4Address(addr[0])), addr[1])


def sock_buf_size(requested: int, maximum: int, minimum: int) -> int:
    """SO_RCVBUF/SO_SNDBUF as ``sock_setsockopt`` sets them: doubled, clamped."""
    return max(min(requested, maximum) * 2, minimum)


class StackSocket(trio.socket.SocketType):
    """What TCP and UDP sockets share: identity, closing, waiting, options."""

    _type = SOCK_STREAM
    _proto = IPPROTO_TCP

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.stack = stack
        self._fd = next(_fds)
        self._lot = trio.lowlevel.ParkingLot()
        self._recv_busy = False
        self._send_busy = False
        self._shut_wr = False

    # ---- identity -----------------------------------------------------------

    @property
    def family(self) -> _stdlib.AddressFamily:
        return _stdlib.AF_INET

    @property
    def type(self) -> _stdlib.SocketKind:
        return _stdlib.SocketKind(self._type)

    @property
    def proto(self) -> int:
        return self._proto

    def fileno(self) -> int:
        return self._fd

    @property
    def did_shutdown_SHUT_WR(self) -> bool:  # noqa: N802 (trio's name)
        return self._shut_wr

    def __repr__(self) -> str:
        kind = "tcp" if self._type == SOCK_STREAM else "udp"
        return f"<ustack {kind} socket fd={self._fd}>"

    def __enter__(self) -> StackSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dup(self) -> StackSocket:
        raise OSError(errno.EOPNOTSUPP, "ustack sockets cannot be duplicated")

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "ustack sockets have no kernel descriptor")

    def get_inheritable(self) -> bool:
        return False

    def set_inheritable(self, inheritable: bool) -> None:
        if inheritable:
            raise OSError(errno.EOPNOTSUPP, "ustack sockets cannot be inherited")

    # ---- waiting ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise OSError(errno.EBADF, "bad file descriptor (socket is closed)")

    def _wake(self) -> None:
        self._lot.unpark_all()

    async def _wait(self) -> None:
        """Sleep until the protocol core reports a change, then re-check."""
        await self._lot.park()
        if self._fd < 0:
            raise trio.ClosedResourceError("another task closed this socket")

    def _mark_closed(self) -> None:
        self._fd = -1
        self._lot.unpark_all()

    # ---- options ------------------------------------------------------------

    def _common_getsockopt(self, level: int, optname: int) -> int | None:
        if level == SOL_SOCKET:
            if optname == _stdlib.SO_TYPE:
                return self._type
            if optname == _stdlib.SO_PROTOCOL:
                return self._proto
            if optname == _stdlib.SO_DOMAIN:
                return AF_INET
        return None

    @staticmethod
    def _int_value(value: Any) -> int:
        if isinstance(value, bool | int):
            return int(value)
        if isinstance(value, bytes | bytearray | memoryview) and len(value) >= 4:
            return int.from_bytes(bytes(value[:4]), "little", signed=True)
        raise OSError(errno.EINVAL, "invalid option value")


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
        self._check_open()
        if self._recv_busy:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._recv_busy = True
        try:
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


def make_socket(stack: Stack, family: int = AF_INET, type: int = SOCK_STREAM,
                proto: int = 0) -> StackSocket:
    """``socket(2)`` on *stack*: AF_INET stream (TCP) or datagram (UDP)."""
    if family != AF_INET:
        raise OSError(errno.EAFNOSUPPORT, "address family not supported by ustack (AF_INET only)")
    kind = type & _TYPE_MASK
    if kind == SOCK_DGRAM and proto in (0, IPPROTO_UDP):
        return UdpSocket(stack)
    if kind == SOCK_STREAM and proto in (0, IPPROTO_TCP):
        from .tcp_socket import TcpSocket

        return TcpSocket(stack)
    raise OSError(errno.EPROTONOSUPPORT, "protocol not supported")


class StackSocketFactory(trio.abc.SocketFactory):
    """trio's socket factory hook: every ``trio.socket.socket()`` comes from ustack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def socket(self, family: int | None = None, type: int | None = None,
               proto: int | None = None) -> trio.socket.SocketType:
        return make_socket(
            self.stack,
            AF_INET if family is None else family,
            SOCK_STREAM if type is None else type,
            proto or 0,
        )


class StackResolver(trio.abc.HostnameResolver):
    """Name resolution for code running over ustack: numeric addresses only.

    The stack has no DNS client; refusing names here keeps a trio program
    from silently asking the host's resolver (and the host's network).
    """

    async def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:
        await trio.lowlevel.checkpoint()
        if isinstance(host, bytes):
            host = host.decode()
        if host in (None, ""):
            host = "0.0.0.0" if flags & _stdlib.AI_PASSIVE else "127.0.0.1"
        if host == "localhost":
            raise _stdlib.gaierror(_stdlib.EAI_NONAME, "ustack has no loopback interface")
        addr, _ = parse_address((host, 0), allow_any=False)
        try:
            port_num = int(port) if port is not None else 0
        except ValueError:
            port_num = _stdlib.getservbyname(port)
        types = [type] if type else [SOCK_STREAM, SOCK_DGRAM]
        return [
            (AF_INET, _stdlib.SocketKind(t), IPPROTO_TCP if t == SOCK_STREAM else IPPROTO_UDP,
             "", (str(ipaddress.IPv4Address(addr)), port_num))
            for t in types
        ]

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        await trio.lowlevel.checkpoint()
        return (str(sockaddr[0]), str(sockaddr[1]))


def use_for_trio(stack: Stack) -> None:
    """Make *stack* the socket factory and resolver of the current ``trio.run``."""
    trio.socket.set_custom_socket_factory(StackSocketFactory(stack))
    trio.socket.set_custom_hostname_resolver(StackResolver())
