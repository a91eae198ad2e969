"""``scripts/bench --quick`` runs end to end and its JSON has every number.

The bench creates and removes its own namespaces (kernel over veth, and the
kernel <-> ``ustack up`` with offload on and off). Only the shape of its
output is checked here, never the timings: every measurement must be a
positive number in all three columns, with ratios against the kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from netns import REPO, interop_skip_reason

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(interop_skip_reason() is not None, reason=interop_skip_reason() or ""),
]

BENCH = REPO / "scripts" / "bench.py"
COLUMNS = ["kernel_veth", "ustack_offload_on", "ustack_offload_off"]
MEASUREMENTS = ["bulk_kernel_to_peer_MBps", "bulk_peer_to_kernel_MBps", "rr_median_us",
                "rr_p99_us", "connections_per_s"]


def test_quick_bench_reports_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    # --quick takes seconds; the timeout keeps a wedged run under a minute.
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())

    assert data["mode"] == "quick"
    assert data["columns"] == COLUMNS
    assert data["failed"] == []
    for key in ("nproc", "cpu_model", "kernel", "python", "date"):
        assert data["machine"][key], key
    for name in MEASUREMENTS:
        row = data["results"][name]
        for column in COLUMNS:
            assert isinstance(row[column], float) and row[column] > 0, (name, column, row)
        for column in COLUMNS[1:]:
            assert row[f"ratio_{column}"] > 0, (name, column, row)
    rr = data["results"]
    assert all(rr["rr_p99_us"][c] >= rr["rr_median_us"][c] for c in COLUMNS)
    # The TSQ table measured both settings (which is faster is a measurement,
    # not an assertion: it is printed, with the ratio).
    assert [row["setting"] for row in data["tsq"]] == ["TSQ on", "TSQ off"]
    assert all(row["rr_median_us"] > 0 and row["bulk_MBps"] > 0 for row in data["tsq"])

    if data["offload_control"]:
        # ustack up said which mode it ran in, matching the column.
        assert data["details"]["ustack_offload_on"]["reported_offload"] in ("on", None)
        assert data["details"]["ustack_offload_off"]["reported_offload"] in ("off", None)

    # The daemon's CPU per unit of work, for every test in both ustack columns
    # (schedstat counts nanoseconds, so any work shows).
    for column in COLUMNS[1:]:
        cpu = data["daemon_cpu"][column]
        assert set(cpu) == {"bulk_kernel_to_peer", "bulk_peer_to_kernel", "rr", "connections"}
        assert all(isinstance(v, float) and v > 0 for v in cpu.values()), (column, cpu)

    # The table on stdout has a row per measurement, then the CPU table's four;
    # progress went to stderr.
    lines = p.stdout.splitlines()
    assert "kernel veth" in lines[0] and "ustack offload off" in lines[0]
    assert [line.split(" (")[0] for line in lines[1:6]] == [
        "bulk kernel->peer", "bulk peer->kernel", "RR latency median", "RR latency p99",
        "connections"]
    assert lines[6].startswith("ustack daemon CPU") and "ustack offload off" in lines[6]
    assert [line.split(" (")[0] for line in lines[7:11]] == [
        "bulk kernel->peer", "bulk peer->kernel", "RR", "connections"]
    assert "bulk kernel->peer" in p.stderr
