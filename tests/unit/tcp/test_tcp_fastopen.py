"""TCP Fast Open in the sans-IO core (RFC 7413, the kernel's tcp_fastopen.c)."""

import pytest
from tcpsim import IPS, Net

from ustack.sysctl import SysctlError
from ustack.transport.tcp import ACK, SYN, TcpState
from ustack.transport.tcp.fastopen import (
    TFO_COOKIE_UNAVAILABLE,
    TFO_DATA_NOT_ACKED,
    TFO_SYN_RETRANSMITTED,
    FastOpen,
)
from ustack.transport.tcp.metrics import TcpMetrics

S = TcpState
REQ = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
KEY1 = "00112233-44556677-8899aabb-ccddeeff"
KEY2 = "ffeeddcc-bbaa9988-77665544-33221100"


class Tfo:
    """A client host "a" and a Fast Open listener on "b":80."""

    def __init__(self, mode_a: int = 1, mode_b: int = 3, qlen: int = 16, **kw) -> None:
        self.net = net = Net(**kw)
        self.ctx = {}
        for name, mode in (("a", mode_a), ("b", mode_b)):
            host = net.hosts[name]
            host.sysctl.set("net.ipv4.tcp_fastopen", mode)
            self.ctx[name] = FastOpen(host.sysctl, host.stats)
        self.metrics = TcpMetrics()
        self.lst = net.listen("b", 80)
        self.lst.enable_fastopen(self.ctx["b"])
        if qlen:
            self.lst.fastopen_queue_tune(qlen)
        self.port = 40000

    def client(self, fastopen_connect: bool = True):
        self.port += 1
        c = self.net.conn("a", self.port, 80)
        c.tfo, c.metrics = self.ctx["a"], self.metrics
        c.fastopen_connect = fastopen_connect
        return c

    def flush(self) -> None:
        """Put what the hosts queued on the wire (and in the log) now."""
        self.net.next_event()

    def ext(self, host: str) -> dict:
        return self.net.hosts[host].stats.tcpext

    def syns(self, host: str, flags: int = SYN) -> list:
        return [s for s in self.net.sent(host, flags) if s.flags & (SYN | ACK) == flags]

    def handshake(self, payload: bytes = REQ):
        """One Fast Open connect and send; returns (client, accepted child)."""
        c = self.client()
        c.connect(self.net.now)
        c.send(payload, self.net.now)
        self.net.run(stop=lambda: self.lst.accept_queue_len > 0 and c.state is S.ESTABLISHED)
        child = self.lst.accept()
        self.net.run(stop=lambda: child.readable_bytes >= len(payload))
        return c, child

    def get_cookie(self) -> bytes:
        c, child = self.handshake()
        cookie = self.metrics.fastopen_get(IPS["b"])[1]
        assert cookie is not None and len(cookie) == 8
        return cookie


def test_first_connect_requests_a_cookie_then_data_follows_handshake():
    t = Tfo()
    c = t.client()
    c.connect(t.net.now)
    assert not c.defer_connect  # no cookie yet: a normal SYN asking for one
    assert c.fastopen_client_fail == TFO_COOKIE_UNAVAILABLE
    c.send(REQ, t.net.now)
    t.net.run(stop=lambda: t.lst.accept_queue_len > 0)
    syn = t.syns("a")[0]
    assert syn.options.fastopen == b"" and not syn.payload
    synack = t.syns("b", SYN | ACK)[0]
    assert len(synack.options.fastopen) == 8 and not synack.options.fastopen_exp
    assert t.metrics.fastopen_get(IPS["b"]) == (1460, synack.options.fastopen, False)
    child = t.lst.accept()
    t.net.run(stop=lambda: child.readable_bytes == len(REQ))
    assert child.recv(4096, t.net.now) == REQ
    assert t.ext("b")["TCPFastOpenCookieReqd"] == 1
    assert t.ext("b")["TCPFastOpenPassive"] == 0 and t.ext("a")["TCPFastOpenActive"] == 0
    assert not c.syn_data_acked


