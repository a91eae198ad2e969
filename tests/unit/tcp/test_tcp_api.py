"""What the socket layer sees: wakeups, buffer space, errors; and garbage input."""

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcpsim import Net, transfer

from ustack.transport.tcp import TcpOptions, TcpState
from ustack.transport.tcp.header import Segment
from ustack.transport.tcp.seq import seq_add

S = TcpState


def test_wakeup_on_data_space_and_state():
    net = Net()
    a, b = net.pair()
    woke = {"a": 0, "b": 0}
    a.wakeup = lambda: woke.__setitem__("a", woke["a"] + 1)
    b.wakeup = lambda: woke.__setitem__("b", woke["b"] + 1)
    a.send(b"hello", net.now)
    net.run(until=net.now + 1)
    assert woke["b"] >= 1 and b.readable_bytes == 5
    assert woke["a"] >= 1  # the ACK freed send space
    n = woke["b"]
    a.close(net.now)
    net.run(until=net.now + 1)
    assert woke["b"] > n and b.state is S.CLOSE_WAIT


def test_send_buffer_fills_and_frees():
    net = Net()
    a, b = net.pair()
    a.sndbuf_locked = True
    assert a.send_space == a.sndbuf == 16384
    assert a.send(bytes(100_000), net.now) == 16384
    assert a.send_space == 0 and a.send(b"more", net.now) == 0
    net.run(until=net.now + 1)
    assert a.send_space == 16384


def test_send_after_close_is_epipe_and_recv_blocks():
    net = Net()
    a, b = net.pair()
    with pytest.raises(BlockingIOError):
        b.recv(10, net.now)
    a.close(net.now)
    with pytest.raises(OSError) as e:
        a.send(b"x", net.now)
    assert e.value.errno == errno.EPIPE
    assert a.send_space == 0


def test_data_queued_before_handshake_is_sent_after():
    net = Net()
    net.listen("b", 80)
    a = net.conn("a", 40000, 80)
    a.connect(net.now)
    assert a.send(b"early", net.now) == 5
    assert all(not s.payload for s in a.out)
    net.run(until=1)
    b = net.hosts["b"].listeners[80].accept()
    assert b.recv(10, net.now) == b"early"


def test_info_fields():
    net = Net()
    a, b = net.pair()
    info = a.info()
    for k in ("state", "rto", "rtt", "rttvar", "snd_cwnd", "ssthresh", "snd_mss", "rcv_mss",
              "unacked", "retrans", "lost", "snd_wnd", "rcv_wnd", "bytes_acked",
              "bytes_received", "segs_in", "segs_out", "recv_q", "send_q"):
        assert k in info
    assert info["snd_cwnd"] == 10 and info["segs_out"] == 2 and info["segs_in"] == 1


garbage = st.builds(
    lambda dseq, dack, flags, win, payload, ts: (dseq, dack, flags, win, payload, ts),
    st.integers(-70000, 70000), st.integers(-70000, 70000), st.integers(0, 255),
    st.integers(0, 65535), st.binary(max_size=2000),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage, max_size=30), st.sampled_from(["ESTABLISHED", "FIN_WAIT", "SYN_SENT"]))
def test_garbage_segments_never_crash(segs, where):
    net = Net(codec=False)
    if where == "SYN_SENT":
        a = net.conn("a", 40000, 80, iss=77)
        a.connect(net.now)
        target, peer_seq = a, 0
    else:
        a, b = net.pair()
        if where == "FIN_WAIT":
            a.close(net.now)
        target, peer_seq = a, a.rcv_nxt
    for dseq, dack, flags, win, payload, ts in segs:
        opts = TcpOptions(ts_val=ts, ts_ecr=0) if ts is not None else None
        seg = Segment(80, 40000, seq_add(peer_seq, dseq), seq_add(target.snd_nxt, dack), flags,
                      win, opts, payload)
        target.segment_arrives(seg, net.now)
        target.on_timer(net.now)
        net.now += 0.01
        assert target.state in S
    if where == "ESTABLISHED" and a.state is S.ESTABLISHED and b.state is S.ESTABLISHED:
        # Survived: drop what the garbage provoked, then the connection still works
        # unless the garbage moved its sequence state (then a RST/timeout ends it).
        a.out.clear()
        net.run(until=net.now + 400, stop=lambda: a.state is not S.ESTABLISHED)


def test_transfer_after_harmless_garbage():
    net = Net()
    a, b = net.pair()
    for off in (100_000_000, -100_000_000):
        b.segment_arrives(Segment(40000, 80, seq_add(b.rcv_nxt, off), b.snd_nxt, 0x10, 500,
                                  None, b"junk"), net.now)
    data = bytes(range(256)) * 1000
    assert transfer(net, a, b, data) == data


def test_icmp_error_fails_connect_and_becomes_soft_error_later():
    net = Net()
    c = net.conn("a", 40001, 81)
    c.connect(net.now)
    c.icmp_error(errno.EHOSTUNREACH)
    assert c.state is S.CLOSED and c.error.errno == errno.EHOSTUNREACH
    a, b = net.pair()
    a.icmp_error(errno.EHOSTUNREACH)
    assert a.state is S.ESTABLISHED and a.error is None
    net.hosts["a"].sysctl.set("net.ipv4.tcp_retries2", 2)
    net.drop = lambda src, seg: True
    a.send(b"x", net.now)
    net.run(until=net.now + 100)
    assert a.state is S.CLOSED and a.error.errno == errno.EHOSTUNREACH
