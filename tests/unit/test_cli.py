"""The ``ustack`` command (ustack/cli.py).

User errors must be exit status 1 and exactly one stderr line starting with
"ustack: ", never a traceback. Client commands are checked against a fake
daemon: a Unix socket in tmp_path speaking the JSON-lines protocol of
ustack/control.py. No test ever starts a real stack or TAP.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from ustack.cli import main


@pytest.fixture(autouse=True)
def never_start_a_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety net: if validation wrongly passes, fail instead of creating a TAP."""

    async def refuse(cfg: Any) -> None:
        raise AssertionError(f"a unit test tried to start a stack: {cfg!r}")

    try:
        import ustack.daemon
    except ImportError:
        return  # cmd_up cannot reach run_daemon either
    monkeypatch.setattr(ustack.daemon, "run_daemon", refuse)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single 'ustack: ...' line on stderr (fails on anything else)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ustack: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- ustack up: validation --------------------------------------------------------------

BAD_UP = [
    (["--addr", "10.0.0.300/24"], "10.0.0.300"),
    (["--addr", "10.0.0.2"], "prefix"),
    (["--addr", "foo"], "foo"),
    (["--addr", "10.0.0.0/24"], "10.0.0.0"),
    (["--addr", "10.0.0.255/24"], "10.0.0.255"),
    (["--addr", "10.0.0.2/31"], "10.0.0.2"),
    (["--host-addr", "10.0.1.1/24"], "not in the stack's subnet"),
    (["--host-addr", "10.0.0.2/24"], "both"),
    (["--host-addr", "bar"], "bar"),
    (["--mtu", "10"], "MTU"),
    (["--mtu", "70000"], "MTU"),
    (["--mtu", "67"], "MTU"),
    (["--queues", "0"], "queue"),
    (["--queues", "300"], "queue"),
    (["--ring-size", "0"], "ring"),
    (["--gateway", "10.0.0.999"], "gateway"),
    (["--gateway", "gw"], "gateway"),
    (["--gateway", "192.168.1.1"], "192.168.1.1"),
    (["--mac", "zz:00:00:00:00:01"], "MAC"),
    (["--mac", "02:00:00:00:01"], "MAC"),
    (["--mac", "02:00:00:00:00:100"], "MAC"),
    (["--mac", "01:00:5e:00:00:01"], "multicast"),
    (["--sysctl", "net.core.no_such_knob=1"], "no_such_knob"),
    (["--sysctl", "net.core.somaxconn=lots"], "somaxconn"),
    (["--sysctl", "net.ipv4.ip_local_port_range=60999 32768"], "ip_local_port_range"),
    (["--sysctl", "net.core.somaxconn"], "NAME=VALUE"),
    (["--sysctl", "net.core.somaxconn=1", "--sysctl", "net.core.dev_weight=0"], "dev_weight"),
    (["a-very-long-tap-name"], "interface name"),
]


