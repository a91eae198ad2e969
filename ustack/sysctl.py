"""Every tunable of the stack, under its kernel name, with the kernel default.

Values are validated like the kernel's ``proc_dointvec_minmax``: a wrong type,
a value out of range or an unknown name raises :class:`SysctlError` with a
one-line message, and the old value stays. Vector knobs (``tcp_rmem``,
``ip_local_port_range``) take three or two integers separated by spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

Value = int | tuple[int, ...] | str
INT_MAX = 2**31 - 1


class SysctlError(ValueError):
    """An unknown sysctl name or a value the kernel would refuse."""


@dataclass(frozen=True)
class Knob:
    """One sysctl: its default, the accepted range and what it is for."""

    name: str
    default: Value
    minimum: int = 0
    maximum: int = INT_MAX
    doc: str = ""
    # For a string knob: the values it accepts.
    choices: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.default) if isinstance(self.default, tuple) else 1

    @property
    def is_text(self) -> bool:
        return isinstance(self.default, str)


def _k(name: str, default: Value, minimum: int = 0, maximum: int = INT_MAX, doc: str = "") -> Knob:
    return Knob(name, default, minimum, maximum, doc)


# Defaults are those of Linux 6.x on a machine with a few GB of memory
# (Documentation/networking/ip-sysctl.rst, Documentation/admin-guide/sysctl/net.rst).
_KNOBS = [
    _k("net.core.netdev_budget", 300, 1, doc="frames one net_rx_action round may process"),
    _k("net.core.netdev_budget_usecs", 8000, 1, doc="time one net_rx_action round may take"),
    _k("net.core.dev_weight", 64, 1, doc="frames one NAPI poll may process"),
    _k("net.core.netdev_max_backlog", 1000, 1, doc="per-CPU backlog queue length"),
    Knob("net.core.default_qdisc", "pfifo_fast", choices=("pfifo_fast", "fq_codel"),
         doc="root qdisc of each TX queue when the device is created"),
    _k("net.core.rps_sock_flow_entries", 0, 0, 1 << 20,
       doc="RFS: entries of the table of flows' reading CPUs (0: RFS off)"),
    _k("net.core.busy_read", 0, 0, doc="default SO_BUSY_POLL: us a blocking read busy-polls"),
    _k("net.core.somaxconn", 4096, 0, doc="upper bound of a listen backlog"),
    # The kernel sizes fs.file-max from RAM (files_maxfiles_init: a tenth of it,
    # ~1 KB a file); a ustack socket costs several KB of Python objects, so its
    # default is a fixed 65536.
    _k("fs.file-max", 65536, 1,
       doc="sockets the stack may have open; socket()/accept() beyond it fail with ENFILE"),
    _k("net.core.rmem_default", 212992, 256),
    _k("net.core.rmem_max", 212992, 256),
    _k("net.core.wmem_default", 212992, 256),
    _k("net.core.wmem_max", 212992, 256),
    _k("net.ipv4.ip_forward", 0, 0, 1),
    _k("net.ipv4.ip_default_ttl", 64, 1, 255),
    _k("net.ipv4.ip_no_pmtu_disc", 0, 0, 3),
    _k("net.ipv4.ip_local_port_range", (32768, 60999), 1, 65535),
    _k("net.ipv4.ipfrag_time", 30, 1, doc="seconds a fragment queue may wait"),
    _k("net.ipv4.ipfrag_high_thresh", 4 * 1024 * 1024, 0, doc="reassembly memory limit (bytes)"),
    _k("net.ipv4.ipfrag_low_thresh", 3 * 1024 * 1024, 0),
    _k("net.ipv4.ipfrag_max_dist", 64, 0),
    _k("net.ipv4.icmp_echo_ignore_all", 0, 0, 1),
    _k("net.ipv4.icmp_echo_ignore_broadcasts", 1, 0, 1),
    _k("net.ipv4.icmp_ratelimit", 1000, 0, doc="ms between rate-limited ICMP errors"),
    _k("net.ipv4.icmp_ratemask", 6168, 0),
    _k("net.ipv4.icmp_msgs_per_sec", 1000, 0),
    _k("net.ipv4.icmp_msgs_burst", 50, 0),
    _k("net.ipv4.neigh.default.base_reachable_time_ms", 30000, 1),
    _k("net.ipv4.neigh.default.delay_first_probe_time", 5, 0),
    _k("net.ipv4.neigh.default.retrans_time_ms", 1000, 1),
    _k("net.ipv4.neigh.default.gc_stale_time", 60, 0),
    _k("net.ipv4.neigh.default.ucast_solicit", 3, 0),
    _k("net.ipv4.neigh.default.mcast_solicit", 3, 0),
    _k("net.ipv4.neigh.default.unres_qlen_bytes", 212992, 0),
    _k("net.ipv4.neigh.default.gc_thresh1", 128, 0),
    _k("net.ipv4.neigh.default.gc_thresh2", 512, 0),
    _k("net.ipv4.neigh.default.gc_thresh3", 1024, 0),
    _k("net.ipv4.tcp_rmem", (4096, 131072, 6291456), 1),
    _k("net.ipv4.tcp_wmem", (4096, 16384, 4194304), 1),
    _k("net.ipv4.tcp_window_scaling", 1, 0, 1),
    _k("net.ipv4.tcp_adv_win_scale", 1, -31, 31,
       doc="window = space - space >> N (N > 0) or space >> -N: buffer left for overhead"),
    _k("net.ipv4.tcp_moderate_rcvbuf", 1, 0, 1, doc="receive-buffer autotuning (DRS)"),
    _k("net.ipv4.tcp_mem", (287898, 383867, 575796), 1,
       doc="pages all TCP sockets may hold: no pressure below, pressure above, hard limit"),
    _k("net.ipv4.tcp_notsent_lowat", 4294967295, 1, 4294967295,
       doc="unsent bytes above which a socket is not writable"),
    _k("net.ipv4.tcp_limit_output_bytes", 4194304, 0,
       doc="TCP Small Queues: bytes a socket may have queued below it"),
    _k("ustack.tcp_small_queues", 1, 0, 1,
       doc="ustack's own switch (Linux has none): 0 turns TCP Small Queues off, to compare"),
    _k("net.ipv4.tcp_sack", 1, 0, 1),
    _k("net.ipv4.tcp_dsack", 1, 0, 1, doc="report duplicate segments as D-SACK (RFC 2883)"),
    _k("net.ipv4.tcp_reordering", 3, 1, 300, doc="DupThresh: segments of reordering tolerated"),
    _k("net.ipv4.tcp_frto", 2, 0, 2, doc="F-RTO (RFC 5682) spurious-RTO detection"),
    _k("net.ipv4.tcp_timestamps", 1, 0, 2),
    _k("net.ipv4.tcp_fin_timeout", 60, 0),
    _k("net.ipv4.tcp_syn_retries", 6, 1, 127),
    _k("net.ipv4.tcp_synack_retries", 5, 0, 255),
    _k("net.ipv4.tcp_retries2", 15, 0, 255),
    _k("net.ipv4.tcp_orphan_retries", 0, 0, 255, doc="retries for closed sockets; 0 means 8"),
    _k("net.ipv4.tcp_rto_min_us", 200000, 1, doc="lower bound of the retransmission timeout"),
    _k("net.ipv4.tcp_rto_max_ms", 120000, 1000, 120000, doc="upper bound of the RTO"),
    _k("net.ipv4.tcp_keepalive_time", 7200, 1),
    _k("net.ipv4.tcp_keepalive_intvl", 75, 1),
    _k("net.ipv4.tcp_keepalive_probes", 9, 1, 127),
    _k("net.ipv4.tcp_max_syn_backlog", 1024, 1),
    _k("net.ipv4.tcp_syncookies", 1, 0, 2,
       doc="SYN cookies: 1 when the SYN queue is full, 2 always, 0 never (drop)"),
    _k("net.ipv4.tcp_challenge_ack_limit", INT_MAX, 0,
       doc="RFC 5961 challenge ACKs per second, host-wide (INT_MAX: no host-wide limit)"),
    _k("net.ipv4.tcp_invalid_ratelimit", 500, 0,
       doc="ms between ACKs a connection sends for out-of-window segments"),
    _k("net.ipv4.tcp_max_orphans", 131072, 0,
       doc="closed sockets still finishing their close; beyond, they are reset"),
    _k("net.ipv4.tcp_max_tw_buckets", 131072, 0,
       doc="TIME-WAIT connections kept; beyond, closing connections skip TIME-WAIT"),
    _k("net.ipv4.tcp_fastopen", 1, 0, 0xFFF,
       doc="Fast Open bits: 0x1 client, 0x2 server, 0x4/0x200 no cookie, 0x400 all listeners"),
    Knob("net.ipv4.tcp_fastopen_key", "00000000-00000000-00000000-00000000",
         doc="Fast Open cookie keys: primary[,backup], 32 hex digits each"),
    _k("net.ipv4.tcp_fastopen_blackhole_timeout_sec", 0, 0,
       doc="pause active Fast Open this long after a blackhole (0: detection off)"),
    Knob("net.ipv4.tcp_congestion_control", "cubic", choices=("cubic", "reno"),
         doc="congestion control for new connections (tcp_congestion_ops name)"),
]

KNOBS: dict[str, Knob] = {k.name: k for k in _KNOBS}

TFO_ZERO_KEY = "00000000-00000000-00000000-00000000"
_TFO_KEY = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{8}){3}")


def parse_fastopen_keys(text: str) -> list[bytes]:
    """``proc_tcp_fastopen_key``: "primary[,backup]", 32 hex digits each, dashes optional.

    Raises SysctlError with a one-line reason for anything else.
    """
    parts = [p.strip() for p in str(text).strip().split(",")]
    if len(parts) > 2:
        raise SysctlError("net.ipv4.tcp_fastopen_key: at most a primary and a backup key")
    keys = []
    for part in parts:
        if not _TFO_KEY.fullmatch(part):
            raise SysctlError(f"net.ipv4.tcp_fastopen_key: {part!r} is not 32 hex digits "
                              "(xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx)")
        keys.append(bytes.fromhex(part.replace("-", "")))
    return keys


def format_fastopen_keys(keys: list[bytes]) -> str:
    """The kernel's rendering: 4 dash-separated groups of 8 hex digits, keys comma-separated."""
    out = []
    for key in keys:
        h = key.hex()
        out.append("-".join(h[i : i + 8] for i in range(0, 32, 8)))
    return ",".join(out)


