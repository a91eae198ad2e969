"""``ustack capture``, ``ustack filter`` and ``ustack top`` end to end without root:
the real control server (ustack/control.py, observe.py) of a stack on the
in-memory wire, and the real CLI client run in a thread against it. The
``top`` frame is also rendered headless from live snapshots (rich's record
console)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from rich.console import Console
from scapy.layers.inet import ICMP
from scapy.utils import rdpcap
from stackpair import make_pair, run, running

from ustack.cli import main
from ustack.control import ControlServer, sockets_table
from ustack.observe import top_snapshot
from ustack.top import render


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ustack: ") and "Traceback" not in err, err
    return lines[0]


def _serve(tmp_path: Path, body) -> None:
    """Run a pair with b's control server at tmp_path/c.sock, then ``body(a, b, path)``."""
    wire, a, b = make_pair()
    path = str(tmp_path / "c.sock")

    async def main_():
        async with running(a, b):
            async with trio.open_nursery() as n:
                await n.start(ControlServer(b, path).serve)
                await body(a, b, path)
                n.cancel_scope.cancel()

    run(main_, mock=False)


def test_capture_cli_writes_a_pcap_of_count_packets(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ping.pcap"

    async def body(a, b, path):
        async def pinger():
            while True:
                [r async for r in a.ping("10.0.0.2", count=1)]
                await trio.sleep(0.01)

        async with trio.open_nursery() as n:
            n.start_soon(pinger)
            rc = await trio.to_thread.run_sync(main, [
                "capture", "-w", str(out), "-c", "4", "--point", "rx,tx", "--filter", "icmp",
                "--control", path])
            n.cancel_scope.cancel()
        assert rc == 0
        # The capture's taps came off when it ended.
        assert b.dev.tap_rx is None and b.dev.tap_tx is None

    _serve(tmp_path, body)
    pkts = rdpcap(str(out))
    assert len(pkts) == 4
    assert [p[ICMP].type for p in pkts] == [8, 0, 8, 0]
    assert "4 packets captured" in capsys.readouterr().err


def test_capture_cli_refuses_bad_filters_and_points_before_connecting(capsys) -> None:
    for argv, needle in (
        (["--filter", "tcp port http"], "bad port 'http'"),
        (["--point", "rx,ip_rcv"], "separately"),
        (["--point", "nic"], "unknown capture point"),
        (["-c", "0"], "-c takes"),
    ):
        assert main(["capture", "-w", "/nonexistent/x.pcap", *argv,
                     "--control", "/nonexistent/x.sock"]) == 1
        assert needle in _one_error_line(capsys)


def test_filter_cli_add_list_del(tmp_path: Path, capsys) -> None:
    async def body(a, b, path):
        def cli(*args: str) -> int:
            return main(["filter", "tap0", *args, "--control", path])

        assert await trio.to_thread.run_sync(
            lambda: cli("add", "INPUT", "--proto", "icmp", "--drop")) == 0
        results = [r async for r in a.ping("10.0.0.2", count=2, interval=0.05, timeout=0.3)]
        assert all(r.get("timeout") for r in results)
        capsys.readouterr()
        assert await trio.to_thread.run_sync(lambda: cli("list")) == 0
        text = capsys.readouterr().out
        assert "Chain INPUT (policy ACCEPT" in text
        row = next(line for line in text.splitlines() if "DROP" in line).split()
        assert row[:5] == ["1", "2", "168", "DROP", "icmp"]
        assert await trio.to_thread.run_sync(lambda: cli("list", "--json")) == 0
        listing = json.loads(capsys.readouterr().out)
        assert listing[1]["rules"][0]["packets"] == 2
        assert await trio.to_thread.run_sync(lambda: cli("del", "INPUT", "1")) == 0
        results = [r async for r in a.ping("10.0.0.2", count=1, timeout=1)]
        assert results[0].get("ok")
        # Mistakes, from the client or from the daemon, are one line.
        for args, needle in ((("del", "INPUT", "1"), "INPUT has no rule 1"),
                             (("add", "INPUT", "--dport", "80"), "needs --proto"),
                             (("add", "NOWHERE"), "no chain"),
                             (("list", "--drop"), "go with add only"),
                             (("zap",), "unknown action")):
            assert await trio.to_thread.run_sync(lambda a=args: cli(*a)) == 1
            assert needle in _one_error_line(capsys)
        assert b.ipv4.nf is None

    _serve(tmp_path, body)


def test_top_renders_live_numbers_headless() -> None:
    wire, a, b = make_pair()
    data = bytes(300_000)
    snaps = []

    async def main_():
        async with running(a, b):
            lsock = b.socket()
            await lsock.bind(("", 5001))
            lsock.listen(1)
            client = a.socket()
            async with trio.open_nursery() as n:
                n.start_soon(client.connect, ("10.0.0.2", 5001))
                server, _ = await lsock.accept()
            snaps.append(top_snapshot(b, sockets_table(b)))
            got = 0
            async with trio.open_nursery() as n:
                n.start_soon(client.sendall, data)
                while got < len(data):
                    got += len(await server.recv(65536))
            await trio.sleep(0.5)
            snaps.append(top_snapshot(b, sockets_table(b)))

    run(main_)
    console = Console(record=True, width=160)
    console.print(render(snaps[1], snaps[0], "b"))
    text = console.export_text()
    queue_row = next(line for line in text.splitlines() if "rx-0" in line)
    fill, rx_rate = queue_row.split("│")[2].strip(), queue_row.split("│")[3].strip()
    assert fill == "0/256 0%"
    # Live numbers: frames per second over the interval, GRO merging, the busy socket.
    frames = (snaps[1]["stat"]["ethtool"]["rx_queue_0_packets"]
              - snaps[0]["stat"]["ethtool"]["rx_queue_0_packets"])
    assert frames > 200
    assert float(rx_rate.rstrip("k")) > 0
    sock_row = next(line for line in text.splitlines() if "10.0.0.2:5001" in line)
    assert "ESTABLISHED" in sock_row
    gro_row = text.split("GRO frames/packet")[1].splitlines()[2]
    assert float(gro_row.split("│")[1]) > 2
    # The qdisc panel: b's ACKs left through tx-0's root qdisc.
    kind = snaps[1]["tc"][0]["qdisc"]["kind"]
    tc_row = next(line for line in text.splitlines() if "tx-0" in line)
    assert kind in tc_row and float(tc_row.split("│")[4].strip().rstrip("k")) > 0
    # The first frame (no previous snapshot) renders too, without rates.
    console.print(render(snaps[0]))


def test_top_cli_prints_frames_and_says_when_the_stack_is_gone(tmp_path: Path,
                                                                capsys) -> None:
    async def body(a, b, path):
        rc = await trio.to_thread.run_sync(
            main, ["top", "-n", "2", "-d", "0.1", "--control", path])
        assert rc == 0

    _serve(tmp_path, body)
    out = capsys.readouterr().out
    assert out.count("RX queues") == 2 and "busiest TCP sockets" in out
    # The stack goes away while top runs: one line, exit 1.
    wire, a, b = make_pair()
    path = str(tmp_path / "gone.sock")
    codes = []

    async def top_in_thread():
        codes.append(await trio.to_thread.run_sync(
            main, ["top", "-d", "0.1", "--control", path]))

    async def vanish():
        async with running(a, b), trio.open_nursery() as outer:
            async with trio.open_nursery() as server:
                await server.start(ControlServer(b, path).serve)
                outer.start_soon(top_in_thread)
                await trio.sleep(0.5)
                server.cancel_scope.cancel()

    capsys.readouterr()
    run(vanish, mock=False)
    assert codes == [1]
    assert "lost the stack's control socket" in _one_error_line(capsys)
    assert main(["top", "--control", str(tmp_path / "none.sock")]) == 1
    assert "no stack is running there" in _one_error_line(capsys)