def test_cookie_carries_data_in_syn_and_saves_a_round_trip():
    t = Tfo()
    cookie = t.get_cookie()
    c = t.client()
    c.connect(t.net.now)
    assert c.defer_connect and c.state is S.SYN_SENT
    t.net.run(until=t.net.now + 0.1)
    assert len(t.syns("a")) == 1  # nothing went out for the deferred connect
    start = t.net.now
    c.send(REQ, t.net.now)
    t.flush()
    syn = t.syns("a")[-1]
    assert syn.options.fastopen == cookie and bytes(syn.payload) == REQ
    # The server has the request (and a socket) one way after the SYN left.
    t.net.run(stop=lambda: t.lst.accept_queue_len > 0)
    child = t.lst.accept()
    assert child.state is S.SYN_RECV and child.recv(4096, t.net.now) == REQ
    assert child.syn_data_acked
    synack = t.syns("b", SYN | ACK)[-1]
    assert synack.ack == (c.iss + 1 + len(REQ)) & 0xFFFFFFFF and synack.options.fastopen is None
    # A Fast Open child may answer before the handshake completes.
    sent_at = t.net.now
    child.send(b"HTTP/1.1 200 OK\r\n\r\n", t.net.now)
    t.net.run(stop=lambda: c.readable_bytes > 0)
    assert c.recv(4096, t.net.now).startswith(b"HTTP/1.1 200")
    assert t.net.now - start <= 2 * t.net.delay + 1e-9 and t.net.now > sent_at
    assert c.syn_data_acked and c.state is S.ESTABLISHED
    assert t.ext("a")["TCPFastOpenActive"] == 1 and t.ext("a")["TCPFastOpenActiveFail"] == 0
    assert t.ext("b")["TCPFastOpenPassive"] == 1
    t.net.run(stop=lambda: child.state is S.ESTABLISHED)
    assert t.lst.fastopen_qlen == 0
    assert t.net.hosts["b"].stats.tcp["PassiveOpens"] == 2


def test_invalid_cookie_falls_back_and_data_is_resent():
    t = Tfo()
    t.metrics.fastopen_set(IPS["b"], 1460, b"\x00" * 8, False, False, 0, 0.0)
    c, child = t.handshake()
    assert child.recv(4096, t.net.now) == REQ
    assert t.ext("b")["TCPFastOpenPassiveFail"] == 1 and t.ext("b")["TCPFastOpenPassive"] == 0
    assert t.ext("a")["TCPFastOpenActiveFail"] == 1 and t.ext("a")["TCPFastOpenActive"] == 0
    assert c.fastopen_client_fail == TFO_DATA_NOT_ACKED and not c.syn_data_acked
    synack = t.syns("b", SYN | ACK)[-1]
    assert synack.ack == (c.iss + 1) & 0xFFFFFFFF
    # The SYN-ACK brought a valid cookie, and the next connect uses it.
    assert t.metrics.fastopen_get(IPS["b"])[1] == synack.options.fastopen
    t.handshake()
    assert t.ext("b")["TCPFastOpenPassive"] == 1


def test_backup_key_still_accepted_and_primary_cookie_handed_out():
    t = Tfo()
    t.net.hosts["b"].sysctl.set("net.ipv4.tcp_fastopen_key", KEY1)
    old = t.get_cookie()
    t.net.hosts["b"].sysctl.set("net.ipv4.tcp_fastopen_key", f"{KEY2},{KEY1}")
    c, child = t.handshake()
    assert child.syn_data_acked
    ext = t.ext("b")
    assert ext["TCPFastOpenPassive"] == 1 and ext["TCPFastOpenPassiveAltKey"] == 1
    new = t.metrics.fastopen_get(IPS["b"])[1]
    assert new != old and t.syns("b", SYN | ACK)[-1].options.fastopen == new
    # Once the old key is gone the old cookie fails; the new one works.
    t.net.hosts["b"].sysctl.set("net.ipv4.tcp_fastopen_key", KEY2)
    t.handshake()
    assert ext["TCPFastOpenPassive"] == 2 and ext["TCPFastOpenPassiveFail"] == 0


