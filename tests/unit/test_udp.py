"""UDP between two stacks on the wire: sockets, errors, limits, counters."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from stackpair import A_MAC, B_MAC, make_pair, run, running

from ustack.socket import AF_INET, SOCK_DGRAM


def test_datagrams_both_ways_with_fragmentation():
    wire, a, b = make_pair()
    frames: list[bytes] = []
    wire.a.tx_filter = lambda f: frames.append(f) or f

    async def main():
        async with running(a, b):
            srv = b.socket(AF_INET, SOCK_DGRAM)
            await srv.bind(("0.0.0.0", 5353))
            cli = a.socket(AF_INET, SOCK_DGRAM)
            for size in (0, 1, 1472, 1473, 8000, 65507):
                payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
                await cli.sendto(payload, ("10.0.0.2", 5353))
                data, addr = await srv.recvfrom(70000)
                assert data == payload
                assert addr == ("10.0.0.1", cli.getsockname()[1])
                await srv.sendto(data[::-1], addr)
                back, frm = await cli.recvfrom(70000)
                assert back == payload[::-1] and frm == ("10.0.0.2", 5353)

    run(main)
    assert b.stats.udp["InDatagrams"] == 6 and a.stats.udp["InDatagrams"] == 6
    assert a.stats.ip["FragOKs"] == 3  # 1473, 8000 and 65507 bytes do not fit
    # Every UDP frame we sent has a checksum scapy agrees with.
    for f in frames:
        e = Ether(f)
        if UDP in e and not e[IP].flags.MF and e[IP].frag == 0:
            raw = e[IP].copy()
            got = raw[UDP].chksum
            del raw[UDP].chksum
            assert IP(bytes(raw))[UDP].chksum == got


def test_closed_port_gets_icmp_and_connected_socket_sees_econnrefused():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            cli = a.socket(AF_INET, SOCK_DGRAM)
            await cli.connect(("10.0.0.2", 9999))
            await cli.send(b"anyone?")
            await trio.sleep(0.5)
            with pytest.raises(ConnectionRefusedError):
                await cli.recv(100)
            # The error is reported once, as sk_err is cleared when read.
            await cli.send(b"again")
            await trio.sleep(0.5)
            assert cli.getsockopt(1, 4) == errno.ECONNREFUSED  # SOL_SOCKET, SO_ERROR
            assert cli.getsockopt(1, 4) == 0

    run(main)
    assert b.stats.udp["NoPorts"] == 2 and b.stats.icmp["OutDestUnreachs"] == 2
    assert a.stats.icmp["InDestUnreachs"] == 2


def test_receive_buffer_overflow_is_counted():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            srv = b.socket(AF_INET, SOCK_DGRAM)
            srv.setsockopt(1, 8, 4096)  # SO_RCVBUF: doubled to 8192
            assert srv.getsockopt(1, 8) == 8192
            await srv.bind(("", 7000))
            cli = a.socket(AF_INET, SOCK_DGRAM)
            for _ in range(10):
                await cli.sendto(b"x" * 1000, ("10.0.0.2", 7000))
            await trio.sleep(0.5)
            got = 0
            while srv.is_readable():
                await srv.recv(2000)
                got += 1
            assert got == 6  # 6 * (1000 + 256) fits in 8192, a seventh does not

    run(main)
    assert b.stats.udp["RcvbufErrors"] == 4 and b.stats.udp["InDatagrams"] == 6


def test_bad_checksum_and_length_are_counted():
    wire, a, b = make_pair()
    good = Ether(dst=B_MAC, src=A_MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(
        sport=1, dport=7000) / b"hello"
    bad_sum = bytearray(bytes(good))
    bad_sum[-1] ^= 1
    long_len = bytes(Ether(dst=B_MAC, src=A_MAC) / IP(src="10.0.0.1", dst="10.0.0.2")
                     / UDP(sport=1, dport=7000, len=200) / b"hello")

    async def main():
        async with running(a, b):
            srv = b.socket(AF_INET, SOCK_DGRAM)
            await srv.bind(("", 7000))
            for f in (bytes(bad_sum), long_len, bytes(good)):
                wire.b.inject(f)
            data = await srv.recv(100)
            assert data == b"hello"
            assert not srv.is_readable()

    run(main)
    assert b.stats.udp["InCsumErrors"] == 1 and b.stats.udp["InErrors"] == 2


def test_broadcast_needs_so_broadcast_and_bind_conflicts():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            s1 = a.socket(AF_INET, SOCK_DGRAM)
            with pytest.raises(PermissionError):
                await s1.sendto(b"all", ("10.0.0.255", 7))
            s1.setsockopt(1, 6, 1)  # SO_BROADCAST
            await s1.sendto(b"all", ("10.0.0.255", 7))
            await trio.sleep(0.5)
            x = a.socket(AF_INET, SOCK_DGRAM)
            await x.bind(("", 4000))
            y = a.socket(AF_INET, SOCK_DGRAM)
            with pytest.raises(OSError) as e:
                await y.bind(("10.0.0.1", 4000))
            assert e.value.errno == errno.EADDRINUSE
            with pytest.raises(OSError) as e:
                await y.bind(("10.0.0.77", 4001))
            assert e.value.errno == errno.EADDRNOTAVAIL
            x.close()
            await y.bind(("10.0.0.1", 4000))
            assert x.fileno() == -1 and y.fileno() >= 0
            with pytest.raises(OSError):
                a.socket(10, SOCK_DGRAM)  # AF_INET6

    run(main)
    # A broadcast to a port nobody listens on is ignored, not answered.
    assert b.stats.udp["IgnoredMulti"] == 1 and b.stats.udp["NoPorts"] == 0


def test_concurrent_recv_is_busy():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            s = a.socket(AF_INET, SOCK_DGRAM)
            await s.bind(("", 6000))
            async with trio.open_nursery() as n:
                n.start_soon(s.recv, 10)
                await trio.sleep(0.1)
                with pytest.raises(trio.BusyResourceError):
                    await s.recv(10)
                n.cancel_scope.cancel()

    run(main)


def test_unresolvable_neighbour_reports_ehostunreach():
    wire, a, b = make_pair()

    async def main():
        async with running(a, b):
            s = a.socket(AF_INET, SOCK_DGRAM)
            await s.connect(("10.0.0.77", 53))
            await s.send(b"is anyone there")
            await trio.sleep(5)  # three ARP requests a second apart, then FAILED
            with pytest.raises(OSError) as e:
                await s.recv(10)
            assert e.value.errno == errno.EHOSTUNREACH

    run(main)
    assert a.stats.drop_reasons["NEIGH_FAILED"] == 1
