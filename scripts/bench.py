"""Benchmark ustack against the Linux kernel's own TCP, side by side, in one run.

Usage (as root; ``scripts/bench`` sets the machine up first and runs this)::

    scripts/bench [--quick] [--json FILE]

Three peers are measured by the same client program, a plain Python program
using the kernel's sockets, always from the kernel of a private network
namespace:

kernel veth
    Two namespaces joined by a veth pair (10.0.0.1 <-> 10.0.0.2). The peer is
    the kernel of the second namespace, running Python servers: ustack's own
    echo, discard and HTTP service code (``ustack.services``) on trio over
    kernel sockets. So the server code, trio and the client are the same as
    in the ustack columns, and the only difference is the peer's TCP/IP stack.
ustack offload on / ustack offload off
    One fresh namespace each, with ``ustack up tap0 --addr 10.0.0.2/24
    --host-addr 10.0.0.1/24 --offload on|off --serve echo:7 --serve discard:9
    --serve http:80``. "on" lets the kernel and ustack exchange 64 KB TCP
    super-frames with partial checksums through the TAP's virtio-net header;
    "off" moves MTU-sized frames. If this ustack has no ``--offload`` option
    (``ustack up --help`` does not mention it) both columns run with its
    default and the output says that offload control was unavailable.

What each number measures (MB = 10**6 bytes; every loop is bounded in count
and in time; a socket operation that stalls for ``io_timeout`` fails the
measurement instead of hanging):

bulk kernel->peer (MB/s)
    The client connects to the peer's discard port 9, sends N bytes, shuts
    its sending side down and reads until EOF. The peer's discard service
    closes only after its application has read every byte, so the clock stops
    when the peer has the data, not when it sits in the kernel's send buffer.
    N is chosen from a probe transfer so that one run lasts about
    ``bulk_seconds``; the median of ``bulk_runs`` runs is reported.
bulk peer->kernel (MB/s)
    ``GET /bytes/N`` from the peer's HTTP server on port 80, timed from the
    request until the last body byte is in the client. N is sized like above.
RR latency median / p99 (us)
    One connection to the echo port 7, TCP_NODELAY: send 1 byte, wait for the
    1-byte echo, repeated ``rr_count`` times after a warm-up. Median and 99th
    percentile (nearest rank) of the round-trip times.
connections (/s)
    ``conn_count`` times: connect to echo, send 1 byte, read its echo, close.
    Completed connections divided by the elapsed time.

The table's ratio columns are ustack divided by kernel for every row: below 1
is slower for throughput and connections, above 1 is slower for latency.
``--json FILE`` writes every number, the raw runs, the sizes used and the
machine (nproc, CPU model, ``uname -r``, Python version, date).

ustack daemon CPU (right below the first table)
    The CPU time of ``ustack up`` (all its threads, from
    ``/proc/PID/task/*/schedstat``) during each of the measurements above,
    per unit of work: seconds per GB moved (probe and timed runs together),
    microseconds per round trip (warm-up included) and per connection. Each
    test's interval runs from the end of the one before, so it includes its
    connection set-up. It depends less on what else the machine runs than
    the wall-clock numbers do, so it is the one to compare between commits
    (interrupt moderation spins count too: adaptive-rx is on).
    The kernel column has no counterpart: its work is spread over softirq
    and the server process.

goodput under loss (a second table)
    ``GET /bytes/N`` (the peer sends, so its congestion control and loss
    recovery are what is measured) while ``iptables -m statistic --mode
    random`` in the client's namespace drops 1 % and then 5 % of the TCP
    packets each way on the link (veth0 or tap0), with the sending peer
    using reno, then cubic (the kernel server's sockets by TCP_CONGESTION,
    ustack's ``net.ipv4.tcp_congestion_control`` through ``ustack
    sysctl``). To drop packets rather than 64 KB super-frames, segmentation
    offloads are off on the veth pair and ustack runs with ``--offload
    off``. Needs iptables; without it the section is skipped and says so.

interrupt coalescing (a third table)
    One ``ustack up`` (offload on); for each setting of ``ustack ethtool tap0
    -C`` (rx-usecs 0, then held interrupts, then adaptive-rx) the client
    measures 1-byte RR latency and bulk kernel->peer, and ``ustack ethtool
    -S`` gives the frames each NAPI poll of the queue found (packets over
    polls) during each: holding the interrupt buys bigger batches at the
    price of latency. Latency is also shown as a ratio to rx-usecs 0.
    ``--quick`` measures only rx-usecs 0 and the longest hold.

TCP Small Queues (a fourth table)
    One ``ustack up`` whose wire sends at 100 Mbit/s (``--impair
    tx:rate=100mbit``), so a queue builds in its qdisc. Three bulk downloads
    from ustack's http service run while the client measures 1-byte RR
    latency over echo:7 (the answers queue behind the downloads), once with
    TSQ on and once with ``ustack.tcp_small_queues=0``. With TSQ each bulk
    socket keeps only about a millisecond of data below it, so the answers
    wait behind less. Latency is also shown as the ratio TSQ off / on.

Namespaces (named ``ustack-bench-PID-*``), servers and daemons are removed on
exit, including on Ctrl-C and SIGTERM. No packet leaves those namespaces.

The script also runs itself in two internal roles inside a namespace:
``bench.py _serve`` (the kernel baseline's servers), ``bench.py _client
HOST SIZES_JSON`` (the client; one JSON line per measurement on stdout),
``bench.py _goodput HOST SIZES_JSON`` (one bulk GET for the loss table) and
``bench.py _coalesce HOST SIZES_JSON rr|bulk`` (RR or a bulk send, for the coalescing
table) and ``bench.py _tsq HOST SIZES_JSON`` (RR under bulk downloads, for the TSQ
table).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROG = "scripts/bench"
REPO = Path(__file__).resolve().parents[1]
PEER = "10.0.0.2"
KERNEL = "10.0.0.1"
PREFIX = 24


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (and its time bounds)."""

    probe_bytes: int  # first transfer of each bulk test, to size the real ones
    bulk_runs: int  # timed bulk transfers per direction; the median is reported
    bulk_seconds: float  # what one timed bulk run should last
    bulk_max_bytes: int  # cap on one bulk run
    rr_count: int  # 1-byte round trips
    rr_seconds: float  # ... or until this much time has passed
    conn_count: int  # connections opened
    conn_seconds: float  # ... or until this much time has passed
    io_timeout: float  # a socket operation blocked this long fails the measurement