def format_value(value: Value) -> str:
    """Render a value the way ``sysctl`` prints it (tabs between vector parts)."""
    if isinstance(value, tuple):
        return "\t".join(str(v) for v in value)
    return str(value)


class Sysctl(dict):
    """The sysctl table of one stack (one network namespace in kernel terms).

    A dict, so the hot path reads a knob with one C-level lookup; values
    change only through :meth:`set`, which validates them.
    """

    def __init__(self) -> None:
        super().__init__({k.name: k.default for k in _KNOBS})

    def __missing__(self, name: str) -> Value:
        raise SysctlError(f"unknown sysctl {name!r}")

    def __setitem__(self, name: str, value: object) -> None:
        raise TypeError("sysctl values are changed with Sysctl.set (validated)")

    def items(self) -> Iterator[tuple[str, Value]]:  # type: ignore[override]
        return iter(sorted(super().items()))

    def set(self, name: str, value: str | int | tuple[int, ...]) -> Value:
        """Validate and store *value* (text as ``sysctl -w`` takes it); return it."""
        knob = KNOBS.get(name)
        if knob is None:
            raise SysctlError(f"unknown sysctl {name!r}")
        parsed = self._parse(knob, value)
        dict.__setitem__(self, name, parsed)
        return parsed

    def assign(self, text: str) -> tuple[str, Value]:
        """Apply ``NAME=VALUE`` as given on a command line."""
        name, sep, value = text.partition("=")
        if not sep:
            raise SysctlError(f"expected NAME=VALUE, got {text!r}")
        name = name.strip()
        return name, self.set(name, value.strip())

    @staticmethod
    def _parse(knob: Knob, value: str | int | tuple[int, ...]) -> Value:
        if knob.name == "net.ipv4.tcp_fastopen_key":
            return format_fastopen_keys(parse_fastopen_keys(str(value)))
        if isinstance(knob.default, str):
            text = str(value).strip()
            if text not in knob.choices:
                raise SysctlError(
                    f"{knob.name}: {text!r} is not one of {', '.join(knob.choices)}"
                )
            return text
        if isinstance(value, str):
            parts = value.replace(",", " ").split()
            try:
                numbers = tuple(int(p, 0) for p in parts)
            except ValueError:
                raise SysctlError(f"{knob.name}: {value!r} is not an integer") from None
        elif isinstance(value, tuple):
            numbers = value
        else:
            numbers = (value,)
        if len(numbers) != knob.width:
            raise SysctlError(f"{knob.name}: takes {knob.width} integer(s), got {len(numbers)}")
        for n in numbers:
            if not isinstance(n, int) or isinstance(n, bool):
                raise SysctlError(f"{knob.name}: {n!r} is not an integer")
            if not knob.minimum <= n <= knob.maximum:
                raise SysctlError(
                    f"{knob.name}: {n} is out of range {knob.minimum}..{knob.maximum}"
                )
        if knob.width == 1:
            return numbers[0]
        if knob.name == "net.ipv4.ip_local_port_range" and numbers[0] > numbers[1]:
            raise SysctlError(f"{knob.name}: low end {numbers[0]} above high end {numbers[1]}")
        if knob.name in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_mem") and not (
            numbers[0] <= numbers[1] <= numbers[2]
        ):
            raise SysctlError(f"{knob.name}: expects min <= default <= max")
        return numbers
