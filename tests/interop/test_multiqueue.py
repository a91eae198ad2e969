"""Multi-queue TAP with RSS steering against the kernel.

ustack writes each flow's frames on the queue RSS gives it; the TAP's flow
table then delivers the kernel's replies on that queue too. With 16 flows
over 4 queues every queue carries traffic both ways and every byte returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from netns import Daemon

CLIENTS = textwrap.dedent("""
    # 16 flows through echo; argv: copies of a 32-byte block per flow, seconds
    # to pause between 32 KB chunks (0: as fast as possible).
    import hashlib, socket, sys, threading, time
    copies, pause = int(sys.argv[1]), float(sys.argv[2])
    results = []
    def flow(i):
        data = hashlib.sha256(str(i).encode()).digest() * copies
        c = socket.create_connection(("10.0.0.2", 7))
        def send():
            for k in range(0, len(data), 32000):
                c.sendall(data[k:k + 32000])
                if pause:
                    time.sleep(pause)
            c.shutdown(socket.SHUT_WR)
        threading.Thread(target=send).start()
        got = b""
        while d := c.recv(1 << 16):
            got += d
        results.append(got == data)
    threads = [threading.Thread(target=flow, args=(i,)) for i in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(sum(results))
""")



def test_sixteen_flows_spread_over_four_queues(netns):
    d = Daemon(netns, "--queues", "4", "--serve", "echo:7")
    try:
        p = netns.run([sys.executable, "-c", CLIENTS, "20000", "0"], timeout=120)
        assert p.stdout.strip() == "16"
        s = json.loads(d.cli("ethtool", "-S", "--json").stdout)
        for q in range(4):
            assert s[f"rx_queue_{q}_packets"] > 20, s
            assert s[f"tx_queue_{q}_packets"] > 20, s
        rss = json.loads(d.cli("ethtool", "-x", "--json").stdout)
        assert sorted(set(rss["reta"])) == [0, 1, 2, 3] and len(rss["reta"]) == 128
        d.cli("ethtool", "-X", "equal", "2")
        assert set(json.loads(d.cli("ethtool", "-x", "--json").stdout)["reta"]) == {0, 1}
        assert "Combined:\t4" in d.cli("ethtool", "-l").stdout
        bad = d.cli("ethtool", "-X", "equal", "9", check=False)
        assert bad.returncode == 1 and "4 queue" in bad.stderr
    finally:
        assert d.stop() == 0


def test_detaching_queues_mid_transfer_moves_flows_and_loses_nothing(netns):
    d = Daemon(netns, "--queues", "4", "--serve", "echo:7")
    try:
        # 1.28 MB per flow in 32 KB chunks 0.12 s apart: about 5 s of traffic.
        p = netns.popen([sys.executable, "-c", CLIENTS, "40000", "0.12"],
                        stdout=subprocess.PIPE, text=True)
        time.sleep(0.8)
        d.cli("ethtool", "-L", "combined", "2")
        time.sleep(0.3)
        before = json.loads(d.cli("ethtool", "-S", "--json").stdout)
        assert p.poll() is None, "the transfers ended before the queue change"
        out, _ = p.communicate(timeout=120)
        assert out.strip() == "16"
        after = json.loads(d.cli("ethtool", "-S", "--json").stdout)
        # Our frames left only on the two remaining queues after the change.
        for q in (2, 3):
            assert after[f"tx_queue_{q}_packets"] == before[f"tx_queue_{q}_packets"]
        assert sum(after[f"tx_queue_{q}_packets"] - before[f"tx_queue_{q}_packets"]
                   for q in (0, 1)) > 100
        text = d.cli("ethtool", "-l").stdout
        assert "Combined:\t4" in text and text.rstrip().endswith("Combined:\t2")
        d.cli("ethtool", "-L", "combined", "4")
        assert set(json.loads(d.cli("ethtool", "-x", "--json").stdout)["reta"]) == {0, 1, 2, 3}
    finally:
        assert d.stop() == 0
