"""Seeing and filtering the path against the real kernel: ``ustack capture`` of a
curl download read back by tcpdump and scapy, ``ustack filter`` blocking
curl and counting, ``ustack top`` printing frames. All inside a private
network namespace; about 6 s."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
from netns import USTACK, Daemon, Netns, requires_interop, wait_for
from scapy.layers.inet import IP, TCP
from scapy.utils import PcapReader, rdpcap

pytestmark = [pytest.mark.interop, requires_interop]
SIZE = 300_000


@pytest.fixture(scope="module")
def lab():
    ns = Netns()
    daemon = None
    try:
        daemon = Daemon(ns, "--serve", "http:80")
        yield ns, daemon
    finally:
        if daemon is not None:
            daemon.stop()
        ns.close()


def _stream(pkts, sport: int) -> bytes:
    """The TCP byte stream sent from port *sport*, in sequence order."""
    segs = {}
    for p in pkts:
        if TCP in p and p[TCP].sport == sport and len(p[TCP].payload):
            segs[p[TCP].seq] = bytes(p[TCP].payload)
    out = bytearray()
    seq = min(segs)
    while seq in segs:
        out += segs[seq]
        seq += len(segs[seq])
    return bytes(out)


def test_capture_of_a_curl_download_matches_what_the_kernel_received(lab, tmp_path) -> None:
    ns, daemon = lab
    pcap = tmp_path / "http.pcap"
    body = tmp_path / "body"
    cap = subprocess.Popen(
        [USTACK, "capture", daemon.tap, "-w", str(pcap), "--point", "rx,tx",
         "--filter", "tcp port 80", "--control", daemon.control],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert cap.stderr is not None
        assert "capturing on" in cap.stderr.readline()
        ns.run(["curl", "-sS", "--max-time", "20", "-o", str(body),
                f"http://10.0.0.2/bytes/{SIZE}"])
        time.sleep(0.3)  # the last ACKs reach the capture
    finally:
        cap.send_signal(signal.SIGINT)  # Ctrl-C: the capture stops cleanly
        _, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    assert "packets captured" in err and "0 packets dropped" in err
    got = body.read_bytes()
    assert len(got) == SIZE
    # tcpdump reads the file.
    td = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True,
                        timeout=30)
    assert td.returncode == 0, td.stderr
    assert "10.0.0.2.80 > 10.0.0.1." in td.stdout and "10.0.0.1." in td.stdout
    assert "Flags [S]" in td.stdout and "Flags [S.]" in td.stdout
    # scapy: the stack's bytes on the wire are the HTTP response curl saved.
    pkts = rdpcap(str(pcap))
    response = _stream(pkts, 80)
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(payload).hexdigest() == hashlib.sha256(got).hexdigest()
    assert _stream(pkts, pkts[0][TCP].sport).startswith(b"GET /bytes/")
    if "offload on" in daemon.ready_line:
        # With TSO the stack hands the kernel super-frames: tx shows them whole.
        assert max(len(p) for p in pkts if TCP in p and p[TCP].sport == 80) > 1514


def test_capture_at_ip_rcv_is_raw_ipv4_and_stops_after_count(lab, tmp_path) -> None:
    ns, daemon = lab
    pcap = tmp_path / "icmp.pcap"
    cap = subprocess.Popen(
        [USTACK, "capture", daemon.tap, "-w", str(pcap), "-c", "3", "--point", "ip_rcv",
         "--filter", "icmp", "--control", daemon.control],
        stderr=subprocess.PIPE, text=True,
    )
    assert cap.stderr is not None
    assert "capturing on" in cap.stderr.readline()
    ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2"])
    _, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    assert "3 packets captured" in err
    with PcapReader(str(pcap)) as reader:
        assert reader.linktype == 228  # LINKTYPE_IPV4
        pkts = list(reader)
    assert len(pkts) == 3 and all(p[IP].src == "10.0.0.1" for p in pkts)
    td = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True,
                        timeout=30)
    assert td.stdout.count("10.0.0.1 > 10.0.0.2: ICMP echo request") == 3, td.stdout


def test_filter_drop_makes_curl_fail_and_counts_until_deleted(lab) -> None:
    ns, daemon = lab
    url = "http://10.0.0.2/"
    daemon.cli("filter", "add", "INPUT", "--proto", "tcp", "--dport", "80", "--drop")
    try:
        blocked = ns.run(["curl", "-sS", "--max-time", "2", "-o", "/dev/null", url],
                         check=False)
        assert blocked.returncode == 28, blocked  # curl: operation timed out
        listing = json.loads(daemon.cli("filter", "list", "--json").stdout)
        rule = next(c for c in listing if c["chain"] == "INPUT")["rules"][0]
        assert rule["target"] == "DROP" and rule["dport"] == "80"
        assert rule["packets"] >= 2 and rule["bytes"] >= 2 * 60  # the SYN and a retry
        assert daemon.stat()["drop_reasons"]["NETFILTER_DROP"] >= rule["packets"]
    finally:
        daemon.cli("filter", "del", "INPUT", "1")
    ok = ns.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                 url])
    assert ok.stdout == "200"


def test_top_prints_live_frames(lab) -> None:
    ns, daemon = lab
    # A slow download keeps one connection busy while top samples.
    curl = ns.popen(["curl", "-s", "--limit-rate", "4M", "-o", "/dev/null",
                     "http://10.0.0.2/bytes/100000000"])
    try:
        time.sleep(0.3)
        out = subprocess.run(
            [USTACK, "top", daemon.tap, "-n", "1", "-d", "0.5", "--control", daemon.control],
            capture_output=True, text=True, timeout=30, check=True,
            env={**os.environ, "COLUMNS": "160"},
        ).stdout
    finally:
        curl.kill()
        curl.wait(timeout=10)
    assert "RX queues" in out and "softnet" in out and "busiest TCP sockets" in out
    row = next(line for line in out.splitlines() if "rx-0" in line)
    assert float(row.split("│")[3].strip().rstrip("kM")) > 0  # rx pkt/s: the ACKs, live
    sock = next(line for line in out.splitlines() if "10.0.0.2:80 " in line)
    assert "ESTABLISHED" in sock
    assert float(sock.split("│")[4]) > 0.5  # MB/s of that connection
    assert wait_for(lambda: daemon.proc.poll() is None)