QUICK = Sizes(probe_bytes=1 << 20, bulk_runs=1, bulk_seconds=0.3, bulk_max_bytes=1 << 30,
              rr_count=300, rr_seconds=3.0, conn_count=50, conn_seconds=3.0, io_timeout=10.0)
# About 20 s per column on 2 cores, over a minute in all.
DEFAULT = Sizes(probe_bytes=16 << 20, bulk_runs=3, bulk_seconds=2.5, bulk_max_bytes=16 << 30,
                rr_count=10000, rr_seconds=10.0, conn_count=2000, conn_seconds=10.0,
                io_timeout=15.0)

# (key, label, unit): the table's rows, in order.
MEASUREMENTS = [
    ("bulk_kernel_to_peer_MBps", "bulk kernel->peer", "MB/s"),
    ("bulk_peer_to_kernel_MBps", "bulk peer->kernel", "MB/s"),
    ("rr_median_us", "RR latency median", "us"),
    ("rr_p99_us", "RR latency p99", "us"),
    ("connections_per_s", "connections", "/s"),
]
# (key, label): the table's measured columns, in order; the first is the baseline.
COLUMNS = [
    ("kernel_veth", "kernel veth"),
    ("ustack_offload_on", "ustack offload on"),
    ("ustack_offload_off", "ustack offload off"),
]


# The loss table: drop probabilities (each way) and congestion controls.
LOSS_RATES = (0.01, 0.05)
LOSS_CCS = ("reno", "cubic")
# The coalescing table: (label, ``ustack ethtool -C`` arguments).
COALESCE_SETTINGS = [
    ("rx-usecs 0", ["rx-usecs", "0", "rx-frames", "0", "adaptive-rx", "off"]),
    ("rx-usecs 50 rx-frames 16", ["rx-usecs", "50", "rx-frames", "16", "adaptive-rx", "off"]),
    ("rx-usecs 250 rx-frames 64", ["rx-usecs", "250", "rx-frames", "64", "adaptive-rx", "off"]),
    ("adaptive-rx on", ["rx-usecs", "0", "rx-frames", "0", "adaptive-rx", "on"]),
]
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


class BenchError(Exception):
    """A problem worth one line on stderr and exit status 1."""


def say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- client role
# Runs inside the kernel's namespace; plain blocking kernel sockets, no ustack.


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def bulk_send(host: str, nbytes: int, deadline: float, timeout: float) -> dict[str, Any]:
    """Send *nbytes* to discard:9, then shutdown(SHUT_WR) and wait for the peer's EOF."""
    payload = memoryview(os.urandom(1 << 20))
    with _connect(host, 9, timeout) as s:
        sent = 0
        start = time.perf_counter()
        while sent < nbytes and time.perf_counter() < deadline:
            sent += s.send(payload[: min(len(payload), nbytes - sent)])
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # discard sends nothing: this waits for its FIN
            pass
        elapsed = time.perf_counter() - start
    return {"bytes": sent, "seconds": elapsed, "truncated": sent < nbytes}


def bulk_get(host: str, nbytes: int, deadline: float, timeout: float) -> dict[str, Any]:
    """``GET /bytes/N`` from http:80, timed until the last body byte has arrived."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with _connect(host, 80, timeout) as s:
        start = time.perf_counter()
        s.sendall(f"GET /bytes/{nbytes} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > 65536:
                raise OSError("response head too large")
            n = s.recv_into(view)
            if not n:
                raise OSError("connection closed before the response head")
            head += view[:n]
        head, _, body = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise OSError(f"GET /bytes/{nbytes}: {status.decode(errors='replace')}")
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if not match or int(match.group(1)) != nbytes:
            raise OSError(f"GET /bytes/{nbytes}: bad Content-Length")
        got = len(body)
        while got < nbytes and time.perf_counter() < deadline:
            n = s.recv_into(view, min(len(buf), nbytes - got))
            if not n:
                raise OSError(f"connection closed after {got} of {nbytes} body bytes")
            got += n
        elapsed = time.perf_counter() - start
    return {"bytes": got, "seconds": elapsed, "truncated": got < nbytes}


def bulk(kind: str, host: str, sz: Sizes) -> dict[str, Any]:
    """A probe, then ``bulk_runs`` runs sized to last about ``bulk_seconds``."""
    fn = bulk_send if kind == "send" else bulk_get
    probe = fn(host, sz.probe_bytes, time.perf_counter() + 4 * sz.bulk_seconds + 5,
               sz.io_timeout)
    rate = probe["bytes"] / probe["seconds"]
    nbytes = int(min(sz.bulk_max_bytes, max(sz.probe_bytes, rate * sz.bulk_seconds)))
    runs = []
    for _ in range(sz.bulk_runs):
        # A run may take 4x longer than the probe promised; then it stops
        # early and counts what was delivered by then.
        runs.append(fn(host, nbytes, time.perf_counter() + 4 * sz.bulk_seconds, sz.io_timeout))
    rates = [r["bytes"] / r["seconds"] / 1e6 for r in runs]
    return {"value": statistics.median(rates), "runs_MBps": rates, "run_bytes": nbytes,
            "probe": probe, "truncated_runs": sum(r["truncated"] for r in runs),
            "bytes_total": probe["bytes"] + sum(r["bytes"] for r in runs)}


def nearest_rank(sorted_values: list[float], pct: float) -> float:
    """The *pct* percentile by nearest rank (a value that was measured)."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def request_response(host: str, sz: Sizes) -> dict[str, Any]:
    """1-byte ping-pong over echo:7; round-trip times in microseconds."""
    samples: list[float] = []
    warmup = min(100, sz.rr_count)
    with _connect(host, 7, sz.io_timeout) as s:
        for _ in range(warmup):  # warm-up, not timed
            s.sendall(b"w")
            if s.recv(1) != b"w":
                raise OSError("echo answered wrongly during warm-up")
        clock = time.perf_counter_ns
        deadline = clock() + int(sz.rr_seconds * 1e9)
        for _ in range(sz.rr_count):
            t0 = clock()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise OSError("echo answered wrongly")
            t1 = clock()
            samples.append((t1 - t0) / 1000)
            if t1 > deadline:
                break
    samples.sort()
    return {"median": statistics.median(samples), "p99": nearest_rank(samples, 99),
            "min": samples[0], "max": samples[-1], "round_trips": len(samples),
            "round_trips_total": warmup + len(samples)}


