"""Dynamic Interrupt Moderation: net_dim (lib/dim/net_dim.c, lib/dim/dim.c, include/linux/dim.h).

Sans-IO: the driver hands :meth:`Dim.net_dim` a sample (time, interrupts,
packets and bytes so far) at each interrupt; every ``DIM_NEVENTS``
interrupts net_dim turns the window into rates (bytes, packets and events
per millisecond) and compares them with the previous window. It walks the
profile table one step at a time in the direction that made things better
(more bytes/ms first, then packets/ms, then fewer events/ms) and turns
around when a step made them worse; when it oscillates around a profile it
parks there ("on top") until the traffic changes, and after too many steps
it parks "tired" for a while. The result depends only on the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

DIM_NEVENTS = 64  # interrupts per measurement window (include/linux/dim.h)
DIM_SIGNIFICANT_PCT = 10  # IS_SIGNIFICANT_DIFF: more than 10 % apart
USEC_PER_MSEC = 1000

# net_dim_rx_profile[DIM_CQ_PERIOD_MODE_START_FROM_EQE] as (usec, pkts): the
# timer starts at the first frame (EQE), which is how irq_wait holds the
# interrupt. NET_DIM_DEFAULT_RX_CQ_PKTS_FROM_EQE is 256 frames.
NET_DIM_RX_EQE_PROFILES = ((1, 256), (8, 256), (64, 256), (128, 256), (256, 256))
NET_DIM_PARAMS_NUM_PROFILES = len(NET_DIM_RX_EQE_PROFILES)
NET_DIM_DEF_PROFILE_EQE = 1  # net_dim_get_def_rx_moderation

# enum dim_state. DIM_APPLY_NEW_PROFILE (waiting for the work item that
# applies the profile) has no counterpart: the profile applies at once and
# the next sample starts a new window, as after the kernel's work runs.
DIM_START_MEASURE = 0
DIM_MEASURE_IN_PROGRESS = 1

# enum dim_tune_state
DIM_PARKING_ON_TOP = 0
DIM_PARKING_TIRED = 1
DIM_GOING_RIGHT = 2
DIM_GOING_LEFT = 3
TUNE_STATE_NAMES = ("parking-on-top", "parking-tired", "going-right", "going-left")

# enum dim_stats_state
DIM_STATS_WORSE = 0
DIM_STATS_SAME = 1
DIM_STATS_BETTER = 2

# enum dim_step_result
DIM_STEPPED = 0
DIM_TOO_TIRED = 1
DIM_ON_EDGE = 2


@dataclass(frozen=True)
class DimSample:
    """struct dim_sample: counters read at one interrupt (time in seconds)."""

    time: float
    event_ctr: int
    pkt_ctr: int
    byte_ctr: int


@dataclass(frozen=True)
class DimStats:
    """struct dim_stats: one window's rates per millisecond."""

    ppms: int = 0
    bpms: int = 0
    epms: int = 0


