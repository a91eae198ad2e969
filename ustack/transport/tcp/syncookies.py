"""SYN cookies: a listener's answer to a full SYN queue that keeps no state.

The scheme of net/ipv4/syncookies.c, sans-IO (every function takes *now*):

- The initial sequence number of the SYN-ACK is the cookie
  (``secure_tcp_syn_cookie``)::

      cookie = H0(4-tuple) + SEG.SEQ + (count << 24)
               + ((H1(4-tuple, count) + mssind) mod 2**24)

  with ``count`` a counter of 60-second periods (``tcp_cookie_time``) and
  ``mssind`` the index of the peer's MSS, rounded down, in the kernel's
  ``msstab`` {536, 1300, 1440, 1460}. H0 and H1 are keyed hashes with two
  independent secrets, as the kernel's two ``syncookie_secret`` keys for
  siphash (here BLAKE2s in keyed mode, which Python has in C): H0 hides
  the top bits' origin, H1 binds the counter and the MSS index to the
  4-tuple. The ACK that completes the handshake acknowledges cookie + 1;
  ``check`` strips H0 and SEG.SEQ - 1, reads the counter back from the top
  8 bits, accepts it only if it is less than ``MAX_SYNCOOKIE_AGE`` periods
  old, and recovers the MSS index from the low 24 bits
  (``check_tcp_syn_cookie``, ``__cookie_v4_check``). A forged or stale ACK
  yields an index outside msstab.
- With timestamps (RFC 7323) the SYN-ACK's TSval carries the rest of the
  SYN's options in its low 6 bits (``cookie_init_timestamp``): the peer's
  window scale (0xf: none), SACK-permitted and ECN. The peer echoes it in
  TSecr, so a cookie-born connection keeps window scaling and SACK
  (``cookie_timestamp_decode``). Without timestamps they are lost, as in
  the kernel.
"""

from __future__ import annotations

import hashlib
import os

# net/ipv4/syncookies.c
COOKIEBITS = 24  # the counter lives in the top 8 bits
COOKIEMASK = (1 << COOKIEBITS) - 1
# include/net/tcp.h: a cookie is good for at most two 60-second periods.
MAX_SYNCOOKIE_AGE = 2
TCP_SYNCOOKIE_PERIOD = 60.0
TCP_SYNCOOKIE_VALID = MAX_SYNCOOKIE_AGE * TCP_SYNCOOKIE_PERIOD
# The MSS values a cookie can encode; 1440/1452 is PPPoE.
MSSTAB = (536, 1300, 1440, 1460)
# cookie_init_timestamp: the low TSBITS of TSval carry the options.
TSBITS = 6
TSMASK = (1 << TSBITS) - 1
TS_OPT_WSCALE_MASK = 0xF
TS_OPT_SACK = 1 << 4
TS_OPT_ECN = 1 << 5

_U32 = 0xFFFFFFFF