def connections(host: str, sz: Sizes) -> dict[str, Any]:
    """connect, 1 byte each way with echo:7, close; connections per second."""
    done = 0
    start = time.perf_counter()
    deadline = start + sz.conn_seconds
    while done < sz.conn_count and time.perf_counter() < deadline:
        with _connect(host, 7, sz.io_timeout) as s:
            s.sendall(b"c")
            if s.recv(1) != b"c":
                raise OSError("echo answered wrongly")
        done += 1
    elapsed = time.perf_counter() - start
    return {"value": done / elapsed, "connections": done, "seconds": elapsed}


def client_main(host: str, sizes_json: str) -> int:
    """The client role: run every measurement against *host*, one JSON line each."""
    sz = Sizes(**json.loads(sizes_json))

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    # Warm up: the first connection also resolves ARP and fills caches.
    try:
        with _connect(host, 7, sz.io_timeout) as s:
            s.sendall(b"hello")
            s.recv(5)
    except OSError as err:
        emit({"test": "warmup", "error": f"cannot reach {host}:7: {err}"})
        return 1

    tests = [
        ("bulk_kernel_to_peer", lambda: bulk("send", host, sz)),
        ("bulk_peer_to_kernel", lambda: bulk("get", host, sz)),
        ("rr", lambda: request_response(host, sz)),
        ("connections", lambda: connections(host, sz)),
    ]
    status = 0
    for name, fn in tests:
        try:
            emit({"test": name, **fn()})
        except (OSError, ValueError) as err:
            emit({"test": name, "error": f"{type(err).__name__}: {err}"})
            status = 1
    return status


def goodput_main(host: str, sizes_json: str) -> int:
    """The ``_goodput`` role: one sized bulk GET from *host* (the loss table), as JSON."""
    sz = Sizes(**json.loads(sizes_json))
    try:
        print(json.dumps({"test": "goodput", **bulk("get", host, sz)}), flush=True)
    except (OSError, ValueError) as err:
        print(json.dumps({"test": "goodput", "error": f"{type(err).__name__}: {err}"}),
              flush=True)
        return 1
    return 0


def coalesce_main(host: str, sizes_json: str, kind: str) -> int:
    """The ``_coalesce`` role: RR latency (*kind* rr) or a bulk send (bulk), one JSON line."""
    sz = Sizes(**json.loads(sizes_json))
    try:
        if kind == "rr":
            rr = request_response(host, sz)
            rec = {"rr_median_us": rr["median"], "rr_p99_us": rr["p99"]}
        else:
            rec = {"bulk_MBps": bulk("send", host, sz)["value"]}
        print(json.dumps({"test": "coalesce", **rec}), flush=True)
    except (OSError, ValueError) as err:
        print(json.dumps({"test": "coalesce", "error": f"{type(err).__name__}: {err}"}),
              flush=True)
        return 1
    return 0


TSQ_FLOWS = 3


def tsq_main(host: str, sizes_json: str) -> int:
    """The ``_tsq`` role: RR latency while TSQ_FLOWS bulk downloads run, one JSON line."""
    sz = Sizes(**json.loads(sizes_json))
    # The downloads outlast the RR measurement (rr_seconds, after 0.5 s to fill the queue).
    stop = time.perf_counter() + sz.rr_seconds + 2.0
    got: list[int] = []
    errors: list[str] = []

    def download() -> None:
        try:
            got.append(bulk_get(host, 1 << 34, stop, sz.io_timeout)["bytes"])
        except OSError as err:
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=download, daemon=True) for _ in range(TSQ_FLOWS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)  # the downloads fill the queue first
        # Round trips behind the queue take tens of ms: a short warm-up, then
        # as many as rr_seconds allow (request_response's would outlast them).
        samples: list[float] = []
        with _connect(host, 7, sz.io_timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.perf_counter() + sz.rr_seconds
            while time.perf_counter() < deadline and len(samples) < sz.rr_count + 3:
                t0 = time.perf_counter()
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise OSError("echo answered wrongly")
                samples.append((time.perf_counter() - t0) * 1e6)
        samples = sorted(samples[3:])  # the first three warm the path up
        if not samples:
            raise OSError("no round trip completed")
        rec: dict[str, Any] = {"rr_median_us": statistics.median(samples),
                               "rr_p99_us": nearest_rank(samples, 99)}
    except OSError as err:
        errors.append(f"{type(err).__name__}: {err}")
        rec = {}
    for t in threads:
        t.join(sz.io_timeout + 5)
    if errors:
        rec["error"] = errors[0]
    rec["bulk_MBps"] = sum(got) / max(time.perf_counter() - started, 1e-9) / 1e6
    print(json.dumps({"test": "tsq", **rec}), flush=True)
    return 1 if "error" in rec else 0


# --------------------------------------------------------------------------- server role
# The kernel baseline's peer: ustack's service code over trio's kernel sockets.


def serve_main(cc: str | None = None) -> int:
    """The ``_serve`` role: echo:7, discard:9 and http:80 on kernel sockets.

    With *cc* every socket uses that congestion control (TCP_CONGESTION, which
    accepted sockets inherit): a namespace may not choose a restricted one.
    """
    import trio

    from ustack.services import parse_spec, run_service

    class KernelSocket:
        """A trio socket with what ustack's services also use: ``sendall``."""

        def __init__(self, sock: Any) -> None:
            self._sock = sock

        def __getattr__(self, name: str) -> Any:
            return getattr(self._sock, name)

        async def accept(self) -> tuple[KernelSocket, Any]:
            conn, addr = await self._sock.accept()
            return KernelSocket(conn), addr

        async def sendall(self, data: bytes | memoryview) -> None:
            view = memoryview(data)
            while view:
                sent = await self._sock.send(view)
                view = view[sent:]

    class KernelStack:
        """The part of ustack's Stack that the services use."""

        def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                   proto: int = 0) -> KernelSocket:
            sock = trio.socket.socket(family, type, proto)
            if cc and type == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, cc.encode())
            return KernelSocket(sock)

    async def main() -> None:
        stack = KernelStack()
        async with trio.open_nursery() as nursery:
            for spec in ("echo:7", "discard:9", "http:80"):
                await nursery.start(run_service, parse_spec(spec), stack)
            print("ready", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        trio.run(main)
    return 0


# --------------------------------------------------------------------------- the lab


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} took over {timeout:.0f} s") from None


