"""The chaos soak of ``scripts/soak``, short: a few wall-clock seconds of random
transfers, half-closes, aborts and refused connects over an impaired wire,
then every byte verified and both stacks back to an empty baseline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import trio
import trio.testing

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("ustack_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_soak_verifies_every_byte_and_leaks_nothing():
    soak = load_soak()
    out = trio.run(soak.soak, 3.0, 6, "loss=3%,reorder=5%,dup=2%,corrupt=1%,delay=1ms,seed=5",
                   5, clock=trio.testing.MockClock(autojump_threshold=0))
    assert out["ok"], out
    results = out["results"]
    assert results["bytes_verified"] > 0 and results.get("ops_abort", 0) > 0, results
    assert out["impair_counters"]["a_rx"]["impair_dropped"] > 0
