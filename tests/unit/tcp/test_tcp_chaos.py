"""Randomized end-to-end runs: impaired wire, random options and buffers, both
directions, half-closes, then both sides must end CLOSED without error.

The seeds are fixed. Sweeping thousands of them finds, only at 20 % loss,
runs that fail the way the kernel would too: six SYN-ACKs or final ACKs in a
row lost (tcp_synack_retries), or a last ACK lost so often that the
backed-off RTO (up to 120 s) outlasts the peer's 60 s TIME-WAIT and the
retransmission meets a RST.
"""

import random

import pytest
from tcpsim import Net

from ustack.transport.tcp import ACK, TcpState
from ustack.transport.tcp.seq import before

S = TcpState


def scenario(seed: int) -> None:
    r = random.Random(seed)
    net = Net(loss=r.choice([0, 0.02, 0.1, 0.2]), reorder=r.choice([0, 0.1, 0.5]),
              dup=r.choice([0, 0.05, 0.2]), delay=r.choice([0.001, 0.01, 0.1]), seed=seed,
              codec=r.random() < 0.3)
    for h in net.hosts.values():
        for knob in ("tcp_timestamps", "tcp_window_scaling", "tcp_sack"):
            if r.random() < 0.3:
                h.sysctl.set(f"net.ipv4.{knob}", 0)
    iss_a = r.choice([None, 2**32 - r.randrange(1, 100_000)])
    iss_b = r.choice([None, 2**32 - r.randrange(1, 100_000)])
    a, b = net.pair(iss_a=iss_a, iss_b=iss_b)
    if r.random() < 0.5:
        a.set_nodelay(True, net.now)
    if r.random() < 0.3:
        b.rcvbuf = r.choice([3000, 20_000, 500_000])
    up = r.randbytes(r.randrange(0, 300_000))
    down = r.randbytes(r.randrange(0, 300_000))
    got_a, got_b = bytearray(), bytearray()
    sent_a = sent_b = 0
    shut_a = shut_b = False
    while True:
        if sent_a < len(up):
            sent_a += a.send(up[sent_a : sent_a + r.randrange(1, 70_000)], net.now)
        elif not shut_a:
            a.shutdown(1, net.now)
            shut_a = True
        if sent_b < len(down):
            sent_b += b.send(down[sent_b : sent_b + r.randrange(1, 70_000)], net.now)
        elif not shut_b:
            b.shutdown(1, net.now)
            shut_b = True
        for c, got in ((a, got_a), (b, got_b)):
            if c.readable_bytes and r.random() < 0.7:
                got += c.recv(r.randrange(1, 100_000), net.now)
        if bytes(got_b) == up and bytes(got_a) == down and a.eof and b.eof:
            break
        if not net.step():
            # Only the applications can move things on: they must have data to read.
            assert a.readable_bytes or b.readable_bytes, f"stall: {a} {b}"
        assert net.now < 30_000, f"too slow: {a} {b}"
    net.run(until=net.now + 200)
    assert a.state is S.CLOSED and b.state is S.CLOSED
    assert a.error is None and b.error is None


# Seeds 65 and 103 became runs of the last kind described above (a 31 s RTT
# sample from a timestamp echoed after SYN-ACK retries backs the RTO off past
# TIME-WAIT) once SACK recovery changed their course; 120 and 121 replace them.
@pytest.mark.parametrize("seed", [s for s in range(122) if s not in (65, 103)])
def test_random_impaired_sessions(seed):
    scenario(seed)


def test_pure_ack_after_timeout_carries_highest_sequence():
    """Regression: after go-back-N a pure ACK must not carry the rewound SND.NXT."""
    net = Net(codec=False)
    for h in net.hosts.values():
        h.sysctl.set("net.ipv4.tcp_sack", 0)  # with SACK an RTO does not go back N
    a, b = net.pair()
    a.send(b"x" * 5000, net.now)
    a.out.clear()  # all lost
    a.on_timer(a.next_deadline())
    assert before(a.snd_nxt, a.snd_max)
    a.out.clear()
    a._send_ack(net.now)
    assert a.out[-1].flags == ACK and a.out[-1].seq == a.snd_max
