"""CLI of the multi-queue extras: --cpus/--rps-cpus/--vlan, ethtool -c/-C, ustack rps.

Bad arguments are one line and exit 1 before anything starts; the requests
sent to a (fake) daemon carry what was asked; per-CPU rows print as a table.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from ustack.cli import _up_config, build_parser, main

BAD_UP = [
    (["--cpus", "0"], "CPU count"),
    (["--cpus", "65"], "CPU count"),
    (["--cpus", "2", "--rps-cpus", "zz"], "CPU mask"),
    (["--cpus", "2", "--rps-cpus", "4"], "beyond"),
    (["--rps-flow-cnt", "-1"], "rps-flow-cnt"),
    (["--vlan", "100"], "ID:ADDR"),
    (["--vlan", "5000:10.0.5.2/24"], "1..4094"),
    (["--vlan", "100:10.0.100.2"], "prefix"),
    (["--vlan", "100:10.0.0.9/24"], "overlaps"),
    (["--vlan", "100:10.0.100.2/24", "--vlan", "100:10.0.101.2/24"], "twice"),
    (["--vlan", "100:10.0.100.2/24", "--vlan", "101:10.0.100.3/24"], "overlaps"),
]


@pytest.mark.parametrize("extra,needle", BAD_UP, ids=[" ".join(a) for a, _ in BAD_UP])
def test_up_refuses_bad_steering_and_vlan_options(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_up_defaults_turn_rps_on_only_with_more_cpus_than_queues() -> None:
    parse = build_parser().parse_args
    cfg = _up_config(parse(["up", "--queues", "2"]))
    assert (cfg.cpus, cfg.rps_cpus) == (2, 0)
    cfg = _up_config(parse(["up", "--cpus", "4"]))
    assert (cfg.cpus, cfg.rps_cpus) == (4, 0xF)
    cfg = _up_config(parse(["up", "--cpus", "4", "--rps-cpus", "6", "--rps-flow-cnt", "128",
                            "--vlan", "7:192.168.7.2/24", "--vlan", "8:192.168.8.2/24"]))
    assert (cfg.rps_cpus, cfg.rps_flow_cnt) == (6, 128)
    assert [(vid, str(i)) for vid, i in cfg.vlans] == [(7, "192.168.7.2/24"),
                                                       (8, "192.168.8.2/24")]


class OneShot:
    """A control socket that answers one request with *answer* and keeps the request."""

    def __init__(self, path: Path, answer: dict[str, Any]) -> None:
        self.path = str(path)
        self.request: dict[str, Any] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(10)

        def serve() -> None:
            conn, _ = self.sock.accept()
            with conn:
                self.request = json.loads(conn.makefile("rb").readline())
                conn.sendall(json.dumps(answer).encode() + b"\n")
            self.sock.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def done(self) -> dict[str, Any]:
        self.thread.join(10)
        return self.request


COALESCE = {"adaptive-rx": False, "rx-usecs": 50, "rx-frames": 8,
            "queues": [{"rx-usecs": 50, "rx-frames": 8}]}


def test_ethtool_C_sends_typed_changes(tmp_path: Path) -> None:
    d = OneShot(tmp_path / "c.sock", {"result": {"coalesce": COALESCE}})
    assert main(["ethtool", "-C", "rx-usecs", "50", "rx-frames", "8", "adaptive-rx", "off",
                 "--control", d.path]) == 0
    assert d.done()["coalesce"] == {"rx-usecs": 50, "rx-frames": 8, "adaptive-rx": False}


@pytest.mark.parametrize("words,needle", [
    (["rx-usecs"], "pairs"), (["rx-usecs", "-3"], "number"), (["tx-usecs", "3"], "unknown"),
    (["adaptive-rx", "yes"], "on or off"),
])
def test_ethtool_C_refuses_bad_words_before_connecting(
    words: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ethtool", "-C", *words, "--control", str(tmp_path / "none.sock")]) == 1
    assert needle in capsys.readouterr().err


def test_ethtool_c_prints_like_ethtool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = OneShot(tmp_path / "c.sock", {"result": {"coalesce": COALESCE}})
    assert main(["ethtool", "-c", "--control", d.path]) == 0
    d.done()
    out = capsys.readouterr().out
    assert "Adaptive RX: off" in out and "rx-usecs: 50" in out and "rx-frames: 8" in out


def test_ethtool_c_shows_each_queues_net_dim_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = {"adaptive-rx": True, "rx-usecs": 0, "rx-frames": 0,
             "queues": [{"rx-usecs": 64, "rx-frames": 256, "profile": 2,
                         "tune-state": "parking-on-top"}]}
    d = OneShot(tmp_path / "c.sock", {"result": {"coalesce": shown}})
    assert main(["ethtool", "-c", "--control", d.path]) == 0
    d.done()
    out = capsys.readouterr().out
    assert "Adaptive RX: on" in out
    assert "rx-queue-0 (adaptive): rx-usecs 64 rx-frames 256 profile 2 parking-on-top" in out


def test_rps_sets_queue_attributes(tmp_path: Path) -> None:
    d = OneShot(tmp_path / "c.sock", {"result": {"cpus": 4, "queues": [],
                                                 "rps_sock_flow_entries": 0}})
    assert main(["rps", "tap0", "rx-0", "rps_cpus", "f", "rx-0", "rps_flow_cnt", "64",
                 "--control", d.path]) == 0
    assert d.done()["set"] == [[0, "rps_cpus", "f"], [0, "rps_flow_cnt", "64"]]


@pytest.mark.parametrize("words", [["rx-0", "rps_cpus"], ["q0", "rps_cpus", "f"]])
def test_rps_refuses_malformed_words(words: list[str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rps", *words, "--control", str(tmp_path / "none.sock")]) == 1
    assert "rps" in capsys.readouterr().err


def test_stat_prints_one_row_per_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"processed": 0, "dropped": 0, "time_squeeze": 0, "received_rps": 0,
           "flow_limit_count": 0, "backlog_len": 0}
    snap = {"link": {"name": "tap0", "addr": "10.0.0.2/24", "mac": "02:00:00:00:00:02",
                     "mtu": 1500, "queues": 1, "cpus": 2, "vlans": {"tap0.100": "10.0.100.2/24"}},
            "softnet_stat_cpu": {"cpu0": {**row, "processed": 7},
                                 "cpu1": {**row, "processed": 3, "received_rps": 2}}}
    d = OneShot(tmp_path / "c.sock", {"result": snap})
    assert main(["stat", "--control", d.path]) == 0
    d.done()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("cpus 2 tap0.100 10.0.100.2/24")
    cpu1 = next(line.split() for line in lines if line.strip().startswith("cpu1"))
    assert cpu1 == ["cpu1", "3", "0", "0", "2", "0", "0"]


def test_stat_diff_flattens_per_cpu_rows() -> None:
    from ustack.cli import _stat_diff

    before = {"link": {}, "softnet_stat_cpu": {"cpu0": {"processed": 1, "dropped": 0}}}
    after = {"link": {}, "softnet_stat_cpu": {"cpu0": {"processed": 5, "dropped": 2}}}
    diff = _stat_diff(before, after, 2.0)
    assert diff["softnet_stat_cpu"] == {"cpu0.processed": {"delta": 4, "rate": 2.0},
                                        "cpu0.dropped": {"delta": 2, "rate": 1.0}}