@pytest.mark.parametrize("extra,needle", BAD_UP, ids=[" ".join(a) for a, _ in BAD_UP])
def test_up_with_bad_argument_is_one_line_exit_1(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every invalid `up` option is refused before anything starts, in one line."""
    assert main(["up", *extra]) == 1
    line = one_error_line(capsys)
    assert needle in line


def test_up_with_non_root_uid_says_must_run_as_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check with geteuid faked, so it also runs when the suite is root."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["up", "tap7", "--addr", "192.168.5.2/24", "--host-addr", "192.168.5.1/24",
                 "--gateway", "192.168.5.1", "--mac", "02:11:22:33:44:55",
                 "--sysctl", "net.core.somaxconn=128"]) == 1
    assert "must run as root" in one_error_line(capsys)


# ---- clients without a daemon -------------------------------------------------------------

CLIENTS = [
    ["stat"],
    ["stat", "--json"],
    ["sysctl"],
    ["sysctl", "tap0", "net.core.somaxconn=128"],
    ["neigh"],
    ["route"],
    ["ping", "-c", "1", "10.0.0.1"],
]


@pytest.mark.parametrize("argv", CLIENTS, ids=[" ".join(a) for a in CLIENTS])
def test_client_without_a_daemon_says_no_stack(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing control socket is 'no stack is running there', exit 1."""
    assert main([*argv, "--control", "/nonexistent/x.sock"]) == 1
    assert "no stack is running there" in one_error_line(capsys)


def test_client_on_a_non_socket_file_says_no_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path that exists but is not a listening socket is also 'no stack'."""
    path = tmp_path / "stale.sock"
    path.write_text("")
    assert main(["stat", "--control", str(path)]) == 1
    assert "no stack is running there" in one_error_line(capsys)


@pytest.mark.parametrize("kind", ["enotdir", "too-long"])
def test_client_with_an_unusable_control_path_is_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOTDIR or an over-long AF_UNIX path is a user error too, not a traceback."""
    if kind == "enotdir":
        (tmp_path / "file").write_text("")
        path = str(tmp_path / "file" / "x.sock")
    else:
        path = str(tmp_path / ("d" * 200 + ".sock"))
    assert main(["stat", "--control", path]) == 1
    one_error_line(capsys)


def test_ping_with_three_operands_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`ustack ping a b c` prints the usage line and exits 1."""
    assert main(["ping", "a", "b", "c"]) == 1
    assert "usage: ustack ping [TAP] HOST" in one_error_line(capsys)


@pytest.mark.parametrize("opts", [["-c", "0"], ["-s", "-1"], ["-s", "65508"]])
def test_ping_with_bad_count_or_size_is_one_line(
    opts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Count below 1 or size outside 0..65507 is refused before connecting."""
    assert main(["ping", *opts, "10.0.0.1", "--control", "/nonexistent/x.sock"]) == 1
    assert "count must be" in one_error_line(capsys)


# ---- a fake daemon ------------------------------------------------------------------------


class FakeDaemon:
    """Accepts one client, records its request line, answers with scripted JSON lines."""

    def __init__(self, path: Path, answers: list[dict[str, Any]]) -> None:
        self.path = str(path)
        assert len(self.path) < 100
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(10)
                line = conn.makefile("rb").readline()
                self.requests.append(json.loads(line))
                for answer in self.answers:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
        except BaseException as err:  # reported by close()
            self.error = err
        finally:
            self.sock.close()

    def close(self) -> dict[str, Any]:
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        (request,) = self.requests
        return request


SNAPSHOT = {
    "link": {"name": "tap0", "addr": "10.0.0.2/24", "mac": "02:00:00:00:00:02", "mtu": 1500,
             "queues": 1},
    "Ip": {"InReceives": 7, "OutRequests": 3},
    "softnet_stat": {"processed": 7, "time_squeeze": 0},
}


def test_stat_json_prints_the_daemons_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stat --json` sends {"cmd": "stat"} and prints the result as JSON."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": SNAPSHOT}])
    assert main(["stat", "--json", "--control", d.path]) == 0
    assert d.close() == {"cmd": "stat"}
    out = capsys.readouterr()
    assert json.loads(out.out) == SNAPSHOT
    assert out.err == ""


def test_stat_text_shows_link_and_nonzero_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain `stat` prints the link line and non-zero counters, like nstat."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": SNAPSHOT}])
    assert main(["stat", "--control", d.path]) == 0
    d.close()
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "tap0: 10.0.0.2/24 mac 02:00:00:00:00:02 mtu 1500 queues 1"
    assert "Ip:" in out and "InReceives" in out and "processed" in out
    assert "time_squeeze" not in out


def test_stat_zeros_shows_zero_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stat --zeros` also prints counters that are 0 (nstat -z)."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": SNAPSHOT}])
    assert main(["stat", "--zeros", "--control", d.path]) == 0
    d.close()
    assert "time_squeeze" in capsys.readouterr().out