def test_no_cookie_modes():
    t = Tfo(mode_a=0x5, mode_b=0x202)
    c, child = t.handshake()
    syn = t.syns("a")[0]
    assert syn.options.fastopen is None and bytes(syn.payload) == REQ
    assert child.syn_data_acked and c.syn_data_acked
    assert t.ext("b")["TCPFastOpenPassive"] == 1 and t.ext("a")["TCPFastOpenActive"] == 1


def test_server_without_no_cookie_bit_ignores_cookieless_data():
    t = Tfo(mode_a=0x5, mode_b=0x2)
    c, child = t.handshake()
    assert not child.syn_data_acked and child.recv(4096, t.net.now) == REQ
    assert t.ext("a")["TCPFastOpenActiveFail"] == 1


def test_experimental_option_format_is_answered_in_kind():
    t = Tfo()
    t.metrics.fastopen_set(IPS["b"], 0, None, False, False, 1, 0.0)  # try_exp = 1
    t.handshake()
    syn = t.syns("a")[0]
    assert syn.options.fastopen == b"" and syn.options.fastopen_exp
    synack = t.syns("b", SYN | ACK)[0]
    assert synack.options.fastopen_exp and len(synack.options.fastopen) == 8
    assert t.metrics.fastopen_get(IPS["b"])[2] is True
    c, child = t.handshake()
    assert t.syns("a")[-1].options.fastopen_exp and child.syn_data_acked


def test_server_off_gives_no_cookie_and_client_tries_exp_next():
    t = Tfo(mode_b=1)
    t.handshake()
    assert t.syns("b", SYN | ACK)[0].options.fastopen is None
    assert t.ext("b")["TCPFastOpenCookieReqd"] == 1
    mss, cookie, exp = t.metrics.fastopen_get(IPS["b"])
    assert cookie is None and exp is True


def test_lost_syn_data_is_retried_as_plain_syn_and_remembered():
    t = Tfo()
    t.get_cookie()
    first = []

    def drop(src, seg):
        if src == "a" and seg.flags & SYN and seg.payload and not first:
            first.append(seg)
            return True
        return False

    t.net.drop = drop
    c, child = t.handshake()
    assert first and child.recv(4096, t.net.now) == REQ
    retry = t.syns("a")[-1]
    assert not retry.payload and retry.options.fastopen is None
    assert c.fastopen_client_fail == TFO_SYN_RETRANSMITTED
    assert t.ext("a")["TCPFastOpenActiveFail"] == 1
    assert t.metrics.show(t.net.now)[0]["fo_syn_drops"] == 1


def test_fastopen_queue_overflow_falls_back_to_a_normal_handshake():
    t = Tfo(qlen=1)
    t.get_cookie()
    # The clients' final ACKs are lost, so Fast Open children stay in SYN-RECV.
    t.net.drop = lambda src, seg: src == "a" and seg.flags == ACK and not seg.payload
    c1 = t.client()
    c1.connect(t.net.now)
    c1.send(REQ, t.net.now)
    t.net.run(until=t.net.now + 0.05)
    assert t.lst.fastopen_qlen == 1
    c2 = t.client()
    c2.connect(t.net.now)
    c2.send(REQ, t.net.now)
    t.net.run(until=t.net.now + 0.05)
    assert t.ext("b")["TCPFastOpenListenOverflow"] == 1
    assert t.ext("b")["TCPFastOpenPassive"] == 1 and t.ext("a")["TCPFastOpenActiveFail"] == 1
    # Once the ACKs flow again both connections finish and qlen drains.
    t.net.drop = None
    t.net.run(until=t.net.now + 5)
    assert t.lst.fastopen_qlen == 0 and t.lst.accept_queue_len == 2


def test_listener_needs_a_fastopen_queue():
    t = Tfo(qlen=0)
    t.handshake()
    assert t.metrics.fastopen_get(IPS["b"])[1] is None
    assert t.syns("b", SYN | ACK)[0].options.fastopen is None
    assert t.ext("b")["TCPFastOpenCookieReqd"] == 1


