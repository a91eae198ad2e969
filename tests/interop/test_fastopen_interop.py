"""TCP Fast Open against the kernel's TFO, judged by the kernel's own counters.

Both directions: kernel ``curl --tcp-fastopen`` to ustack's http service, and
``ustack nc --fastopen`` to a kernel Python server with TCP_FASTOPEN. The
namespace kernel's nstat counters say what the other side did; a tcpdump
capture on the TAP shows the data riding in the SYNs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from netns import USTACK, Daemon, Netns, wait_for

SERVER = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.0.0.1", int(sys.argv[1])))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    s.listen(16)
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        data = c.recv(65536)
        syn_data = bool(struct.unpack_from("8B", info)[5] & 0x20)
        print(f"{data.decode()} syn_data={int(syn_data)}", flush=True)
        c.sendall(b"ok:" + data)
        c.close()
""")


def kernel_tfo(ns: Netns, mode: int) -> None:
    ns.run(["sysctl", "-qw", f"net.ipv4.tcp_fastopen={mode}"])


def delta(before: dict, after: dict, name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def curl_tfo(ns: Netns, url: str = "http://10.0.0.2/bytes/100") -> str:
    p = ns.run(["curl", "-sf", "--tcp-fastopen", "-o", "/dev/null", "-w", "%{http_code}",
                url])
    return p.stdout


class Capture:
    """tcpdump on the kernel's side of the TAP: the SYNs that went either way."""

    def __init__(self, ns: Netns) -> None:
        self.path = tempfile.mktemp(suffix=".pcap")
        self.proc = ns.popen(["tcpdump", "--immediate-mode", "-U", "-n", "-i", "tap0",
                              "-w", self.path, "tcp[tcpflags] & tcp-syn != 0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.proc.stderr.readline()  # "listening on tap0 ..."

    def syns(self) -> list:
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait(timeout=10)
        from scapy.all import TCP, rdpcap

        pkts = [p for p in rdpcap(self.path) if TCP in p]
        os.unlink(self.path)
        return pkts


def tfo_option(pkt) -> bytes | None:
    from scapy.all import TCP

    for kind, value in pkt[TCP].options:
        if kind == "TFO":
            # scapy decodes an 8-byte cookie as two 32-bit words.
            if isinstance(value, tuple):
                return b"".join(v.to_bytes(4, "big") for v in value)
            return bytes(value)
    return None


@pytest.fixture
def tfo_server(netns):
    """ustack serving http with Fast Open on (tcp_fastopen=3)."""
    d = Daemon(netns, "--serve", "http:80", "--sysctl", "net.ipv4.tcp_fastopen=3")
    yield d
    assert d.stop() == 0, d.log_text()


def test_kernel_curl_tfo_to_ustack(netns, tfo_server):
    d = tfo_server
    cap = Capture(netns)
    before = netns.nstat()
    ustack_before = d.stat()["TcpExt"]
    assert [curl_tfo(netns) for _ in range(3)] == ["200"] * 3
    after = netns.nstat()
    syns = [p for p in cap.syns() if p["TCP"].flags == "S"]
    ext = d.stat()["TcpExt"]
    # The first SYN asked for a cookie; the other two carried the request.
    assert len(syns) == 3
    assert tfo_option(syns[0]) == b"" and not bytes(syns[0]["TCP"].payload)
    for syn in syns[1:]:
        assert len(tfo_option(syn)) == 8
        assert bytes(syn["TCP"].payload).startswith(b"GET /bytes/100 HTTP/1.1")
    assert delta(before, after, "TcpExtTCPFastOpenActive") == 2
    assert delta(before, after, "TcpExtTCPFastOpenActiveFail") == 0
    assert ext["TCPFastOpenPassive"] - ustack_before["TCPFastOpenPassive"] == 2
    assert ext["TCPFastOpenCookieReqd"] - ustack_before["TCPFastOpenCookieReqd"] == 1
    ss = d.cli("ss").stdout
    assert "fastopen:0/256" in ss


def test_kernel_curl_with_stale_cookie_falls_back(netns, tfo_server):
    d = tfo_server
    assert curl_tfo(netns) == "200"
    d.cli("sysctl", "net.ipv4.tcp_fastopen_key=00112233-44556677-8899aabb-ccddeeff")
    before = netns.nstat()
    assert curl_tfo(netns) == "200"  # the old cookie: the data goes again after the SYN
    assert curl_tfo(netns) == "200"  # the new cookie from that SYN-ACK works
    after = netns.nstat()
    assert delta(before, after, "TcpExtTCPFastOpenActiveFail") == 1
    assert delta(before, after, "TcpExtTCPFastOpenActive") == 1
    assert d.stat()["TcpExt"]["TCPFastOpenPassiveFail"] == 1


def start_kernel_server(ns: Netns, port: int) -> subprocess.Popen:
    p = ns.popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE,
                 text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    return p


def ustack_nc_tfo(d: Daemon, text: str, port: int) -> str:
    """``ustack nc --fastopen`` to the kernel server: send *text*, return the answer."""
    p = subprocess.run(
        [USTACK, "nc", "--fastopen", d.tap, "10.0.0.1", str(port), "--control", d.control],
        input=text, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_ustack_client_tfo_to_kernel_server(netns):
    kernel_tfo(netns, 3)
    d = Daemon(netns)
    server = start_kernel_server(netns, 8000)
    try:
        before = netns.nstat()
        assert ustack_nc_tfo(d, "one", 8000) == "ok:one"  # gets a cookie
        assert server.stdout.readline().strip() == "one syn_data=0"
        assert ustack_nc_tfo(d, "two", 8000) == "ok:two"  # data in the SYN
        assert server.stdout.readline().strip() == "two syn_data=1"
        mid = netns.nstat()
        assert delta(before, mid, "TcpExtTCPFastOpenPassive") == 1
        assert delta(before, mid, "TcpExtTCPFastOpenCookieReqd") == 1
        metrics = d.cli("tcp_metrics", "show").stdout
        assert metrics.startswith("10.0.0.1 ") and "fo_cookie " in metrics
        # A new kernel key makes our cached cookie invalid: the kernel counts
        # PassiveFail, acks only the SYN, and the data still arrives.
        netns.run(["sysctl", "-qw",
                   "net.ipv4.tcp_fastopen_key=01234567-89abcdef-01234567-89abcdef"])
        assert ustack_nc_tfo(d, "three", 8000) == "ok:three"
        assert server.stdout.readline().strip() == "three syn_data=0"
        after = netns.nstat()
        assert delta(mid, after, "TcpExtTCPFastOpenPassiveFail") == 1
        ext = d.stat()["TcpExt"]
        assert ext["TCPFastOpenActive"] == 1 and ext["TCPFastOpenActiveFail"] == 1
        assert d.cli("tcp_metrics", "flush").returncode == 0
        assert d.cli("tcp_metrics").stdout == ""
    finally:
        server.kill()
        assert d.stop() == 0, d.log_text()


def test_no_cookie_modes_both_ways(netns):
    # ustack client 0x5 -> kernel server 0x203 (0x200: no cookie required).
    kernel_tfo(netns, 0x203)
    d = Daemon(netns, "--serve", "http:80", "--sysctl", "net.ipv4.tcp_fastopen=0x207")
    server = start_kernel_server(netns, 8001)
    try:
        before = netns.nstat()
        assert ustack_nc_tfo(d, "first", 8001) == "ok:first"
        assert server.stdout.readline().strip() == "first syn_data=1"
        assert delta(before, netns.nstat(), "TcpExtTCPFastOpenPassive") == 1
        # kernel client 0x5 -> ustack server 0x200.
        kernel_tfo(netns, 0x5)
        before = netns.nstat()
        passive = d.stat()["TcpExt"]["TCPFastOpenPassive"]
        assert curl_tfo(netns) == "200"
        assert delta(before, netns.nstat(), "TcpExtTCPFastOpenActive") == 1
        assert d.stat()["TcpExt"]["TCPFastOpenPassive"] == passive + 1
    finally:
        server.kill()
        assert d.stop() == 0, d.log_text()


def test_tfo_saves_a_round_trip_under_delay(netns):
    d = Daemon(netns, "--serve", "http:80", "--sysctl", "net.ipv4.tcp_fastopen=3",
               "--impair", "rx:delay=50ms;tx:delay=50ms")
    try:
        url = "http://10.0.0.2/bytes/10"

        def total(*extra: str) -> float:
            p = netns.run(["curl", "-sf", *extra, "-o", "/dev/null", "-w", "%{time_total}",
                           url])
            return float(p.stdout)

        total()  # neighbours resolved
        assert curl_tfo(netns, url) == "200"  # cookie fetched
        plain = min(total() for _ in range(2))
        fast = min(total("--tcp-fastopen") for _ in range(2))
        # One RTT is 100 ms here; demand well over half of it.
        assert plain - fast > 0.06, (plain, fast)
        assert wait_for(lambda: d.stat()["TcpExt"]["TCPFastOpenPassive"] >= 2)
    finally:
        assert d.stop() == 0, d.log_text()
