"""Header prediction (``tcp_rcv_established``'s fast path) and its counters.

In-order data takes the fast path (TCPHPHits), and so does an ACK that
advances SND.UNA with the window unchanged (TCPHPAcks); anything unusual
(loss, reordering, a window change, a FIN) takes the slow path. Either way
the bytes arrive exactly and the counters say which path each segment took.
"""

from tcpsim import Net, blob, transfer


def test_clean_transfer_is_header_predicted():
    net = Net()
    a, b = net.pair()
    data = blob(2_000_000)
    assert transfer(net, a, b, data) == data
    rx = net.hosts["b"].stats.tcpext
    # Every data segment but the handshake's was predicted: in order, only ACK/PSH.
    assert rx["TCPHPHits"] >= b.segs_in - 2
    # The sender's ACKs carry a window that moves as the reader drains the
    # queue: a changed window is the slow path's (pred_flags hold the window).
    tx = net.hosts["a"].stats.tcpext
    assert tx["TCPHPAcks"] + tx["TCPPureAcks"] >= a.segs_in - 2


def test_request_response_predicts_data_and_its_ack():
    """Each message is in-order data whose ACK advances SND.UNA: TCPHPHits and
    TCPHPAcks both count it, on both ends."""
    net = Net()
    a, b = net.pair()
    a.nodelay = b.nodelay = True
    rounds = 50

    def await_bytes(conn, n: int) -> bytes:
        while conn.readable_bytes < n:
            assert net.step(), "stall"
        return conn.recv(n, net.now)

    for i in range(rounds):
        msg = bytes([i]) * 10
        a.send(msg, net.now)
        assert await_bytes(b, 10) == msg
        b.send(msg, net.now)
        assert await_bytes(a, 10) == msg
    for host in ("a", "b"):
        ext = net.hosts[host].stats.tcpext
        assert ext["TCPHPHits"] >= rounds - 2
        assert ext["TCPHPAcks"] >= rounds - 2


def test_reordering_falls_back_to_the_slow_path_and_stays_exact():
    net = Net(loss=0.02, reorder=0.2, dup=0.05, seed=11)
    a, b = net.pair()
    data = blob(800_000, 4)
    assert transfer(net, a, b, data) == data
    rx = net.hosts["b"].stats.tcpext
    # Out-of-order data is queued by the slow path (tcp_data_queue_ofo) ...
    assert rx["TCPOFOQueue"] > 0
    # ... while in-order stretches between the holes are still predicted.
    assert rx["TCPHPHits"] > 0