def _div_round_up(n: int, d: int) -> int:
    return -(-n // d)


def dim_calc_stats(start: DimSample, end: DimSample) -> DimStats | None:
    """dim_calc_stats: the window's rates, or None if no time passed."""
    delta_us = int((end.time - start.time) * 1e6)
    if delta_us <= 0:
        return None
    npkts = end.pkt_ctr - start.pkt_ctr
    nbytes = end.byte_ctr - start.byte_ctr
    return DimStats(
        ppms=_div_round_up(npkts * USEC_PER_MSEC, delta_us),
        bpms=_div_round_up(nbytes * USEC_PER_MSEC, delta_us),
        # The kernel counts a full window of events, not the few extra that
        # arrived past DIM_NEVENTS.
        epms=_div_round_up(DIM_NEVENTS * USEC_PER_MSEC, delta_us),
    )


def is_significant_diff(val: int, ref: int) -> bool:
    """IS_SIGNIFICANT_DIFF: *val* differs from a non-zero *ref* by more than 10 %."""
    return bool(ref) and 100 * abs(val - ref) // ref > DIM_SIGNIFICANT_PCT


def net_dim_stats_compare(curr: DimStats, prev: DimStats) -> int:
    """net_dim_stats_compare: better is more bytes/ms, then packets/ms, then fewer events/ms."""
    if not prev.bpms:
        return DIM_STATS_BETTER if curr.bpms else DIM_STATS_SAME
    if is_significant_diff(curr.bpms, prev.bpms):
        return DIM_STATS_BETTER if curr.bpms > prev.bpms else DIM_STATS_WORSE
    if not prev.ppms:
        return DIM_STATS_BETTER if curr.ppms else DIM_STATS_SAME
    if is_significant_diff(curr.ppms, prev.ppms):
        return DIM_STATS_BETTER if curr.ppms > prev.ppms else DIM_STATS_WORSE
    if not prev.epms:
        return DIM_STATS_SAME
    if is_significant_diff(curr.epms, prev.epms):
        return DIM_STATS_BETTER if curr.epms < prev.epms else DIM_STATS_WORSE
    return DIM_STATS_SAME


class Dim:
    """struct dim of one RX queue: where net_dim stands in the profile table."""

    __slots__ = ("state", "prev_stats", "start_sample", "profile_ix", "tune_state",
                 "steps_right", "steps_left", "tired")

    def __init__(self) -> None:
        self.state = DIM_START_MEASURE
        self.prev_stats = DimStats()
        self.start_sample = DimSample(0.0, 0, 0, 0)
        self.profile_ix = NET_DIM_DEF_PROFILE_EQE
        self.tune_state = DIM_PARKING_ON_TOP  # a zeroed struct dim
        self.steps_right = 0
        self.steps_left = 0
        self.tired = 0

    def moderation(self) -> tuple[int, int]:
        """net_dim_get_rx_moderation: (usec, pkts) of the current profile."""
        return NET_DIM_RX_EQE_PROFILES[self.profile_ix]

    def net_dim(self, end: DimSample) -> bool:
        """net_dim: feed one interrupt's sample; True if the profile changed."""
        if self.state == DIM_MEASURE_IN_PROGRESS:
            if end.event_ctr - self.start_sample.event_ctr < DIM_NEVENTS:
                return False
            curr = dim_calc_stats(self.start_sample, end)
            if curr is None:
                return False
            if self.net_dim_decision(curr):
                # The new profile applies now; the next sample opens a window.
                self.state = DIM_START_MEASURE
                return True
        self.start_sample = end
        self.state = DIM_MEASURE_IN_PROGRESS
        return False

    def net_dim_decision(self, curr: DimStats) -> bool:
        """net_dim_decision: move, turn or park after one window; True if the profile moved."""
        prev_state = self.tune_state
        prev_ix = self.profile_ix
        if self.tune_state == DIM_PARKING_ON_TOP:
            if net_dim_stats_compare(curr, self.prev_stats) != DIM_STATS_SAME:
                self.net_dim_exit_parking()
        elif self.tune_state == DIM_PARKING_TIRED:
            self.tired -= 1
            if not self.tired:
                self.net_dim_exit_parking()
        else:
            if net_dim_stats_compare(curr, self.prev_stats) != DIM_STATS_BETTER:
                self.dim_turn()
            if self.dim_on_top():
                self.dim_park_on_top()
            else:
                step = self.net_dim_step()
                if step == DIM_ON_EDGE:
                    self.dim_park_on_top()
                elif step == DIM_TOO_TIRED:
                    self.dim_park_tired()
        # Parked on top, the reference stays the window that parked it.
        if prev_state != DIM_PARKING_ON_TOP or self.tune_state != DIM_PARKING_ON_TOP:
            self.prev_stats = curr
        return self.profile_ix != prev_ix

    def net_dim_step(self) -> int:
        """net_dim_step: one profile in the current direction, unless tired or at the edge."""
        if self.tired == NET_DIM_PARAMS_NUM_PROFILES * 2:
            return DIM_TOO_TIRED
        if self.tune_state == DIM_GOING_RIGHT:
            if self.profile_ix == NET_DIM_PARAMS_NUM_PROFILES - 1:
                return DIM_ON_EDGE
            self.profile_ix += 1
            self.steps_right += 1
        elif self.tune_state == DIM_GOING_LEFT:
            if self.profile_ix == 0:
                return DIM_ON_EDGE
            self.profile_ix -= 1
            self.steps_left += 1
        self.tired += 1
        return DIM_STEPPED

    def net_dim_exit_parking(self) -> None:
        """net_dim_exit_parking: head left (right from profile 0) and take a step."""
        self.tune_state = DIM_GOING_LEFT if self.profile_ix else DIM_GOING_RIGHT
        self.net_dim_step()

    def dim_on_top(self) -> bool:
        """dim_on_top: just turned back after a run the other way, so this is the best."""
        if self.tune_state in (DIM_PARKING_ON_TOP, DIM_PARKING_TIRED):
            return True
        if self.tune_state == DIM_GOING_RIGHT:
            return self.steps_left > 1 and self.steps_right == 1
        return self.steps_right > 1 and self.steps_left == 1

    def dim_turn(self) -> None:
        """dim_turn: reverse direction, counting steps afresh that way."""
        if self.tune_state == DIM_GOING_RIGHT:
            self.tune_state = DIM_GOING_LEFT
            self.steps_left = 0
        elif self.tune_state == DIM_GOING_LEFT:
            self.tune_state = DIM_GOING_RIGHT
            self.steps_right = 0

    def dim_park_on_top(self) -> None:
        """dim_park_on_top: stay on this profile until the traffic changes."""
        self.steps_right = self.steps_left = self.tired = 0
        self.tune_state = DIM_PARKING_ON_TOP

    def dim_park_tired(self) -> None:
        """dim_park_tired: stay for as many windows as steps were taken (tired counts down)."""
        self.steps_right = self.steps_left = 0
        self.tune_state = DIM_PARKING_TIRED
