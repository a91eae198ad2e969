"""The seeded impairment layer (ustack/nic/impair.py): spec language, each knob, determinism.

Frames are numbered (a 4-byte index after a 14-byte Ethernet header) so that
order, loss, duplication and corruption can be read off what comes out. Time is
driven by hand (the module is sans-IO): :func:`drive` plays arrivals and
``next_deadline`` wake-ups in time order, like the device's timer does.
"""

from __future__ import annotations

import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.nic.impair import (
    REORDER_TIMEOUT,
    Impair,
    ImpairError,
    Impairment,
    format_spec,
    parse_spec,
)

HDR = bytes(range(14))  # a fake Ethernet header


def frame(i: int, size: int = 64) -> bytes:
    """Frame number *i*: header, index, padding to *size* bytes."""
    return HDR + struct.pack("!I", i) + bytes(max(0, size - 18))


def index(f: bytes) -> int:
    return struct.unpack_from("!I", f, 14)[0]


def drive(imp: Impairment, arrivals: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """Submit *arrivals* (time-sorted) and poll at every deadline; return (time, frame) out."""
    out: list[tuple[float, bytes]] = []
    i = 0
    while True:
        nxt = arrivals[i][0] if i < len(arrivals) else math.inf
        dl = imp.next_deadline()
        if dl is not None and dl < nxt:
            out += [(dl, f) for f in imp.poll(dl)]
        elif i < len(arrivals):
            t, f = arrivals[i]
            out += [(t, g) for g in imp.submit(f, t)]
            i += 1
        else:
            return out


def burst_all(imp: Impairment, n: int, size: int = 64, now: float = 0.0) -> list[bytes]:
    """Submit frames 0..n-1 all at *now*, then drain; return what came out."""
    out: list[bytes] = []
    for i in range(n):
        out += imp.submit(frame(i, size), now)
    return out + imp.poll(math.inf)


def band(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """A binomial acceptance band: mean +- *sigmas* standard deviations."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


# ---- the spec language ------------------------------------------------------


def test_parse_the_documented_example():
    rx, tx = parse_spec("rx:loss=5%,reorder=5%,dup=1%;tx:loss=2%,delay=10ms,seed=7")
    assert rx == Impair(loss=0.05, reorder=0.05, dup=0.01)
    assert tx == Impair(loss=0.02, delay=0.01, seed=7)


def test_parse_empty_and_one_sided():
    assert parse_spec("") == (None, None)
    assert parse_spec("  ") == (None, None)
    assert parse_spec("rx:loss=1%") == (Impair(loss=0.01), None)
    assert parse_spec("tx:loss=1%") == (None, Impair(loss=0.01))


def test_unprefixed_part_applies_to_both_and_later_parts_override():
    rx, tx = parse_spec("loss=1%,delay=5ms;tx:loss=3%")
    assert rx == Impair(loss=0.01, delay=0.005)
    assert tx == Impair(loss=0.03, delay=0.005)
    assert parse_spec("RX: Loss = 2% , Seed=3 ;") == (Impair(loss=0.02, seed=3), None)


@pytest.mark.parametrize(("text", "knob", "value"), [
    ("loss=5%", "loss", 0.05), ("loss=0.05", "loss", 0.05), ("loss=100%", "loss", 1.0),
    ("loss=1", "loss", 1.0), ("corrupt=.5%", "corrupt", 0.005),
    ("delay=10ms", "delay", 0.01), ("delay=1.5s", "delay", 1.5), ("delay=200us", "delay", 2e-4),
    ("delay=0.25", "delay", 0.25), ("jitter=500ns", "jitter", 5e-7), ("delay=1e-3", "delay", 1e-3),
    ("rate=10mbit", "rate", 1.25e6), ("rate=1gbit", "rate", 1.25e8),
    ("rate=500kbit", "rate", 62500.0), ("rate=2mbyte", "rate", 2e6), ("rate=2MB", "rate", 2e6),
    ("rate=12345", "rate", 12345.0), ("rate=8bit", "rate", 1.0),
    ("burst=2.5", "burst", 2.5), ("depth=7", "depth", 7), ("limit=1", "limit", 1),
    ("seed=-3", "seed", -3), ("seed=0", "seed", 0),
])
def test_parse_units(text, knob, value):
    rx, tx = parse_spec(text)
    assert rx == tx
    assert getattr(rx, knob) == value
    assert type(getattr(rx, knob)) is type(value)


@pytest.mark.parametrize(("text", "words"), [
    ("lose=5%", ["unknown knob", "lose"]),
    ("loss=abc", ["loss", "not a number"]),
    ("loss=5x", ["loss", "unknown unit"]),
    ("loss=150%", ["loss", "out of range"]),
    ("loss=1.5", ["loss", "out of range"]),
    ("dup=-1%", ["dup", "out of range"]),
    ("reorder=2", ["reorder", "out of range"]),
    ("corrupt=101%", ["corrupt", "out of range"]),
    ("delay=-10ms", ["delay", "negative"]),
    ("jitter=-1", ["jitter", "negative"]),
    ("delay=10parsecs", ["delay", "unknown unit"]),
    ("delay=nan", ["delay", "not a number"]),
    ("delay=inf", ["delay", "not a number"]),
    ("delay=1e999", ["delay", "finite"]),
    ("rate=-1mbit", ["rate", "negative"]),
    ("rate=10furlongs", ["rate", "unknown unit"]),
    ("burst=-1", ["burst", "negative"]),
    ("burst=5%", ["burst", "unknown unit"]),
    ("loss=", ["loss", "missing value"]),
    ("loss", ["loss", "missing value"]),
    ("delay=10ms,loss", ["loss", "missing value"]),
    ("up:loss=1%", ["unknown direction", "up"]),
    ("rx:", ["no knobs"]),
    ("depth=0", ["depth", ">= 1"]),
    ("depth=1.5", ["depth", "not an integer"]),
    ("limit=-4", ["limit", ">= 1"]),
    ("limit=lots", ["limit", "not an integer"]),
    ("seed=1.5", ["seed", "not an integer"]),
    ("loss=1%,loss=2%", ["loss", "twice"]),
])
def test_bad_specs_raise_one_line_errors_naming_the_knob(text, words):
    with pytest.raises(ImpairError) as info:
        parse_spec(text)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("knobs", [
    Impair(loss=2.0), Impair(dup=-0.1), Impair(delay=-1.0), Impair(rate=math.inf),
    Impair(jitter=math.nan), Impair(depth=0), Impair(limit=0), Impair(burst=-1.0),
    Impair(seed="x"),  # type: ignore[arg-type]
])
def test_impairment_refuses_out_of_range_knobs(knobs):
    with pytest.raises(ImpairError):
        Impairment(knobs)


def test_format_canonical_text():
    assert format_spec(None, None) == ""
    rx, tx = Impair(loss=0.05, reorder=0.05, dup=0.01), Impair(loss=0.02, delay=0.01, seed=7)
    assert format_spec(rx, tx) == "rx:loss=5%,reorder=5%,dup=1%;tx:loss=2%,delay=10ms,seed=7"
    both = Impair(burst=2.0, delay=1.5, jitter=2e-4, rate=1.25e6, limit=50, depth=5)
    assert format_spec(both, both) == (
        "burst=2,depth=5,delay=1.5s,jitter=200us,rate=10mbit,limit=50")
    assert format_spec(None, Impair(rate=1.25e8)) == "tx:rate=1gbit"
    # An all-default side is impaired (not None), and must stay so.
    assert parse_spec(format_spec(Impair(), None)) == (Impair(), None)
    assert parse_spec(format_spec(Impair(), Impair())) == (Impair(), Impair())


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
probs = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
impairs = st.builds(
    Impair, loss=probs, burst=finite, reorder=probs, depth=st.integers(1, 10**6), dup=probs,
    corrupt=probs, delay=finite, jitter=finite, rate=finite, limit=st.integers(1, 10**9),
    seed=st.none() | st.integers(-(2**64), 2**64))


@settings(max_examples=300)
@given(st.none() | impairs, st.none() | impairs)
def test_format_parse_round_trip(rx, tx):
    text = format_spec(rx, tx)
    assert parse_spec(text) == (rx, tx)
    assert format_spec(*parse_spec(text)) == text


# ---- passthrough and determinism ------------------------------------------


def test_all_zero_knobs_are_a_clean_wire():
    imp = Impairment(Impair())
    frames = [frame(i, 14 + i % 100) for i in range(500)]
    for i, f in enumerate(frames):
        out = imp.submit(f, i * 0.001)
        assert out == [f]
        assert imp.held() == 0
        assert imp.next_deadline() is None
    assert imp.poll(math.inf) == []
    assert imp.counters == dict.fromkeys(imp.counters, 0) | {"impair_frames": 500}


def test_loss_follows_the_seeded_generator_exactly():
    # The model for loss alone is one random() draw per frame, compared with `loss`.
    imp = Impairment(Impair(loss=0.3, seed=42))
    got = [index(f) for f in burst_all(imp, 200)]
    rng = random.Random(42)
    assert got == [i for i in range(200) if not rng.random() < 0.3]


def run_mixed(seed: int, poll_every: float | None) -> list[bytes]:
    knobs = Impair(loss=0.05, burst=1.0, reorder=0.1, depth=4, dup=0.05, corrupt=0.05,
                   delay=0.003, jitter=0.002, rate=1e6, limit=50, seed=seed)
    imp = Impairment(knobs)
    rng, prng = random.Random(99), random.Random(7)
    t, out = 0.0, []
    for i in range(2000):
        t += rng.expovariate(2000.0)
        if poll_every is not None:
            while (dl := imp.next_deadline()) is not None and dl <= t:
                out += imp.poll(min(t, dl + poll_every * prng.random()))
        out += imp.submit(frame(i, rng.randrange(60, 1500)), t)
    return out + imp.poll(math.inf)


def test_same_seed_same_outcome_however_often_polled():
    a = run_mixed(5, None)
    assert a == run_mixed(5, None)
    assert a == run_mixed(5, 0.0)
    assert a == run_mixed(5, 0.0005)
    assert a != run_mixed(6, None)


# ---- each knob --------------------------------------------------------------


def test_loss_rate_on_100k_frames():
    n = 100_000
    imp = Impairment(Impair(loss=0.05, seed=1))
    out = burst_all(imp, n, size=20)
    lo, hi = band(n, 0.05)
    assert lo <= imp.counters["impair_dropped"] <= hi
    assert len(out) == n - imp.counters["impair_dropped"]
    assert imp.counters["impair_burst_dropped"] == 0
    assert imp.counters["impair_frames"] == n
    assert [index(f) for f in out] == sorted(index(f) for f in out)


def loss_runs(imp: Impairment, n: int) -> list[int]:
    """Lengths of the runs of consecutive lost frames among n submitted."""
    got = {index(f) for f in burst_all(imp, n, size=20)}
    runs, run = [], 0
    for i in range(n):
        if i in got:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    return runs + ([run] if run else [])


@pytest.mark.parametrize("burst", [0.0, 1.0, 3.0])
def test_burst_sets_the_mean_loss_run_length(burst):
    imp = Impairment(Impair(loss=0.01, burst=burst, seed=3))
    runs = loss_runs(imp, 200_000)
    # Gilbert: the extra run length is geometric with mean `burst` (independent
    # losses at 1% give runs of 1/(1-0.01)).
    expect = 1 + burst if burst else 1 / (1 - 0.01)
    mean = sum(runs) / len(runs)
    assert abs(mean - expect) < 0.1 * expect, (mean, expect)
    c = imp.counters
    assert c["impair_dropped"] == sum(runs)
    assert c["impair_burst_dropped"] == (sum(runs) - len(runs) if burst else 0)
    # Runs start at the independent rate whatever the burst.
    lo, hi = band(200_000 - sum(runs) + len(runs), 0.01)
    assert lo <= len(runs) <= hi


def test_dup_rate_and_the_copy_follows_the_original():
    n = 50_000
    imp = Impairment(Impair(dup=0.1, seed=8))
    out = burst_all(imp, n)
    c = imp.counters["impair_duplicated"]
    lo, hi = band(n, 0.1)
    assert lo <= c <= hi
    assert len(out) == n + c
    idx = [index(f) for f in out]
    assert sorted(set(idx)) == list(range(n))
    assert idx == sorted(idx)  # a copy sits right behind its original
    assert sum(1 for a, b in zip(idx, idx[1:], strict=False) if a == b) == c


def test_corrupt_rate_flips_exactly_one_bit_past_the_mac_header():
    n = 20_000
    imp = Impairment(Impair(corrupt=0.05, seed=4))
    sent = [frame(i, 60 + i % 1400) for i in range(n)]
    out = []
    for f in sent:
        out += imp.submit(f, 0.0)
    assert len(out) == n
    changed = 0
    for a, b in zip(sent, out, strict=True):
        if a != b:
            changed += 1
            assert len(a) == len(b) and a[:14] == b[:14]
            diff = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
            assert diff.bit_count() == 1
    assert changed == imp.counters["impair_corrupted"]
    lo, hi = band(n, 0.05)
    assert lo <= changed <= hi


@given(st.binary(min_size=0, max_size=200), st.integers(0, 2**32))
def test_corruption_never_touches_the_callers_buffer_or_the_header(data, seed):
    buf = bytearray(data)
    imp = Impairment(Impair(corrupt=1.0, seed=seed))
    (out,) = imp.submit(buf, 0.0)  # type: ignore[arg-type]
    assert buf == data and isinstance(out, bytes)
    if len(data) <= 14:
        assert out == data and imp.counters["impair_corrupted"] == 0
    else:
        assert out[:14] == data[:14]
        diff = int.from_bytes(out, "big") ^ int.from_bytes(data, "big")
        assert diff.bit_count() == 1
        assert imp.counters["impair_corrupted"] == 1


def test_dup_copy_is_intact_when_the_original_is_corrupted():
    imp = Impairment(Impair(dup=1.0, corrupt=1.0, seed=2))
    f = frame(1, 100)
    a, b = imp.submit(f, 0.0)
    assert b == f and a != f


@settings(max_examples=50)
@given(st.integers(0, 2**32), st.integers(1, 8), st.floats(0.01, 0.6))
def test_reorder_holds_a_frame_behind_exactly_depth_later_frames(seed, depth, p):
    n = 400
    imp = Impairment(Impair(reorder=p, depth=depth, seed=seed))
    live: list[int] = []
    for i in range(n):  # all at t=0: no reorder timeout fires until the drain
        live += [index(f) for f in imp.submit(frame(i), 0.0)]
    drained = [index(f) for f in imp.poll(math.inf)]
    out = live + drained
    assert sorted(out) == list(range(n))
    assert imp.held() == 0
    seen: set[int] = set()
    overtaken = {}
    for i in out:  # how many later frames came out before frame i
        overtaken[i] = sum(1 for j in seen if j > i)
        seen.add(i)
    # Out at once (0) or behind exactly `depth` later frames; only frames
    # the timeout frees at the drain have fewer.
    assert all(overtaken[i] in (0, depth) for i in live)
    assert all(overtaken[i] < depth for i in drained)
    held_live = sum(1 for i in live if overtaken[i] == depth)
    assert held_live + len(drained) == imp.counters["impair_reordered"]


def test_reorder_rate_and_displacement():
    n, depth = 50_000, 3
    imp = Impairment(Impair(reorder=0.05, depth=depth, seed=12))
    out = [index(f) for f in burst_all(imp, n)]
    lo, hi = band(n, 0.05)
    assert lo <= imp.counters["impair_reordered"] <= hi
    assert sorted(out) == list(range(n))
    moved = sum(1 for a, b in zip(out, out[1:], strict=False) if a > b)
    assert moved >= 0.9 * imp.counters["impair_reordered"]


def test_reorder_timeout_frees_a_held_frame():
    imp = Impairment(Impair(reorder=1.0, seed=0))
    assert imp.submit(frame(0), 1.0) == []
    assert imp.held() == 1
    assert imp.next_deadline() == pytest.approx(1.0 + REORDER_TIMEOUT)
    assert imp.poll(1.0 + REORDER_TIMEOUT * 0.99) == []
    assert imp.poll(1.0 + REORDER_TIMEOUT) == [frame(0)]
    assert imp.held() == 0 and imp.next_deadline() is None


@settings(max_examples=50)
@given(st.lists(st.floats(0.0, 0.05), min_size=1, max_size=200),
       st.floats(1e-6, 0.5))
def test_delay_keeps_order_and_releases_exactly_delay_later(gaps, delay):
    t, arrivals = 0.0, []
    for i, g in enumerate(gaps):
        t += g
        arrivals.append((t, frame(i)))
    imp = Impairment(Impair(delay=delay))
    out = drive(imp, arrivals)
    assert [f for _, f in out] == [f for _, f in arrivals]
    assert [rt for rt, _ in out] == [at + delay for at, _ in arrivals]
    assert imp.counters["impair_delayed"] == len(arrivals)


def test_rate_serializes_back_to_back():
    rate = 1e6  # bytes/s: a 1000-byte frame takes 1 ms
    imp = Impairment(Impair(rate=rate))
    arrivals = [(0.0, frame(i, 1000)) for i in range(5)] + [(0.1, frame(5, 500))]
    out = drive(imp, arrivals)
    assert [index(f) for _, f in out] == list(range(6))
    times = [t for t, _ in out]
    assert times[:5] == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005])
    assert times[5] == pytest.approx(0.1005)  # the line was idle: starts on arrival


def test_rate_then_delay():
    imp = Impairment(Impair(rate=1e6, delay=0.010))
    out = drive(imp, [(0.0, frame(0, 1000)), (0.0, frame(1, 2000)), (0.0005, frame(2, 1000))])
    assert [t for t, _ in out] == pytest.approx([0.011, 0.013, 0.014])


@settings(max_examples=50)
@given(st.integers(0, 2**32), st.floats(0.0, 0.02), st.floats(1e-4, 0.02))
def test_jitter_never_reorders_and_stays_in_bounds(seed, delay, jitter):
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for i in range(300):
        t += rng.uniform(0, 0.005)
        arrivals.append((t, frame(i)))
    imp = Impairment(Impair(delay=delay, jitter=jitter, seed=seed))
    out = drive(imp, arrivals)
    assert [f for _, f in out] == [f for _, f in arrivals]
    times = [rt for rt, _ in out]
    assert times == sorted(times)
    for (at, _), rt in zip(arrivals, times, strict=True):
        assert rt >= at + max(0.0, delay - jitter) - 1e-12
        assert rt >= at


def test_jitter_actually_varies_the_delay():
    imp = Impairment(Impair(delay=0.05, jitter=0.01, seed=1))
    arrivals = [(i * 0.1, frame(i)) for i in range(200)]  # far apart: no clamping
    lat = [rt - at for (rt, _), (at, _) in zip(drive(imp, arrivals), arrivals, strict=True)]
    assert min(lat) >= 0.04 and max(lat) <= 0.06
    assert min(lat) < 0.042 and max(lat) > 0.058
    assert abs(sum(lat) / len(lat) - 0.05) < 0.002


def test_limit_drops_beyond_held_frames():
    imp = Impairment(Impair(delay=1.0, limit=5))
    for i in range(10):
        assert imp.submit(frame(i), 0.0) == []
    assert imp.held() == 5
    assert imp.counters["impair_limit_drops"] == 5
    assert imp.counters["impair_delayed"] == 5
    assert [index(f) for f in imp.poll(1.0)] == [0, 1, 2, 3, 4]
    assert imp.submit(frame(10), 1.0) == []
    assert imp.held() == 1


def test_limit_counts_frames_held_for_reordering():
    imp = Impairment(Impair(reorder=1.0, limit=3, seed=1))
    for i in range(5):
        assert imp.submit(frame(i), 0.0) == []
    assert imp.held() == 3 and imp.counters["impair_limit_drops"] == 2
    assert [index(f) for f in imp.poll(math.inf)] == [0, 1, 2]


@settings(max_examples=40, deadline=None)
@given(impairs.filter(lambda k: k.limit <= 64 and k.rate == 0 or k.rate > 100),
       st.integers(0, 2**32))
def test_never_more_than_limit_held_and_nothing_lost_silently(knobs, seed):
    knobs.limit = min(knobs.limit, 64)
    knobs.delay = min(knobs.delay, 0.05)
    knobs.jitter = min(knobs.jitter, 0.05)
    imp = Impairment(knobs)
    rng = random.Random(seed)
    t, got = 0.0, 0
    for i in range(300):
        t += rng.uniform(0, 0.002)
        if rng.random() < 0.3:
            got += len(imp.poll(t))
        got += len(imp.submit(frame(i), t))
        assert imp.held() <= knobs.limit
    got += len(imp.poll(math.inf))
    c = imp.counters
    assert imp.held() == 0 and imp.next_deadline() is None
    assert got == 300 - c["impair_dropped"] + c["impair_duplicated"] - c["impair_limit_drops"]
