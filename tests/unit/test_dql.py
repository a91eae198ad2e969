"""Byte Queue Limits (ustack/nic/dql.py) against lib/dynamic_queue_limits.c, step by step."""

from __future__ import annotations

import pytest

from ustack.nic.dql import DQL_MAX_LIMIT, Dql


def test_starts_at_min_limit_so_the_first_frame_stops_the_queue() -> None:
    d = Dql()
    assert d.show() == {"limit": 0, "limit_max": DQL_MAX_LIMIT, "limit_min": 0,
                        "inflight": 0, "hold_time": 1000}
    d.queued(1000)
    assert d.avail() == -1000 and d.inflight == 1000


def test_starved_queue_grows_by_what_was_sent_and_completed() -> None:
    """Over the limit, all completed: limit += completed - prev_num_queued + prev_ovlimit."""
    d = Dql()
    d.queued(1000)
    d.completed(1000, now=0.0)
    assert d.limit == 1000 and d.avail() == 1000 and d.inflight == 0
    for _ in range(3):
        d.queued(1000)
    assert d.avail() == -2000
    d.completed(3000, now=0.01)
    assert d.limit == 4000 and d.prev_ovlimit == 0


def test_idle_completion_neither_grows_nor_shrinks() -> None:
    """Under the limit with nothing left in flight: no starvation, no slack: unchanged."""
    d = Dql()
    d.queued(5000)
    d.completed(5000, now=0.0)
    assert d.limit == 5000
    for t in range(1, 20):
        d.queued(1000)
        d.completed(1000, now=float(t))
        assert d.limit == 5000


def test_busy_queue_with_slack_shrinks_after_hold_time() -> None:
    """Busy through the interval with excess: the lowest slack comes off after hold_time."""
    d = Dql()
    d.queued(10000)
    d.completed(10000, now=0.0)  # starved: limit 10000, slack timer starts at 0
    assert d.limit == 10000
    d.queued(3000)
    d.completed(1000, now=0.5)  # previous interval was idle: no slack measured
    assert d.limit == 10000
    d.queued(1000)
    d.completed(1000, now=0.6)  # busy: slack 10000 - 2*1000 = 8000, before hold_time
    assert d.limit == 10000 and d.lowest_slack == 8000
    d.queued(1000)
    d.completed(1000, now=1.1)  # hold_time (1 s) passed: limit -= lowest slack
    assert d.limit == 2000


def test_limits_bound_the_adaptation() -> None:
    d = Dql()
    d.set_limits(limit_max=1500)
    d.queued(9000)
    d.completed(9000, now=0.0)
    assert d.limit == 1500
    d.set_limits(limit_min=3000, limit_max=DQL_MAX_LIMIT, hold_time=0.25)
    assert d.limit == 3000 and d.avail() == 3000
    assert d.show()["hold_time"] == 250


def test_completing_more_than_in_flight_is_refused() -> None:
    d = Dql()
    d.queued(100)
    with pytest.raises(ValueError, match="in flight"):
        d.completed(101, now=0.0)


@pytest.mark.parametrize("kwargs", [{"limit_min": -1}, {"limit_max": DQL_MAX_LIMIT + 1},
                                    {"hold_time": 0}])
def test_bad_limits_are_refused(kwargs: dict) -> None:
    d = Dql()
    with pytest.raises(ValueError):
        d.set_limits(**kwargs)
    assert d.show()["limit_max"] == DQL_MAX_LIMIT and d.min_limit == 0
