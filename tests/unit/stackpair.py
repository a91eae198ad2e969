"""Two stacks joined by an in-memory wire, for tests under trio's MockClock."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from ustack.link.wire import Wire
from ustack.stack import Stack

A_MAC = bytes.fromhex("02000000000a")
B_MAC = bytes.fromhex("02000000000b")


def make_pair(mtu: int = 1500, **kwargs) -> tuple[Wire, Stack, Stack]:
    wire = Wire()
    a = Stack([wire.a], ipaddress.IPv4Interface("10.0.0.1/24"), name="a", mac=A_MAC, mtu=mtu,
              **kwargs)
    b = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), name="b", mac=B_MAC, mtu=mtu,
              **kwargs)
    return wire, a, b


def run(fn, mock: bool = True) -> None:
    """trio.run *fn*, on a MockClock that jumps whenever every task waits."""
    if mock:
        trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))
    else:
        trio.run(fn)


@asynccontextmanager
async def running(*stacks: Stack) -> AsyncIterator[None]:
    """Run *stacks* for the duration of the block, then stop them."""
    async with trio.open_nursery() as nursery:
        for s in stacks:
            await nursery.start(s.run)
        yield
        nursery.cancel_scope.cancel()


async def pair_sockets(a: Stack, b: Stack, port: int, rcvbuf: int | None = None):
    """A connected TCP pair: the client on *a*, the accepted socket on *b*."""
    lsock = b.socket()
    await lsock.bind(("", port))
    if rcvbuf is not None:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    lsock.listen(1)
    c = a.socket()
    async with trio.open_nursery() as n:
        n.start_soon(c.connect, ("10.0.0.2", port))
        s, _ = await lsock.accept()
    lsock.close()
    return c, s
