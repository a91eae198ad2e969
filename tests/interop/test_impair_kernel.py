"""The impaired wire against the real kernel (this kernel has no netem).

Delay shows in the kernel's own ping times; loss in its ping statistics; a
curl download over a lossy, reordering wire stays byte exact; impairments
change at run time through the control socket.
"""

from __future__ import annotations

import hashlib
import re
import subprocess

from netns import USTACK, Daemon

from ustack.services.http import pattern_bytes


def rtt_min_ms(ping_output: str) -> float:
    return float(re.search(r"= ([\d.]+)/", ping_output).group(1))


def test_delay_loss_and_runtime_changes(netns):
    d = Daemon(netns, "--impair", "rx:delay=20ms;tx:delay=20ms,seed=4", "--serve", "http:80")
    try:
        p = netns.run(["ping", "-c", "3", "-i", "0.2", "10.0.0.2"])
        assert rtt_min_ms(p.stdout) >= 39.5
        out = d.cli("impair").stdout
        assert "delay=20ms" in out and "rx_impair_delayed" in out
        d.cli("impair", "")
        p = netns.run(["ping", "-c", "3", "-i", "0.2", "10.0.0.2"])
        assert rtt_min_ms(p.stdout) < 10
        d.cli("impair", "rx:loss=30%,seed=9")
        p = netns.run(["ping", "-c", "30", "-i", "0.05", "-W", "1", "10.0.0.2"], check=False)
        received = int(re.search(r"(\d+) received", p.stdout).group(1))
        assert 5 <= received <= 28
        stats = d.stat()["ethtool"]
        assert stats["rx_impair_dropped"] >= 2
        # TCP over a lossy, reordering wire: curl's bytes stay exact.
        d.cli("impair", "loss=2%,reorder=3%,dup=1%,seed=21")
        n = 3_000_000
        got = subprocess.run(netns.cmd(["curl", "-sf", f"http://10.0.0.2/bytes/{n}"]),
                             capture_output=True, timeout=120)
        assert got.returncode == 0
        assert hashlib.sha256(got.stdout).digest() == hashlib.sha256(pattern_bytes(n)).digest()
        assert d.stat()["Tcp"]["RetransSegs"] > 0
        bad = d.cli("impair", "loss=150%", check=False)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    finally:
        assert d.stop() == 0


def test_bad_impair_spec_at_start_is_one_line(netns):
    p = netns.run([USTACK, "up", "tapx", "--impair", "rx:warp=9"], check=False, timeout=30)
    assert p.returncode == 1 and p.stderr.startswith("ustack: ") and p.stderr.count("\n") == 1
