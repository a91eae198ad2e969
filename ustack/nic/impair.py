"""A seeded, per-direction impairment layer for the emulated wire (netem in the NIC).

The kernels these tests run on have no ``sch_netem`` (see FACTS.md), so loss,
delay, reordering, duplication and corruption are made here, in the NIC model,
and they are *deterministic*: one :class:`Impairment` owns its own
``random.Random(seed)`` and draws from it only in :meth:`Impairment.submit`, in
a fixed order per frame, so the same seed and the same submitted frames give
the same outcome however often :meth:`Impairment.poll` is called.

Sans-IO: nothing here reads a clock or sleeps. Time comes in as ``now``
(seconds); a frame whose release time lies in the future is kept until
``poll(now)`` (or a later ``submit``) reaches it, and :meth:`next_deadline`
says when to call ``poll`` next.

The path of one frame through :meth:`Impairment.submit`, in netem's order
(net/sched/sch_netem.c ``netem_enqueue``) where it has one:

1. loss, with a simple Gilbert model for bursts (netem's ``loss gemodel``
   reduced to one knob): after a loss the next frame is lost with
   probability ``burst/(1+burst)``, so a loss run has on average ``burst``
   extra frames;
2. duplication: the copy is an intact clone sent right behind the original
   (netem clones before corrupting, so only the original is corrupted);
3. corruption: one random bit past the 14-byte Ethernet header is flipped in
   a new ``bytes`` (netem ``get_random_u32_below(skb_headlen(skb))`` flips a bit
   anywhere; we spare the MAC header so the frame still reaches IP/ARP where
   the checksums must catch it);
4. rate: serialization delay ``len/rate``, back to back behind the previous
   frame (netem ``packet_time_ns``, computed from the tail's time_to_send);
5. delay and jitter: ``delay + uniform(-jitter, +jitter)`` clamped at 0, and
   never earlier than the frame before it (netem before its tfifo became a
   time-sorted rbtree, or netem with ``rate``: jitter does not reorder);
6. the ``limit`` on frames held (netem ``if (sch->q.qlen >= sch->limit)
   return qdisc_drop``);
7. reordering, at the far end of the wire: a chosen frame is held back until
   ``depth`` later frames have come out (or ``reorder_timeout`` passed), then
   released right behind the one that completed the count.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "REORDER_TIMEOUT",
    "Impair",
    "ImpairError",
    "Impairment",
    "format_spec",
    "parse_spec",
]

# A frame held back for reordering is released at the latest this long after
# it left the delay stage, so a quiet wire never keeps a frame forever.
REORDER_TIMEOUT = 0.010

# The Ethernet header (dst, src, ethertype) is never corrupted.
ETH_HLEN = 14


class ImpairError(ValueError):
    """A malformed or out-of-range impairment spec (one-line message naming the knob)."""


@dataclass
class Impair:
    """The knobs of one direction of the impaired wire (all off by default)."""

    loss: float = 0.0  # probability 0..1 a frame is dropped
    burst: float = 0.0  # mean extra frames lost after a loss (0: independent losses)
    reorder: float = 0.0  # probability a frame is held back behind `depth` later frames
    depth: int = 3  # reorder depth in frames
    dup: float = 0.0  # probability a frame is sent twice
    corrupt: float = 0.0  # probability one bit (past the MAC header) is flipped
    delay: float = 0.0  # seconds added to every frame
    jitter: float = 0.0  # uniform extra delay in [-jitter, +jitter], clamped at 0
    rate: float = 0.0  # bytes per second, 0 = unlimited
    limit: int = 1000  # frames held at most
    seed: int | None = None


# ---- the spec language ------------------------------------------------------

# A unit turns the number typed into the knob's value: value = number * mul / div.
# Factors are exact in binary so format_spec can invert them exactly.
_Unit = tuple[float, float]
_PROB_UNITS: dict[str, _Unit] = {"": (1.0, 1.0), "%": (1.0, 100.0)}
_TIME_UNITS: dict[str, _Unit] = {
    "": (1.0, 1.0), "s": (1.0, 1.0), "ms": (1.0, 1e3), "us": (1.0, 1e6), "ns": (1.0, 1e9),
}
# tc's rate units (tc/tc_util.c get_rate): "bit" families are bits per second,
# "bps" families bytes per second, decimal multiples.
_RATE_UNITS: dict[str, _Unit] = {
    "": (1.0, 1.0), "b": (1.0, 1.0), "bps": (1.0, 1.0), "byte": (1.0, 1.0),
    "bit": (1.0, 8.0), "kbit": (1e3, 8.0), "mbit": (1e6, 8.0), "gbit": (1e9, 8.0),
    "tbit": (1e12, 8.0),
    "kb": (1e3, 1.0), "kbps": (1e3, 1.0), "kbyte": (1e3, 1.0),
    "mb": (1e6, 1.0), "mbps": (1e6, 1.0), "mbyte": (1e6, 1.0),
    "gb": (1e9, 1.0), "gbps": (1e9, 1.0), "gbyte": (1e9, 1.0),
}

_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([a-z%]*)")
_INTEGER = re.compile(r"[+-]?\d+")

_PROBS = ("loss", "reorder", "dup", "corrupt")
_TIMES = ("delay", "jitter")
_KNOBS = tuple(f.name for f in dataclasses.fields(Impair))


def _apply(number: float, unit: _Unit) -> float:
    return number * unit[0] / unit[1]


def _parse_float(knob: str, text: str, units: dict[str, _Unit]) -> float:
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise ImpairError(f"impair {knob}={text!r}: not a number")
    number, suffix = m.groups()
    if suffix not in units:
        known = ", ".join(repr(u) for u in units if u)
        raise ImpairError(f"impair {knob}={text!r}: unknown unit {suffix!r} (use {known})")
    value = _apply(float(number), units[suffix])
    if value != value or value in (float("inf"), float("-inf")):
        raise ImpairError(f"impair {knob}={text!r}: not a finite number")
    return value


def _check(knobs: Impair) -> None:
    """Raise ImpairError unless every knob is in range (also guards programmatic use)."""
    for name in _PROBS:
        v = getattr(knobs, name)
        if not 0.0 <= v <= 1.0:
            raise ImpairError(f"impair {name}={v!r}: out of range (0..100%)")
    for name in ("burst", "delay", "jitter", "rate"):
        v = getattr(knobs, name)
        if not 0.0 <= v < float("inf"):
            raise ImpairError(f"impair {name}={v!r}: must be a finite number >= 0")
    for name in ("depth", "limit"):
        v = getattr(knobs, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ImpairError(f"impair {name}={v!r}: must be an integer >= 1")
    if knobs.seed is not None and (isinstance(knobs.seed, bool)
                                   or not isinstance(knobs.seed, int)):
        raise ImpairError(f"impair seed={knobs.seed!r}: must be an integer")


def _parse_knob(name: str, text: str) -> float | int:
    if name in _PROBS:
        value = _parse_float(name, text, _PROB_UNITS)
        if not 0.0 <= value <= 1.0:
            raise ImpairError(f"impair {name}={text!r}: out of range (0..100%)")
        return value
    if name in ("depth", "limit", "seed"):
        if _INTEGER.fullmatch(text) is None:
            raise ImpairError(f"impair {name}={text!r}: not an integer")
        ivalue = int(text)
        if name != "seed" and ivalue < 1:
            raise ImpairError(f"impair {name}={text!r}: must be >= 1")
        return ivalue
    units = {"burst": {"": (1.0, 1.0)}, "rate": _RATE_UNITS}.get(name, _TIME_UNITS)
    value = _parse_float(name, text, units)
    if value < 0:
        raise ImpairError(f"impair {name}={text!r}: must not be negative")
    return value


def parse_spec(text: str) -> tuple[Impair | None, Impair | None]:
    """Parse ``"rx:loss=5%,reorder=5%;tx:delay=10ms,seed=7"`` into ``(rx, tx)``.

    Parts are separated by ``;``; a part prefixed ``rx:`` or ``tx:`` sets that
    direction, an unprefixed part both (later parts override earlier ones).
    A direction no part mentions is ``None`` (a clean wire); ``""`` gives
    ``(None, None)``. Anything malformed raises :class:`ImpairError`.
    """
    settings: dict[str, dict[str, float | int]] = {}
    for part in text.lower().split(";"):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            direction, _, body = part.partition(":")
            direction = direction.strip()
            if direction not in ("rx", "tx"):
                raise ImpairError(f"impair: unknown direction {direction!r} (use rx: or tx:)")
            dirs: tuple[str, ...] = (direction,)
        else:
            dirs, body = ("rx", "tx"), part
        seen: dict[str, float | int] = {}
        for item in body.split(","):
            item = item.strip()
            if not item:
                continue
            name, eq, value = (s.strip() for s in item.partition("="))
            if name not in _KNOBS:
                raise ImpairError(
                    f"impair: unknown knob {name!r} (known: {', '.join(_KNOBS)})")
            if not eq or not value:
                raise ImpairError(f"impair {name}: missing value ({name}=...)")
            if name in seen:
                raise ImpairError(f"impair {name}: given twice in one part")
            seen[name] = _parse_knob(name, value)
        if not seen:
            raise ImpairError(f"impair: no knobs in {part!r}")
        for d in dirs:
            settings.setdefault(d, {}).update(seen)
    rx, tx = (Impair(**settings[d]) if d in settings else None  # type: ignore[arg-type]
              for d in ("rx", "tx"))
    return rx, tx


def _format_float(value: float, units: dict[str, _Unit], order: tuple[str, ...]) -> str:
    """The shortest spelling in one of *order*'s units that parses back to exactly *value*."""
    best = None
    for suffix in order:
        mul, div = units[suffix]
        s = f"{value * div / mul:.12g}" + suffix
        m = _NUMBER.fullmatch(s)
        if m and _apply(float(m[1]), units[suffix]) == value:
            # Shortest wins; on a tie the spelling without a decimal point.
            if best is None or (len(s), "." in s) < (len(best), "." in best):
                best = s
    return best or repr(value)  # plain number: always exact (the "" unit is (1, 1))


