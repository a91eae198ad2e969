"""RFC 5961 (blind in-window attacks), PAWS and the ACK-loop limits, on the sans-IO core.

An established pair from tcpsim; the attacker's segments are handed to b's
``segment_arrives`` directly, with a sequence number in b's window but not the
one b expects, as an off-path attacker that guessed the 4-tuple would send.
"""

from __future__ import annotations

import errno

from tcpsim import Net

from ustack.transport.tcp import ACK, FIN, RST, SYN, Segment, TcpOptions, TcpState
from ustack.transport.tcp.secure import ChallengeAckLimit
from ustack.transport.tcp.seq import seq_add

S = TcpState


def pair(**sysctls):
    net = Net(codec=False)
    for h in net.hosts.values():
        for name, value in sysctls.items():
            h.sysctl.set(f"net.ipv4.{name}", value)
    a, b = net.pair()
    a.send(b"hello", net.now)
    b.send(b"world", net.now)
    net.run(until=net.now + 1)
    b.out.clear()
    return net, a, b


def seg(b, seq_off: int, flags: int, ack: int | None = None, payload: bytes = b"",
        opts: TcpOptions | None = None) -> Segment:
    """A segment from a's port to b, seq_off from what b expects."""
    return Segment(b.remote_port, b.local_port, seq_add(b.rcv_nxt, seq_off),
                   b.snd_nxt if ack is None else ack, flags, 1000, opts, payload)


def acks(b) -> list[Segment]:
    out = [s for s in b.out if s.flags == ACK]
    b.out.clear()
    return out


def ext(b, name: str) -> int:
    return b.stats.tcpext[name]


def test_in_window_rst_gets_a_challenge_ack_and_the_connection_survives():
    net, a, b = pair()
    b.segment_arrives(seg(b, 100, RST), net.now)
    assert b.state is S.ESTABLISHED and b.error is None
    [ch] = acks(b)
    # The challenge carries what a legitimate peer needs to send an exact RST.
    assert ch.ack == b.rcv_nxt and ch.seq == b.snd_max
    assert ext(b, "TCPChallengeACK") == 1


def test_rst_exactly_at_rcv_nxt_resets_and_out_of_window_rst_is_ignored():
    net, a, b = pair()
    b.segment_arrives(seg(b, 10_000_000, RST), net.now)
    assert b.state is S.ESTABLISHED and not b.out
    b.segment_arrives(seg(b, 0, RST), net.now)
    assert b.state is S.CLOSED and b.error.errno == errno.ECONNRESET


def test_syn_in_synchronized_state_is_challenged_in_and_out_of_window():
    net, a, b = pair()
    b.segment_arrives(seg(b, 5, SYN), net.now)
    assert len(acks(b)) == 1 and b.state is S.ESTABLISHED
    net.now += 1.0  # past tcp_invalid_ratelimit
    b.segment_arrives(seg(b, 50_000_000, SYN), net.now)
    assert len(acks(b)) == 1 and b.state is S.ESTABLISHED
    assert ext(b, "TCPSYNChallenge") == 2 and ext(b, "TCPChallengeACK") == 2


def test_challenge_acks_are_rate_limited_per_connection():
    net, a, b = pair()
    for i in range(10):
        b.segment_arrives(seg(b, 100 + i, RST), net.now)
    assert len(acks(b)) == 1
    assert ext(b, "TCPChallengeACK") == 1 and ext(b, "TCPACKSkippedChallenge") == 9
    net.now += 0.5  # tcp_invalid_ratelimit = 500 ms
    b.segment_arrives(seg(b, 100, RST), net.now)
    assert len(acks(b)) == 1 and ext(b, "TCPChallengeACK") == 2


def test_host_wide_challenge_ack_limit():
    limit = 10
    net, a, b = pair(tcp_invalid_ratelimit=0, tcp_challenge_ack_limit=limit)
    b.challenge_limit = ChallengeAckLimit(b.sysctl)
    net.now = float(int(net.now) + 1)  # the start of a second
    for i in range(100):
        b.segment_arrives(seg(b, 100 + i, RST), net.now + i / 1000)
    sent = len(acks(b))
    # A random budget in [limit/2, limit*3/2) per second (tcp_send_challenge_ack).
    assert limit // 2 <= sent < limit + limit // 2
    assert ext(b, "TCPChallengeACK") == sent
    b.segment_arrives(seg(b, 100, RST), net.now + 1.0)
    assert len(acks(b)) == 1


def test_too_old_ack_is_challenged_and_its_data_dropped():
    net, a, b = pair()
    rcv_nxt, readable = b.rcv_nxt, b.readable_bytes
    old = seq_add(b.snd_una, -(b.max_window + 1000))
    b.segment_arrives(seg(b, 0, ACK, ack=old, payload=b"injected"), net.now)
    assert b.rcv_nxt == rcv_nxt and b.readable_bytes == readable
    assert len(acks(b)) == 1 and ext(b, "TCPChallengeACK") == 1


def test_ack_of_unsent_data_is_dropped_silently_when_established():
    net, a, b = pair()
    rcv_nxt = b.rcv_nxt
    b.segment_arrives(seg(b, 0, ACK, ack=seq_add(b.snd_max, 5000), payload=b"injected"),
                      net.now)
    assert b.rcv_nxt == rcv_nxt and not b.out and b.state is S.ESTABLISHED


def test_paws_drops_old_timestamps_and_rate_limits_the_dupacks():
    net, a, b = pair()
    assert b.ts_ok
    old = TcpOptions(ts_val=(b.ts_recent - 1000) & 0xFFFFFFFF, ts_ecr=0)
    rcv_nxt = b.rcv_nxt
    for _ in range(5):
        b.segment_arrives(seg(b, 0, ACK | FIN, opts=old), net.now)
    assert b.rcv_nxt == rcv_nxt and b.state is S.ESTABLISHED
    assert ext(b, "PAWSEstab") == 5
    assert len(acks(b)) == 1 and ext(b, "TCPACKSkippedPAWS") == 4


def test_desynchronised_ends_do_not_ack_each_other_forever():
    """Regression: blind in-window data desynchronises the pair; the ACKs they
    exchange must stay a trickle (tcp_invalid_ratelimit), not a storm."""
    net, a, b = pair()
    b.segment_arrives(seg(b, 0, ACK, payload=b"x" * 100), net.now)
    # a's FIN now lies before b's window, and b's ACKs are beyond what a sent:
    # outside ESTABLISHED a answers those with challenge ACKs (RFC 5961 5.2).
    a.shutdown(1, net.now)
    start = len(net.log)
    net.run(until=net.now + 10)
    # A trickle (one ACK per 500 ms per end plus a's FIN retransmissions), not thousands.
    assert len(net.log) - start < 100, len(net.log) - start
    assert ext(a, "TCPACKSkippedChallenge") + ext(b, "TCPACKSkippedSeq") > 0
