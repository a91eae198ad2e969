"""Blind attacks on an established connection, from the kernel side with scapy.

A kernel socket talks to the stack's echo service; an attacker in the same
namespace (raw packets from scapy) who knows the 4-tuple and a sequence
number inside the window sends RSTs not exactly at RCV.NXT, SYNs, and data
with an unacceptable ACK (RFC 5961 sections 3, 4 and 5). The connection must
survive with its byte stream intact, every attack segment must be answered
by at most a rate-limited challenge ACK, and the counters must say so.
Also: the ISNs of many connections show no predictable increment (RFC 6528).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from netns import USTACK, Daemon

ATTACK = textwrap.dedent(r"""
    import json, socket, sys, time
    from scapy.all import IP, TCP, AsyncSniffer, conf, send
    conf.verb = 0
    count = int(sys.argv[1])
    s = socket.create_connection(("10.0.0.2", 7), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lport = s.getsockname()[1]
    seen = []
    sniffer = AsyncSniffer(iface="tap0", store=False, prn=seen.append,
                           lfilter=lambda p: TCP in p and lport in (p[TCP].sport, p[TCP].dport))
    sniffer.start()
    time.sleep(0.5)

    def echo(data):
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            got += s.recv(65536)
        return got

    assert echo(b"before") == b"before"
    time.sleep(0.3)
    mine = [p[TCP] for p in seen if p[TCP].sport == lport]
    rcv_nxt = max((t.seq + len(t.payload)) & 0xFFFFFFFF for t in mine)
    snd_nxt = mine[-1].ack
    base = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=lport, dport=7, window=502)
    attacks = {
        "rst": [base.copy() for _ in range(count)],
        "syn": [base.copy() for _ in range(count)],
        "data": [base.copy() for _ in range(count)],
    }
    for i, p in enumerate(attacks["rst"]):
        p[TCP].flags, p[TCP].seq = "R", rcv_nxt + 1 + 13 * i
    for i, p in enumerate(attacks["syn"]):
        p[TCP].flags, p[TCP].seq = "S", rcv_nxt + 5 + 13 * i
    for i, p in enumerate(attacks["data"]):
        # In the window, but acknowledging data from far before SND.UNA.
        p[TCP].flags, p[TCP].seq = "PA", rcv_nxt
        p[TCP].ack = (snd_nxt - (1 << 30)) & 0xFFFFFFFF
        p = p / b"EVIL"
        attacks["data"][i] = p
    t0 = time.monotonic()
    acks_before = sum(1 for p in seen if p[TCP].dport == lport)
    for kind in ("rst", "syn", "data"):
        send(attacks[kind])
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    from_stack = [p[TCP] for p in seen if p[TCP].dport == lport][acks_before:]
    after = echo(b"after the attack")
    sniffer.stop()
    print(json.dumps({"after": after.decode(errors="replace"), "elapsed": elapsed,
                      "acks": len(from_stack),
                      "rsts": sum(1 for t in from_stack if t.flags & 0x04)}))
""")

ISNS = textwrap.dedent(r"""
    import json, socket, time
    from scapy.all import TCP, AsyncSniffer, conf
    conf.verb = 0
    isns = []
    sniffer = AsyncSniffer(iface="tap0", store=False,
                           prn=lambda p: isns.append((p[TCP].dport, p[TCP].seq)),
                           lfilter=lambda p: TCP in p and p[TCP].sport == 7
                           and p[TCP].flags & 0x12 == 0x12)
    sniffer.start()
    time.sleep(0.5)
    for _ in range(200):
        s = socket.create_connection(("10.0.0.2", 7), timeout=10)
        s.close()
        time.sleep(0.005)  # a Python sniffer on a busy machine drops bursts
    time.sleep(1)
    sniffer.stop()
    print(json.dumps(isns))
""")


def tcpext(d: Daemon) -> dict:
    return d.stat()["TcpExt"]


def run_script(ns, script: str, *args: str) -> dict | list:
    p = ns.run([sys.executable, "-c", script, *args], timeout=120)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def echo(netns):
    d = Daemon(netns, "--serve", "echo:7")
    yield d
    assert d.stop() == 0, d.log_text()


def test_blind_rst_syn_and_data_injection_is_challenged_and_survived(netns, echo):
    before = tcpext(echo)
    res = run_script(netns, ATTACK, "100")
    after = tcpext(echo)
    assert res["after"] == "after the attack", res
    assert res["rsts"] == 0
    delta = {k: after[k] - before[k] for k in after}
    assert delta["TCPSYNChallenge"] == 100
    # 300 segments each earned a challenge; one per tcp_invalid_ratelimit (500 ms) went out.
    sent = delta["TCPChallengeACK"]
    assert 1 <= sent <= res["elapsed"] / 0.5 + 2, (sent, res)
    assert sent + delta["TCPACKSkippedChallenge"] == 300
    assert res["acks"] == sent, res


def test_host_wide_challenge_ack_limit(netns, echo):
    echo.cli("sysctl", "net.ipv4.tcp_invalid_ratelimit=0")
    echo.cli("sysctl", "net.ipv4.tcp_challenge_ack_limit=20")
    before = tcpext(echo)
    res = run_script(netns, ATTACK, "40")
    after = tcpext(echo)
    assert res["after"] == "after the attack", res
    sent = after["TCPChallengeACK"] - before["TCPChallengeACK"]
    # At least limit / 2 and at most limit * 3/2 - 1 per second (the budget is
    # drawn at random each second), of the 120 attack segments.
    seconds = int(res["elapsed"]) + 2
    assert 10 <= sent <= 29 * seconds and sent < 120, (sent, res)
    assert res["acks"] == sent


def test_isns_of_many_connections_are_unpredictable(netns, echo):
    isns = [seq for _, seq in run_script(netns, ISNS)]
    assert len(isns) >= 100
    deltas = [(b - a) % 2**32 for a, b in zip(isns, isns[1:], strict=False)]
    assert len(set(deltas)) >= len(deltas) - 2
    # Spread over the whole 32-bit space, not a counter creeping upwards.
    assert len({d >> 28 for d in deltas}) >= 12


LISTEN = textwrap.dedent(r"""
    import json, socket, sys
    n = int(sys.argv[1])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("10.0.0.1", 5001))
    ls.listen(64)
    print("listening", flush=True)
    ports = []
    for _ in range(n):
        c, (_, port) = ls.accept()
        ports.append(port)
        c.close()
    print(json.dumps(ports), flush=True)
""")


def test_ephemeral_ports_of_the_stack_are_randomised(netns, echo):
    n = 6  # each `ustack nc` is a CLI start-up: keep the count small
    server = netns.popen([sys.executable, "-c", LISTEN, str(n)], stdout=subprocess.PIPE,
                         text=True)
    assert server.stdout.readline().strip() == "listening"
    for _ in range(n):
        subprocess.run([USTACK, "nc", "-N", "--control", echo.control, echo.tap, "10.0.0.1",
                        "5001"], input="", capture_output=True, text=True, timeout=30,
                       check=True)
    ports = json.loads(server.stdout.readline())
    server.wait(timeout=10)
    low, high = 32768, 60999
    assert len(set(ports)) == n and all(low <= p <= high for p in ports)
    # RFC 6056 double-hash: one destination's ports walk on by random even
    # steps (2..16), where a sequential allocator's would all be equal.
    steps = [(b - a) % (high - low + 1) for a, b in zip(ports, ports[1:], strict=False)]
    assert len(set(steps)) > 1 and all(s % 2 == 0 and s <= 16 for s in steps), steps
