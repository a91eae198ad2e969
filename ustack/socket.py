"""The socket API: trio-native sockets with BSD names, over a ustack Stack.

``stack.socket(AF_INET, SOCK_STREAM)`` returns a TCP socket, ``SOCK_DGRAM`` a
UDP socket (``ustack.sockets``). Both subclass ``trio.socket.SocketType`` and
keep trio's socket contract (FACTS.md), so :func:`use_for_trio` can make the
stack trio's socket factory and unmodified trio code (``trio.open_tcp_stream``,
``trio.serve_tcp``) runs over ustack. Errors are ``OSError`` with the kernel's
errno. Blocking means awaiting a wakeup that the protocol core triggers when
data, buffer space or state changes.
"""

from __future__ import annotations

import errno
import ipaddress
import socket as _stdlib
from typing import TYPE_CHECKING, Any

import trio

from .sockets.base import (
    AF_INET,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SOCK_DGRAM,
    SOCK_STREAM,
    TYPE_MASK,
    StackSocket,
    parse_address,
)
from .sockets.tcp import TcpSocket
from .sockets.udp import UdpSocket

if TYPE_CHECKING:
    from .stack import Stack

__all__ = [
    "AF_INET", "SOCK_DGRAM", "SOCK_STREAM", "StackResolver", "StackSocketFactory", "TcpSocket",
    "UdpSocket", "make_socket", "use_for_trio",
]


def make_socket(stack: Stack, family: int = AF_INET, type: int = SOCK_STREAM,
                proto: int = 0) -> StackSocket:
    """``socket(2)`` on *stack*: AF_INET stream (TCP) or datagram (UDP)."""
    if family != AF_INET:
        raise OSError(errno.EAFNOSUPPORT, "address family not supported by ustack (AF_INET only)")
    kind = type & TYPE_MASK
    if kind == SOCK_DGRAM and proto in (0, IPPROTO_UDP):
        return UdpSocket(stack)
    if kind == SOCK_STREAM and proto in (0, IPPROTO_TCP):
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
