"""Private network namespaces with a running ``ustack up`` for interop tests.

Every test network lives in a namespace created here and deleted afterwards;
the kernel peer is the namespace's own kernel on the far side of the TAP, so
no packet ever leaves it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USTACK = str(Path(sys.executable).with_name("ustack"))
_counter = itertools.count()


def interop_skip_reason() -> str | None:
    """Why interop tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "interop tests need root (CAP_NET_ADMIN) to create namespaces and TAPs"
    if not os.path.exists("/dev/net/tun"):
        return "interop tests need /dev/net/tun (modprobe tun)"
    if shutil.which("ip") is None:
        return "interop tests need iproute2 (scripts/test installs it)"
    return None


class Netns:
    """A network namespace of our own, deleted on close."""

    def __init__(self) -> None:
        self.name = f"ustack-t{os.getpid()}-{next(_counter)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cmd(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw
        )

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(argv), **kw)

    def nstat(self) -> dict[str, int]:
        """The namespace kernel's absolute SNMP counters (``nstat -az``)."""
        out = self.run(["nstat", "-asz", "--json"]).stdout
        data = json.loads(out)
        return next(iter(data.values()))

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Daemon:
    """``ustack up`` running inside a namespace."""

    def __init__(self, ns: Netns, *args: str, tap: str = "tap0") -> None:
        self.ns = ns
        self.tap = tap
        self.dir = tempfile.mkdtemp(prefix="ustack-test-")
        self.control = os.path.join(self.dir, f"{tap}.sock")
        self.log = open(os.path.join(self.dir, "daemon.log"), "w+")  # noqa: SIM115
        self.proc = ns.popen(
            [USTACK, "up", tap, "--control", self.control, *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        assert self.proc.stdout is not None
        self.ready_line = self.proc.stdout.readline()
        if "ready" not in self.ready_line:
            self.proc.wait(timeout=10)
            self.log.seek(0)
            raise RuntimeError(f"ustack up failed: {self.ready_line!r} {self.log.read()}")
        self.mac = self.ready_line.split(" mac ")[1].split(",")[0]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a ``ustack`` client subcommand against this daemon."""
        cmd, *rest = args
        p = subprocess.run(
            [USTACK, cmd, self.tap, *rest, "--control", self.control],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"ustack {' '.join(args)} failed: {p.stderr}{p.stdout}")
        return p

    def stat(self) -> dict:
        return json.loads(self.cli("stat", "--json").stdout)

    def stop(self) -> int:
        """SIGTERM, as a user's Ctrl-C would; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode

    def log_text(self) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()


# The kernel side of port tests: accept N connections to 10.0.0.1:5001 with a
# backlog (argv[2], default 64), record each peer's source port, print them as
# JSON after a "listening" line.
RECORD_PORTS = """
import json, socket, sys
n = int(sys.argv[1])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("10.0.0.1", 5001))
ls.listen(int(sys.argv[2]) if len(sys.argv) > 2 else 64)
print("listening", flush=True)
ports = []
for _ in range(n):
    c, (_, port) = ls.accept()
    ports.append(port)
    c.close()
print(json.dumps(ports), flush=True)
"""


def reap(procs: list[subprocess.Popen]) -> None:
    """Kill and wait for the helper processes a test started that still run."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll *predicate* until it returns something true or time runs out."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


requires_interop = pytest.mark.skipif(
    interop_skip_reason() is not None, reason=interop_skip_reason() or ""
)
