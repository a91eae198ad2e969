"""Chaos soak: many concurrent connections over an impaired wire, then a clean slate.

    scripts/soak                      3 minutes, 16 workers, the default impairment
    scripts/soak --seconds 20         a short run (what the CI test does, shorter still)
    scripts/soak --impair 'loss=5%,reorder=10%,dup=2%,corrupt=1%,seed=3'

Two stacks on the in-memory wire (no root needed), time on trio's MockClock
so retransmission timeouts and TIME-WAIT cost no wall time. Stack b serves
echo; workers on stack a pick at random, until the wall-clock budget is
spent: a full-duplex transfer of up to 300 KB whose echo must come back
byte-exact, a half-close (send, shutdown(SHUT_WR), read the echo to EOF), an
abort (close with unread data: RST), a close right after connect, or a
connect to a port nobody listens on (ECONNREFUSED). Afterwards, with every
socket closed and TIME-WAIT over, both stacks must be back to their
baseline: no connections, bindings, TCP timers, orphans, TIME-WAIT buckets,
reassembly memory, queued frames or live TcpConnection objects.

Prints one JSON object (operations, bytes verified, virtual seconds,
failures, leftovers); exits 1 if anything failed or leaked, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import socket
import sys
import time
from collections import Counter
from typing import Any

import trio
import trio.testing

from ustack.link.wire import Wire
from ustack.nic.impair import parse_spec
from ustack.stack import Stack
from ustack.transport.tcp import TcpConnection

DEFAULT_IMPAIR = "loss=2%,reorder=5%,dup=1%,corrupt=0.5%,delay=1ms,seed=1"
ECHO_PORT, CLOSED_PORT = 7, 9
# Virtual seconds one operation may take before it counts as a stall.
OP_TIMEOUT = 900.0


def leftovers(stack: Stack) -> dict[str, int]:
    """What should be empty once every socket is closed and TIME-WAIT is over."""
    tcp = stack.tcp
    return {
        "connections": len(tcp.ehash),
        "listeners": len(tcp.listeners),
        "bindings": sum(len(v) for v in tcp.bhash.values()),
        "tcp_timers": len(tcp._timers),
        "orphans": len(tcp.limits.orphans),
        "time_wait": len(tcp.limits.time_wait),
        "udp_sockets": sum(len(v) for v in stack.udp.ports.values()),
        "reasm_mem": stack.ipv4.reasm.mem,
        "rx_ring": sum(len(r) for r in stack.dev.rx_rings),
        "tx_ring": sum(len(r) for r in stack.dev.tx_rings),
        "gro_held": sum(g.held for g in stack.dev.gro),
    }


async def echo_server(stack: Stack, results: Counter, task_status: Any) -> None:
    lsock = stack.socket()
    await lsock.bind(("0.0.0.0", ECHO_PORT))
    lsock.listen(128)
    task_status.started(lsock)

    async def serve(conn: Any) -> None:
        try:
            while data := await conn.recv(65536):
                await conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            results["server_errors"] += 1
        finally:
            conn.close()

    async with trio.open_nursery() as nursery:
        try:
            while True:
                conn, _ = await lsock.accept()
                nursery.start_soon(serve, conn)
        except (OSError, trio.ClosedResourceError):
            pass


async def transfer(stack: Stack, r: random.Random, results: Counter, half_close: bool) -> None:
    s = stack.socket()
    try:
        await s.connect(("10.0.0.2", ECHO_PORT))
        data = r.randbytes(r.randrange(0, 300_000))
        got = bytearray()

        async def send() -> None:
            await s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            if half_close:
                await send()
            else:
                nursery.start_soon(send)
            while chunk := await s.recv(65536):
                got += chunk
        if bytes(got) != data:
            results["corrupted"] += 1
        else:
            results["bytes_verified"] += len(data)
    finally:
        s.close()


async def abort(stack: Stack, r: random.Random, results: Counter) -> None:
    s = stack.socket()
    try:
        await s.connect(("10.0.0.2", ECHO_PORT))
        if r.random() < 0.7:
            await s.sendall(r.randbytes(r.randrange(1, 50_000)))
            # Some of the echo is unread when we close: the close sends a RST.
            await s.recv(r.randrange(1, 1000))
    finally:
        s.close()


async def refused(stack: Stack, results: Counter) -> None:
    s = stack.socket()
    try:
        await s.connect(("10.0.0.2", CLOSED_PORT))
        results["refused_connected"] += 1
    except ConnectionRefusedError:
        pass
    finally:
        s.close()


async def worker(stack: Stack, seed: int, wall_end: float, results: Counter) -> None:
    r = random.Random(seed)
    while time.monotonic() < wall_end:
        op = r.choices(["transfer", "half_close", "abort", "close", "refused"],
                       [5, 2, 2, 1, 1])[0]
        results["ops_" + op] += 1
        try:
            with trio.fail_after(OP_TIMEOUT):
                if op in ("transfer", "half_close"):
                    await transfer(stack, r, results, op == "half_close")
                elif op == "abort":
                    await abort(stack, r, results)
                elif op == "close":
                    s = stack.socket()
                    await s.connect(("10.0.0.2", ECHO_PORT))
                    s.close()
                else:
                    await refused(stack, results)
        except trio.TooSlowError:
            results["stalls"] += 1
        except OSError as e:
            # A peer may reset an aborting worker's connection; anything else is a failure.
            if op != "abort":
                results[f"error_{op}_{e.errno}"] += 1


async def soak(seconds: float, workers: int, impair: str, seed: int) -> dict[str, Any]:
    wire = Wire(impair=impair)
    a = Stack([wire.a], ipaddress.IPv4Interface("10.0.0.1/24"), name="a",
              mac=bytes.fromhex("02000000000a"))
    b = Stack([wire.b], ipaddress.IPv4Interface("10.0.0.2/24"), name="b",
              mac=bytes.fromhex("02000000000b"))
    results: Counter = Counter()
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        server_scope = trio.CancelScope()

        async def server(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with server_scope:
                await echo_server(b, results, task_status)

        lsock = await nursery.start(server)
        start = trio.current_time()
        wall_end = time.monotonic() + seconds
        async with trio.open_nursery() as work:
            for w in range(workers):
                work.start_soon(worker, a, seed * 1000 + w, wall_end, results)
        lsock.close()
        server_scope.cancel()
        # Orphans finish their close, TIME-WAIT (60 s) and FIN-WAIT-2 (60 s) end.
        await trio.sleep(300)
        out["virtual_seconds"] = round(trio.current_time() - start, 1)
        gc.collect()
        out["leftovers"] = {"a": leftovers(a), "b": leftovers(b)}
        # Every TcpConnection object of these two stacks must be garbage by now.
        mine = (a.stats, b.stats)
        out["live_connections"] = sum(isinstance(o, TcpConnection) and o.stats in mine
                                      for o in gc.get_objects())
        out["impair_counters"] = {
            "a_rx": dict(wire.a.impair.counters) if wire.a.impair else {},
            "b_rx": dict(wire.b.impair.counters) if wire.b.impair else {},
        }
        out["retrans_segs"] = a.stats.tcp["RetransSegs"] + b.stats.tcp["RetransSegs"]
        out["internal_errors"] = (a.stats.drop_reasons.get("INTERNAL_ERROR", 0)
                                  + b.stats.drop_reasons.get("INTERNAL_ERROR", 0))
        nursery.cancel_scope.cancel()
    out["results"] = dict(sorted(results.items()))
    failures = sum(v for k, v in results.items()
                   if k in ("corrupted", "stalls", "refused_connected")
                   or k.startswith("error_"))
    leaked = sum(v for side in out["leftovers"].values() for v in side.values())
    out["failures"] = failures + out["internal_errors"]
    out["leaked"] = leaked + out["live_connections"]
    out["ok"] = out["failures"] == 0 and out["leaked"] == 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="wall-clock budget")
    ap.add_argument("--workers", type=int, default=16, help="concurrent connections")
    ap.add_argument("--impair", default=DEFAULT_IMPAIR,
                    help=f"impairment spec as for ustack up --impair (default {DEFAULT_IMPAIR})")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.seconds <= 0 or args.workers < 1:
        print("scripts/soak: --seconds must be positive and --workers at least 1",
              file=sys.stderr)
        return 2
    try:
        parse_spec(args.impair)
    except ValueError as e:
        print(f"scripts/soak: {e}", file=sys.stderr)
        return 2
    out = trio.run(soak, args.seconds, args.workers, args.impair, args.seed,
                   clock=trio.testing.MockClock(autojump_threshold=0))
    print(json.dumps(out, indent=2))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