def _check(argv: list[str], what: str) -> str:
    p = _run(argv)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise BenchError(f"{what} failed: {msg[-1] if msg else f'exit {p.returncode}'}")
    return p.stdout


class Lab:
    """Namespaces and processes of this run; :meth:`cleanup` removes all of them."""

    def __init__(self) -> None:
        self.tag = f"ustack-bench-{os.getpid()}"
        self.dir = Path(tempfile.mkdtemp(prefix="ustack-bench-"))
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def netns(self, suffix: str) -> str:
        name = f"{self.tag}-{suffix}"
        _check(["ip", "netns", "add", name], f"ip netns add {name}")
        self.namespaces.append(name)
        _check(["ip", "-n", name, "link", "set", "lo", "up"], "ip link set lo up")
        return name

    def start(self, ns: str, argv: list[str], log: Path,
              stdout: int | None = None) -> subprocess.Popen:
        """Start *argv* in *ns* in its own session (a terminal's Ctrl-C reaches us only)."""
        with open(log, "wb") as f:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                 stdout=stdout if stdout is not None else f, stderr=f,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after *grace* seconds; the exit status."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def remove_netns(self, name: str) -> None:
        # Anything still running in it is ours (we made the namespace).
        pids = _run(["ip", "netns", "pids", name]).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "del", name])
        if name in self.namespaces:
            self.namespaces.remove(name)

    def cleanup(self) -> None:
        for p in list(self.procs):
            self.stop(p, grace=5.0)
        for name in list(self.namespaces):
            self.remove_netns(name)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_ready(p: subprocess.Popen, log: Path, what: str, timeout: float = 30.0) -> str:
    """Wait until *log* has a line with "ready"; that line."""
    end = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if "ready" in line:
                return line
        if p.poll() is not None:
            tail = text.strip().splitlines()
            raise BenchError(f"{what} exited {p.returncode} before it was ready"
                             + (f": {tail[-1]}" if tail else ""))
        if time.monotonic() > end:
            raise BenchError(f"{what} was not ready within {timeout:.0f} s")
        time.sleep(0.05)


