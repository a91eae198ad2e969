"""The socket API over two stacks on the in-memory wire.

trio's own conformance test for half-closeable streams runs over ustack
sockets; trio's high-level API runs over the stack as its socket factory;
errors carry the kernel's errno; the blocking facade drives the same sockets
from threads.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import itertools
import socket
import threading
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from stackpair import make_pair, pair_sockets, run, running

from ustack.blocking import BlockingStack, LoopThread
from ustack.link.wire import Wire
from ustack.stack import Stack
from ustack.transport.tcp import TcpState

_ports = itertools.count(20000)




async def connected_pair(a: Stack, b: Stack) -> tuple[trio.SocketStream, trio.SocketStream]:
    client, server = await pair_sockets(a, b, next(_ports))
    return trio.SocketStream(client), trio.SocketStream(server)


class _StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of tasks whose name ends in *suffix*."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


def test_recv_is_one_checkpoint_whether_it_waits_or_not():
    """As trio's own sockets: a recv that had data yields once (a checkpoint);
    one that slept has been a checkpoint already and returns on wake-up."""
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            client, server = await connected_pair(a, b)
            counter = _StepCounter(".reader")
            trio.lowlevel.add_instrument(counter)
            try:
                got: list[bytes] = []

                async def reader() -> None:
                    got.append(await server.socket.recv(10))

                async with trio.open_nursery() as n:
                    n.start_soon(reader)
                    await trio.sleep(0.1)  # the reader waits in recv
                    steps_waiting = counter.steps
                    await client.send_all(b"x")
                assert got == [b"x"]
                # Woken once by the arriving byte; that step returns.
                assert steps_waiting == 1
                assert counter.steps - steps_waiting == 1
                await client.send_all(b"y")
                await trio.sleep(0.1)  # the byte is queued before recv is called
                counter.steps = 0
                async with trio.open_nursery() as n:
                    n.start_soon(reader)
                assert got[-1] == b"y"
                # The first step finds the data and yields; the second returns.
                assert counter.steps == 2
            finally:
                trio.lowlevel.remove_instrument(counter)

    run(main)


def test_unmodified_trio_highlevel_api_over_the_factory():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            a.use_for_trio()

            async def upper(stream):
                async for data in stream:
                    await stream.send_all(data.upper())

            lsock = b.socket()
            await lsock.bind(("", 8080))
            lsock.listen(16)
            async with trio.open_nursery() as n:
                n.start_soon(trio.serve_listeners, upper, [trio.SocketListener(lsock)])
                stream = await trio.open_tcp_stream("10.0.0.2", 8080)
                await stream.send_all(b"over ustack")
                assert await stream.receive_some() == b"OVER USTACK"
                await stream.aclose()
                # trio.serve_tcp on the factory stack: kernel-style listener from trio.
                listeners = await n.start(trio.serve_tcp, upper, 9090)
                assert listeners[0].socket.getsockname() == ("0.0.0.0", 9090)
                c = b.socket()
                await c.connect(("10.0.0.1", 9090))
                await c.sendall(b"served by serve_tcp")
                assert await c.recv(100) == b"SERVED BY SERVE_TCP"
                c.close()
                with pytest.raises(socket.gaierror):
                    await trio.open_tcp_stream("no-such-host.example", 80)
                n.cancel_scope.cancel()

    run(main)


def test_refused_and_timeout_errnos():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            s = a.socket()
            with pytest.raises(ConnectionRefusedError) as e:
                await s.connect(("10.0.0.2", 4))
            assert e.value.errno == errno.ECONNREFUSED
            # SYNs to port 5 vanish (ARP still works, so no neighbour error):
            # the SYN retries (tcp_syn_retries 6) end in ETIMEDOUT.
            wire.a.tx_filter = lambda f: None if f[23] == 6 and f[36:38] == b"\x00\x05" else f
            t0 = trio.current_time()
            s2 = a.socket()
            with pytest.raises(OSError) as e:
                await s2.connect(("10.0.0.2", 5))
            assert e.value.errno == errno.ETIMEDOUT
            assert 120 < trio.current_time() - t0 < 140  # 1+2+4+8+16+32+64 s
            # When the neighbour dies too, its error replaces ETIMEDOUT (tcp_write_err
            # reports sk_err_soft), as the kernel says "No route to host".
            wire.a.tx_filter = lambda f: None
            s3 = a.socket()
            with pytest.raises(OSError) as e:
                await s3.connect(("10.0.0.2", 6))
            assert e.value.errno == errno.EHOSTUNREACH

    run(main)
    assert a.stats.tcp["AttemptFails"] == 3


def test_reset_pipe_notconn_addrinuse():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 7777))
            lsock.listen(4)
            other = b.socket()
            with pytest.raises(OSError) as e:
                await other.bind(("", 7777))
            assert e.value.errno == errno.EADDRINUSE
            fresh = a.socket()
            with pytest.raises(OSError) as e:
                await fresh.recv(10)
            assert e.value.errno == errno.ENOTCONN
            c = a.socket()
            await c.connect(("10.0.0.2", 7777))
            srv, _ = await lsock.accept()
            await c.sendall(b"unread")
            await trio.sleep(0.5)
            srv.close()  # unread data: RST, not FIN (RFC 2525 2.17)
            await trio.sleep(0.5)
            with pytest.raises(ConnectionResetError):
                await c.recv(10)
            c2 = a.socket()
            await c2.connect(("10.0.0.2", 7777))
            c2.shutdown(socket.SHUT_WR)
            with pytest.raises(BrokenPipeError):
                await c2.send(b"after shutdown")
            assert c2.did_shutdown_SHUT_WR
            c2.close()
            assert c2.fileno() == -1
            with pytest.raises(OSError) as e:
                await c2.send(b"x")
            assert e.value.errno == errno.EBADF

    run(main)
    assert b.stats.tcpext["TCPAbortOnClose"] == 1
    assert a.stats.tcp["EstabResets"] >= 1


def test_time_wait_lasts_60_seconds():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 80))
            lsock.listen(4)
            c = a.socket()
            await c.connect(("10.0.0.2", 80))
            srv, _ = await lsock.accept()
            c.close()  # the active closer ends in TIME_WAIT
            assert await srv.recv(10) == b""
            srv.close()
            await trio.sleep(1)
            states = [x.state for x in a.tcp.connections()]
            assert states == [TcpState.TIME_WAIT]
            await trio.sleep(58)
            assert [x.state for x in a.tcp.connections()] == [TcpState.TIME_WAIT]
            await trio.sleep(2)
            assert a.tcp.connections() == []
            assert b.tcp.connections() == []

    run(main)


def test_listen_backlog_overflow_is_counted_and_recovers():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 81))
            lsock.listen(1)  # the accept queue holds backlog + 1 = 2 (sk_acceptq_is_full)
            clients = [a.socket() for _ in range(3)]
            async with trio.open_nursery() as n:
                for c in clients[:2]:
                    await c.connect(("10.0.0.2", 81))  # handshakes complete, not accepted
                n.start_soon(clients[2].connect, ("10.0.0.2", 81))
                await trio.sleep(0.5)
                # The third SYN finds the accept queue full and is dropped.
                assert b.stats.tcpext["ListenOverflows"] == 1
                assert clients[2].conn.state is TcpState.SYN_SENT
                for _ in range(3):  # accepting makes room; the SYN retransmit gets in
                    s, _ = await lsock.accept()
                    s.close()
            assert b.stats.tcp["PassiveOpens"] == 3

    run(main)


def test_simultaneous_syns_beyond_the_syn_queue_are_dropped_then_retried():
    wire, a, b = make_pair()
    # Without SYN cookies (with them, the extra SYNs get cookies: test_tcp_syncookies).
    b.sysctl.set("net.ipv4.tcp_syncookies", 0)

    async def main():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 82))
            lsock.listen(1)
            clients = [a.socket() for _ in range(5)]
            async with trio.open_nursery() as n:
                for c in clients:
                    n.start_soon(c.connect, ("10.0.0.2", 82))
                await trio.sleep(0.5)
                assert b.stats.tcpext["ListenDrops"] >= 1
                for _ in range(5):
                    s, _ = await lsock.accept()
                    s.close()
            assert b.stats.tcp["PassiveOpens"] == 5

    run(main)


def test_bulk_transfer_both_ways_sha256():
    wire, a, b = make_pair()
    data = hashlib.sha256(b"seed").digest() * 100_000  # 3.2 MB

    async def main():
        async with running(a, b):
            up, down = await connected_pair(a, b)

            async def pump(src, dst, payload):
                await src.send_all(payload)
                await src.send_eof()

            async def drain(stream):
                h = hashlib.sha256()
                async for chunk in stream:
                    h.update(chunk)
                return h.hexdigest()

            results = {}

            async def collect(name, stream):
                results[name] = await drain(stream)

            async with trio.open_nursery() as n:
                n.start_soon(pump, up, down, data)
                n.start_soon(pump, down, up, data[::-1])
                n.start_soon(collect, "at_b", down)
                n.start_soon(collect, "at_a", up)
            assert results["at_b"] == hashlib.sha256(data).hexdigest()
            assert results["at_a"] == hashlib.sha256(data[::-1]).hexdigest()

    run(main)


def test_blocking_facade_from_threads():
    @asynccontextmanager
    async def opener():
        wire = Wire()
        a = Stack([wire.a], ipaddress.IPv4Interface("10.0.0.1/24"), name="a")
        b = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), name="b")
        async with running(a, b):
            yield a, b

    loop = LoopThread(opener)
    try:
        a_stack, b_stack = loop.value
        a, b = BlockingStack(loop, a_stack), BlockingStack(loop, b_stack)
        lsock = b.socket()
        lsock.bind(("", 5000))
        lsock.listen(1)
        received = []

        def server():
            conn, addr = lsock.accept()
            while chunk := conn.recv(65536):
                received.append(chunk)
            conn.sendall(b"done")
            conn.close()

        t = threading.Thread(target=server)
        t.start()
        c = a.socket()
        c.settimeout(10)
        c.connect(("10.0.0.2", 5000))
        c.sendall(b"z" * 1_000_000)
        c.shutdown(socket.SHUT_WR)
        assert c.recv(10) == b"done"
        c.close()
        t.join(10)
        assert b"".join(received) == b"z" * 1_000_000
        u = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(0.2)
        with pytest.raises(TimeoutError):
            u.recvfrom(10)
        assert a.ping("10.0.0.2")[0]["ok"]
    finally:
        loop.close()


def test_simultaneous_open_and_simultaneous_close():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            sa, sb = a.socket(), b.socket()
            await sa.bind(("", 5000))
            await sb.bind(("", 6000))
            async with trio.open_nursery() as n:
                n.start_soon(sa.connect, ("10.0.0.2", 6000))
                n.start_soon(sb.connect, ("10.0.0.1", 5000))
            # Both sent a SYN, both answered with SYN-ACK (RFC 9293 figure 7).
            assert sa.conn.state is sb.conn.state is TcpState.ESTABLISHED
            await sa.sendall(b"from a")
            await sb.sendall(b"from b")
            assert await sb.recv(100) == b"from a"
            assert await sa.recv(100) == b"from b"
            ca, cb = sa.conn, sb.conn
            sa.close()
            sb.close()  # both FINs cross: CLOSING on both sides, then TIME_WAIT
            await trio.sleep(1)
            assert ca.state is cb.state is TcpState.TIME_WAIT
            await trio.sleep(61)
            assert a.tcp.connections() == [] and b.tcp.connections() == []

    run(main)
    assert a.stats.tcp["ActiveOpens"] == 1 and b.stats.tcp["ActiveOpens"] == 1


def test_sequence_numbers_wrap_around_during_a_transfer():
    wire, a, b = make_pair()
    a.tcp.isn = lambda *tuple4: 2**32 - 5000
    b.tcp.isn = lambda *tuple4: 2**32 - 70000
    data = hashlib.sha256(b"wrap").digest() * 40_000  # 1.28 MB: both sides wrap

    async def main():
        async with running(a, b):
            up, down = await connected_pair(a, b)
            async with trio.open_nursery() as n:
                n.start_soon(up.send_all, data)
                n.start_soon(down.send_all, data[::-1])
                got_b = bytearray()
                got_a = bytearray()
                while len(got_b) < len(data) or len(got_a) < len(data):
                    if len(got_b) < len(data):
                        got_b += await down.receive_some()
                    if len(got_a) < len(data):
                        got_a += await up.receive_some()
            assert got_b == data and got_a == data[::-1]
            conn = up.socket.conn
            assert conn.snd_nxt < 2**31 and conn.rcv_nxt < 2**31  # both counters wrapped

    run(main)


def test_connect_to_an_absent_neighbour_fails_with_ehostunreach():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            s = a.socket()
            t0 = trio.current_time()
            with pytest.raises(OSError) as e:
                await s.connect(("10.0.0.99", 80))
            assert e.value.errno == errno.EHOSTUNREACH
            assert trio.current_time() - t0 < 5  # ARP gave up, not the SYN retries

    run(main)


def test_new_syn_takes_over_a_time_wait_pair():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            lsock = b.socket()
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await lsock.bind(("", 80))
            lsock.listen(4)
            for _ in range(2):
                c = a.socket()
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await c.bind(("", 40000))
                await c.connect(("10.0.0.2", 80))
                srv, _ = await lsock.accept()
                srv.close()  # the server closes first: its side sits in TIME_WAIT
                assert await c.recv(10) == b""
                c.close()
                await trio.sleep(1)
            assert b.stats.tcp["PassiveOpens"] == 2

    run(main)


def test_file_max_bounds_open_sockets_and_accept_keeps_the_connection():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 82))
            lsock.listen(4)
            # The listener is one open socket; allow exactly one more on b.
            b.sysctl.set("fs.file-max", b.nr_files + 1)
            extra = b.socket()
            with pytest.raises(OSError) as e:
                b.socket()
            assert e.value.errno == errno.ENFILE
            assert b.stats.file_max_reached == 1
            c = a.socket()
            await c.connect(("10.0.0.2", 82))
            # accept() needs a descriptor first: ENFILE, and the connection stays queued.
            with pytest.raises(OSError) as e:
                await lsock.accept()
            assert e.value.errno == errno.ENFILE
            assert b.snapshot()["file_nr"] == {"allocated": 2, "max": 2, "limit_reached": 2}
            extra.close()  # closing gives the descriptor back
            s, _ = await lsock.accept()
            await c.sendall(b"still here")
            assert await s.recv(100) == b"still here"
            assert b.nr_files == 2
            s.close()
            c.close()
            lsock.close()
            assert b.nr_files == 0

    run(main)


def test_connect_shares_a_local_port_across_destinations_as_linux_does():
    """__inet_hash_connect: a port taken by connect() serves other destinations too;
    the range bounds connections per destination. bind() still conflicts with it."""
    wire, a, b = make_pair()
    a.sysctl.set("net.ipv4.ip_local_port_range", "40000 40001")

    async def main():
        async with running(a, b):
            listeners = []
            for port in (7001, 7002, 7003):
                ls = b.socket()
                await ls.bind(("", port))
                ls.listen(8)
                listeners.append(ls)
            clients = []
            for port in (7001, 7001, 7002, 7002, 7003):
                c = a.socket()
                await c.connect(("10.0.0.2", port))
                clients.append(c)
            local = [c.getsockname()[1] for c in clients]
            assert set(local) == {40000, 40001}
            # Both ports already carry a connection to 7001: no third one.
            c = a.socket()
            with pytest.raises(OSError) as e:
                await c.connect(("10.0.0.2", 7001))
            assert e.value.errno == errno.EADDRNOTAVAIL
            c.close()
            # An explicit bind() to a port connect() holds is a conflict.
            s = a.socket()
            with pytest.raises(OSError) as e:
                await s.bind(("", 40000))
            assert e.value.errno == errno.EADDRINUSE
            s.close()
            # The shared ports carry their own streams.
            dests = (7001, 7001, 7002, 7002, 7003)
            sent = {}
            for i, c in enumerate(clients):
                await c.sendall(b"flow %d" % i)
                sent[(dests[i], c.getsockname()[1])] = b"flow %d" % i
            for ls, port in zip(listeners, (7001, 7002, 7003), strict=True):
                for _ in range(dests.count(port)):
                    srv, peer = await ls.accept()
                    assert await srv.recv(100) == sent.pop((port, peer[1]))
                    srv.close()
                ls.close()
            assert not sent
            for c in clients:
                c.close()

    run(main)
