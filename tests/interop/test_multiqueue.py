"""Multi-queue TAP with RSS steering against the kernel.

ustack writes each flow's frames on the queue RSS gives it; the TAP's flow
table then delivers the kernel's replies on that queue too. With 16 flows
over 4 queues every queue carries traffic both ways and every byte returns.
"""

from __future__ import annotations

import json
import sys
import textwrap

from netns import Daemon

CLIENTS = textwrap.dedent("""
    import hashlib, socket, threading
    results = []
    def flow(i):
        data = hashlib.sha256(str(i).encode()).digest() * 20000   # 640 KB
        c = socket.create_connection(("10.0.0.2", 7))
        threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR))).start()
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
        p = netns.run([sys.executable, "-c", CLIENTS], timeout=120)
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
