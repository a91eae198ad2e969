"""TCP and UDP against the real kernel: curl, wget, nc, Python sockets, trio.

The stack runs ``--serve echo:7 --serve http:80:DIR`` in a private namespace;
the kernel side uses its own tools. Every byte that moves is checked by
sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from netns import USTACK, Daemon, wait_for

from ustack.services.http import pattern_bytes

SIZES = [1024, 65536, 1_000_000, 10_000_000, 50_000_000]


@pytest.fixture(scope="module")
def docroot(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    digests = {}
    for size in SIZES:
        data = os.urandom(size)
        (root / f"f{size}").write_bytes(data)
        digests[size] = hashlib.sha256(data).hexdigest()
    return root, digests


@pytest.fixture(scope="module")
def served(shared_ns, docroot):
    root, _ = docroot
    d = Daemon(shared_ns, "--serve", "echo:7", "--serve", f"http:80:{root}",
               "--serve", "discard:9")
    yield d
    assert d.stop() == 0, d.log_text()


def sha_of_cmd(ns, argv: list[str], timeout: float = 120) -> str:
    p = ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h = hashlib.sha256()
    assert p.stdout is not None
    while chunk := p.stdout.read(1 << 20):
        h.update(chunk)
    p.wait(timeout=timeout)
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    return h.hexdigest()


@pytest.mark.parametrize("size", SIZES)
def test_curl_downloads_files(shared_ns, served, docroot, size):
    _, digests = docroot
    got = sha_of_cmd(shared_ns, ["curl", "-sf", f"http://10.0.0.2/f{size}"])
    assert got == digests[size]


def test_wget_and_bytes_endpoint(shared_ns, served):
    n = 5_000_003
    got = sha_of_cmd(shared_ns, ["wget", "-q", "-O", "-", f"http://10.0.0.2/bytes/{n}"])
    assert got == hashlib.sha256(pattern_bytes(n)).hexdigest()


def test_keepalive_and_errors(shared_ns, served):
    p = shared_ns.run(["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                       "-w", "%{http_code} %{num_connects}\\n",
                       "http://10.0.0.2/bytes/10", "http://10.0.0.2/bytes/20",
                       "http://10.0.0.2/missing"])
    assert p.stdout.split("\n")[:3] == ["200 1", "200 0", "404 0"]
    bad = shared_ns.run(["sh", "-c", "printf 'NONSENSE\\r\\n\\r\\n' | nc -N 10.0.0.2 80"])
    assert bad.stdout.startswith("HTTP/1.1 400")


def test_fifty_concurrent_curls(shared_ns, served):
    n = 200_000
    want = hashlib.sha256(pattern_bytes(n)).hexdigest()
    procs = [shared_ns.popen(["curl", "-sf", f"http://10.0.0.2/bytes/{n}"],
                             stdout=subprocess.PIPE) for _ in range(60)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and hashlib.sha256(out).hexdigest() == want


def test_kernel_nc_echo_with_client_half_close(shared_ns, served):
    data = os.urandom(300_000)
    p = subprocess.run(shared_ns.cmd(["nc", "-N", "10.0.0.2", "7"]), input=data,
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == data


def test_stack_half_closes_first_and_still_receives(shared_ns, served):
    """ustack nc -N sends, half-closes; the kernel replies after seeing EOF."""
    server = shared_ns.popen([sys.executable, "-c", textwrap.dedent("""
        import hashlib, socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("10.0.0.1", 7001)); s.listen(1); print("up", flush=True)
        c, _ = s.accept(); h = hashlib.sha256(); n = 0
        while d := c.recv(65536):
            h.update(d); n += len(d)
        c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "up"
    data = os.urandom(200_000)
    p = subprocess.run([USTACK, "nc", "10.0.0.1", "7001", "-N", "--control", served.control],
                       input=data, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    server.wait(timeout=10)


def test_ustack_nc_uploads_20mb_to_kernel_nc(shared_ns, served, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(20_000_000))
    dst = tmp_path / "down.bin"
    with open(dst, "wb") as out:
        listener = shared_ns.popen(["nc", "-l", "10.0.0.1", "7002"], stdout=out)
        try:
            time.sleep(0.3)
            with open(src, "rb") as f:
                p = subprocess.run([USTACK, "nc", "-N", "10.0.0.1", "7002", "--control",
                                    served.control], stdin=f, capture_output=True, timeout=120)
            assert p.returncode == 0, p.stderr
            listener.wait(timeout=60)
        finally:
            listener.kill()
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_ustack_nc_listen_receives_from_kernel(shared_ns, served):
    listener = subprocess.Popen([USTACK, "nc", "-l", "7003", "--control", served.control],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: any(
        r["local"] == "0.0.0.0:7003" and r["state"] == "LISTEN"
        for r in json.loads(served.cli("ss", "--json").stdout)))
    data = os.urandom(100_000)
    sender = subprocess.run(shared_ns.cmd(["nc", "-N", "10.0.0.2", "7003"]), input=data,
                            capture_output=True, timeout=60)
    assert sender.returncode == 0
    out, err = listener.communicate(timeout=60)
    assert out == data, err


KERNEL_PEER = textwrap.dedent("""
    import hashlib, socket, sys
    mode, n = sys.argv[1], int(sys.argv[2])
    block = bytes(range(256)) * 4096
    if mode == "send":       # the kernel sends n bytes to the stack's discard-like sink
        c = socket.create_connection(("10.0.0.2", 9))
        h = hashlib.sha256(); sent = 0
        while sent < n:
            b = block[: min(len(block), n - sent)]
            c.sendall(b); h.update(b); sent += len(b)
        c.close(); print(h.hexdigest())
    else:                    # the kernel receives n bytes from the stack's http server
        c = socket.create_connection(("10.0.0.2", 80))
        req = f"GET /bytes/{n} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
        c.sendall(req.encode())
        buf = b""
        while b"\\r\\n\\r\\n" not in buf:
            buf += c.recv(65536)
        head, _, body = buf.partition(b"\\r\\n\\r\\n")
        h = hashlib.sha256(body); got = len(body)
        while d := c.recv(1 << 20):
            h.update(d); got += len(d)
        print(got, h.hexdigest())
""")


def test_kernel_sockets_100mb_from_stack(shared_ns, served):
    n = 100_000_000
    p = shared_ns.run([sys.executable, "-c", KERNEL_PEER, "recv", str(n)], timeout=240)
    got, digest = p.stdout.split()
    assert int(got) == n
    h = hashlib.sha256()
    for i in range(0, n, 1 << 22):
        h.update(pattern_bytes(min(1 << 22, n - i), i))
    assert digest == h.hexdigest()


def test_kernel_sockets_100mb_to_stack(shared_ns, served):
    """The kernel sends 100 MB to the stack; the stack's counters account for it."""
    before = served.stat()["Tcp"]["InSegs"]
    p = shared_ns.run([sys.executable, "-c", KERNEL_PEER, "send", "100000000"], timeout=240)
    assert len(p.stdout.strip()) == 64
    assert served.stat()["Tcp"]["InSegs"] - before >= 100_000_000 // 65536


def test_closed_ports_refuse_both_ways(shared_ns, served):
    p = shared_ns.run([sys.executable, "-c", textwrap.dedent("""
        import socket
        try:
            socket.create_connection(("10.0.0.2", 1), timeout=5)
        except ConnectionRefusedError:
            print("refused")
    """)])
    assert p.stdout.strip() == "refused"
    q = subprocess.run([USTACK, "nc", "10.0.0.1", "1", "--control", served.control],
                       input=b"", capture_output=True, timeout=30)
    assert q.returncode == 1 and b"refused" in q.stderr.lower()
    s = served.stat()
    assert s["Tcp"]["OutRsts"] >= 1 and s["Tcp"]["AttemptFails"] >= 1


def test_udp_echo_and_port_unreachable(shared_ns, served):
    p = subprocess.run(shared_ns.cmd(["nc", "-u", "-w", "1", "10.0.0.2", "7"]),
                       input=b"ping over udp\n", capture_output=True, timeout=30)
    assert p.stdout == b"ping over udp\n"
    before = shared_ns.nstat().get("IcmpInDestUnreachs", 0)
    r = shared_ns.run([sys.executable, "-c", textwrap.dedent("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.connect(("10.0.0.2", 4444)); s.send(b"x")
        try:
            s.recv(10)
        except ConnectionRefusedError:
            print("refused")
    """)])
    assert r.stdout.strip() == "refused"
    assert shared_ns.nstat()["IcmpInDestUnreachs"] - before >= 1
    assert served.stat()["Udp"]["NoPorts"] >= 1


TRIO_PROGRAM = textwrap.dedent("""
    # An unmodified trio client and server; only the two ustack lines differ.
    import hashlib, socket, threading, trio, ustack

    def kernel_server():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("10.0.0.1", 7100)); s.listen()
        c, _ = s.accept()
        while d := c.recv(65536):
            c.sendall(d[::-1])
        c.close()

    async def main():
        async with ustack.open_stack("tap1", "10.0.1.2/24", "10.0.1.1/24") as stack:
            stack.use_for_trio()
            threading.Thread(target=kernel_server, daemon=True).start()
            await trio.sleep(0.3)
            stream = await trio.open_tcp_stream("10.0.1.1", 7100)
            await stream.send_all(b"hello from trio over ustack")
            await stream.send_eof()
            got = b""
            while d := await stream.receive_some():
                got += d
            print(got.decode())
            await stream.aclose()

            async def handler(s):
                async for data in s:
                    await s.send_all(data.upper())
            async with trio.open_nursery() as n:
                listeners = await n.start(trio.serve_tcp, handler, 7200)
                def kernel_client():
                    c = socket.create_connection(("10.0.1.2", 7200))
                    c.sendall(b"served by trio.serve_tcp"); c.shutdown(socket.SHUT_WR)
                    out = b""
                    while d := c.recv(100):
                        out += d
                    return out
                print((await trio.to_thread.run_sync(kernel_client)).decode())
                n.cancel_scope.cancel()

    trio.run(main)
""")


def test_unmodified_trio_program_over_the_factory(netns):
    # Its own TAP, so it does not disturb a daemon; the namespace is private.
    p = netns.run([sys.executable, "-c", TRIO_PROGRAM.replace("10.0.0.1", "10.0.1.1")],
                  timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["kcatsu revo oirt morf olleh",
                                        "SERVED BY TRIO.SERVE_TCP"]


def test_ss_shows_listeners_and_connections(served):
    rows = json.loads(served.cli("ss", "--json").stdout)
    ports = {r["local"] for r in rows if r["state"] == "LISTEN"}
    assert {"0.0.0.0:7", "0.0.0.0:80", "0.0.0.0:9"} <= ports
    assert any(r["netid"] == "udp" and r["local"] == "0.0.0.0:7" for r in rows)


def test_ustack_nc_udp_both_ways(shared_ns, served):
    server = shared_ns.popen([sys.executable, "-c", textwrap.dedent("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.0.0.1", 7500))
        print("up", flush=True)
        data, addr = s.recvfrom(100); s.sendto(data.upper(), addr)
    """)], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "up"
    p = subprocess.run([USTACK, "nc", "-u", "-q", "1", "10.0.0.1", "7500", "--control",
                        served.control], input=b"datagram over ustack\n", capture_output=True,
                       timeout=30)
    assert p.returncode == 0 and p.stdout == b"DATAGRAM OVER USTACK\n", p.stderr
    server.wait(timeout=10)
    listener = subprocess.Popen([USTACK, "nc", "-l", "-u", "7501", "--control",
                                 served.control], stdout=subprocess.PIPE,
                                stdin=subprocess.PIPE)
    assert wait_for(lambda: any(
        r["local"] == "0.0.0.0:7501" for r in json.loads(served.cli("ss", "--json").stdout)))
    shared_ns.run(["sh", "-c", "printf 'first datagram' | nc -u -w1 10.0.0.2 7501"])
    assert listener.stdout.read(14) == b"first datagram"
    listener.kill()