def test_sysctl_with_tap_and_setting_sends_name_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sysctl TAP NAME=VALUE` sends name and value (stripped) and prints the answer."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": {"net.core.somaxconn": "128"}}])
    assert main(["sysctl", "tap0", "net.core.somaxconn = 128", "--control", d.path]) == 0
    assert d.close() == {"cmd": "sysctl", "name": "net.core.somaxconn", "value": "128"}
    assert capsys.readouterr().out == "net.core.somaxconn = 128\n"


def test_sysctl_setting_without_tap_sends_name_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sysctl NAME=VALUE` alone is a setting for the default TAP, not a TAP name."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": {"net.core.somaxconn": "128"}}])
    assert main(["sysctl", "net.core.somaxconn=128", "--control", d.path]) == 0
    assert d.close() == {"cmd": "sysctl", "name": "net.core.somaxconn", "value": "128"}


@pytest.mark.parametrize("name", ["fs.file-max", "ustack.tcp_small_queues"])
def test_sysctl_non_net_names_alone_are_names_not_taps(tmp_path: Path, name: str) -> None:
    """`sysctl fs.file-max` reads that name on the default TAP, like `sysctl net.*`."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": {name: "1"}}])
    assert main(["sysctl", name, "--control", d.path]) == 0
    assert d.close() == {"cmd": "sysctl", "name": name}


def test_sysctl_name_only_reads_one_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sysctl TAP NAME` asks for that name without a value."""
    d = FakeDaemon(tmp_path / "c.sock", [{"result": {"net.core.dev_weight": "64"}}])
    assert main(["sysctl", "tap0", "net.core.dev_weight", "--control", d.path]) == 0
    assert d.close() == {"cmd": "sysctl", "name": "net.core.dev_weight"}
    assert capsys.readouterr().out == "net.core.dev_weight = 64\n"


def test_sysctl_without_arguments_lists_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sysctl` alone sends a bare request and prints every name = value."""
    result = {"net.core.dev_weight": "64", "net.ipv4.tcp_rmem": "4096\t131072\t6291456"}
    d = FakeDaemon(tmp_path / "c.sock", [{"result": result}])
    assert main(["sysctl", "--control", d.path]) == 0
    assert d.close() == {"cmd": "sysctl"}
    assert capsys.readouterr().out.splitlines() == [
        "net.core.dev_weight = 64", "net.ipv4.tcp_rmem = 4096\t131072\t6291456"]


def test_daemon_error_answer_is_exit_1_with_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An {"error": MESSAGE} answer becomes 'ustack: MESSAGE' and exit status 1."""
    msg = "net.core.somaxconn: 'lots' is not an integer"
    d = FakeDaemon(tmp_path / "c.sock", [{"error": msg}])
    assert main(["sysctl", "tap0", "net.core.somaxconn=lots", "--control", d.path]) == 1
    d.close()
    assert one_error_line(capsys) == f"ustack: {msg}"


def test_error_after_progress_lines_is_still_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ping that fails midway prints what arrived, then the error line, exit 1."""
    d = FakeDaemon(tmp_path / "c.sock", [
        {"progress": {"seq": 1, "bytes": 64, "from": "10.0.0.1", "ttl": 64, "time_ms": 0.5,
                      "ok": True}},
        {"error": "stack is shutting down"},
    ])
    assert main(["ping", "-c", "3", "10.0.0.1", "--control", d.path]) == 1
    d.close()
    out = capsys.readouterr()
    assert "icmp_seq=1" in out.out
    assert out.err == "ustack: stack is shutting down\n"


def reply(seq: int) -> dict[str, Any]:
    return {"progress": {"seq": seq, "bytes": 64, "from": "10.0.0.1", "ttl": 64,
                         "time_ms": 0.25 * seq, "ok": True}}


def test_ping_prints_replies_and_returns_0_without_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every reply is printed; all answered is exit 0; the request carries the options."""
    answers = [reply(1), reply(2), {"result": [r["progress"] for r in (reply(1), reply(2))]}]
    d = FakeDaemon(tmp_path / "c.sock", answers)
    argv = ["ping", "tap3", "10.0.0.1", "-c", "2", "-s", "100", "-i", "0.2", "--control", d.path]
    assert main(argv) == 0
    assert d.close() == {"cmd": "ping", "host": "10.0.0.1", "count": 2, "size": 100,
                         "interval": 0.2}
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PING 10.0.0.1 100(128) bytes")
    assert out[1] == "64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=0.25 ms"
    assert out[2] == "64 bytes from 10.0.0.1: icmp_seq=2 ttl=64 time=0.5 ms"
    assert out[-1] == "2 packets transmitted, 2 received, 0% packet loss"


def test_ping_with_loss_returns_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lost or failed echo is printed and makes the exit status 1."""
    answers = [
        reply(1),
        {"progress": {"seq": 2}},
        {"progress": {"seq": 3, "error": "Destination Host Unreachable"}},
        {"result": []},
    ]
    d = FakeDaemon(tmp_path / "c.sock", answers)
    assert main(["ping", "-c", "3", "10.0.0.1", "--control", d.path]) == 1
    d.close()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "icmp_seq=2: no answer" in lines
    assert "icmp_seq=3: Destination Host Unreachable" in lines
    assert lines[-1] == "3 packets transmitted, 1 received, 66% packet loss"
    assert out.err == ""


def test_ping_json_prints_the_progress_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ping --json` prints only the list of results."""
    d = FakeDaemon(tmp_path / "c.sock", [reply(1), {"result": []}])
    assert main(["ping", "-c", "1", "10.0.0.1", "--json", "--control", d.path]) == 0
    d.close()
    assert json.loads(capsys.readouterr().out) == [reply(1)["progress"]]


def test_neigh_and_route_print_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`neigh` prints ip-neigh lines; `route` prints the daemon's route strings."""
    d = FakeDaemon(tmp_path / "n.sock", [{"result": [
        {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "state": "REACHABLE"},
        {"ip": "10.0.0.9", "mac": None, "state": "FAILED"},
    ]}])
    assert main(["neigh", "tap0", "--control", d.path]) == 0
    assert d.close() == {"cmd": "neigh"}
    assert capsys.readouterr().out.splitlines() == [
        "10.0.0.1 dev tap0 lladdr 02:00:00:00:00:01 REACHABLE", "10.0.0.9 dev tap0 FAILED"]
    d = FakeDaemon(tmp_path / "r.sock", [{"result": ["10.0.0.0/24 dev tap0 src 10.0.0.2"]}])
    assert main(["route", "--control", d.path]) == 0
    assert d.close() == {"cmd": "route"}
    assert capsys.readouterr().out == "10.0.0.0/24 dev tap0 src 10.0.0.2\n"


