"""SYN cookies: the cookie arithmetic, and a listener under a SYN flood.

The codec tests drive ``SynCookies`` directly with a fixed secret; the
listener tests run the sans-IO core on the simulated two-host net (every
segment serialised and re-parsed) and two whole stacks on the in-memory
wire under trio's MockClock, with a burst of spoofed SYNs built by scapy.
"""

from __future__ import annotations

import ipaddress
import os
import random
import sys
from pathlib import Path

import pytest
import trio
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from tcpsim import IPS, Net, transfer

from ustack.transport.tcp import ACK, RST, SYN, Segment, TcpState
from ustack.transport.tcp.options import TcpOptions
from ustack.transport.tcp.syncookies import (
    MSSTAB,
    TS_OPT_ECN,
    TS_OPT_SACK,
    TS_OPT_WSCALE_MASK,
    SynCookies,
    cookie_init_timestamp,
    cookie_timestamp_decode,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/unit: stackpair
from stackpair import A_MAC, B_MAC, make_pair, run, running  # noqa: E402

S = TcpState
SECRET = bytes(range(64))
PEER, US = bytes([192, 0, 2, 7]), bytes([10, 0, 0, 2])


def cookie(sc: SynCookies, mss: int, now: float, seq: int = 123456789,
           sport: int = 40000) -> tuple[int, int]:
    return sc.init_sequence(PEER, US, sport, 80, seq, mss, now)


# -- the cookie itself ---------------------------------------------------------


@pytest.mark.parametrize(("mss", "encoded"), [
    (536, 536), (1300, 1300), (1440, 1440), (1460, 1460),
    (100, 536), (1299, 536), (1452, 1440), (1459, 1440), (8960, 1460), (65495, 1460),
])
def test_roundtrip_encodes_the_msstab_entry_at_or_below_the_mss(mss, encoded):
    sc = SynCookies(SECRET)
    for seq in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF):
        isn, got = cookie(sc, mss, 1000.0, seq)
        assert got == encoded and encoded in MSSTAB
        # The ACK acknowledges ISN + 1 and carries SEQ + 1.
        assert sc.check(PEER, US, 40000, 80, (seq + 1) & 0xFFFFFFFF, (isn + 1) & 0xFFFFFFFF,
                        1000.5) == encoded


def test_cookie_is_good_for_two_counter_periods_only():
    sc = SynCookies(SECRET)
    t0 = 60.0 * 1000 + 59.9  # late in a 60 s period
    isn, mss = cookie(sc, 1460, t0)
    seq, ack = 123456790, (isn + 1) & 0xFFFFFFFF
    assert sc.check(PEER, US, 40000, 80, seq, ack, t0 + 0.1) == mss  # next period: ok
    assert sc.check(PEER, US, 40000, 80, seq, ack, t0 + 60.0) == mss  # one more: ok
    assert sc.check(PEER, US, 40000, 80, seq, ack, t0 + 60.2) == 0  # MAX_SYNCOOKIE_AGE
    assert sc.check(PEER, US, 40000, 80, seq, ack, t0 + 3600) == 0
    # A counter from the future is not "young".
    assert sc.check(PEER, US, 40000, 80, seq, ack, t0 - 61.0) == 0


def test_cookie_is_bound_to_its_four_tuple_and_secret():
    sc = SynCookies(SECRET)
    isn, _ = cookie(sc, 1460, 500.0)
    seq, ack = 123456790, (isn + 1) & 0xFFFFFFFF
    assert sc.check(PEER, US, 40000, 80, seq, ack, 500.0) == 1460
    assert sc.check(bytes([192, 0, 2, 8]), US, 40000, 80, seq, ack, 500.0) == 0
    assert sc.check(PEER, bytes([10, 0, 0, 3]), 40000, 80, seq, ack, 500.0) == 0
    assert sc.check(PEER, US, 40001, 80, seq, ack, 500.0) == 0
    assert sc.check(PEER, US, 40000, 81, seq, ack, 500.0) == 0
    assert SynCookies(bytes(64)).check(PEER, US, 40000, 80, seq, ack, 500.0) == 0
    # Two stacks with random secrets hand out different cookies for one SYN.
    assert cookie(SynCookies(), 1460, 500.0)[0] != cookie(SynCookies(), 1460, 500.0)[0]
    with pytest.raises(ValueError):
        SynCookies(b"short")


