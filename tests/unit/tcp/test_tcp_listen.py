"""Listener: SYN queue, accept queue, overflows and their counters."""

from tcpsim import Net

from ustack.transport.tcp import ACK, RST, SYN, Segment, TcpState

S = TcpState


def clients(net, n, port=80):
    cs = [net.conn("a", 41000 + i, port) for i in range(n)]
    for c in cs:
        c.connect(net.now)
    return cs


def test_accept_queue_and_wakeup():
    net = Net()
    lst = net.listen("b", 80, backlog=8)
    woke = []
    lst.wakeup = lambda: woke.append(net.now)
    cs = clients(net, 3)
    net.run(until=1)
    assert all(c.state is S.ESTABLISHED for c in cs)
    assert lst.accept_queue_len == 3 and len(woke) == 3
    got = [lst.accept() for _ in range(3)]
    assert [g.remote_port for g in got] == [41000, 41001, 41002]
    assert lst.accept() is None
    assert net.hosts["b"].stats.tcp["PassiveOpens"] == 3


def test_syn_queue_overflow_drops_syn():
    net = Net()
    net.hosts["b"].sysctl.set("net.ipv4.tcp_syncookies", 0)  # drop instead of cookies
    lst = net.listen("b", 80, backlog=2)
    net.drop = lambda src, seg: src == "a" and not seg.flags & SYN  # handshakes never finish
    clients(net, 5)
    net.run(until=0.5)
    # inet_csk_reqsk_queue_is_full: more than backlog, so backlog + 1 fit.
    assert lst.syn_queue_len == 3
    st = net.hosts["b"].stats.tcpext
    assert st["ListenDrops"] == 2 and st["TCPReqQFullDrop"] == 2 and st["ListenOverflows"] == 0


def test_somaxconn_caps_backlog():
    net = Net()
    net.hosts["b"].sysctl.set("net.core.somaxconn", 1)
    lst = net.listen("b", 80, backlog=100)
    assert lst.backlog == 1


def test_syn_dropped_when_accept_queue_full():
    net = Net()
    net.hosts["b"].sysctl.set("net.ipv4.tcp_syncookies", 0)  # drop instead of cookies
    lst = net.listen("b", 80, backlog=1)
    clients(net, 3)
    net.run(until=0.5)
    # listen(1) takes 2 (sk_acceptq_is_full is "more than"); the SYN queue had the
    # same bound, so the third SYN was dropped.
    assert lst.accept_queue_len == 2
    st = net.hosts["b"].stats.tcpext
    assert st["ListenDrops"] == 1 and st["ListenOverflows"] == 0
    # Its retransmission at 1 s meets a full accept queue (tcp_conn_request).
    net.run(until=1.5)
    assert st["ListenOverflows"] == 1 and st["ListenDrops"] == 2


def test_accept_queue_overflow_drops_final_ack_and_retransmits_synack():
    net = Net()
    lst = net.listen("b", 80, backlog=1)
    first = clients(net, 1)
    net.run(until=0.5)
    assert lst.accept_queue_len == 1
    cs = [net.conn("a", 42000 + i, 80) for i in range(2)]
    for c in cs:
        c.connect(net.now)
    net.run(until=1.0)
    stuck = [ch for ch in net.hosts["b"].children if ch.state is S.SYN_RECV]
    assert len(stuck) == 1 and lst.accept_queue_len == 2
    st = net.hosts["b"].stats.tcpext
    assert st["ListenOverflows"] == 1 and st["ListenDrops"] == 1
    # The client thinks it is connected.
    assert all(c.state is S.ESTABLISHED for c in first + cs)
    # The stuck child keeps retransmitting its SYN-ACK; once there is room it completes.
    synacks = len(net.sent("b", SYN | ACK))
    net.run(until=4.0)
    assert len(net.sent("b", SYN | ACK)) > synacks
    assert stuck[0].state is S.SYN_RECV
    lst.accept()
    net.run(until=10)
    assert stuck[0].state is S.ESTABLISHED and lst.accept_queue_len == 2


def test_synack_retries_exhausted_child_vanishes():
    net = Net()
    net.hosts["b"].sysctl.set("net.ipv4.tcp_synack_retries", 2)
    lst = net.listen("b", 80)
    net.drop = lambda src, seg: src == "a" and not seg.flags & SYN
    net.hosts["a"].sysctl.set("net.ipv4.tcp_syn_retries", 1)
    clients(net, 1)
    net.run(until=0.5)
    assert lst.syn_queue_len == 1
    net.run(until=30)
    child = net.hosts["b"].children[0]
    assert child.state is S.CLOSED and child.error is None and lst.syn_queue_len == 0
    # SYN-ACK sent at 0.01, 1.01, 3.01; the duplicate SYN at 1.0 got one more.
    assert len(net.sent("b", SYN | ACK)) >= 3


def test_stray_ack_to_listener_gets_rst():
    net = Net()
    lst = net.listen("b", 80)
    child = lst.segment_arrives(Segment(5555, 80, 10, 777, ACK, 100), b"\x0a\0\0\1", 0.0)
    assert child is None
    assert lst.out[0].flags == RST and lst.out[0].seq == 777
    assert lst.segment_arrives(Segment(5555, 80, 10, 0, RST, 0), b"\x0a\0\0\1", 0.0) is None
    assert len(lst.out) == 1


def test_listener_close_aborts_pending():
    net = Net()
    lst = net.listen("b", 80)
    cs = clients(net, 2)
    net.run(until=1)
    gone = lst.close(net.now)
    assert len(gone) == 2 and all(g.state is S.CLOSED for g in gone)
    net.run(until=2)
    assert all(c.state is S.CLOSED and c.error is not None for c in cs)


def test_reconnect_same_port_through_server_time_wait():
    net = Net()
    lst = net.listen("b", 80)
    c1 = net.conn("a", 45000, 80, iss=1000)
    c1.connect(net.now)
    net.run(until=1)
    s1 = lst.accept()
    s1.close(net.now)
    net.run(until=2)
    c1.close(net.now)
    net.run(until=3)
    assert s1.state is S.TIME_WAIT and c1.state is S.CLOSED
    c2 = net.conn("a", 45000, 80, iss=50_000_000)
    c2.connect(net.now)
    net.run(until=3.5)
    assert c2.state is S.ESTABLISHED and lst.accept() is not None
