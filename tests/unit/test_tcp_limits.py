"""Resource caps on connections nobody owns: tcp_max_orphans, tcp_max_tw_buckets.

Each cap is counted when hit (TCPAbortOnMemory, TCPTimeWaitOverflow) and the
connection past it is gone from the stack's tables at once.
"""

from __future__ import annotations

from fuzzing import B_IP_B, TCP_PORT, Harness, SimStack

from ustack.transport.tcp import TcpState


def connections(h: Harness, n: int) -> list[tuple]:
    """*n* established (client on a, accepted child on b) pairs."""
    out = []
    for _ in range(n):
        client, _ = h.a.tcp.connect(None, B_IP_B, TCP_PORT, False)
        h.pump()
        child = h.listener.accept()
        assert child is not None and client.state is TcpState.ESTABLISHED
        h.b.tcp.accepted(child)
        out.append((client, child))
    return out


def test_too_many_orphans_are_reset():
    h = Harness()
    h.a.sysctl.set("net.ipv4.tcp_max_orphans", 2)
    pairs = connections(h, 4)
    for client, _ in pairs:
        client.close(SimStack.clock_now)
        h.pump()
    states = [c.state for c, _ in pairs]
    assert states[:2] == [TcpState.FIN_WAIT2] * 2
    assert states[2:] == [TcpState.CLOSED] * 2
    assert h.a.stats.tcpext["TCPAbortOnMemory"] == 2
    assert h.a.sockstat()["TCP_orphan"] == 2 and len(h.a.tcp.limits.orphans) == 2
    # The peer of a reset orphan learns it at once.
    assert [child.state for _, child in pairs[2:]] == [TcpState.CLOSED] * 2
    # When an orphan finishes (tcp_fin_timeout), its slot is free again.
    h.advance(61)
    assert not h.a.tcp.limits.orphans


def test_time_wait_buckets_overflow_closes_instead():
    h = Harness()
    h.a.sysctl.set("net.ipv4.tcp_max_tw_buckets", 2)
    pairs = connections(h, 4)
    for client, child in pairs:
        client.shutdown(1, SimStack.clock_now)
        h.pump()
        child.close(SimStack.clock_now)
        h.pump()
    assert [c.state for c, _ in pairs] == [TcpState.TIME_WAIT] * 2 + [TcpState.CLOSED] * 2
    assert h.a.stats.tcpext["TCPTimeWaitOverflow"] == 2
    assert h.a.sockstat()["TCP_tw"] == 2
    assert all(c not in h.a.tcp.ehash.values() for c, _ in pairs[2:])
    # TIME-WAIT ends after 60 s and gives its buckets back.
    h.advance(61)
    assert not h.a.tcp.limits.time_wait and h.a.sockstat()["TCP_tw"] == 0
