"""Built-in services of ``ustack up --serve NAME:PORT[:ARG]``.

Each service is an async function ``serve(stack, port, arg, task_status)``
that listens on the stack (not the host) and runs until cancelled: echo
(RFC 862), discard (RFC 863) and chargen (RFC 864) over TCP and UDP, and a
small HTTP/1.1 server for curl and wget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .http import serve_http
from .simple import serve_chargen, serve_discard, serve_echo

Service = Callable[..., Awaitable[None]]

SERVICES: dict[str, tuple[Service, int]] = {
    "echo": (serve_echo, 7),
    "discard": (serve_discard, 9),
    "chargen": (serve_chargen, 19),
    "http": (serve_http, 80),
}


@dataclass(frozen=True)
class ServiceSpec:
    """One ``--serve`` argument, parsed."""

    name: str
    port: int
    arg: str | None

    @property
    def serve(self) -> Service:
        return SERVICES[self.name][0]


def parse_spec(text: str) -> ServiceSpec:
    """``NAME[:PORT[:ARG]]`` -> ServiceSpec; ValueError with a one-line message."""
    name, _, rest = text.partition(":")
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r} (known: {', '.join(sorted(SERVICES))})")
    port_text, _, arg = rest.partition(":")
    port = SERVICES[name][1]
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad port in --serve {text!r}") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1..65535 in --serve {text!r}")
    if arg and name != "http":
        raise ValueError(f"service {name} takes no argument (got {arg!r})")
    return ServiceSpec(name, port, arg or None)


async def run_service(spec: ServiceSpec, stack: Any, task_status: Any) -> None:
    await spec.serve(stack, spec.port, spec.arg, task_status=task_status)
