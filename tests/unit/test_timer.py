"""The timer list (ustack/timer.py): mod_timer, cancel, run_expired, next_deadline."""

from __future__ import annotations

from ustack.timer import Timer, TimerList


class Recorder:
    """Collects (name, now) for every timer callback that ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def timer(self, name: str) -> Timer:
        return Timer(lambda now: self.calls.append((name, now)))


def make() -> tuple[TimerList, Recorder, list[int]]:
    tl = TimerList()
    woken: list[int] = []
    tl.on_earlier = lambda deadline: woken.append(deadline)
    return tl, Recorder(), woken


def test_empty_list_has_no_deadline_and_runs_nothing() -> None:
    """No timers: next_deadline is None and run_expired returns 0."""
    tl, _, _ = make()
    assert tl.next_deadline() is None
    assert tl.run_expired(1e9) == 0
    assert len(tl) == 0


def test_mod_timer_arms_and_next_deadline_is_the_earliest() -> None:
    """Armed timers are pending; next_deadline is the smallest deadline."""
    tl, rec, _ = make()
    a, b, c = rec.timer("a"), rec.timer("b"), rec.timer("c")
    tl.mod_timer(a, 30.0)
    tl.mod_timer(b, 10.0)
    tl.mod_timer(c, 20.0)
    assert a.deadline == 30.0
    assert tl.next_deadline() == 10.0
    assert len(tl) == 3


def test_run_expired_runs_due_timers_in_deadline_order() -> None:
    """Only timers due at now run, earliest first, each given now; the count is returned."""
    tl, rec, _ = make()
    for name, when in [("c", 3.0), ("a", 1.0), ("late", 9.0), ("b", 2.0)]:
        tl.mod_timer(rec.timer(name), when)
    assert tl.run_expired(3.0) == 3
    assert rec.calls == [("a", 3.0), ("b", 3.0), ("c", 3.0)]
    assert tl.next_deadline() == 9.0
    assert len(tl) == 1
    assert tl.run_expired(8.999) == 0
    assert tl.run_expired(9.0) == 1
    assert rec.calls[-1] == ("late", 9.0)
    assert tl.next_deadline() is None


def test_equal_deadlines_run_in_arming_order() -> None:
    """Ties are broken by the order the timers were armed (FIFO)."""
    tl, rec, _ = make()
    for name in "xyzw":
        tl.mod_timer(rec.timer(name), 5.0)
    assert tl.run_expired(5.0) == 4
    assert [n for n, _ in rec.calls] == list("xyzw")


def test_a_timer_that_ran_is_disarmed_and_does_not_run_again() -> None:
    """After its callback the timer's deadline is None; a later run skips it."""
    tl, rec, _ = make()
    t = rec.timer("t")
    tl.mod_timer(t, 1.0)
    assert tl.run_expired(2.0) == 1
    assert t.deadline is None
    assert tl.run_expired(100.0) == 0
    assert rec.calls == [("t", 2.0)]


def test_cancel_with_none_prevents_the_callback() -> None:
    """mod_timer(t, None) is del_timer: the stale heap entry never fires."""
    tl, rec, _ = make()
    a, b = rec.timer("a"), rec.timer("b")
    tl.mod_timer(a, 1.0)
    tl.mod_timer(b, 2.0)
    tl.mod_timer(a, None)
    assert a.deadline is None
    assert len(tl) == 1
    assert tl.next_deadline() == 2.0
    assert tl.run_expired(10.0) == 1
    assert rec.calls == [("b", 10.0)]


def test_cancel_of_an_unarmed_timer_is_harmless() -> None:
    """Cancelling a timer that is not pending changes nothing."""
    tl, rec, woken = make()
    t = rec.timer("t")
    tl.mod_timer(t, None)
    assert tl.next_deadline() is None
    assert woken == []


def test_rearm_later_moves_the_deadline() -> None:
    """A timer pushed later fires at the new time, once, not at the old one."""
    tl, rec, _ = make()
    t = rec.timer("t")
    tl.mod_timer(t, 1.0)
    tl.mod_timer(t, 5.0)
    assert tl.next_deadline() == 5.0
    assert tl.run_expired(4.0) == 0
    assert tl.run_expired(5.0) == 1
    assert rec.calls == [("t", 5.0)]
    assert tl.run_expired(100.0) == 0


def test_rearm_earlier_moves_the_deadline() -> None:
    """A timer pulled earlier fires at the new time, once."""
    tl, rec, _ = make()
    t = rec.timer("t")
    tl.mod_timer(t, 5.0)
    tl.mod_timer(t, 1.0)
    assert tl.next_deadline() == 1.0
    assert len(tl) == 1
    assert tl.run_expired(1.0) == 1
    assert tl.run_expired(100.0) == 0
    assert rec.calls == [("t", 1.0)]


