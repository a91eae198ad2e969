"""The sysctl table (ustack/sysctl.py).

Defaults are compared with the values documented in the kernel's
Documentation/networking/ip-sysctl.rst and admin-guide/sysctl/net.rst;
every refused write must raise SysctlError and leave the old value.
"""

from __future__ import annotations

import pytest

from ustack.sysctl import INT_MAX, KNOBS, Sysctl, SysctlError, format_value

KERNEL_DEFAULTS = {
    "net.core.netdev_budget": 300,
    "net.core.netdev_budget_usecs": 8000,
    "net.core.dev_weight": 64,
    "net.core.somaxconn": 4096,
    "net.core.netdev_max_backlog": 1000,
    "net.core.rmem_default": 212992,
    "net.ipv4.ipfrag_time": 30,
    "net.ipv4.ipfrag_high_thresh": 4194304,
    "net.ipv4.ipfrag_low_thresh": 3145728,
    "net.ipv4.ip_default_ttl": 64,
    "net.ipv4.tcp_rmem": (4096, 131072, 6291456),
    "net.ipv4.tcp_wmem": (4096, 16384, 4194304),
    "net.ipv4.ip_local_port_range": (32768, 60999),
    "net.ipv4.tcp_syn_retries": 6,
    "net.ipv4.tcp_fin_timeout": 60,
    "net.ipv4.tcp_fastopen": 1,
}


@pytest.mark.parametrize("name,value", sorted(KERNEL_DEFAULTS.items()))
def test_default_matches_kernel_documentation(name: str, value: object) -> None:
    """A fresh table holds the kernel's documented default."""
    assert Sysctl()[name] == value
    assert KNOBS[name].default == value


def test_tables_are_independent() -> None:
    """Two stacks (namespaces) do not share values."""
    a, b = Sysctl(), Sysctl()
    a.set("net.core.somaxconn", 128)
    assert b["net.core.somaxconn"] == 4096


def test_every_default_is_within_its_own_range() -> None:
    """No knob starts with a value its own validation would refuse."""
    s = Sysctl()
    for name, value in s.items():
        assert s.set(name, value) == value


def test_items_are_sorted_and_complete() -> None:
    """items() lists every knob once, by name."""
    names = [n for n, _ in Sysctl().items()]
    assert names == sorted(KNOBS)


# ---- accepted writes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [("128", 128), (" 128 ", 128), ("0x80", 128), ("0X80", 128), ("0", 0), (128, 128)],
)
def test_set_parses_decimal_and_hex(text: str | int, expected: int) -> None:
    """Integers are taken in decimal or 0x hex, as text or int."""
    s = Sysctl()
    assert s.set("net.core.somaxconn", text) == expected
    assert s["net.core.somaxconn"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "4096 87380 6291456",
        "4096\t87380\t6291456",
        "  4096 \t 87380\n6291456  ",
        "0x1000 87380 6291456",
    ],
)
def test_vector_accepts_spaces_tabs_and_hex(text: str) -> None:
    """A vector knob takes its parts separated by any whitespace."""
    s = Sysctl()
    assert s.set("net.ipv4.tcp_rmem", text) == (4096, 87380, 6291456)
    assert s["net.ipv4.tcp_rmem"] == (4096, 87380, 6291456)


def test_vector_accepts_a_tuple() -> None:
    """A tuple of the right width is stored as is."""
    s = Sysctl()
    assert s.set("net.ipv4.ip_local_port_range", (1024, 65535)) == (1024, 65535)


def test_port_range_low_equal_high_is_accepted() -> None:
    """low == high is a valid one-port range."""
    s = Sysctl()
    assert s.set("net.ipv4.ip_local_port_range", "5000 5000") == (5000, 5000)


def test_rmem_with_equal_parts_is_accepted() -> None:
    """min == default == max satisfies the ordering."""
    s = Sysctl()
    assert s.set("net.ipv4.tcp_rmem", "8192 8192 8192") == (8192, 8192, 8192)


def test_range_bounds_are_inclusive() -> None:
    """The documented minimum and maximum themselves are accepted."""
    s = Sysctl()
    assert s.set("net.ipv4.ip_default_ttl", "1") == 1
    assert s.set("net.ipv4.ip_default_ttl", "255") == 255
    assert s.set("net.core.netdev_budget", str(INT_MAX)) == INT_MAX


@pytest.mark.parametrize(
    "text,name,value",
    [
        ("net.core.somaxconn=1024", "net.core.somaxconn", 1024),
        ("net.core.somaxconn = 1024", "net.core.somaxconn", 1024),
        ("  net.core.netdev_budget=0x20  ", "net.core.netdev_budget", 32),
        ("net.ipv4.tcp_rmem=4096\t65536 1048576", "net.ipv4.tcp_rmem", (4096, 65536, 1048576)),
    ],
)
def test_assign_parses_name_equals_value(text: str, name: str, value: object) -> None:
    """assign() applies NAME=VALUE and returns what it stored."""
    s = Sysctl()
    assert s.assign(text) == (name, value)
    assert s[name] == value


