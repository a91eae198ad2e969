"""Qdisc and BQL under whole stacks, and their controls (``ustack tc``, ``ustack link``).

TCP runs between two stacks on the in-memory wire under MockClock, with a tx
rate impairment on the sender so its qdisc holds a real backlog; the control
server and the CLI are exercised against a running stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from stackpair import make_pair, run, running
from test_sockets import connected_pair

from ustack.buffer import Packet
from ustack.cli import main
from ustack.control import ControlServer
from ustack.nic.impair import Impair


@pytest.mark.parametrize("kind", ["pfifo_fast", "fq_codel"])
def test_tcp_through_a_queueing_qdisc_is_byte_exact(kind: str) -> None:
    _, a, b = make_pair()
    a.dev.set_qdisc(kind)
    data = hashlib.sha256(kind.encode()).digest() * 20_000  # 640 KB
    enqueued = 0
    start_xmit = a.dev.start_xmit

    def counting(pkt: Packet) -> None:
        nonlocal enqueued
        enqueued += 1
        start_xmit(pkt)

    a.dev.start_xmit = counting  # type: ignore[method-assign]
    seen: dict[str, int] = {"backlog": 0, "limit": 0, "stopped": 0}

    async def main_() -> None:
        async with running(a, b):
            a.set_impair(None, Impair(rate=2_500_000))  # 20 Mbit/s
            up, down = await connected_pair(a, b)
            got = bytearray()

            async def send() -> None:
                await up.send_all(data)
                await up.send_eof()

            async def sample() -> None:
                while True:
                    await trio.sleep(0.01)
                    row = a.dev.tc_show()[0]
                    seen["backlog"] = max(seen["backlog"], row["qdisc"]["backlog_packets"])
                    seen["limit"] = max(seen["limit"], row["bql"]["limit"])
                    seen["stopped"] += row["stopped"]

            async with trio.open_nursery() as n:
                n.start_soon(send)
                n.start_soon(sample)
                async for chunk in down:
                    got += chunk
                n.cancel_scope.cancel()
            assert bytes(got) == data

    run(main_)
    qd = a.dev.qdiscs[0]
    assert seen["backlog"] > 0 and seen["limit"] > 0 and seen["stopped"] > 0
    assert qd.packets + qd.drops + qd.qlen == enqueued
    snap = a.snapshot()["qdisc"]
    assert snap["sent_packets"] == qd.packets and snap["dropped"] == qd.drops
    assert snap["bql_limit"] == a.dev.dql[0].limit


def test_tc_and_link_commands_against_a_running_stack(
        capsys: pytest.CaptureFixture[str]) -> None:
    _, a, b = make_pair()
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path may be longer.
    tmp = tempfile.TemporaryDirectory(prefix="ustq")
    path = os.path.join(tmp.name, "c.sock")
    out: dict[str, Any] = {}

    def cli(*argv: str) -> tuple[int, str, str]:
        rc = main([*argv, "--control", path])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    async def main_() -> None:
        async with running(a, b), trio.open_nursery() as n:
            await n.start(ControlServer(a, path).serve)
            for argv in (("tc", "a"), ("tc", "a", "--json"), ("tc", "replace", "root", "fq_codel"),
                         ("tc", "--json"), ("link", "a", "set", "txqueuelen", "77"),
                         ("link", "--json"), ("link",), ("tc", "replace", "root", "bogus"),
                         ("tc", "a", "delete"), ("link", "set", "txqueuelen", "x"),
                         ("link", "set", "txqueuelen", "0")):
                out[" ".join(argv)] = await trio.to_thread.run_sync(cli, *argv)
            n.cancel_scope.cancel()

    run(main_, mock=False)
    tmp.cleanup()
    rc, text, _ = out["tc a"]
    assert rc == 0
    assert text.startswith("qdisc pfifo_fast 0: dev a parent :1 bands 3 priomap 1 2 2 2 1 2 0 0")
    assert " Sent " in text and " backlog 0b 0p" in text and "byte_queue_limits: limit " in text
    shown = json.loads(out["tc a --json"][1])
    assert shown["txqueuelen"] == 1000 and shown["queues"][0]["qdisc"]["kind"] == "pfifo_fast"
    assert set(shown["queues"][0]["bql"]) == {"limit", "limit_max", "limit_min", "inflight",
                                              "hold_time"}
    assert out["tc replace root fq_codel"][0] == 0
    assert json.loads(out["tc --json"][1])["queues"][0]["qdisc"]["kind"] == "fq_codel"
    assert a.dev.qdiscs[0].kind == "fq_codel"
    assert out["link a set txqueuelen 77"][0] == 0 and a.dev.txqueuelen == 77
    assert json.loads(out["link --json"][1]) == {"dev": "a", "mtu": 1500, "txqueuelen": 77,
                                                 "qdisc": "fq_codel", "queues": 1}
    assert out["link"][1] == "a: mtu 1500 qdisc fq_codel qlen 77 queues 1\n"
    for bad, words in (("tc replace root bogus", "usage: ustack tc"),
                       ("tc a delete", "usage: ustack tc"),
                       ("link set txqueuelen x", "usage: ustack link"),
                       ("link set txqueuelen 0", "bad txqueuelen 0")):
        rc, text, err = out[bad]
        assert rc == 1 and text == "" and err.count("\n") == 1, (bad, err)
        assert err.startswith("ustack: ") and words in err, (bad, err)
    assert a.dev.txqueuelen == 77


def test_up_rejects_a_bad_txqueuelen(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ustack.daemon

    async def refuse(cfg: Any) -> None:
        raise AssertionError("a unit test tried to start a stack")

    monkeypatch.setattr(ustack.daemon, "run_daemon", refuse)
    assert main(["up", "--txqueuelen", "0", "--control", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ustack: bad txqueuelen 0") and err.count("\n") == 1
