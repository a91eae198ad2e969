"""Fixtures: a namespace with ``ustack up tap0`` on 10.0.0.2/24, kernel 10.0.0.1/24."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netns import Daemon, Netns, interop_skip_reason  # noqa: E402


def pytest_collection_modifyitems(config, items):
    reason = interop_skip_reason()
    if reason is None:
        return
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))  # only without root or /dev/net/tun


@pytest.fixture
def netns():
    ns = Netns()
    yield ns
    ns.close()


@pytest.fixture
def stack(netns):
    """A running daemon; it must exit 0 on SIGTERM at the end."""
    d = Daemon(netns)
    yield d
    code = d.stop()
    assert code == 0, f"ustack up exited {code}: {d.log_text()}"


@pytest.fixture(scope="module")
def shared_ns():
    ns = Netns()
    yield ns
    ns.close()


@pytest.fixture(scope="module")
def shared_stack(shared_ns):
    """One daemon shared by read-mostly tests of a module."""
    d = Daemon(shared_ns)
    yield d
    d.stop()