def test_format_value_uses_tabs_for_vectors() -> None:
    """Vectors print tab-separated, like sysctl(8)."""
    assert format_value((4096, 131072, 6291456)) == "4096\t131072\t6291456"
    assert format_value(300) == "300"


# ---- refused writes ---------------------------------------------------------------------

REFUSED = [
    ("net.core.no_such_knob", "1"),
    ("net.ipv4.tcp_rmem_typo", "1 2 3"),
    ("", "1"),
    ("net.core.somaxconn", "abc"),
    ("net.core.somaxconn", "12.5"),
    ("net.core.somaxconn", "1e3"),
    ("net.core.somaxconn", ""),
    ("net.core.somaxconn", "   "),
    ("net.core.somaxconn", "0xZZ"),
    ("net.core.somaxconn", "-1"),
    ("net.core.somaxconn", str(INT_MAX + 1)),
    ("net.core.somaxconn", True),
    ("net.core.somaxconn", 1.5),
    ("net.core.somaxconn", "1 2"),
    ("net.core.netdev_budget", "0"),
    ("net.core.netdev_budget_usecs", "0"),
    ("net.core.dev_weight", "0"),
    ("net.ipv4.ip_default_ttl", "0"),
    ("net.ipv4.ip_default_ttl", "256"),
    ("net.ipv4.ip_forward", "2"),
    ("net.ipv4.tcp_rmem", "4096 131072"),
    ("net.ipv4.tcp_rmem", "4096 131072 6291456 1"),
    ("net.ipv4.tcp_rmem", "4096"),
    ("net.ipv4.tcp_rmem", 4096),
    ("net.ipv4.tcp_rmem", "0 131072 6291456"),
    ("net.ipv4.tcp_rmem", "4096 x 6291456"),
    ("net.ipv4.tcp_rmem", "8192 4096 6291456"),
    ("net.ipv4.tcp_rmem", "4096 131072 65536"),
    ("net.ipv4.tcp_wmem", "4096 16384 8192"),
    ("net.ipv4.ip_local_port_range", "60999 32768"),
    ("net.ipv4.ip_local_port_range", "32768"),
    ("net.ipv4.ip_local_port_range", "32768 60999 61000"),
    ("net.ipv4.ip_local_port_range", "0 60999"),
    ("net.ipv4.ip_local_port_range", "32768 65536"),
    ("net.ipv4.ip_local_port_range", (2000, 1000)),
    ("net.ipv4.ip_local_port_range", ("1000", "2000")),
]


@pytest.mark.parametrize("name,value", REFUSED)
def test_refused_write_raises_and_keeps_old_value(name: str, value: object) -> None:
    """Unknown names, non-integers, out-of-range, wrong width, bad order: all refused."""
    s = Sysctl()
    before = dict(s.items())
    with pytest.raises(SysctlError) as info:
        s.set(name, value)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert dict(s.items()) == before


def test_refusal_after_a_change_keeps_the_changed_value() -> None:
    """The value kept is the current one, not the default."""
    s = Sysctl()
    s.set("net.ipv4.tcp_rmem", "8192 65536 1048576")
    with pytest.raises(SysctlError):
        s.set("net.ipv4.tcp_rmem", "8192 65536")
    with pytest.raises(SysctlError):
        s.set("net.ipv4.tcp_rmem", "1048576 65536 8192")
    assert s["net.ipv4.tcp_rmem"] == (8192, 65536, 1048576)


@pytest.mark.parametrize(
    "text",
    ["net.core.somaxconn", "net.core.somaxconn 128", "=128", "net.core.nope=1",
     "net.core.somaxconn=lots"],
)
def test_assign_refuses_malformed_settings(text: str) -> None:
    """assign() without '=', with an empty or unknown name, or a bad value is refused."""
    s = Sysctl()
    with pytest.raises(SysctlError):
        s.assign(text)
    assert s["net.core.somaxconn"] == 4096


def test_unknown_name_lookup_raises_sysctl_error() -> None:
    """Reading an unknown name is a SysctlError (a ValueError), not a bare KeyError."""
    s = Sysctl()
    with pytest.raises(SysctlError, match="unknown sysctl"):
        s["net.core.nope"]
    assert "net.core.nope" not in s
    assert "net.core.somaxconn" in s
    assert issubclass(SysctlError, ValueError)


def test_item_assignment_is_refused_and_unknown_reads_raise() -> None:
    """Reads are plain dict lookups; writes go only through the validating set()."""
    s = Sysctl()
    with pytest.raises(TypeError):
        s["net.ipv4.tcp_sack"] = 0
    assert s["net.ipv4.tcp_sack"] == 1
    with pytest.raises(SysctlError):
        s["net.ipv4.no_such_knob"]
    assert "net.ipv4.no_such_knob" not in s