def test_bit_0x400_enables_every_listener():
    t = Tfo(mode_b=0x402, qlen=0)
    assert t.lst.fastopen_max_qlen == 128  # the backlog, without TCP_FASTOPEN
    t.net.hosts["b"].sysctl.set("net.ipv4.tcp_fastopen", 0x2)
    plain = t.net.listen("b", 82)
    plain.enable_fastopen(t.ctx["b"])
    assert plain.fastopen_max_qlen == 0
    t.net.hosts["b"].sysctl.set("net.ipv4.tcp_fastopen", 0x402)
    lst = t.net.listen("b", 81, backlog=7)
    lst.enable_fastopen(t.ctx["b"])
    assert lst.fastopen_max_qlen == 7


def test_blackhole_pauses_active_fastopen():
    t = Tfo()
    t.net.hosts["a"].sysctl.set("net.ipv4.tcp_fastopen_blackhole_timeout_sec", 3600)
    t.get_cookie()
    t.net.drop = lambda src, seg: src == "a"  # a middlebox eats everything now
    c = t.client()
    c.connect(t.net.now)
    c.send(REQ, t.net.now)
    t.net.run(stop=lambda: c.state is S.CLOSED)
    assert t.ext("a")["TCPFastOpenBlackhole"] == 1
    t.net.drop = None
    c2 = t.client()
    c2.connect(t.net.now)
    t.flush()
    assert not c2.defer_connect and t.syns("a")[-1].options.fastopen is None


def test_blackhole_detection_off_by_default():
    t = Tfo()
    t.get_cookie()
    t.net.drop = lambda src, seg: src == "a"
    c = t.client()
    c.connect(t.net.now)
    c.send(REQ, t.net.now)
    t.net.run(stop=lambda: c.state is S.CLOSED)
    assert t.ext("a")["TCPFastOpenBlackhole"] == 0
    assert t.client().connect(t.net.now) is None and t.ctx["a"].disable_times == 0


def test_key_sysctl_is_generated_once_and_validated():
    t = Tfo()
    sysctl = t.net.hosts["b"].sysctl
    assert sysctl["net.ipv4.tcp_fastopen_key"] != "00000000-00000000-00000000-00000000"
    key = sysctl["net.ipv4.tcp_fastopen_key"]
    t.get_cookie()
    assert sysctl["net.ipv4.tcp_fastopen_key"] == key
    with pytest.raises(SysctlError, match="32 hex digits"):
        sysctl.set("net.ipv4.tcp_fastopen_key", "123")
    with pytest.raises(SysctlError, match="at most"):
        sysctl.set("net.ipv4.tcp_fastopen_key", f"{KEY1},{KEY2},{KEY1}")
    assert sysctl["net.ipv4.tcp_fastopen_key"] == key


def test_cookie_depends_on_client_address_and_key():
    t = Tfo()
    ctx = t.ctx["b"]
    c1 = ctx.cookie_gen(IPS["a"], IPS["b"])
    assert ctx.cookie_gen(b"\x0a\x00\x00\x09", IPS["b"]) != c1
    assert ctx.cookie_check(c1, IPS["a"], IPS["b"]) == 1
    assert ctx.cookie_check(c1, b"\x0a\x00\x00\x09", IPS["b"]) == 0


def test_metrics_table_is_bounded_and_flushable():
    m = TcpMetrics(capacity=3)
    for i in range(5):
        m.fastopen_set(bytes([10, 0, 0, i]), 1400, bytes([i]) * 8, False, False, 0, float(i))
    assert len(m) == 3 and m.fastopen_get(bytes([10, 0, 0, 0]))[1] is None
    rows = m.show(10.0)
    assert [r["dst"] for r in rows] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert rows[0]["fo_cookie"] == "02" * 8 and rows[0]["fo_mss"] == 1400
    assert m.flush(bytes([10, 0, 0, 3])) == 1 and m.flush() == 2 and len(m) == 0
