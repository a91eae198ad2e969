"""TCP timestamp offsets as the kernel makes them (RFC 7323 sections 5.4 and 7.1).

TSval is the millisecond clock plus the connection's ``ts_off``: a keyed
hash of the 4-tuple (``secure_tcp_seq_and_ts_off``), fixed for every
incarnation of that 4-tuple, unrelated to the ISN and so revealing neither
the ISN nor the stack's clock; 0 with net.ipv4.tcp_timestamps = 2. Every
way a connection is born takes it: active open, SYN-queue and Fast Open
children, and the stateless SYN cookie handshake, whose SYN-ACK adds it to
the cookie TSval and whose ACK has it taken off the echo again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tcpsim import IPS, Net

from ustack.transport.tcp import ACK, SYN, TcpState
from ustack.transport.tcp.secure import ISN_TICKS_PER_SECOND, SecureSeq
from ustack.transport.tcp.syncookies import SynCookies, cookie_timestamp_decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/unit: fuzzing
from fuzzing import A_IP_B, B_IP_B, TCP_PORT, Harness, SimStack  # noqa: E402
from test_tcp_fastopen import Tfo  # noqa: E402

A, B = IPS["a"], IPS["b"]
MASK = 0xFFFFFFFF


def test_ts_off_is_a_keyed_hash_of_the_four_tuple_without_a_clock():
    now = [100.0]
    seq = SecureSeq(lambda: now[0], secret=b"k" * 32)
    off = seq.ts_off(A, 40000, B, 80)
    isn = seq.isn(A, 40000, B, 80)
    now[0] += 10.0
    # The ISN moved on with the 4 us clock; the offset did not move.
    assert (seq.isn(A, 40000, B, 80) - isn) & MASK == 10 * ISN_TICKS_PER_SECOND
    assert seq.ts_off(A, 40000, B, 80) == off
    # Another port, address or key: another offset.
    others = {seq.ts_off(A, 40001, B, 80), seq.ts_off(A, 40000, B, 81),
              seq.ts_off(bytes([10, 0, 0, 3]), 40000, B, 80),
              SecureSeq(lambda: now[0], secret=b"x" * 32).ts_off(A, 40000, B, 80)}
    assert off not in others and len(others) == 4
    # Not the ISN's hash: ISN - ts_off is not the clock.
    assert (seq.isn(A, 40000, B, 80) - off) & MASK != int(now[0] * ISN_TICKS_PER_SECOND) & MASK


def test_active_and_passive_ends_take_the_four_tuple_offset():
    h = Harness()
    client, server = h.client, h.conn
    port = client.local_port
    assert client.ts_offset == h.a.tcp.secure.ts_off(A_IP_B, port, B_IP_B, TCP_PORT)
    assert server.ts_offset == h.b.tcp.secure.ts_off(B_IP_B, TCP_PORT, A_IP_B, port)
    assert client.ts_ok and server.ts_ok
    now = SimStack.clock_now
    for conn in (client, server):
        tsval = conn._ts_now(now)
        assert tsval == (int(now * 1000) + conn.ts_offset) & MASK
        # TSval says nothing about the ISS: their difference is not the clock.
        assert (tsval - conn.iss) & MASK != int(now * 1000) & MASK
        assert conn.ts_offset != conn.iss
    # Two stacks, two secrets: the two directions' offsets are unrelated.
    assert client.ts_offset != server.ts_offset
    h.close()


def test_every_connection_of_a_four_tuple_shares_its_offset_other_ports_do_not():
    h = Harness()
    first = h.client
    port = first.local_port
    # The same 4-tuple later (a new incarnation): the same offset, so its
    # TSvals keep growing across incarnations (RFC 7323 5.4, PAWS after TIME-WAIT).
    SimStack.clock_now += 5.0
    offsets = {first.ts_offset}
    for _ in range(3):
        h.establish()
        offsets.add(h.client.ts_offset)
        assert h.conn.ts_offset == h.b.tcp.init_ts_off(B_IP_B, TCP_PORT, A_IP_B,
                                                       h.client.local_port)
    assert len(offsets) == 4  # four ports, four offsets (the kernel's, since 165573e41f2f)
    again = h.a.tcp.init_ts_off(A_IP_B, port, B_IP_B, TCP_PORT)
    assert again == first.ts_offset
    h.close()


def test_tcp_timestamps_2_keeps_timestamps_without_offsets():
    h = Harness()
    for stack in (h.a, h.b):
        stack.sysctl.set("net.ipv4.tcp_timestamps", 2)
    h.establish()
    client, server = h.client, h.conn
    assert client.ts_ok and server.ts_ok
    assert client.ts_offset == 0 and server.ts_offset == 0
    now = SimStack.clock_now
    assert client._ts_now(now) == int(now * 1000) & MASK
    # Back to 1: random offsets again, for new connections only.
    h.a.sysctl.set("net.ipv4.tcp_timestamps", 1)
    h.establish()
    assert h.client.ts_offset == h.a.tcp.secure.ts_off(A_IP_B, h.client.local_port,
                                                       B_IP_B, TCP_PORT) != 0
    h.close()


def test_fast_open_child_takes_the_four_tuple_offset():
    t = Tfo()
    seq = SecureSeq(lambda: t.net.now, secret=b"s" * 32)
    t.lst.ts_off = seq.ts_off
    t.get_cookie()
    c, child = t.handshake()
    assert child.state is TcpState.SYN_RECV and t.ext("b")["TCPFastOpenPassive"] == 1
    assert child.ts_offset == seq.ts_off(B, 80, A, c.local_port)


def cookie_net(start: float) -> tuple[Net, object, SecureSeq]:
    net = Net(delay=0.004)
    net.now = start
    net.hosts["b"].sysctl.set("net.ipv4.tcp_syncookies", 2)  # always cookies
    lst = net.listen("b", 80)
    lst.syncookies = SynCookies(bytes(range(64)))
    seq = SecureSeq(lambda: net.now, secret=b"c" * 32)
    lst.isn = seq.isn
    lst.ts_off = seq.ts_off
    return net, lst, seq


def test_cookie_synack_adds_the_offset_and_the_child_decodes_the_options():
    # The SYN arrives at 1000.054 s: the clock's low 6 bits (54) are above the
    # options (WS 7 | SACK), so the cookie TSval is the clock less 31 ms.
    net, lst, seq = cookie_net(1000.050)
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    net.run(stop=lambda: lst.accept_queue_len > 0, until=1005)
    assert net.hosts["b"].stats.tcpext["SyncookiesRecv"] == 1
    b = lst.accept()
    synack = net.sent("b", SYN | ACK)[0]
    off = seq.ts_off(B, 80, A, 40000)
    assert b.ts_offset == off and b.iss == synack.seq
    cookie_ts = (synack.options.ts_val - off) & MASK
    co = cookie_timestamp_decode(cookie_ts, True, True, True)
    assert co is not None and co.wscale == a.rcv_wscale and co.sack_ok
    assert (b.wscale_ok, b.sack_ok, b.snd_wscale) == (True, True, a.rcv_wscale)
    # The child's first RTT sample is the echoed cookie TSval's age, as the
    # kernel's tcp_synack_rtt_meas(sk, NULL) takes it: the 8 ms round trip
    # plus the 31 ms the cookie was behind the clock.
    ack = next(s for _, src, s in net.log if src == "a" and s.flags == ACK)
    assert ack.options.ts_ecr == synack.options.ts_val
    assert cookie_ts == 1000000 + 23 and b.srtt is not None
    assert abs(b.srtt - (0.008 + 0.031)) < 1e-9
