"""Flow control against the kernel: zero windows both ways, byte exact on resume.

A reader that stops reading must close its window, the sender must probe it
(the persist timer), and data must resume byte exact once reading resumes.
The kernel's own counters (nstat in the namespace) say what it saw.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

from netns import USTACK, Daemon, wait_for

SIZE = 4_000_000

KERNEL_SENDER = textwrap.dedent("""
    import socket, sys
    data = open(sys.argv[1], "rb").read()
    s = socket.create_connection(("10.0.0.2", 9000))
    s.sendall(data)
    s.close()
""")

KERNEL_READER = textwrap.dedent("""
    import hashlib, socket, sys
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    ls.bind(("10.0.0.1", 9001))
    ls.listen(1)
    print("listening", flush=True)
    c, _ = ls.accept()
    sys.stdin.readline()          # the test says when to start reading
    h = hashlib.sha256()
    while data := c.recv(65536):
        h.update(data)
    print(h.hexdigest(), flush=True)
""")


def test_kernel_sender_sees_ustack_zero_window(netns, tmp_path):
    data = os.urandom(SIZE)
    src = tmp_path / "data"
    src.write_bytes(data)
    # A small tcp_rmem max, so the receive buffer cannot autotune past the data.
    d = Daemon(netns, "--sysctl", "net.ipv4.tcp_rmem=4096 65536 131072")
    try:
        # `ustack nc -l` whose stdout nobody reads: the relay stops, the socket's
        # receive queue fills, and its window must close.
        nc = subprocess.Popen([USTACK, "nc", "-l", d.tap, "9000", "--control", d.control],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        wait_for(lambda: "LISTEN" in d.cli("ss").stdout and ":9000" in d.cli("ss").stdout)
        before = netns.nstat()
        sender = netns.popen([sys.executable, "-c", KERNEL_SENDER, str(src)])
        # The kernel probes our zero window (its persist timer) ...
        assert wait_for(lambda: netns.nstat().get("TcpExtTCPWinProbe", 0)
                        > before.get("TcpExtTCPWinProbe", 0), timeout=30)
        ext = d.stat()["TcpExt"]
        assert ext["TCPToZeroWindowAdv"] >= 1
        assert "rcv_wnd:0 " in d.cli("ss").stdout
        # ... and once reading resumes everything arrives, byte exact.
        assert nc.stdout is not None
        got = nc.stdout.read()
        assert nc.wait(timeout=60) == 0, nc.stderr.read() if nc.stderr else ""
        assert sender.wait(timeout=60) == 0
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        assert d.stat()["TcpExt"]["TCPFromZeroWindowAdv"] >= 1
    finally:
        assert d.stop() == 0, d.log_text()


def test_ustack_persists_against_a_kernel_reader_that_stops(netns, tmp_path):
    data = os.urandom(SIZE)
    src = tmp_path / "data"
    src.write_bytes(data)
    d = Daemon(netns)
    reader = netns.popen([sys.executable, "-c", KERNEL_READER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "listening"
        with open(src, "rb") as f:
            nc = subprocess.Popen([USTACK, "nc", "-N", d.tap, "10.0.0.1", "9001",
                                   "--control", d.control], stdin=f,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # The kernel's window closes; ustack's persist timer probes it.
            assert wait_for(lambda: d.stat()["TcpExt"]["TCPWinProbe"] >= 2, timeout=30)
            rows = d.cli("ss").stdout
            assert "10.0.0.1:9001" in rows
            reader.stdin.write("go\n")
            reader.stdin.flush()
            digest = reader.stdout.readline().strip()
            assert nc.wait(timeout=60) == 0, nc.stderr.read() if nc.stderr else ""
        assert digest == hashlib.sha256(data).hexdigest()
    finally:
        reader.kill()
        assert d.stop() == 0, d.log_text()