def test_tcp_metrics_show_prints_ip_tcp_metrics_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"dst": "10.0.0.1", "age": 1.5, "fo_mss": 1460, "fo_cookie": "00112233aabbccdd",
             "fo_syn_drops": 1, "fo_syn_drops_ago": 0.25}]
    d = FakeDaemon(tmp_path / "c.sock", [{"result": rows}])
    assert main(["tcp_metrics", "tap0", "show", "10.0.0.1", "--control", d.path]) == 0
    assert d.close() == {"cmd": "tcp_metrics", "action": "show", "addr": "10.0.0.1"}
    assert capsys.readouterr().out == (
        "10.0.0.1 age 1.500sec fo_mss 1460 fo_cookie 00112233aabbccdd "
        "fo_syn_drops 1/0.250sec ago\n")


def test_tcp_metrics_flush_without_tap(tmp_path: Path) -> None:
    d = FakeDaemon(tmp_path / "c.sock", [{"result": {"flushed": 2}}])
    assert main(["tcp_metrics", "flush", "--control", d.path]) == 0
    assert d.close() == {"cmd": "tcp_metrics", "action": "flush"}


@pytest.mark.parametrize("argv", [
    ["tcp_metrics", "tap0", "show", "not-an-ip"],
    ["tcp_metrics", "tap0", "show", "10.0.0.1", "extra"],
    ["nc", "--fastopen", "-l", "8080"],
    ["nc", "--fastopen", "-u", "10.0.0.1", "53"],
])
def test_fastopen_cli_misuse_is_one_line(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--control", "/nonexistent/ustack.sock"]) == 1
    assert one_error_line(capsys)