def tcp_cookie_time(now: float) -> int:
    """The cookie counter: 60-second periods of the stack's clock (``tcp_cookie_time``)."""
    return int(now // TCP_SYNCOOKIE_PERIOD) & _U32


def mss_index(mss: int) -> int:
    """The largest msstab entry not above *mss* (536 for anything smaller)."""
    for i in range(len(MSSTAB) - 1, 0, -1):
        if mss >= MSSTAB[i]:
            return i
    return 0


def cookie_init_timestamp(now: float, wscale: int | None, sack_ok: bool,
                          ecn_ok: bool = False) -> int:
    """TSval (before the connection's offset) that carries the SYN's options.

    The millisecond clock with its low 6 bits replaced by the window scale
    (0xf for none), SACK and ECN bits, moved back one 64 ms step if that
    put it in the future (``cookie_init_timestamp``).
    """
    options = TS_OPT_WSCALE_MASK if wscale is None else wscale & TS_OPT_WSCALE_MASK
    if sack_ok:
        options |= TS_OPT_SACK
    if ecn_ok:
        options |= TS_OPT_ECN
    ts_now = int(now * 1000)
    ts = (ts_now >> TSBITS) << TSBITS | options
    if ts > ts_now:
        ts -= 1 << TSBITS
    return ts & _U32


class CookieOptions:
    """What a validated cookie's echoed timestamp says about the peer's SYN."""

    __slots__ = ("ts_ok", "wscale", "sack_ok", "ecn_ok")

    def __init__(self, ts_ok: bool = False, wscale: int | None = None, sack_ok: bool = False,
                 ecn_ok: bool = False) -> None:
        self.ts_ok = ts_ok
        #: The peer's window-scale shift, or None when it offered none.
        self.wscale = wscale
        self.sack_ok = sack_ok
        self.ecn_ok = ecn_ok


def cookie_timestamp_decode(tsecr: int | None, timestamps: bool, sack: bool,
                            window_scaling: bool) -> CookieOptions | None:
    """``cookie_timestamp_decode``: the options the low bits of TSecr carry.

    *tsecr* is the ACK's echoed timestamp minus the connection's offset, or
    None when the ACK has no timestamp (then every option is off, as
    ``tcp_clear_options``). The flags are the sysctls tcp_timestamps,
    tcp_sack and tcp_window_scaling: a cookie claiming an option the stack
    has turned off is refused (None).
    """
    if tsecr is None:
        return CookieOptions()
    if not timestamps:
        return None
    sack_ok = bool(tsecr & TS_OPT_SACK)
    if sack_ok and not sack:
        return None
    opts = CookieOptions(True, None, sack_ok, bool(tsecr & TS_OPT_ECN))
    wscale = tsecr & TS_OPT_WSCALE_MASK
    if wscale == TS_OPT_WSCALE_MASK:
        return opts  # no window scaling
    if not window_scaling:
        return None
    opts.wscale = wscale
    return opts


class SynCookies:
    """The cookie secrets of one stack and the cookie arithmetic.

    The kernel keeps two random siphash keys per boot (``syncookie_secret``,
    filled by ``net_get_random_once``); here two BLAKE2s keys per stack,
    never shown.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        key = secret if secret is not None else os.urandom(64)
        if len(key) != 64:
            raise ValueError("the SYN cookie secret is 64 bytes (two 32-byte keys)")
        self._keys = (key[:32], key[32:])

    def _hash(self, saddr: bytes, daddr: bytes, sport: int, dport: int, count: int,
              c: int) -> int:
        """``cookie_hash``: keyed hash of the 4-tuple and *count* under secret *c*."""
        msg = saddr + daddr + ((sport << 16 | dport) << 32 | count).to_bytes(8, "big")
        return int.from_bytes(hashlib.blake2s(msg, key=self._keys[c], digest_size=4).digest(),
                              "big")

    def init_sequence(self, saddr: bytes, daddr: bytes, sport: int, dport: int, seq: int,
                      mss: int, now: float) -> tuple[int, int]:
        """``__cookie_v4_init_sequence``: (cookie ISN, the MSS it encodes).

        *saddr*/*sport* are the SYN's source (the peer), *daddr*/*dport* its
        destination (us), *seq* its sequence number, *mss* the peer's MSS.
        """
        mssind = mss_index(mss)
        count = tcp_cookie_time(now)
        cookie = (self._hash(saddr, daddr, sport, dport, 0, 0) + seq + (count << COOKIEBITS)
                  + ((self._hash(saddr, daddr, sport, dport, count, 1) + mssind) & COOKIEMASK))
        return cookie & _U32, MSSTAB[mssind]

    def check(self, saddr: bytes, daddr: bytes, sport: int, dport: int, seq: int, ack: int,
              now: float) -> int:
        """``__cookie_v4_check`` of an ACK (*seq*, *ack* as received): the MSS, or 0.

        0 means the cookie is forged, for another 4-tuple, or older than
        ``MAX_SYNCOOKIE_AGE`` periods.
        """
        cookie = (ack - 1) & _U32
        sseq = (seq - 1) & _U32
        count = tcp_cookie_time(now)
        cookie = (cookie - self._hash(saddr, daddr, sport, dport, 0, 0) - sseq) & _U32
        diff = (count - (cookie >> COOKIEBITS)) & (_U32 >> COOKIEBITS)
        if diff >= MAX_SYNCOOKIE_AGE:
            return 0
        mssind = (cookie - self._hash(saddr, daddr, sport, dport, (count - diff) & _U32, 1)
                  ) & COOKIEMASK
        return MSSTAB[mssind] if mssind < len(MSSTAB) else 0