def run_client(lab: Lab, ns: str, column: str, sz: Sizes,
               on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the client role in *ns* against PEER; print progress; its records by test.

    *on_record* is called as each record arrives, that is when its test ended.
    """
    label = dict(COLUMNS)[column]
    argv = [sys.executable, str(Path(__file__).resolve()), "_client", PEER,
            json.dumps(asdict(sz))]
    log = lab.dir / f"client-{column}.log"
    p = lab.start(ns, argv, log, stdout=subprocess.PIPE)
    # The client bounds itself; this is the backstop if a peer wedges it.
    budget = (2 * sz.bulk_runs + 2) * (4 * sz.bulk_seconds + sz.io_timeout + 5) \
        + sz.rr_seconds + sz.conn_seconds + 4 * sz.io_timeout + 30
    watchdog = threading.Timer(budget, p.kill)
    watchdog.start()
    records: dict[str, Any] = {}
    try:
        assert p.stdout is not None
        for raw in p.stdout:
            rec = json.loads(raw)
            if on_record is not None:
                on_record(rec)
            records[rec["test"]] = rec
            say(f"{label}: {describe(rec)}")
        p.wait()
    finally:
        watchdog.cancel()
        lab.stop(p)
    if p.returncode not in (0, 1):
        tail = log.read_text(errors="replace").strip().splitlines()
        raise BenchError(f"client against {label} died (status {p.returncode})"
                         + (f": {tail[-1]}" if tail else ""))
    return records


def describe(rec: dict[str, Any]) -> str:
    """One progress line for one client record."""
    names = {"bulk_kernel_to_peer": "bulk kernel->peer", "bulk_peer_to_kernel":
             "bulk peer->kernel", "rr": "RR latency", "connections": "connections",
             "warmup": "warm-up"}
    name = names.get(rec["test"], rec["test"])
    if "error" in rec:
        return f"{name}: FAILED: {rec['error']}"
    if rec["test"].startswith("bulk"):
        n = len(rec["runs_MBps"])
        return (f"{name}: {rec['value']:.1f} MB/s (median of {n} run{'s' * (n != 1)} "
                f"of {rec['run_bytes'] / 1e6:.1f} MB)")
    if rec["test"] == "rr":
        return (f"{name}: median {rec['median']:.1f} us, p99 {rec['p99']:.1f} us "
                f"({rec['round_trips']} round trips)")
    return f"{name}: {rec['value']:.0f}/s ({rec['connections']} in {rec['seconds']:.2f} s)"


def values_of(records: dict[str, Any]) -> dict[str, float | None]:
    """The table's rows from one column's client records (None = failed)."""

    def get(test: str, field: str) -> float | None:
        rec = records.get(test)
        return None if rec is None or "error" in rec else float(rec[field])

    return {
        "bulk_kernel_to_peer_MBps": get("bulk_kernel_to_peer", "value"),
        "bulk_peer_to_kernel_MBps": get("bulk_peer_to_kernel", "value"),
        "rr_median_us": get("rr", "median"),
        "rr_p99_us": get("rr", "p99"),
        "connections_per_s": get("connections", "value"),
    }


def measure_kernel(lab: Lab, sz: Sizes) -> dict[str, Any]:
    """Column (a): client namespace --veth-- server namespace."""
    say("kernel veth: two namespaces joined by a veth pair, Python servers on kernel sockets")
    client_ns, server_ns = lab.netns("kcli"), lab.netns("ksrv")
    _check(["ip", "-n", client_ns, "link", "add", "veth0", "type", "veth",
            "peer", "name", "veth1", "netns", server_ns], "ip link add veth")
    for ns, dev, addr in ((client_ns, "veth0", KERNEL), (server_ns, "veth1", PEER)):
        _check(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev], "ip addr add")
        _check(["ip", "-n", ns, "link", "set", dev, "up"], "ip link set up")
    log = lab.dir / "kernel-server.log"
    server = lab.start(server_ns, [sys.executable, str(Path(__file__).resolve()), "_serve"],
                       log)
    try:
        wait_ready(server, log, "the kernel baseline's Python server")
        records = run_client(lab, client_ns, "kernel_veth", sz)
    finally:
        lab.stop(server)
        lab.remove_netns(client_ns)
        lab.remove_netns(server_ns)
    return {"records": records, "features": tap_features(None)}


def tap_features(ns: str | None, dev: str = "tap0") -> dict[str, str]:
    """Offload features of the kernel's side of *dev*, as ``ethtool -k`` shows them."""
    if ns is None or shutil.which("ethtool") is None:
        return {}
    out = _run(["ip", "netns", "exec", ns, "ethtool", "-k", dev]).stdout
    wanted = ("tx-checksumming", "tcp-segmentation-offload", "generic-segmentation-offload",
              "generic-receive-offload")
    feats = {}
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in wanted:
            feats[name.strip()] = value.strip()
    return feats


def cpu_seconds(pid: int) -> float | None:
    """CPU time *pid* has run so far, all its threads (``/proc/PID/task/*/schedstat``).

    schedstat's first field is nanoseconds on a CPU, user and system alike;
    None if the process is gone or the kernel does not keep it.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


# The daemon CPU table's rows: (test, label, the work field of the client's
# record, work per unit, CPU time unit in seconds): CPU seconds per GB moved,
# microseconds per round trip or connection.
CPU_ROWS = [
    ("bulk_kernel_to_peer", "bulk kernel->peer (CPU s per GB)", "bytes_total", 1e9, 1.0),
    ("bulk_peer_to_kernel", "bulk peer->kernel (CPU s per GB)", "bytes_total", 1e9, 1.0),
    ("rr", "RR (CPU us per round trip)", "round_trips_total", 1, 1e-6),
    ("connections", "connections (CPU us each)", "connections", 1, 1e-6),
]


def daemon_cpu(marks: dict[str, float | None], records: dict[str, Any]) -> dict[str, Any]:
    """The daemon's CPU per unit of work of each test, from its CPU time at each
    record (*marks*, "start" first): the interval ending at a test's record is
    that test's, as the client runs them one after another."""
    out: dict[str, Any] = {}
    before = marks.get("start")
    for test, _, field, per, unit in CPU_ROWS:
        now = marks.get(test)
        rec = records.get(test, {})
        work = rec.get(field)
        if before is None or now is None or not work or "error" in rec:
            out[test] = None
        else:
            out[test] = (now - before) / unit / (work / per)
        before = now
    return out


def measure_ustack(lab: Lab, sz: Sizes, ustack: str, offload: str | None,
                   column: str) -> dict[str, Any]:
    """Columns (b) and (c): the kernel of a fresh namespace <-tap0-> ``ustack up``."""
    label = dict(COLUMNS)[column]
    ns = lab.netns("on" if column.endswith("on") else "off")
    control = lab.dir / f"{column}.sock"
    argv = [ustack, "up", "tap0", "--addr", f"{PEER}/{PREFIX}",
            "--host-addr", f"{KERNEL}/{PREFIX}"]
    if offload is not None:
        argv += ["--offload", offload]
    argv += ["--serve", "echo:7", "--serve", "discard:9", "--serve", "http:80",
             "--control", str(control)]
    say(f"{label}: {' '.join(argv[1:])}")
    log = lab.dir / f"daemon-{column}.log"
    daemon = lab.start(ns, argv, log)
    stat: dict[str, Any] = {}
    marks: dict[str, float | None] = {}
    try:
        ready = wait_ready(daemon, log, "ustack up")
        features = tap_features(ns)
        # ``ip netns exec`` execs: the Popen's pid is the daemon's.
        marks["start"] = cpu_seconds(daemon.pid)
        records = run_client(lab, ns, column, sz,
                             lambda rec: marks.update({rec["test"]: cpu_seconds(daemon.pid)}))
        if daemon.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()
            raise BenchError(f"ustack up ({label}) exited {daemon.returncode} during the run"
                             + (f": {tail[-1]}" if tail else ""))
        p = _run([ustack, "stat", "tap0", "--json", "--control", str(control)])
        if p.returncode == 0:
            with contextlib.suppress(ValueError):
                stat = json.loads(p.stdout).get("Tcp", {})
        status = lab.stop(daemon)
        problems = log.read_text(errors="replace").count("Traceback")
    finally:
        lab.stop(daemon)
        lab.remove_netns(ns)
    reported = re.search(r"offload (on|off)", ready)
    return {"records": records, "ready_line": ready, "features": features,
            "reported_offload": reported.group(1) if reported else None,
            "tcp_counters": stat, "daemon_exit_status": status,
            "daemon_tracebacks": problems, "daemon_cpu": daemon_cpu(marks, records)}


# --------------------------------------------------------------------------- loss


def set_drop(ns: str, dev: str, p: float) -> None:
    """Replace *ns*'s iptables rules by random drops of TCP on *dev*, *p* each way."""
    ipt = ["ip", "netns", "exec", ns, "iptables"]
    _check([*ipt, "-F"], "iptables -F")
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        _check([*ipt, "-A", chain, flag, dev, "-p", "tcp", "-m", "statistic", "--mode",
                "random", "--probability", f"{p:.4f}", "-j", "DROP"], "iptables -A")


def run_goodput(lab: Lab, ns: str, sz: Sizes, what: str) -> float | None:
    """One ``_goodput`` client in *ns*; MB/s, or None (said why) when it failed."""
    argv = [sys.executable, str(Path(__file__).resolve()), "_goodput", PEER,
            json.dumps(asdict(sz))]
    log = lab.dir / "goodput.log"
    p = lab.start(ns, argv, log, stdout=subprocess.PIPE)
    budget = (sz.bulk_runs + 1) * (4 * sz.bulk_seconds + sz.io_timeout + 5) + 30
    try:
        out, _ = p.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        out = b""
    finally:
        lab.stop(p)
    try:
        rec = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        rec = {"test": "goodput", "error": f"client exited {p.returncode} without a result"}
    if "error" in rec:
        say(f"{what}: FAILED: {rec['error']}")
        return None
    say(f"{what}: {rec['value']:.2f} MB/s")
    return float(rec["value"])


def measure_loss(lab: Lab, sz: Sizes, ustack: str, has_offload: bool) -> list[dict[str, Any]]:
    """The loss table: goodput of GET under iptables drops, kernel veth vs ustack."""
    lsz = Sizes(**{**asdict(sz), "probe_bytes": min(sz.probe_bytes, 4 << 20),
                   "bulk_runs": min(sz.bulk_runs, 2), "bulk_seconds": min(sz.bulk_seconds, 2.0)})
    rows = {(cc, p): {"cc": cc, "loss": p} for cc in LOSS_CCS for p in LOSS_RATES}
    say("loss: kernel veth, segmentation offloads off, iptables drops on veth0")
    client_ns, server_ns = lab.netns("lcli"), lab.netns("lsrv")
    _check(["ip", "-n", client_ns, "link", "add", "veth0", "type", "veth",
            "peer", "name", "veth1", "netns", server_ns], "ip link add veth")
    for ns, dev, addr in ((client_ns, "veth0", KERNEL), (server_ns, "veth1", PEER)):
        _check(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev], "ip addr add")
        _check(["ip", "-n", ns, "link", "set", dev, "up"], "ip link set up")
        if shutil.which("ethtool"):
            _run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
                  "gro", "off"])
    try:
        for cc in LOSS_CCS:
            # The sender is the server: its sockets use *cc* (TCP_CONGESTION).
            log = lab.dir / f"loss-server-{cc}.log"
            server = lab.start(server_ns, [sys.executable, str(Path(__file__).resolve()),
                                           "_serve", cc], log)
            try:
                wait_ready(server, log, "the kernel baseline's Python server")
                for p in LOSS_RATES:
                    set_drop(client_ns, "veth0", p)
                    rows[cc, p]["kernel_veth"] = run_goodput(
                        lab, client_ns, lsz, f"loss {cc} {p:.0%}: kernel veth")
            finally:
                lab.stop(server)
    finally:
        lab.remove_netns(client_ns)
        lab.remove_netns(server_ns)
    ns = lab.netns("loss")
    control = lab.dir / "loss.sock"
    argv = [ustack, "up", "tap0", "--addr", f"{PEER}/{PREFIX}", "--host-addr",
            f"{KERNEL}/{PREFIX}", *(["--offload", "off"] if has_offload else []),
            "--serve", "http:80", "--control", str(control)]
    say(f"loss: {' '.join(argv[1:])}, iptables drops on tap0")
    log = lab.dir / "daemon-loss.log"
    daemon = lab.start(ns, argv, log)
    try:
        wait_ready(daemon, log, "ustack up")
        for cc in LOSS_CCS:
            _check([ustack, "sysctl", "tap0", f"net.ipv4.tcp_congestion_control={cc}",
                    "--control", str(control)], f"ustack sysctl tcp_congestion_control={cc}")
            for p in LOSS_RATES:
                set_drop(ns, "tap0", p)
                rows[cc, p]["ustack"] = run_goodput(lab, ns, lsz, f"loss {cc} {p:.0%}: ustack")
    finally:
        lab.stop(daemon)
        lab.remove_netns(ns)
    out = list(rows.values())
    for row in out:
        row["ratio"] = ratio(row.get("ustack"), row.get("kernel_veth"))
    return out


