"""A small capture filter language, a subset of tcpdump's (pcap-filter(7)).

Not BPF: an expression is parsed into a tree of Python predicates over the
few header fields a packet is decoded into (EtherType, IP protocol,
addresses, ports, length). What it understands::

    expr     := term ("or" | "||") term ...
    term     := factor ("and" | "&&") factor ...   (juxtaposition also means "and")
    factor   := ("not" | "!") factor | "(" expr ")" | primitive
    primitive:= ip | arp | tcp | udp | icmp
              | [src|dst] host ADDR | [src|dst] net CIDR
              | [tcp|udp] [src|dst] port N[-M]
              | greater N | less N | len (<|<=|>|>=|==|!=) N

As in tcpdump, ``tcp port 80`` means TCP with port 80 on either side, a bare
``port 80`` matches TCP or UDP, ``greater``/``less`` compare the packet's
length, and a port never matches a non-first IP fragment. 802.1Q tags in
front of IPv4 are looked through. A mistake is a :class:`FilterError` with a
one-line message saying where.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

# pcap link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_ETHERNET = 1
LINKTYPE_IPV4 = 228

_ETH_P_IP = 0x0800
_ETH_P_ARP = 0x0806
_ETH_P_8021Q = 0x8100
_PROTOS = {"icmp": 1, "tcp": 6, "udp": 17}
_PORTS = struct.Struct("!HH")


class FilterError(ValueError):
    """A filter expression that does not parse; the message is one line."""


class Fields:
    """What a predicate looks at: the decoded headers of one packet."""

    __slots__ = ("ethertype", "proto", "src", "dst", "sport", "dport", "length")

    def __init__(self, data: bytes | memoryview, linktype: int) -> None:
        self.length = len(data)
        self.proto = -1
        self.src = self.dst = b""
        self.sport = self.dport = -1
        off = 0
        if linktype == LINKTYPE_ETHERNET:
            if len(data) < 14:
                self.ethertype = -1
                return
            self.ethertype = (data[12] << 8) | data[13]
            off = 14
            while self.ethertype == _ETH_P_8021Q and len(data) >= off + 4:
                self.ethertype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        else:
            self.ethertype = _ETH_P_IP
        if self.ethertype != _ETH_P_IP or len(data) < off + 20 or data[off] >> 4 != 4:
            return
        ihl = (data[off] & 0x0F) * 4
        self.proto = data[off + 9]
        self.src = bytes(data[off + 12 : off + 16])
        self.dst = bytes(data[off + 16 : off + 20])
        frag_offset = ((data[off + 6] & 0x1F) << 8) | data[off + 7]
        t = off + ihl
        if self.proto in (6, 17) and frag_offset == 0 and len(data) >= t + 4:
            self.sport, self.dport = _PORTS.unpack_from(data, t)


Predicate = Callable[[Fields], bool]


def _match_all(f: Fields) -> bool:
    return True


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = text.replace("(", " ( ").replace(")", " ) ").replace("!", " ! ").split()
        # "!=" was split by the line above; glue it back.
        glued: list[str] = []
        for tok in self.tokens:
            if tok == "=" and glued and glued[-1] == "!":
                glued[-1] = "!="
            else:
                glued.append(tok)
        self.tokens = glued
        self.pos = 0

    def error(self, message: str) -> FilterError:
        return FilterError(f"bad filter {self.text!r}: {message}")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, what: str) -> str:
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected {what} at the end")
        self.pos += 1
        return tok

    def parse(self) -> Predicate:
        if not self.tokens:
            return _match_all
        pred = self.expr()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return pred

    def expr(self) -> Predicate:
        pred = self.term()
        while self.peek() in ("or", "||"):
            self.pos += 1
            left, right = pred, self.term()
            pred = lambda f, a=left, b=right: a(f) or b(f)  # noqa: E731
        return pred

    def term(self) -> Predicate:
        pred = self.factor()
        while self.peek() is not None and self.peek() not in ("or", "||", ")"):
            if self.peek() in ("and", "&&"):
                self.pos += 1
            left, right = pred, self.factor()
            pred = lambda f, a=left, b=right: a(f) and b(f)  # noqa: E731
        return pred

    def factor(self) -> Predicate:
        tok = self.take("a primitive")
        if tok in ("not", "!"):
            inner = self.factor()
            return lambda f: not inner(f)
        if tok == "(":
            inner = self.expr()
            if self.take("')'") != ")":
                raise self.error("expected ')'")
            return inner
        return self.primitive(tok)

    def number(self, what: str, limit: int) -> int:
        tok = self.take(what)
        if not tok.isdigit() or int(tok) > limit:
            raise self.error(f"expected {what} (0..{limit}), got {tok!r}")
        return int(tok)

    def primitive(self, tok: str) -> Predicate:
        if tok == "ip":
            return lambda f: f.ethertype == _ETH_P_IP
        if tok == "arp":
            return lambda f: f.ethertype == _ETH_P_ARP
        if tok in _PROTOS:
            proto = _PROTOS[tok]
            is_proto: Predicate = lambda f: f.proto == proto  # noqa: E731
            nxt = self.peek()
            after = self.tokens[self.pos + 1] if self.pos + 1 < len(self.tokens) else None
            if tok != "icmp" and (nxt == "port" or (nxt in ("src", "dst") and after == "port")):
                ports = self.primitive(self.take("port"))
                return lambda f: is_proto(f) and ports(f)
            return is_proto
        direction = None
        if tok in ("src", "dst"):
            direction = tok
            tok = self.take("host, net or port")
        if tok == "host":
            word = self.take("an address")
            try:
                addr = ipaddress.IPv4Address(word).packed
            except ValueError:
                raise self.error(f"bad host address {word!r}") from None
            return self._addr(direction, lambda a: a == addr)
        if tok == "net":
            word = self.take("a network")
            try:
                net = ipaddress.IPv4Network(word, strict=False)
            except ValueError:
                raise self.error(f"bad network {word!r}") from None
            mask = int(net.netmask)
            base = int(net.network_address)
            return self._addr(
                direction, lambda a: len(a) == 4 and int.from_bytes(a, "big") & mask == base
            )
        if tok == "port":
            word = self.take("a port")
            lo_s, _, hi_s = word.partition("-")
            if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
                raise self.error(f"bad port {word!r}")
            lo, hi = int(lo_s), int(hi_s or lo_s)
            if not 0 <= lo <= hi <= 65535:
                raise self.error(f"bad port {word!r}")
            if direction == "src":
                return lambda f: lo <= f.sport <= hi
            if direction == "dst":
                return lambda f: lo <= f.dport <= hi
            return lambda f: lo <= f.sport <= hi or lo <= f.dport <= hi
        if direction is not None:
            raise self.error(f"expected host, net or port after {direction!r}, got {tok!r}")
        if tok == "greater":
            n = self.number("a length", 1 << 32)
            return lambda f: f.length >= n
        if tok == "less":
            n = self.number("a length", 1 << 32)
            return lambda f: f.length <= n
        if tok == "len":
            op = self.take("a comparison")
            n = self.number("a length", 1 << 32)
            ops: dict[str, Predicate] = {
                "<": lambda f: f.length < n, "<=": lambda f: f.length <= n,
                ">": lambda f: f.length > n, ">=": lambda f: f.length >= n,
                "==": lambda f: f.length == n, "=": lambda f: f.length == n,
                "!=": lambda f: f.length != n,
            }
            if op not in ops:
                raise self.error(f"expected <, <=, >, >=, == or != after len, got {op!r}")
            return ops[op]
        raise self.error(f"unknown primitive {tok!r}")

    @staticmethod
    def _addr(direction: str | None, test: Callable[[bytes], bool]) -> Predicate:
        if direction == "src":
            return lambda f: test(f.src)
        if direction == "dst":
            return lambda f: test(f.dst)
        return lambda f: test(f.src) or test(f.dst)


def compile_filter(text: str) -> Callable[[bytes | memoryview, int], bool]:
    """Compile *text*; the result tells whether a packet of a link type matches.

    An empty expression matches everything. Raises :class:`FilterError`.
    """
    pred = _Parser(text).parse()
    if pred is _match_all:
        return lambda data, linktype: True
    return lambda data, linktype: pred(Fields(data, linktype))