def test_tampered_acks_are_rejected():
    sc = SynCookies(SECRET)
    isn, _ = cookie(sc, 1440, 7.0)
    seq, ack = 123456790, (isn + 1) & 0xFFFFFFFF
    # The MSS index is added to the low bits (as in the kernel, whose check
    # only bounds the index): an ACK a few off picks a neighbouring entry.
    for delta, mss in ((-2, 536), (-1, 1300), (0, 1440), (1, 1460), (2, 0), (-3, 0)):
        assert sc.check(PEER, US, 40000, 80, seq, (ack + delta) & 0xFFFFFFFF, 7.0) == mss
    for bit in range(2, 32):
        assert sc.check(PEER, US, 40000, 80, seq, ack ^ (1 << bit), 7.0) == 0, bit
    rng = random.Random(9)
    accepted = sum(bool(sc.check(PEER, US, 40000, 80, seq, rng.getrandbits(32), 7.0))
                   for _ in range(20000))
    # A blind guess passes with probability about 2 * 4 / 2**32.
    assert accepted == 0


@pytest.mark.parametrize("wscale", [None, 0, 1, 7, 14])
@pytest.mark.parametrize("sack", [False, True])
def test_timestamp_carries_window_scale_and_sack(wscale, sack):
    for now in (0.0, 12.345, 86400.0 + 0.063, 4294967.0):
        ts = cookie_init_timestamp(now, wscale, sack)
        ts_now = int(now * 1000) & 0xFFFFFFFF
        # Never ahead of our clock, and at most one 64 ms step behind.
        assert 0 <= (ts_now - ts) & 0xFFFFFFFF < 64
        co = cookie_timestamp_decode(ts, True, True, True)
        assert co is not None and co.ts_ok and not co.ecn_ok
        assert co.wscale == wscale and co.sack_ok == sack


def test_timestamp_decode_follows_the_sysctls():
    assert vars_of(cookie_timestamp_decode(None, True, True, True)) == (False, None, False)
    with_all = TS_OPT_SACK | 7
    assert cookie_timestamp_decode(with_all, False, True, True) is None  # tcp_timestamps=0
    assert cookie_timestamp_decode(with_all, True, False, True) is None  # tcp_sack=0
    assert cookie_timestamp_decode(with_all, True, True, False) is None  # window_scaling=0
    # Options the stack has off are fine when the cookie does not claim them.
    assert vars_of(cookie_timestamp_decode(TS_OPT_WSCALE_MASK, True, False, False)) == (
        True, None, False)
    assert cookie_timestamp_decode(TS_OPT_ECN | TS_OPT_WSCALE_MASK, True, True, True).ecn_ok


def vars_of(co) -> tuple:
    return co.ts_ok, co.wscale, co.sack_ok


# -- a listener on the simulated net -----------------------------------------------


def cookie_net(syncookies: int, backlog: int = 2, **kw) -> tuple[Net, object]:
    net = Net(**kw)
    net.hosts["b"].sysctl.set("net.ipv4.tcp_syncookies", syncookies)
    lst = net.listen("b", 80, backlog=backlog)
    lst.syncookies = SynCookies(SECRET)
    return net, lst


def connect(net: Net, port: int, **kw):
    c = net.conn("a", port, 80, **kw)
    c.connect(net.now)
    return c


def test_always_cookies_handshake_keeps_options_and_moves_data_both_ways():
    net, lst = cookie_net(2)
    a = connect(net, 40000)
    net.run(stop=lambda: lst.accept_queue_len > 0, until=5)
    assert a.state is S.ESTABLISHED and lst.syn_queue_len == 0
    b = lst.accept()
    assert b.state is S.ESTABLISHED
    ext = net.hosts["b"].stats.tcpext
    assert (ext["SyncookiesSent"], ext["SyncookiesRecv"], ext["SyncookiesFailed"]) == (1, 1, 0)
    assert ext["TCPReqQFullDoCookies"] == 1 and ext["TCPReqQFullDrop"] == 0
    assert not lst.synflood_warned  # mode 2 is not a flood
    synack = net.sent("b", SYN | ACK)[0]
    assert b.iss == synack.seq and synack.options.mss == 1460
    # The cookie in TSval: WS and SACK survive the stateless handshake.
    assert (b.ts_ok, b.wscale_ok, b.sack_ok) == (True, True, True)
    assert b.snd_wscale == a.rcv_wscale and b.rcv_wscale == a.snd_wscale
    assert b.snd_mss == 1460 - 12
    up = os.urandom(300_000)
    down = os.urandom(200_000)
    assert transfer(net, a, b, up) == up
    assert transfer(net, b, a, down) == down
    assert net.hosts["b"].stats.tcp["PassiveOpens"] == 1


