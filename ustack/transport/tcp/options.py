"""TCP options: MSS, window scale, SACK-permitted, SACK, timestamps, Fast Open.

Parsing follows ``tcp_parse_options`` (net/ipv4/tcp_input.c): EOL ends the
list, NOP is skipped, unknown kinds are skipped by their length, and a length
byte that is missing, below 2 or runs past the option space makes the whole
segment malformed (``parse_options`` returns None; the caller drops and
counts it). An option of a known kind with the wrong length is ignored, as
the kernel does. The common "NOP NOP TS" layout takes a fast path like
``tcp_fast_parse_options``.
"""

from __future__ import annotations

import struct

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8
# RFC 7413 4.1.1: the Fast Open cookie option, and its pre-RFC experimental
# form (RFC 6994: kind 254 with the 16-bit magic 0xF989).
OPT_FASTOPEN = 34
OPT_EXP = 254
TCPOPT_FASTOPEN_MAGIC = 0xF989
TCP_FASTOPEN_COOKIE_MIN = 4
TCP_FASTOPEN_COOKIE_MAX = 16

# RFC 7323 section 2.3: shift counts above 14 are used as 14.
TCP_MAX_WSCALE = 14
# Bytes one aligned timestamp option takes (NOP NOP kind len val ecr).
TCPOLEN_TSTAMP_ALIGNED = 12

_TS_FAST = b"\x01\x01\x08\x0a"
_unpack_ts = struct.Struct("!II").unpack_from


class TcpOptions:
    """Decoded options of one segment; absent options are None / False."""

    __slots__ = ("mss", "wscale", "sack_ok", "sack", "ts_val", "ts_ecr", "fastopen",
                 "fastopen_exp")

    def __init__(
        self,
        mss: int | None = None,
        wscale: int | None = None,
        sack_ok: bool = False,
        sack: list[tuple[int, int]] | None = None,
        ts_val: int | None = None,
        ts_ecr: int = 0,
        fastopen: bytes | None = None,
        fastopen_exp: bool = False,
    ) -> None:
        self.mss = mss
        self.wscale = wscale
        self.sack_ok = sack_ok
        self.sack = sack
        self.ts_val = ts_val
        self.ts_ecr = ts_ecr
        #: Fast Open cookie: None when absent, b"" for a cookie request (RFC 7413 4.1.1).
        self.fastopen = fastopen
        #: The cookie came (or goes) in the experimental kind-254 format.
        self.fastopen_exp = fastopen_exp

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TcpOptions):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        parts = [f"{n}={getattr(self, n)!r}" for n in self.__slots__ if getattr(self, n)]
        return f"TcpOptions({', '.join(parts)})"

    def to_bytes(self) -> bytes:
        """Encode in the kernel's order and alignment (``tcp_options_write``).

        MSS first, then SACK-permitted folded with the timestamp, window scale,
        SACK blocks; the result is padded with NOPs/EOL to a multiple of 4.
        """
        out = bytearray()
        if self.mss is not None:
            out += struct.pack("!BBH", OPT_MSS, 4, self.mss)
        if self.ts_val is not None:
            if self.sack_ok:
                out += struct.pack("!BB", OPT_SACK_PERM, 2)
            else:
                out += b"\x01\x01"
            out += struct.pack("!BBII", OPT_TIMESTAMP, 10, self.ts_val, self.ts_ecr)
        elif self.sack_ok:
            out += struct.pack("!BBBB", OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2)
        if self.wscale is not None:
            out += struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, self.wscale)
        if self.sack:
            out += struct.pack("!BBBB", OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(self.sack))
            for start, end in self.sack:
                out += struct.pack("!II", start, end)
        if self.fastopen is not None:
            # tcp_options_write: the cookie last, NOP-padded to a 4-byte boundary.
            if self.fastopen_exp:
                out += struct.pack("!BBH", OPT_EXP, 4 + len(self.fastopen),
                                   TCPOPT_FASTOPEN_MAGIC)
            else:
                out += struct.pack("!BB", OPT_FASTOPEN, 2 + len(self.fastopen))
            out += self.fastopen
            if len(out) & 3 == 2:
                out += b"\x01\x01"
        if len(out) & 3:
            out += b"\x00" * (4 - (len(out) & 3))
        if len(out) > 40:
            raise ValueError("TCP options exceed 40 bytes")
        return bytes(out)


def parse_options(data: bytes | bytearray | memoryview) -> TcpOptions | None:
    """Decode the option bytes of a header; None when a length is malformed."""
    n = len(data)
    if n == TCPOLEN_TSTAMP_ALIGNED and data[:4] == _TS_FAST:
        val, ecr = _unpack_ts(data, 4)
        return TcpOptions(ts_val=val, ts_ecr=ecr)
    opts = TcpOptions()
    i = 0
    while i < n:
        kind = data[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            return None
        size = data[i + 1]
        if size < 2 or i + size > n:
            return None
        if kind == OPT_MSS and size == 4:
            opts.mss = (data[i + 2] << 8) | data[i + 3]
        elif kind == OPT_WSCALE and size == 3:
            opts.wscale = min(data[i + 2], TCP_MAX_WSCALE)
        elif kind == OPT_SACK_PERM and size == 2:
            opts.sack_ok = True
        elif kind == OPT_TIMESTAMP and size == 10:
            opts.ts_val, opts.ts_ecr = _unpack_ts(data, i + 2)
        elif kind == OPT_SACK and size >= 10 and (size - 2) % 8 == 0:
            raw = struct.unpack_from(f"!{(size - 2) // 4}I", data, i + 2)
            opts.sack = list(zip(raw[0::2], raw[1::2], strict=True))
        elif kind == OPT_FASTOPEN:
            _parse_fastopen(opts, data[i + 2 : i + size], False)
        elif kind == OPT_EXP and size >= 4 and (data[i + 2] << 8 | data[i + 3]) == \
                TCPOPT_FASTOPEN_MAGIC:
            _parse_fastopen(opts, data[i + 4 : i + size], True)
        i += size
    return opts


def _parse_fastopen(opts: TcpOptions, cookie: bytes | bytearray | memoryview, exp: bool) -> None:
    """``tcp_parse_fastopen_option``: an even length of 0 (a request) or 4..16 bytes.

    Anything else is ignored, as if the option were absent. Whether the
    segment is a SYN (where alone the option counts) is the caller's test.
    """
    n = len(cookie)
    if n & 1 or (n and not TCP_FASTOPEN_COOKIE_MIN <= n <= TCP_FASTOPEN_COOKIE_MAX):
        return
    opts.fastopen = bytes(cookie)
    opts.fastopen_exp = exp
