"""Loss x reordering x buffer size on the impaired in-memory wire, under MockClock.

Two whole stacks (NIC, IP, TCP, sockets) exchange data both ways at once
over ``Wire(impair=...)`` with the seeded spec of ``ustack up --impair``;
every byte must arrive exactly, with SACK and (a smaller matrix) without.
Times are virtual, so a 20 % loss run with backed-off timeouts costs
seconds of CPU, not minutes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket

import pytest
import trio
from stackpair import A_MAC, B_MAC, run, running

from ustack.link.wire import Wire
from ustack.stack import Stack

SIZE = 400_000
_port = iter(range(20000, 30000))


def blob(n: int, seed: int) -> bytes:
    h = hashlib.sha256(str(seed).encode()).digest()
    return (h * (n // 32 + 1))[:n]


def stacks(spec: str, sack: bool) -> tuple[Wire, Stack, Stack]:
    wire = Wire(impair=spec)
    a = Stack([wire.a], ipaddress.IPv4Interface("10.0.0.1/24"), name="a", mac=A_MAC)
    b = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), name="b", mac=B_MAC)
    if not sack:
        for s in (a, b):
            s.sysctl.set("net.ipv4.tcp_sack", 0)
    return wire, a, b


async def exchange(a: Stack, b: Stack, bufsize: int) -> None:
    """Both directions at once through the socket API; assert both arrive exact."""
    port = next(_port)
    up, down = blob(SIZE, 1), blob(SIZE + 777, 2)
    lsock = b.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    await lsock.bind(("", port))
    lsock.listen(1)
    client = a.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    async with trio.open_nursery() as n:
        n.start_soon(client.connect, ("10.0.0.2", port))
        server, _ = await lsock.accept()
    lsock.close()
    streams = trio.SocketStream(client), trio.SocketStream(server)
    got = {0: bytearray(), 1: bytearray()}

    async def send(i: int, data: bytes) -> None:
        await streams[i].send_all(data)
        await streams[i].send_eof()

    async def recv(i: int) -> None:
        async for chunk in streams[i]:
            got[i] += chunk

    with trio.fail_after(36000):
        async with trio.open_nursery() as n:
            n.start_soon(send, 0, up)
            n.start_soon(send, 1, down)
            n.start_soon(recv, 0)
            n.start_soon(recv, 1)
    assert bytes(got[1]) == up and bytes(got[0]) == down
    for s in streams:
        await s.aclose()


CASES = [(loss, reorder, buf, True)
         for loss in (0, 1, 5, 10, 20) for reorder in (0, 5) for buf in (16384, 1 << 20)]
CASES += [(loss, 5, 1 << 20, False) for loss in (1, 5, 20)]


@pytest.mark.parametrize("loss,reorder,buf,sack", CASES)
def test_exact_under_loss_and_reordering(loss, reorder, buf, sack):
    spec = f"loss={loss}%,reorder={reorder}%,delay=2ms,seed={loss * 100 + reorder}"
    wire, a, b = stacks(spec, sack)

    async def main():
        async with running(a, b):
            await exchange(a, b, buf)

    run(main)
    ext_a, ext_b = a.stats.tcpext, b.stats.tcpext
    rtx = a.stats.tcp["RetransSegs"] + b.stats.tcp["RetransSegs"]
    dropped = sum(w.impair.counters["impair_dropped"] for w in (wire.a, wire.b)
                  if w.impair is not None)
    if loss == 0 and reorder == 0:
        assert rtx == 0 and dropped == 0
    if loss >= 5:
        assert dropped > 0 and rtx > 0
        # Most losses are repaired by fast recovery of the negotiated kind.
        fast = ("TCPSackRecovery" if sack else "TCPRenoRecovery")
        assert ext_a[fast] + ext_b[fast] > 0
    other = "TCPRenoRecovery" if sack else "TCPSackRecovery"
    assert ext_a[other] + ext_b[other] == 0
    assert ext_a["TCPSACKReneging"] + ext_b["TCPSACKReneging"] == 0
    # SACK blocks on data segments never push a segment past the MTU.
    assert a.stats.ip["FragFails"] + b.stats.ip["FragFails"] == 0