@pytest.mark.parametrize(("client_mss", "snd_mss"), [(1300, 1288), (1000, 524), (9000, 1448)])
def test_cookie_child_takes_the_rounded_mss(client_mss, snd_mss):
    net, lst = cookie_net(2)
    connect(net, 40000, mss=client_mss)
    net.run(stop=lambda: lst.accept_queue_len > 0, until=5)
    assert lst.accept().snd_mss == snd_mss


def test_without_timestamps_window_scale_and_sack_are_lost():
    net, lst = cookie_net(2)
    net.hosts["a"].sysctl.set("net.ipv4.tcp_timestamps", 0)
    a = connect(net, 40000)
    net.run(stop=lambda: lst.accept_queue_len > 0, until=5)
    b = lst.accept()
    synack = net.sent("b", SYN | ACK)[0]
    assert synack.options.wscale is None and not synack.options.sack_ok
    assert synack.options.ts_val is None
    assert (b.ts_ok, b.wscale_ok, b.sack_ok) == (False, False, False)
    assert (a.wscale_ok, a.sack_ok) == (False, False)
    data = os.urandom(100_000)
    assert transfer(net, a, b, data) == data


def test_full_syn_queue_answers_with_cookies_and_keeps_no_state():
    net, lst = cookie_net(1)
    held = set(range(40000, 40003))
    # The first three handshakes never finish: they fill the SYN queue (backlog + 1).
    net.drop = lambda src, seg: src == "a" and seg.sport in held and not seg.flags & SYN
    stuck = [connect(net, p) for p in sorted(held)]
    net.run(until=0.05)
    assert lst.syn_queue_len == 3
    cs = [connect(net, 41000 + i) for i in range(3)]
    net.run(until=0.5)
    assert lst.syn_queue_len == 3  # never more than the bound
    assert all(c.state is S.ESTABLISHED for c in cs + stuck)
    assert lst.accept_queue_len == 3
    ext = net.hosts["b"].stats.tcpext
    assert ext["TCPReqQFullDoCookies"] == 3 and ext["SyncookiesSent"] == 3
    assert ext["SyncookiesRecv"] == 3 and ext["ListenDrops"] == 0
    assert lst.synflood_warned
    # Cookie SYN-ACKs are not retransmitted: nothing remembers them.
    assert len(net.sent("b", SYN | ACK)) == 6
    net.run(until=1.5)
    retrans = [s for s in net.sent("b", SYN | ACK) if s.dport in held]
    assert len(retrans) > 3 and not [s for s in net.sent("b", SYN | ACK)
                                     if s.dport >= 41000][3:]


def test_syncookies_off_drops_when_the_syn_queue_is_full():
    net, lst = cookie_net(0)
    net.drop = lambda src, seg: src == "a" and not seg.flags & SYN
    for p in range(40000, 40005):
        connect(net, p)
    net.run(until=0.5)
    ext = net.hosts["b"].stats.tcpext
    assert lst.syn_queue_len == 3
    assert ext["TCPReqQFullDrop"] == 2 and ext["ListenDrops"] == 2
    assert ext["SyncookiesSent"] == 0 and ext["TCPReqQFullDoCookies"] == 0


def test_full_accept_queue_drops_cookie_ack_and_a_later_segment_completes():
    net, lst = cookie_net(2, backlog=0)
    # Both SYNs find room; the first ACK fills the queue (listen(0) holds one).
    first, late = connect(net, 40000), connect(net, 40001)
    net.run(until=0.2)
    assert lst.accept_queue_len == 1
    ext = net.hosts["b"].stats.tcpext
    # Valid cookie, but tcp_v4_syn_recv_sock finds the accept queue full.
    assert ext["SyncookiesRecv"] == 2 and ext["ListenOverflows"] == 1
    assert late.state is S.ESTABLISHED and (40001, 80) not in {
        (c.remote_port, c.local_port) for c in net.hosts["b"].children}
    assert not net.sent("b", RST)
    lst.accept()
    # The client's first data still acknowledges the cookie: it completes the handshake.
    late.send(b"hello", net.now)
    net.run(until=0.5)
    b = lst.accept()
    assert ext["SyncookiesRecv"] == 3 and b is not None and b.remote_port == 40001
    assert b.recv(100, net.now) == b"hello" and first.state is S.ESTABLISHED