def measure_coalescing(lab: Lab, sz: Sizes, ustack: str) -> list[dict[str, Any]]:
    """The coalescing table: latency, throughput and frames per poll per setting."""
    csz = Sizes(**{**asdict(sz), "probe_bytes": min(sz.probe_bytes, 4 << 20),
                   "bulk_runs": 1, "bulk_seconds": min(sz.bulk_seconds, 1.5),
                   "rr_count": min(sz.rr_count, 3000), "rr_seconds": min(sz.rr_seconds, 4.0)})
    ns = lab.netns("coal")
    control = lab.dir / "coalesce.sock"
    argv = [ustack, "up", "tap0", "--addr", f"{PEER}/{PREFIX}", "--host-addr",
            f"{KERNEL}/{PREFIX}", "--serve", "echo:7", "--serve", "discard:9",
            "--control", str(control)]
    say(f"coalescing: {' '.join(argv[1:])}")
    log = lab.dir / "daemon-coalesce.log"
    daemon = lab.start(ns, argv, log)

    def counters() -> dict[str, int]:
        out = _check([ustack, "ethtool", "tap0", "-S", "--json", "--control", str(control)],
                     "ustack ethtool -S")
        return json.loads(out)

    rows = []
    try:
        wait_ready(daemon, log, "ustack up")
        # --quick: no coalescing, then the longest hold; the full run has every setting.
        settings = COALESCE_SETTINGS if sz is DEFAULT else COALESCE_SETTINGS[::2]
        for label, args in settings:
            _check([ustack, "ethtool", "tap0", "-C", *args, "--control", str(control)],
                   f"ustack ethtool -C {' '.join(args)}")
            row: dict[str, Any] = {"setting": label}
            after = counters()
            for kind in ("rr", "bulk"):
                before = after
                p = lab.start(ns, [sys.executable, str(Path(__file__).resolve()), "_coalesce",
                                   PEER, json.dumps(asdict(csz)), kind],
                              lab.dir / "coalesce.log", stdout=subprocess.PIPE)
                try:
                    out, _ = p.communicate(timeout=4 * csz.bulk_seconds + csz.rr_seconds
                                           + 3 * csz.io_timeout + 30)
                except subprocess.TimeoutExpired:
                    out = b""
                finally:
                    lab.stop(p)
                after = counters()
                try:
                    rec = json.loads(out.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    rec = {"error": f"client exited {p.returncode} without a result"}
                if "error" in rec:
                    say(f"coalescing {label} {kind}: FAILED: {rec['error']}")
                row.update({k: v for k, v in rec.items() if k != "test" and k != "error"})
                polls = after["rx_queue_0_napi_polls"] - before["rx_queue_0_napi_polls"]
                frames = after["rx_queue_0_packets"] - before["rx_queue_0_packets"]
                row[f"{kind}_frames_per_poll"] = frames / polls if polls else None
            if "rr_median_us" in row and "bulk_MBps" in row:
                say(f"coalescing {label}: RR median {row['rr_median_us']:.1f} us "
                    f"({row['rr_frames_per_poll'] or 0:.2f} frames/poll), bulk "
                    f"{row['bulk_MBps']:.1f} MB/s ({row['bulk_frames_per_poll'] or 0:.2f} "
                    "frames/poll)")
            rows.append(row)
    finally:
        lab.stop(daemon)
        lab.remove_netns(ns)
    base = rows[0].get("rr_median_us") if rows else None
    for row in rows:
        row["rr_ratio"] = ratio(row.get("rr_median_us"), base)
    return rows


def measure_tsq(lab: Lab, sz: Sizes, ustack: str) -> list[dict[str, Any]]:
    """The TSQ table: RR latency behind bulk downloads, TSQ on and off."""
    tsz = Sizes(**{**asdict(sz), "rr_count": min(sz.rr_count, 2000),
                   "rr_seconds": min(sz.rr_seconds, 4.0)})
    ns = lab.netns("tsq")
    control = lab.dir / "tsq.sock"
    argv = [ustack, "up", "tap0", "--addr", f"{PEER}/{PREFIX}", "--host-addr",
            f"{KERNEL}/{PREFIX}", "--serve", "echo:7", "--serve", "http:80",
            "--impair", "tx:rate=100mbit", "--control", str(control)]
    say(f"tsq: {' '.join(argv[1:])}")
    log = lab.dir / "daemon-tsq.log"
    daemon = lab.start(ns, argv, log)
    rows = []
    try:
        wait_ready(daemon, log, "ustack up")
        for label, value in (("TSQ on", "1"), ("TSQ off", "0")):
            _check([ustack, "sysctl", "tap0", f"ustack.tcp_small_queues={value}",
                    "--control", str(control)], "ustack sysctl")
            p = lab.start(ns, [sys.executable, str(Path(__file__).resolve()), "_tsq",
                               PEER, json.dumps(asdict(tsz))],
                          lab.dir / "tsq.log", stdout=subprocess.PIPE)
            try:
                out, _ = p.communicate(timeout=tsz.rr_seconds + 6 * tsz.io_timeout + 30)
            except subprocess.TimeoutExpired:
                out = b""
            finally:
                lab.stop(p)
            try:
                rec = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                rec = {"error": f"client exited {p.returncode} without a result"}
            if "error" in rec:
                say(f"tsq {label}: FAILED: {rec['error']}")
            else:
                say(f"tsq {label}: RR median {rec['rr_median_us']:.0f} us, p99 "
                    f"{rec['rr_p99_us']:.0f} us, bulk {rec['bulk_MBps']:.1f} MB/s")
            rows.append({"setting": label,
                         **{k: v for k, v in rec.items() if k not in ("test", "error")}})
    finally:
        lab.stop(daemon)
        lab.remove_netns(ns)
    base = rows[0].get("rr_median_us") if rows else None
    for row in rows:
        row["rr_ratio"] = ratio(row.get("rr_median_us"), base)
    return rows


def tsq_table(rows: list[dict[str, Any]]) -> str:
    """The TSQ table's text: RR latency behind three downloads, TSQ on and off."""
    lines = [f"TCP Small Queues: RR latency behind {TSQ_FLOWS} downloads on a 100 Mbit/s wire",
             f"{'setting':<10}{'RR median us':>14}{'RR p99 us':>12}{'bulk MB/s':>11}"
             f"{'RR ratio':>10}"]

    def num(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for row in rows:
        lines.append(f"{row['setting']:<10}{num(row.get('rr_median_us'), '.0f'):>14}"
                     f"{num(row.get('rr_p99_us'), '.0f'):>12}"
                     f"{num(row.get('bulk_MBps'), '.1f'):>11}"
                     f"{num(row.get('rr_ratio'), '.2f'):>10}")
    return "\n".join(lines)


def coalesce_table(rows: list[dict[str, Any]]) -> str:
    """The coalescing table's text: one row per ``ethtool -C`` setting."""
    heads = ["ustack ethtool -C", "RR median us", "RR p99 us", "RR frames/poll",
             "bulk kernel->peer MB/s", "bulk frames/poll", "RR / rx-usecs 0"]
    body = []
    for r in rows:
        cells = [r["setting"]]
        for key, fmt in (("rr_median_us", "{:.1f}"), ("rr_p99_us", "{:.1f}"),
                         ("rr_frames_per_poll", "{:.2f}"), ("bulk_MBps", "{:.1f}"),
                         ("bulk_frames_per_poll", "{:.2f}"), ("rr_ratio", "{:.3f}")):
            v = r.get(key)
            cells.append("failed" if v is None else fmt.format(v))
        body.append(cells)
    return grid(heads, body)


def loss_table(rows: list[dict[str, Any]]) -> str:
    """The loss table's text: one row per congestion control and drop rate."""
    heads = ["goodput under loss, MB/s", "kernel veth", "ustack", "ustack / kernel"]
    body = []
    for r in rows:
        cells = [f"{r['cc']} {r['loss']:.0%} loss each way"]
        for key in ("kernel_veth", "ustack"):
            v = r.get(key)
            cells.append("failed" if v is None else f"{v:.2f}")
        cells.append("-" if r["ratio"] is None else f"{r['ratio']:.3f}")
        body.append(cells)
    return grid(heads, body)


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = None
    if shutil.which("git"):
        p = _run(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
        commit = p.stdout.strip() or None
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ustack_commit": commit,
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def table(results: dict[str, dict[str, float | None]]) -> str:
    """The text table: measurements x (columns + ustack/kernel ratios)."""
    base = COLUMNS[0][0]
    heads = ["measurement"] + [lbl for _, lbl in COLUMNS] \
        + [f"{lbl.removeprefix('ustack ')} / kernel" for _, lbl in COLUMNS[1:]]
    rows = []
    for key, label, unit in MEASUREMENTS:
        row = [f"{label} ({unit})"]
        for col, _ in COLUMNS:
            v = results[col][key]
            row.append("failed" if v is None else f"{v:.1f}" if v < 1000 else f"{v:.0f}")
        for col, _ in COLUMNS[1:]:
            r = ratio(results[col][key], results[base][key])
            row.append("-" if r is None else f"{r:.3f}" if r < 10 else f"{r:.1f}")
        rows.append(row)
    return grid(heads, rows)


def cpu_table(details: dict[str, Any]) -> str:
    """The daemon CPU table's text: CPU per unit of work, offload on and off."""
    cols = [col for col, _ in COLUMNS[1:]]
    heads = ["ustack daemon CPU"] + [lbl for col, lbl in COLUMNS[1:]]
    body = []
    for test, label, *_ in CPU_ROWS:
        cells = [label]
        for col in cols:
            v = (details[col].get("daemon_cpu") or {}).get(test)
            cells.append("-" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}")
        body.append(cells)
    return grid(heads, body)


def grid(heads: list[str], body: list[list[str]]) -> str:
    """Rows of cells as text columns: the first left-aligned, the rest right."""
    widths = [max(len(c[i]) for c in [heads, *body]) for i in range(len(heads))]
    return "\n".join("  ".join([c[0].ljust(widths[0]),
                                *(x.rjust(w) for x, w in zip(c[1:], widths[1:], strict=True))])
                     for c in [heads, *body])


# --------------------------------------------------------------------------- main


def preflight() -> tuple[str, bool]:
    """Check privileges and tools; the ustack command and whether it has --offload."""
    if os.geteuid() != 0:
        raise BenchError("must run as root (it creates network namespaces and TAPs)")
    for tool in ("ip",):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is missing (scripts/bench installs iproute2)")
    if not os.path.exists("/dev/net/tun"):
        raise BenchError("/dev/net/tun is missing (modprobe tun)")
    ustack = Path(sys.executable).with_name("ustack")
    if not ustack.exists():
        found = shutil.which("ustack")
        if found is None:
            raise BenchError(f"no ustack command next to {sys.executable} (run scripts/bench, "
                             "which installs .venv)")
        ustack = Path(found)
    p = _run([str(ustack), "up", "--help"])
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise BenchError(f"`ustack up --help` failed: {msg[-1] if msg else p.returncode}")
    return str(ustack), "--offload" in p.stdout


@contextlib.contextmanager
def signals_as_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C, so cleanup runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def bench(args: argparse.Namespace) -> int:
    sz = QUICK if args.quick else DEFAULT
    ustack, has_offload = preflight()
    if not has_offload:
        say("this ustack has no `ustack up --offload`: offload control unavailable, both "
            "ustack columns run with its default")
    started = time.monotonic()
    details: dict[str, Any] = {}
    lab = Lab()
    with signals_as_exit():
        try:
            details["kernel_veth"] = measure_kernel(lab, sz)
            details["ustack_offload_on"] = measure_ustack(
                lab, sz, ustack, "on" if has_offload else None, "ustack_offload_on")
            details["ustack_offload_off"] = measure_ustack(
                lab, sz, ustack, "off" if has_offload else None, "ustack_offload_off")
            if shutil.which("iptables"):
                loss_rows = measure_loss(lab, sz, ustack, has_offload)
            else:
                loss_rows = None
                say("iptables is missing: the loss table is skipped")
            coalesce_rows = measure_coalescing(lab, sz, ustack)
            tsq_rows = measure_tsq(lab, sz, ustack)
        finally:
            # A second Ctrl-C must not cut the cleanup short.
            old = {s: signal.signal(s, signal.SIG_IGN)
                   for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
            lab.cleanup()
            for s, h in old.items():
                signal.signal(s, h)

    results = {col: values_of(details[col]["records"]) for col, _ in COLUMNS}
    failed = [f"{col}.{key}" for col in results for key, v in results[col].items() if v is None]
    for row in loss_rows or []:
        failed += [f"loss.{row['cc']}.{row['loss']:.0%}.{key}"
                   for key in ("kernel_veth", "ustack") if row.get(key) is None]
    print(table(results))
    print(cpu_table(details))
    if loss_rows:
        print(loss_table(loss_rows))
    print(coalesce_table(coalesce_rows))
    failed += [f"coalescing.{row['setting']}" for row in coalesce_rows
               if row.get("rr_median_us") is None or row.get("bulk_MBps") is None]
    print(tsq_table(tsq_rows))
    failed += [f"tsq.{row['setting']}" for row in tsq_rows if row.get("rr_median_us") is None]
    notes = ["ratio = ustack / kernel: below 1 is slower for MB/s and /s, above 1 is slower "
             "for latency"]
    if not has_offload:
        notes.append("offload control unavailable: this ustack has no `ustack up --offload`, "
                     "so both ustack columns ran with its default")
    for col, _ in COLUMNS[1:]:
        rep = details[col].get("reported_offload")
        if rep is not None:
            notes.append(f"{col}: ustack up reported offload {rep}; kernel side of tap0: "
                         + ", ".join(f"{k} {v}" for k, v in details[col]["features"].items()))
    for note in notes:
        print(f"note: {note}")
    elapsed = time.monotonic() - started
    say(f"done in {elapsed:.0f} s")

    if args.json:
        out = {
            "tool": "ustack scripts/bench",
            "mode": "quick" if args.quick else "default",
            "machine": machine_info(),
            "offload_control": has_offload,
            "columns": [c for c, _ in COLUMNS],
            "units": {k: u for k, _, u in MEASUREMENTS},
            "results": {
                key: {
                    **{col: results[col][key] for col, _ in COLUMNS},
                    **{f"ratio_{col}": ratio(results[col][key], results[COLUMNS[0][0]][key])
                       for col, _ in COLUMNS[1:]},
                }
                for key, _, _ in MEASUREMENTS
            },
            "details": details,
            "daemon_cpu": {col: details[col]["daemon_cpu"] for col, _ in COLUMNS[1:]},
            "loss": loss_rows,
            "coalescing": coalesce_rows,
            "tsq": tsq_rows,
            "sizes": asdict(sz),
            "failed": failed,
            "seconds": elapsed,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        say(f"wrote {args.json}")
    if failed:
        say(f"{len(failed)} measurement(s) failed: {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"] and len(argv) == 3:
        return client_main(argv[1], argv[2])
    if argv[:1] == ["_goodput"] and len(argv) == 3:
        return goodput_main(argv[1], argv[2])
    if argv[:1] == ["_coalesce"] and len(argv) == 4 and argv[3] in ("rr", "bulk"):
        return coalesce_main(argv[1], argv[2], argv[3])
    if argv[:1] == ["_tsq"] and len(argv) == 3:
        return tsq_main(argv[1], argv[2])
    if argv[:1] == ["_serve"] and len(argv) <= 2:
        return serve_main(argv[1] if len(argv) == 2 else None)
    parser = argparse.ArgumentParser(
        prog=PROG, description="Measure the kernel over veth and ustack (offload on and off) "
        "side by side: bulk throughput each way, 1-byte RR latency, connections/s. Needs root; "
        "everything runs in network namespaces of its own.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, a few seconds in total (for tests)")
    parser.add_argument("--json", metavar="FILE", help="also write every number and the "
                        "machine's description to FILE")
    args = parser.parse_args(argv)
    try:
        return bench(args)
    except BenchError as err:
        say(str(err))
        return 1
    except KeyboardInterrupt:
        say("interrupted; namespaces and daemons removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
