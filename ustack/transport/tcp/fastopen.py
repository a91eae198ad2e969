"""TCP Fast Open (RFC 7413): keys, cookies, the server's decision, blackhole state.

The kernel's net/ipv4/tcp_fastopen.c, sans-IO. One :class:`FastOpen` per
stack holds what the kernel keeps per network namespace: the cookie keys
(``net.ipv4.tcp_fastopen_key``, a primary and an optional backup key) and
the active-side blackhole state. Cookies are a keyed MAC (BLAKE2s with the
16-byte key; the kernel uses SipHash) over the client and server
addresses, so a cookie proves the client owns its address (RFC 7413 4.1.2).

``net.ipv4.tcp_fastopen`` bits, as the kernel reads them
(Documentation/networking/ip-sysctl.rst): 0x1 client, 0x2 server, 0x4 the
client sends data without a cookie, 0x200 the server accepts data without
a cookie, 0x400 every listener is Fast Open enabled.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ustack.stats import Stats
from ustack.sysctl import TFO_ZERO_KEY, Sysctl, format_fastopen_keys, parse_fastopen_keys

TFO_CLIENT_ENABLE = 0x1
TFO_SERVER_ENABLE = 0x2
TFO_CLIENT_NO_COOKIE = 0x4
TFO_SERVER_COOKIE_NOT_REQD = 0x200
TFO_SERVER_WO_SOCKOPT1 = 0x400

# enum tcp_fastopen_client_fail (TCP_INFO tcpi_fastopen_client_fail).
TFO_STATUS_UNSPEC = 0
TFO_COOKIE_UNAVAILABLE = 1
TFO_DATA_NOT_ACKED = 2
TFO_SYN_RETRANSMITTED = 3

TCP_FASTOPEN_KEY_LENGTH = 16
TCP_FASTOPEN_COOKIE_SIZE = 8  # the size the kernel hands out

KEY_SYSCTL = "net.ipv4.tcp_fastopen_key"
BLACKHOLE_SYSCTL = "net.ipv4.tcp_fastopen_blackhole_timeout_sec"


class FastOpen:
    """The per-stack Fast Open context (``net->ipv4.tcp_fastopen_ctx`` and friends)."""

    def __init__(self, sysctl: Sysctl, stats: Stats) -> None:
        self.sysctl = sysctl
        self.stats = stats
        self._key_text: str | None = None
        self._keys: list[bytes] = []
        # tfo_active_disable_times / tfo_active_disable_stamp (blackhole detection).
        self.disable_times = 0
        self.disable_stamp = 0.0

    @property
    def mode(self) -> int:
        """The current ``net.ipv4.tcp_fastopen`` bits."""
        return self.sysctl["net.ipv4.tcp_fastopen"]

    # -- keys and cookies ------------------------------------------------------

    def init_key_once(self) -> None:
        """``tcp_fastopen_init_key_once``: a random key on first use, unless one was set."""
        if self.sysctl[KEY_SYSCTL] == TFO_ZERO_KEY and self._key_text is None:
            self.sysctl.set(KEY_SYSCTL, format_fastopen_keys([os.urandom(TCP_FASTOPEN_KEY_LENGTH)]))
        self._load_keys()

    def _load_keys(self) -> list[bytes]:
        text = self.sysctl[KEY_SYSCTL]
        if text != self._key_text:
            self._key_text = text
            self._keys = parse_fastopen_keys(text)
        return self._keys

    @staticmethod
    def _mac(key: bytes, saddr: bytes, daddr: bytes) -> bytes:
        # tcp_fastopen_cookie_gen_cipher: a MAC of the SYN's addresses under *key*.
        return hashlib.blake2s(saddr + daddr, key=key,
                               digest_size=TCP_FASTOPEN_COOKIE_SIZE).digest()

    def cookie_gen(self, client: bytes, server: bytes) -> bytes:
        """The valid cookie for *client* under the primary key (``tcp_fastopen_cookie_gen``)."""
        self.init_key_once()
        return self._mac(self._keys[0], client, server)

    def cookie_check(self, cookie: bytes, client: bytes, server: bytes) -> int:
        """``tcp_fastopen_cookie_gen_check``: 1 primary key, 2 backup key, 0 invalid."""
        self.init_key_once()
        for i, key in enumerate(self._keys):
            if hmac.compare_digest(self._mac(key, client, server), cookie):
                return i + 1
        return 0

    # -- active-side blackhole detection -------------------------------------

    def active_should_disable(self, now: float) -> bool:
        """``tcp_fastopen_active_should_disable``: after a blackhole, pause active TFO.

        The pause is tcp_fastopen_blackhole_timeout_sec (0, the default since
        Linux 5.14, turns detection off), doubled for each further detection
        up to 64 times.
        """
        timeout = self.sysctl[BLACKHOLE_SYSCTL]
        if not timeout or not self.disable_times:
            return False
        multiplier = 1 << min(self.disable_times - 1, 6)
        return now < self.disable_stamp + multiplier * timeout

    def active_disable(self, now: float) -> None:
        """``tcp_fastopen_active_disable``: a Fast Open connection looked black-holed."""
        if not self.sysctl[BLACKHOLE_SYSCTL]:
            return
        self.disable_stamp = now
        self.disable_times += 1
        self.stats.tcpext["TCPFastOpenBlackhole"] += 1

    def active_reenable(self) -> None:
        """A Fast Open connection after the pause worked: forget earlier blackholes."""
        self.disable_times = 0