def test_bad_or_unexpected_cookie_acks_are_reset():
    net, lst = cookie_net(2)
    b = net.hosts["b"]
    stray = Segment(40000, 80, 1000, 2000, ACK, 100)
    # No cookie sent yet (tcp_synq_no_recent_overflow): a plain stray ACK.
    assert lst.segment_arrives(stray, IPS["a"], 1.0) is None
    assert b.stats.tcpext["SyncookiesFailed"] == 0 and lst.out.pop().flags & RST
    syn = Segment(40000, 80, 999, 0, SYN, 65535, TcpOptions(mss=1460))
    assert lst.segment_arrives(syn, IPS["a"], 1.0) is None
    synack = lst.out.pop()
    assert synack.flags == SYN | ACK and b.stats.tcpext["SyncookiesSent"] == 1
    good = Segment(40000, 80, 1000, (synack.seq + 1) & 0xFFFFFFFF, ACK, 100)
    for seg in (stray, Segment(40001, 80, 1000, good.ack, ACK, 100),
                Segment(40000, 80, 1000, good.ack ^ 0x100, ACK, 100)):
        assert lst.segment_arrives(seg, IPS["a"], 2.0) is None
        rst = lst.out.pop()
        assert rst.flags & RST and rst.seq == seg.ack
    assert b.stats.tcpext["SyncookiesFailed"] == 3 and b.stats.tcpext["SyncookiesRecv"] == 0
    # The right ACK in time makes a connection.
    child = lst.segment_arrives(good, IPS["a"], 3.0)
    assert child is not None and child.state is S.ESTABLISHED and not lst.out
    assert b.stats.tcpext["SyncookiesRecv"] == 1
    # Too late: 2 periods on, though cookies went out lately (another SYN at t=200).
    assert lst.segment_arrives(Segment(40002, 80, 5, 0, SYN, 65535), IPS["a"], 200.0) is None
    lst.out.clear()
    assert lst.segment_arrives(good, IPS["a"], 200.0) is None
    assert b.stats.tcpext["SyncookiesFailed"] == 4 and lst.out.pop().flags & RST
    # With cookies off it is a stray ACK, not even checked.
    net.hosts["b"].sysctl.set("net.ipv4.tcp_syncookies", 0)
    assert lst.segment_arrives(good, IPS["a"], 200.0) is None and lst.out.pop().flags & RST
    assert b.stats.tcpext["SyncookiesFailed"] == 4


# -- two stacks on the in-memory wire -------------------------------------------------


def spoofed_syns(n: int) -> list[bytes]:
    """*n* SYNs to 10.0.0.2:80 from TEST-NET-2 addresses (no route back), built by scapy."""
    base = Ether(src=A_MAC, dst=B_MAC) / IP(dst="10.0.0.2") / TCP(
        dport=80, flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
    out = []
    for i in range(n):
        p = base.copy()
        p[IP].src = str(ipaddress.IPv4Address("198.18.0.0") + i)
        p[TCP].sport, p[TCP].seq = 1024 + i, 1000 * i
        out.append(bytes(p))
    return out


def test_syn_flood_over_the_wire_bounded_state_and_a_real_client_through_a_cookie():
    wire, a, b = make_pair()
    up, down = os.urandom(256 * 1024), os.urandom(192 * 1024)

    async def main():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 80))
            lsock.listen(4)
            frames = spoofed_syns(300)
            for i in range(0, len(frames), 50):  # bursts the RX ring takes whole
                for frame in frames[i : i + 50]:
                    wire.b.inject(frame)
                await trio.sleep(0.01)
            await trio.sleep(0.5)
            listener = b.tcp.listeners[80]
            ext = b.stats.tcpext
            assert listener.syn_queue_len == 5 and len(b.tcp.ehash) == 5
            assert ext["SyncookiesSent"] == 295 == ext["TCPReqQFullDoCookies"]
            client = a.socket()
            await client.connect(("10.0.0.2", 80))
            server, _ = await lsock.accept()
            assert ext["SyncookiesRecv"] == 1 and ext["SyncookiesFailed"] == 0
            conn = b.tcp.ehash[(b"\x0a\x00\x00\x02", 80, b"\x0a\x00\x00\x01",
                                client.getsockname()[1])]
            assert (conn.ts_ok, conn.wscale_ok, conn.sack_ok) == (True, True, True)

            async def pump(src, dst, data):
                async with trio.open_nursery() as n:
                    n.start_soon(src.sendall, data)
                    got = bytearray()
                    while len(got) < len(data):
                        got += await dst.recv(65536)
                return bytes(got)

            assert await pump(client, server, up) == up
            assert await pump(server, client, down) == down
            # The flood's half-open connections time out; nothing else was kept.
            await trio.sleep(120)
            assert listener.syn_queue_len == 0 and len(b.tcp.ehash) == 1
            client.close()
            server.close()
            lsock.close()

    run(main)