def _format_one(knobs: Impair) -> str:
    default = Impair()
    items = []
    for name in _KNOBS:
        v = getattr(knobs, name)
        if v == getattr(default, name):
            continue
        if name in _PROBS:
            s = _format_float(v, _PROB_UNITS, ("%",))
        elif name in _TIMES:
            s = _format_float(v, _TIME_UNITS, ("s", "ms", "us", "ns"))
        elif name == "rate":
            s = _format_float(v, _RATE_UNITS, ("gbit", "mbit", "kbit", "bit"))
        elif name == "burst":
            s = _format_float(v, {"": (1.0, 1.0)}, ("",))
        else:
            s = str(v)
        items.append(f"{name}={s}")
    return ",".join(items) or "loss=0%"  # all defaults: still an impaired (not None) side


def format_spec(rx: Impair | None, tx: Impair | None) -> str:
    """The canonical text of ``(rx, tx)``; ``parse_spec(format_spec(rx, tx)) == (rx, tx)``."""
    if rx is not None and rx == tx:
        return _format_one(rx)
    parts = [f"{d}:{_format_one(k)}" for d, k in (("rx", rx), ("tx", tx)) if k is not None]
    return ";".join(parts)


# ---- the impaired wire ------------------------------------------------------


@dataclass
class _Held:
    """A frame held back for reordering: out after `left` more frames or at `deadline`."""

    left: int
    deadline: float
    frame: bytes


