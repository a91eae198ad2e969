"""Offloads against the real kernel: virtio-net checksums, TSO both ways, GRO/GSO.

A kernel client streams data through the stack's echo service and checks the
echo byte for byte, so both directions are proven at once. With offloads on
the kernel hands the stack TSO super-frames and takes the stack's; with them
off MTU frames cross the TAP and software GRO/GSO do the batching. Features
toggled with ``ustack ethtool -K`` in the middle of a transfer keep it exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from netns import Daemon

ECHO_CLIENT = textwrap.dedent("""
    import hashlib, socket, sys, threading, time
    n = int(sys.argv[1])
    pause = float(sys.argv[2])                           # seconds between 64 KB blocks
    block = hashlib.sha256(b"offload").digest() * 2048   # 64 KB, no short period
    c = socket.create_connection(("10.0.0.2", 7))
    sent_hash = hashlib.sha256()
    def sender():
        done = 0
        while done < n:
            b = block[: min(len(block), n - done)]
            c.sendall(b); sent_hash.update(b); done += len(b)
            if pause:
                time.sleep(pause)
        c.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=sender); t.start()
    got = hashlib.sha256(); total = 0
    while d := c.recv(1 << 20):
        got.update(d); total += len(d)
    t.join()
    print(total, got.hexdigest() == sent_hash.hexdigest())
""")


def echo_roundtrip(ns, n: int, pause: float = 0.0) -> subprocess.Popen:
    return ns.popen([sys.executable, "-c", ECHO_CLIENT, str(n), str(pause)],
                    stdout=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, n: int, d: Daemon | None = None, timeout: float = 240) -> None:
    out, _ = p.communicate(timeout=timeout)
    if p.returncode != 0 and d is not None:
        print(json.dumps({k: v for k, v in d.stat()["TcpExt"].items() if v}))
        print(json.dumps(d.stat()["Tcp"]), json.dumps(ethtool(d, "-S")))
    assert p.returncode == 0
    total, same = out.split()
    assert int(total) == n and same == "True"


def ethtool(d: Daemon, *args: str) -> dict:
    return json.loads(d.cli("ethtool", *args, "--json").stdout)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_200mb_echo_is_byte_exact(netns, mode):
    d = Daemon(netns, "--offload", mode, "--serve", "echo:7")
    try:
        assert f"offload {mode}" in d.ready_line
        n = 200_000_000
        finish(echo_roundtrip(netns, n), n, d)
        s = ethtool(d, "-S")
        if mode == "on":
            # The kernel handed over super-frames and took ours whole.
            assert s["rx_gro_hw_packets"] > 0
            assert s["tx_tso_packets"] > 0
        else:
            assert s["rx_gro_hw_packets"] == 0 and s["tx_tso_packets"] == 0
            # MTU frames both ways: software GSO cut the stack's super-segments,
            # software GRO merged the kernel's segments into bigger units.
            assert s["tx_gso_segments"] > s["tx_gso_packets"] > 0
            assert s["rx_gro_merged"] > s["rx_gro_flushed"] / 2 > 0
        features = {name: on for name, on, _ in ethtool(d, "-k")}
        assert features["tcp-segmentation-offload"] is (mode == "on")
        assert features["generic-receive-offload"] is True
    finally:
        assert d.stop() == 0


def test_toggling_features_mid_transfer_keeps_data_exact(netns):
    d = Daemon(netns, "--offload", "on", "--serve", "echo:7")
    try:
        n = 100_000_000
        # Paced (about 12 s in all) so every toggle lands in the middle of the stream.
        p = echo_roundtrip(netns, n, pause=0.008)
        steps = [("tso", "off"), ("gro", "off"), ("rx", "off"), ("tx", "off"),
                 ("tx", "on"), ("tso", "on"), ("rx", "on"), ("rx-gro-hw", "on"),
                 ("gro", "on")]
        time.sleep(0.5)
        before = ethtool(d, "-S")
        for feature, value in steps:
            time.sleep(0.3)
            d.cli("ethtool", "-K", feature, value)
        assert p.poll() is None, "the transfer ended before the toggles did"
        finish(p, n, d)
        after = ethtool(d, "-S")
        assert after["tx_gso_segments"] > before["tx_gso_segments"]  # while tso was off
        assert after["tx_tso_packets"] > before["tx_tso_packets"]
        features = {name: on for name, on, _ in ethtool(d, "-k")}
        assert all(features[f] for f in ("tcp-segmentation-offload", "rx-checksumming",
                                         "tx-checksumming", "generic-receive-offload"))
    finally:
        assert d.stop() == 0


def test_ethtool_refuses_what_cannot_be(netns, stack):
    bad = stack.cli("ethtool", "-K", "warp", "on", check=False)
    assert bad.returncode == 1 and "unknown feature" in bad.stderr
    odd = stack.cli("ethtool", "-K", "tso", check=False)
    assert odd.returncode == 1 and "pairs" in odd.stderr
    text = stack.cli("ethtool", "-k").stdout
    assert "scatter-gather: on [fixed]" in text and "tcp-segmentation-offload:" in text