def test_next_deadline_skips_stale_entries() -> None:
    """Cancelled and re-armed timers leave heap entries that next_deadline ignores."""
    tl, rec, _ = make()
    a, b, c = rec.timer("a"), rec.timer("b"), rec.timer("c")
    tl.mod_timer(a, 1.0)
    tl.mod_timer(b, 2.0)
    tl.mod_timer(c, 3.0)
    tl.mod_timer(a, None)
    tl.mod_timer(b, 7.0)
    assert tl.next_deadline() == 3.0
    tl.mod_timer(c, None)
    assert tl.next_deadline() == 7.0
    tl.mod_timer(b, None)
    assert tl.next_deadline() is None


def test_cancel_then_rearm_to_the_same_deadline_runs_once_and_counts_once() -> None:
    """Re-arming to the old deadline after a cancel leaves one pending timer, run once."""
    tl, rec, _ = make()
    t = rec.timer("t")
    tl.mod_timer(t, 4.0)
    tl.mod_timer(t, None)
    tl.mod_timer(t, 4.0)
    assert len(tl) == 1
    assert tl.run_expired(4.0) == 1
    assert rec.calls == [("t", 4.0)]


def test_rearm_back_to_an_earlier_deadline_counts_once() -> None:
    """Moving a timer 4 -> 8 -> 4 leaves one pending timer, not two."""
    tl, rec, _ = make()
    t = rec.timer("t")
    tl.mod_timer(t, 4.0)
    tl.mod_timer(t, 8.0)
    tl.mod_timer(t, 4.0)
    assert len(tl) == 1
    assert tl.run_expired(10.0) == 1


def test_mod_timer_with_the_same_deadline_is_a_no_op() -> None:
    """Setting the deadline a timer already has neither duplicates nor wakes."""
    tl, rec, woken = make()
    t = rec.timer("t")
    tl.mod_timer(t, 2.0)
    woken.clear()
    tl.mod_timer(t, 2.0)
    assert woken == []
    assert tl.run_expired(2.0) == 1
    assert rec.calls == [("t", 2.0)]


def test_callback_can_rearm_its_timer_for_later() -> None:
    """A periodic timer re-armed from its callback fires again at the new time."""
    tl = TimerList()
    fired: list[float] = []
    t = Timer(lambda now: (fired.append(now), tl.mod_timer(t, now + 10.0)))
    tl.mod_timer(t, 10.0)
    assert tl.run_expired(10.0) == 1
    assert tl.next_deadline() == 20.0
    assert tl.run_expired(25.0) == 1
    assert fired == [10.0, 25.0]
    assert tl.next_deadline() == 35.0


def test_timer_rearmed_for_an_expired_time_waits_for_the_next_run() -> None:
    """A callback re-arming for <= now runs on the next call, as __run_timers defers it.

    Otherwise a sans-IO object whose next deadline is already due would keep
    run_expired spinning inside one call (the stack would livelock).
    """
    tl = TimerList()
    fired: list[float] = []

    def callback(now: float) -> None:
        fired.append(now)
        if len(fired) < 5:  # bound the loop so a failure cannot hang the suite
            tl.mod_timer(t, now)

    t = Timer(callback)
    tl.mod_timer(t, 1.0)
    assert tl.run_expired(1.0) == 1
    assert fired == [1.0]
    assert tl.next_deadline() == 1.0


def test_on_earlier_called_only_when_a_timer_becomes_the_earliest() -> None:
    """Arming the first timer or one earlier than all others wakes; others do not."""
    tl, rec, woken = make()
    a, b, c, d = rec.timer("a"), rec.timer("b"), rec.timer("c"), rec.timer("d")
    tl.mod_timer(a, 10.0)
    assert len(woken) == 1  # first pending timer
    tl.mod_timer(b, 20.0)
    assert len(woken) == 1  # later than the earliest
    tl.mod_timer(c, 10.0)
    assert len(woken) == 1  # ties with the earliest: the sleeper wakes then anyway
    tl.mod_timer(d, 5.0)
    assert len(woken) == 2  # new earliest
    tl.mod_timer(b, None)
    assert len(woken) == 2  # a cancel never wakes
    tl.mod_timer(b, 3.0)
    assert len(woken) == 3  # re-armed earlier than everything
    tl.mod_timer(c, 15.0)
    assert len(woken) == 3  # moved later, not the earliest


def test_on_earlier_when_earliest_was_cancelled() -> None:
    """After the earliest is cancelled, a timer before the new earliest wakes the sleeper."""
    tl, rec, woken = make()
    a, b, c = rec.timer("a"), rec.timer("b"), rec.timer("c")
    tl.mod_timer(a, 1.0)
    tl.mod_timer(b, 9.0)
    woken.clear()
    tl.mod_timer(a, None)
    tl.mod_timer(c, 5.0)  # later than the cancelled 1.0 but earlier than 9.0
    assert woken == [5.0]  # the new earliest deadline is reported