class Impairment:
    """One direction's impairment state (sans-IO).

    Frames go in with :meth:`submit`; frames come out of ``submit`` (those due
    at once) and of :meth:`poll` (those whose release time has come), in wire
    order. At most ``knobs.limit`` frames are held inside at any time.

    ``counters`` (shown by ``ethtool -S`` with an ``rx_``/``tx_`` prefix):
    ``impair_frames`` submitted; ``impair_dropped`` lost (all losses) of which
    ``impair_burst_dropped`` in a burst after a loss; ``impair_duplicated``;
    ``impair_corrupted``; ``impair_delayed`` copies put on the delay line
    (delay, jitter or rate); ``impair_reordered`` copies held back for
    reordering; ``impair_limit_drops`` copies dropped because ``limit`` frames
    were already held.
    """

    def __init__(self, knobs: Impair) -> None:
        _check(knobs)
        self.knobs = knobs
        self._rng = random.Random(knobs.seed)
        # The delay line: (release time, reorder?, frame), release times
        # non-decreasing, so it is a FIFO (jitter never reorders).
        self._line: deque[tuple[float, bool, bytes]] = deque()
        self._last_release = float("-inf")  # release time of the newest frame in the line
        self._link_free = float("-inf")  # when the serializer (rate) is idle again
        self._held: list[_Held] = []  # reorder stage, in the order frames were held
        self._lost_last = False  # Gilbert state: was the previous frame lost?
        #: Bytes before the Ethernet payload that are never corrupted (the MAC
        #: header, plus a virtio-net header where the device has one).
        self.header_len = ETH_HLEN
        #: Turns a frame into what a real wire would carry before a bit is
        #: flipped (the device completes offloaded checksums); None: as is.
        self.wire_form: Callable[[bytes], bytearray] | None = None
        # TX completions: (time, token) of submitted frames, times non-decreasing.
        # A frame's token is done when its original copy leaves the delay line
        # (at once when nothing holds it, or when it is dropped), never ahead of
        # an earlier frame's, as a NIC completes descriptors in ring order.
        self._done: deque[tuple[float, object]] = deque()
        self.counters: dict[str, int] = dict.fromkeys((
            "impair_frames", "impair_dropped", "impair_burst_dropped", "impair_duplicated",
            "impair_reordered", "impair_corrupted", "impair_delayed", "impair_limit_drops",
        ), 0)

    # ---- in ----------------------------------------------------------------

    def submit(self, frame: bytes, now: float, token: object = None) -> list[bytes]:
        """Put *frame* on the impaired wire at *now*; return the frames to deliver now, in order.

        Earlier held frames due by *now* come first. *frame* itself may be
        dropped, duplicated, corrupted, or held (delay, rate, jitter, reorder).
        A *token* (not None) comes back from :meth:`completed` once the frame
        has left the delay line or was dropped: the device's TX completion.
        """
        out = self.poll(now)
        k, rng, c = self.knobs, self._rng, self.counters
        c["impair_frames"] += 1
        # 1. Loss. Gilbert: after a loss the chain stays in the "bad" state with
        # probability burst/(1+burst), so a run has 1+burst frames on average.
        if self._lost_last and k.burst > 0:
            if rng.random() < k.burst / (1.0 + k.burst):
                c["impair_dropped"] += 1
                c["impair_burst_dropped"] += 1
                self._complete(token, now)
                return out
        elif k.loss > 0 and rng.random() < k.loss:
            c["impair_dropped"] += 1
            self._lost_last = True
            self._complete(token, now)
            return out
        self._lost_last = False
        # 2. Duplication (netem: the clone is made before corruption).
        copies = [bytes(frame)]
        if k.dup > 0 and rng.random() < k.dup:
            copies.append(copies[0])
            c["impair_duplicated"] += 1
        # 3. Corruption of the original: one bit past the MAC header, in a new buffer.
        if k.corrupt > 0 and rng.random() < k.corrupt and len(frame) > self.header_len:
            bit = rng.randrange(self.header_len * 8, len(frame) * 8)
            buf = self.wire_form(frame) if self.wire_form is not None else bytearray(frame)
            buf[bit >> 3] ^= 1 << (bit & 7)
            copies[0] = bytes(buf)
            c["impair_corrupted"] += 1
        released = [self._enqueue(copy, now, out) for copy in copies]
        self._complete(token, released[0])
        return out

    def _complete(self, token: object, t: float) -> None:
        if token is not None:
            done = self._done
            done.append((max(t, done[-1][0]) if done else t, token))

    def completed(self, now: float) -> list[object]:
        """Tokens of frames whose transmission is complete by *now*, in submit order."""
        done = self._done
        out = []
        while done and done[0][0] <= now:
            out.append(done.popleft()[1])
        return out

    def _enqueue(self, frame: bytes, now: float, out: list[bytes]) -> float:
        """Schedule one copy: rate, delay, jitter, limit; out at once if nothing holds it.

        Returns when the copy leaves the delay line (*now* if it was dropped).
        """
        k, rng, c = self.knobs, self._rng, self.counters
        t = now
        link_free = self._link_free
        if k.rate > 0:
            # netem rate: serialized back to back behind the previous frame.
            t = max(now, link_free) + len(frame) / k.rate
            link_free = t
        extra = k.delay
        if k.jitter > 0:
            extra = max(0.0, extra + rng.uniform(-k.jitter, k.jitter))
        t = max(t + extra, self._last_release)  # never ahead of an earlier frame
        reorder = k.reorder > 0 and rng.random() < k.reorder
        if t > now or reorder:
            if self.held() >= k.limit:
                c["impair_limit_drops"] += 1  # netem: qlen >= limit -> qdisc_drop
                return now
        self._link_free = link_free
        if t > now:
            c["impair_delayed"] += 1
            self._line.append((t, reorder, frame))
            self._last_release = t
            return t
        self._exit(frame, reorder, now, out)
        return now

    # ---- out ---------------------------------------------------------------

    def _exit(self, frame: bytes, reorder: bool, t: float, out: list[bytes]) -> None:
        """*frame* reaches the far end at *t*: hold it back, or deliver it (and count down)."""
        if reorder:
            self.counters["impair_reordered"] += 1
            self._held.append(_Held(self.knobs.depth, t + REORDER_TIMEOUT, frame))
            return
        out.append(frame)
        if self._held:
            keep = []
            for h in self._held:
                h.left -= 1
                if h.left <= 0:
                    out.append(h.frame)  # right behind the frame that completed its count
                else:
                    keep.append(h)
            self._held = keep

    def poll(self, now: float) -> list[bytes]:
        """Release the frames whose time has come by *now*, in order."""
        out: list[bytes] = []
        line, held = self._line, self._held
        while line or held:
            t_line = line[0][0] if line else float("inf")
            oldest = min(held, key=lambda h: h.deadline) if held else None
            if oldest is not None and oldest.deadline <= t_line and oldest.deadline <= now:
                held.remove(oldest)  # reorder timeout: out on its own
                out.append(oldest.frame)
            elif t_line <= now:
                t, reorder, frame = line.popleft()
                self._exit(frame, reorder, t, out)
                held = self._held
            else:
                break
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has something to release (None: nothing held)."""
        times = [h.deadline for h in self._held]
        if self._line:
            times.append(self._line[0][0])
        if self._done:
            times.append(self._done[0][0])
        return min(times) if times else None

    def held(self) -> int:
        """Frames inside the wire now (delay line plus reorder stage)."""
        return len(self._line) + len(self._held)

