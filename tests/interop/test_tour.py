"""docs/TOUR.md, run: every command of the guided tour must succeed.

The ``sh up`` block starts the stack (with its control socket under a test
directory through ``$USTACK_RUN_DIR``); every ``sh`` block's lines then run
in order in the test's namespace, where the kernel side of the TAP is the
tour's "host". A command that fails (non-zero exit) fails the test with its
output, so the tour and the tools cannot drift apart.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from netns import Daemon, Netns

TOUR = Path(__file__).resolve().parents[2] / "docs" / "TOUR.md"
FENCE = re.compile(r"^```(sh(?: up)?)\n(.*?)^```", re.S | re.M)


def tour_blocks() -> tuple[list[str], list[str]]:
    """(the ``ustack up`` argv, every other command line in order)."""
    up: list[str] = []
    commands: list[str] = []
    for kind, body in FENCE.findall(TOUR.read_text()):
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("#")]
        if kind == "sh up":
            assert len(lines) == 1 and not up, "one `sh up` block with one command"
            up = shlex.split(lines[0])
        else:
            commands += lines
    return up, commands


def test_tour_has_every_mechanism():
    text = TOUR.read_text()
    for title in ("Descriptor rings", "RSS", "RPS", "coalescing", "NAPI", "GRO",
                  "GSO, TSO and checksum offload", "VLAN", "ARP", "fragmentation",
                  "Netfilter", "SYN and accept backlogs", "Fast Open", "rmem, wmem",
                  "autotuning", "Small Queues", "qdisc and Byte Queue Limits"):
        assert re.search(rf"^## .*{re.escape(title)}", text, re.M | re.I), title


def test_every_tour_command_succeeds(netns: Netns):
    up, commands = tour_blocks()
    assert up[:3] == ["ustack", "up", "tap0"] and len(commands) > 40
    d = Daemon(netns, *up[3:])
    env = {**os.environ, "USTACK_RUN_DIR": d.dir,
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    try:
        for cmd in commands:
            p = netns.run(["sh", "-c", cmd], check=False, timeout=60, env=env)
            assert p.returncode == 0, f"tour command failed: {cmd}\n{p.stdout}\n{p.stderr}"
    finally:
        assert d.stop() == 0, d.log_text()
