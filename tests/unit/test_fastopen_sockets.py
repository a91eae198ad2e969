"""TCP Fast Open through the socket API, between two stacks on the in-memory wire."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
import trio
from stackpair import make_pair, run, running

from ustack.sockets.tcp import MSG_FASTOPEN, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT, TCPI_OPT_SYN_DATA

REQ = b"hello over fast open"


def pair(client_mode: int = 1, server_mode: int = 3):
    wire, a, b = make_pair()
    a.sysctl.set("net.ipv4.tcp_fastopen", client_mode)
    b.sysctl.set("net.ipv4.tcp_fastopen", server_mode)
    return wire, a, b


async def serve_once(b, port: int, qlen: int = 8):
    lsock = b.socket()
    await lsock.bind(("", port))
    lsock.listen(8)
    lsock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, qlen)
    return lsock


async def echo_one(lsock, states: list) -> None:
    conn, _ = await lsock.accept()
    states.append(syn_data_acked(conn))
    data = await conn.recv(4096)
    await conn.send(data.upper())
    conn.close()


def syn_data_acked(sock) -> bool:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO)
    return bool(struct.unpack_from("=8B", info)[5] & TCPI_OPT_SYN_DATA)


def test_fastopen_connect_then_data_in_syn():
    wire, a, b = pair()

    async def main():
        async with running(a, b):
            lsock = await serve_once(b, 8080)
            assert lsock.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN) == 8
            states: list = []
            for _ in range(2):
                async with trio.open_nursery() as n:
                    n.start_soon(echo_one, lsock, states)
                    c = a.socket()
                    c.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
                    assert c.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT) == 1
                    await c.connect(("10.0.0.2", 8080))
                    await c.send(REQ)
                    assert await c.recv(4096) == REQ.upper()
                    last = syn_data_acked(c)
                    c.close()
            # The first connect fetched a cookie; the second carried REQ in its SYN.
            assert last and states == [False, True]
            assert a.stats.tcpext["TCPFastOpenActive"] == 1
            assert b.stats.tcpext["TCPFastOpenPassive"] == 1
            assert b.stats.tcpext["TCPFastOpenCookieReqd"] == 1
            rows = a.tcp.metrics.show(a.now())
            assert rows[0]["dst"] == "10.0.0.2" and len(rows[0]["fo_cookie"]) == 16
            lsock.close()

    run(main)


def test_msg_fastopen_sendto():
    wire, a, b = pair()

    async def main():
        async with running(a, b):
            lsock = await serve_once(b, 8081)
            for _ in range(2):
                async with trio.open_nursery() as n:
                    n.start_soon(echo_one, lsock, [])
                    c = a.socket()
                    assert await c.sendto(REQ, MSG_FASTOPEN, ("10.0.0.2", 8081)) == len(REQ)
                    with pytest.raises(OSError) as err:
                        await c.sendto(REQ, MSG_FASTOPEN, ("10.0.0.2", 8081))
                    assert err.value.errno == errno.EISCONN
                    assert await c.recv(4096) == REQ.upper()
                    c.close()
            assert a.stats.tcpext["TCPFastOpenActive"] == 1
            lsock.close()

    run(main)


def test_client_disabled_refuses_fastopen():
    wire, a, b = pair(client_mode=0)

    async def main():
        async with running(a, b):
            c = a.socket()
            with pytest.raises(OSError) as err:
                c.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            assert err.value.errno == errno.EOPNOTSUPP
            with pytest.raises(OSError) as err:
                await c.sendto(REQ, MSG_FASTOPEN, ("10.0.0.2", 9))
            assert err.value.errno == errno.EOPNOTSUPP
            with pytest.raises(OSError) as err:
                c.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, -1)
            assert err.value.errno == errno.EINVAL
            c.close()

    run(main)


def test_bad_fastopen_connect_value_is_einval():
    wire, a, b = pair()

    async def main():
        s = a.socket()
        with pytest.raises(OSError) as err:
            s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 2)
        assert err.value.errno == errno.EINVAL
        s.close()

    run(main)
