"""Send and receive buffers through the socket API (two stacks, in-memory wire)."""

from __future__ import annotations

import errno
import hashlib
import os
import socket

import pytest
import trio
from stackpair import make_pair, pair_sockets, run, running

from ustack.sockets.base import MSG_DONTWAIT
from ustack.sockets.tcp import TCP_NOTSENT_LOWAT


def test_send_blocks_at_wmem_limit_and_nonblocking_raises_eagain():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            c, s = await pair_sockets(a, b, 7000, rcvbuf=4096)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
            chunk = os.urandom(4096)
            sent = bytearray()
            with pytest.raises(BlockingIOError) as err:
                while True:
                    sent += chunk[: await c.send(chunk, MSG_DONTWAIT)]
            assert err.value.errno == errno.EAGAIN
            assert c.conn.wmem_queued >= c.conn.sndbuf - 4096
            assert sent  # some went in before the buffer filled
            # A blocking send waits until the reader frees space, then completes.
            more = os.urandom(100_000)
            got = bytearray()

            async def reader():
                await trio.sleep(1)  # the writer is blocked meanwhile
                while len(got) < len(sent) + len(more):
                    got.extend(await s.recv(65536))

            async with trio.open_nursery() as n:
                n.start_soon(reader)
                t0 = trio.current_time()
                await c.sendall(more)
                assert trio.current_time() - t0 >= 1
            assert hashlib.sha256(got).digest() == hashlib.sha256(sent + more).digest()
            c.close()
            s.close()

    run(main)


def test_notsent_lowat_option():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            c, s = await pair_sockets(a, b, 7001, rcvbuf=4096)
            assert c.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == 0
            c.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 16384)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 200_000)
            assert c.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == 16384
            with pytest.raises(BlockingIOError):
                while True:
                    await c.send(b"n" * 4096, MSG_DONTWAIT)
            assert c.conn.notsent_bytes() >= 16384
            assert c.conn.wmem_queued < c.conn.sndbuf
            with pytest.raises(OSError) as err:
                c.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, -1)
            assert err.value.errno == errno.EINVAL
            c.close()
            s.close()

    run(main)


def test_so_rcvbuf_is_doubled_and_locks_autotuning():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            c, s = await pair_sockets(a, b, 7002, rcvbuf=65536)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 131072
            assert s.conn.rcvbuf_locked and s.conn.rcv_wscale == 1
            data = os.urandom(2_000_000)
            got = bytearray()

            async def reader():
                while len(got) < len(data):
                    got.extend(await s.recv(65536))

            async with trio.open_nursery() as n:
                n.start_soon(reader)
                await c.sendall(data)
            assert bytes(got) == data and s.conn.rcvbuf == 131072
            c.close()
            s.close()

    run(main)


def test_tcp_small_queues_bound_the_bytes_below_each_socket():
    """Four bulk senders behind a 100 Mbit/s device: each keeps at most about
    tcp_limit_output_bytes (plus the segment in hand) in the qdisc and device."""
    from ustack.nic.impair import parse_spec

    wire, a, b = make_pair()
    limit = 65536
    a.sysctl.set("net.ipv4.tcp_limit_output_bytes", limit)
    a.set_impair(*parse_spec("tx:rate=100mbit"))
    data = os.urandom(400_000)
    peak = [0]

    async def main():
        async with running(a, b):
            pairs = [await pair_sockets(a, b, 7100 + i) for i in range(4)]

            async def flow(c, s, got):
                async with trio.open_nursery() as n:
                    async def read():
                        while len(got) < len(data):
                            got.extend(await s.recv(65536))
                    n.start_soon(read)
                    await c.sendall(data)

            async def sample():
                while True:
                    for c, _ in pairs:
                        peak[0] = max(peak[0], c.conn.wmem_alloc)
                    await trio.sleep(0.001)

            received = [bytearray() for _ in pairs]
            async with trio.open_nursery() as n:
                n.start_soon(sample)
                async with trio.open_nursery() as flows:
                    for (c, s), got in zip(pairs, received, strict=True):
                        flows.start_soon(flow, c, s, got)
                n.cancel_scope.cancel()
            assert all(bytes(g) == data for g in received)
            for c, s in pairs:
                c.close()
                s.close()

    run(main)
    assert a.stats.tsq["throttled"] > 0 and a.stats.tsq["resumed"] > 0
    assert 0 < peak[0] <= limit + 2 * 65536
