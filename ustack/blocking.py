"""A blocking facade: ustack sockets for plain threaded code.

The stack runs on a trio loop in a background thread; every call from
another thread enters that loop through ``trio.from_thread`` and waits for
the answer, so the methods have the BSD socket names and no ``await``::

    with ustack.blocking.open_stack("tap0", "10.0.0.2/24", "10.0.0.1/24") as stack:
        s = stack.socket()
        s.connect(("10.0.0.1", 80))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        print(s.recv(4096))

``settimeout`` works as in the socket module: a call that waits longer
raises ``TimeoutError``.
"""

from __future__ import annotations

import socket as _stdlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

import trio

from .api import open_stack as _open_stack
from .stack import Stack

T = TypeVar("T")


class LoopThread:
    """A trio loop in a daemon thread, entered with :meth:`call` / :meth:`call_sync`."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._opener = opener
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: trio.Event | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.value: Any = None
        self._thread = threading.Thread(target=self._run, name="ustack-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as err:  # reported to the constructor or close()
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with self._opener() as value:
            self.value = value
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
            self._thread.join()
        if self._error is not None:
            raise self._error


class BlockingStack:
    """A Stack driven from threads; see the module docstring."""

    def __init__(self, loop: LoopThread, stack: Stack) -> None:
        self._loop = loop
        self.stack = stack

    def socket(self, family: int = _stdlib.AF_INET, type: int = _stdlib.SOCK_STREAM,
               proto: int = 0) -> BlockingSocket:
        return BlockingSocket(self._loop, self._loop.call_sync(self.stack.socket, family, type,
                                                               proto))

    def ping(self, host: str, count: int = 1, size: int = 56) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            return [r async for r in self.stack.ping(host, count=count, size=size,
                                                      interval=0.2)]

        return self._loop.call(run)

    def stats(self) -> dict[str, Any]:
        return self._loop.call_sync(self.stack.snapshot)


class BlockingSocket:
    """A socket whose methods block the calling thread (socket-module style)."""

    def __init__(self, loop: LoopThread, sock: Any) -> None:
        self._loop = loop
        self._sock = sock
        self._timeout: float | None = None

    def _wait(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        timeout = self._timeout

        async def run() -> T:
            if timeout is None:
                return await fn(*args)
            try:
                with trio.fail_after(timeout):
                    return await fn(*args)
            except trio.TooSlowError:
                raise TimeoutError("timed out") from None

        return self._loop.call(run)

    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def bind(self, address: tuple[str, int]) -> None:
        self._wait(self._sock.bind, address)

    def listen(self, backlog: int = 128) -> None:
        self._loop.call_sync(self._sock.listen, backlog)

    def accept(self) -> tuple[BlockingSocket, tuple[str, int]]:
        sock, addr = self._wait(self._sock.accept)
        return BlockingSocket(self._loop, sock), addr

    def connect(self, address: tuple[str, int]) -> None:
        self._wait(self._sock.connect, address)

    def send(self, data: bytes, flags: int = 0) -> int:
        return self._wait(self._sock.send, data, flags)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            view = view[self.send(view):]

    def sendto(self, data: bytes, *args: Any) -> int:
        """``sendto(data[, flags], address)``; flags may hold MSG_FASTOPEN for TCP."""
        return self._wait(self._sock.sendto, data, *args)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self._wait(self._sock.recv, bufsize, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        return self._wait(self._sock.recvfrom, bufsize, flags)

    def shutdown(self, how: int) -> None:
        self._loop.call_sync(self._sock.shutdown, how)

    def close(self) -> None:
        self._loop.call_sync(self._sock.close)

    def getsockname(self) -> tuple[str, int]:
        return self._loop.call_sync(self._sock.getsockname)

    def getpeername(self) -> tuple[str, int]:
        return self._loop.call_sync(self._sock.getpeername)

    def setsockopt(self, level: int, optname: int, value: Any) -> None:
        self._loop.call_sync(self._sock.setsockopt, level, optname, value)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        return self._loop.call_sync(self._sock.getsockopt, level, optname, buflen)

    def fileno(self) -> int:
        return self._sock.fileno()

    def __enter__(self) -> BlockingSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def run_blocking(opener: Callable[[], AbstractAsyncContextManager[Any]]) -> Iterator[Any]:
    """Run ``async with opener() as value`` on a loop thread; yield (loop, value)."""
    loop = LoopThread(opener)
    try:
        yield loop, loop.value
    finally:
        loop.close()


@contextmanager
def open_stack(tap: str = "tap0", addr: str = "10.0.0.2/24",
               host_addr: str | None = "10.0.0.1/24", **kwargs: Any) -> Iterator[BlockingStack]:
    """``ustack.open_stack`` for threaded code: a BlockingStack on a TAP."""
    with run_blocking(lambda: _open_stack(tap, addr, host_addr, **kwargs)) as (loop, stack):
        yield BlockingStack(loop, stack)


