"""Egress qdisc and BQL against the real kernel: a rate-limited wire makes frames queue.

The kernel downloads from the stack's HTTP service (four flows at once) while the stack's TX side is
limited to 40 Mbit/s (a tx ``rate`` impairment, which this kernel's missing
netem cannot give): ``ustack tc --json`` must show the qdisc's backlog, sent
counters and BQL's limit and inflight moving, and the bytes arrive exact;
the qdisc is then replaced at run time and the transfer repeated.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import tempfile
import time

from netns import Daemon

from ustack.services.http import pattern_bytes

SIZE = 2_000_000  # four flows: 1.6 s at 40 Mbit/s


def tc_json(d: Daemon) -> dict:
    """The ``tc`` control request, straight on the socket: cheap enough to sample often."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(d.control)
        sock.sendall(b'{"cmd": "tc"}\n')
        with sock.makefile("rb") as f:
            return json.loads(f.readline())["result"]


def download_while_sampling(netns, d: Daemon, flows: int = 4) -> dict[str, int]:
    """*flows* parallel curls of SIZE bytes each from the stack, sampling the qdisc meanwhile."""
    seen = {"backlog": 0, "limit": 0, "inflight": 0, "samples": 0}
    outs = [tempfile.TemporaryFile() for _ in range(flows)]
    # curl writes to files: a pipe nobody reads would close its window.
    curls = [subprocess.Popen(netns.cmd(["curl", "-sf", f"http://10.0.0.2/bytes/{SIZE}"]),
                              stdout=out) for out in outs]
    try:
        deadline = time.monotonic() + 60
        while any(c.poll() is None for c in curls) and time.monotonic() < deadline:
            row = tc_json(d)["queues"][0]
            seen["backlog"] = max(seen["backlog"], row["qdisc"]["backlog_packets"])
            seen["limit"] = max(seen["limit"], row["bql"]["limit"])
            seen["inflight"] = max(seen["inflight"], row["bql"]["inflight"])
            seen["samples"] += 1
            time.sleep(0.005)
    finally:
        for c in curls:
            if c.poll() is None:
                c.kill()
    want = hashlib.sha256(pattern_bytes(SIZE)).digest()
    for c, out in zip(curls, outs, strict=True):
        assert c.wait(timeout=10) == 0
        out.seek(0)
        assert hashlib.sha256(out.read()).digest() == want
        out.close()
    return seen


def test_qdisc_backlog_and_bql_move_under_a_rate_limited_wire(netns):
    d = Daemon(netns, "--impair", "tx:rate=40mbit", "--serve", "http:80", "--txqueuelen", "500")
    try:
        assert "qdisc pfifo_fast qlen 500" in d.cli("link").stdout
        seen = download_while_sampling(netns, d)
        assert seen["samples"] >= 2, seen
        assert seen["backlog"] > 0 and seen["limit"] > 0 and seen["inflight"] > 0, seen
        after = json.loads(d.cli("tc", "--json").stdout)["queues"][0]
        qd = after["qdisc"]
        assert qd["kind"] == "pfifo_fast" and qd["limit"] == 500
        assert qd["sent_bytes"] > 4 * SIZE and qd["backlog_packets"] == 0
        text = d.cli("tc").stdout
        assert "qdisc pfifo_fast 0: dev tap0" in text and "byte_queue_limits" in text
        assert d.stat()["qdisc"]["sent_packets"] == qd["sent_packets"]

        d.cli("tc", "replace", "root", "fq_codel")
        d.cli("link", "set", "txqueuelen", "200")
        seen = download_while_sampling(netns, d)
        qd = json.loads(d.cli("tc", "--json").stdout)["queues"][0]["qdisc"]
        assert qd["kind"] == "fq_codel" and qd["new_flow_count"] >= 1
        assert qd["sent_bytes"] > 4 * SIZE and qd["maxpacket"] > 0
        assert "qlen 200" in d.cli("link").stdout
        bad = d.cli("tc", "replace", "root", "netem", check=False)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    finally:
        assert d.stop() == 0
