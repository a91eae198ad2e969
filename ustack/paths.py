"""Where a running stack can be reached: its control socket."""

from __future__ import annotations

import os

DEFAULT_RUN_DIR = "/run/ustack"


def default_control_path(tap: str) -> str:
    """``$USTACK_RUN_DIR/TAP.sock``, by default ``/run/ustack/TAP.sock``."""
    return os.path.join(os.environ.get("USTACK_RUN_DIR") or DEFAULT_RUN_DIR, f"{tap}.sock")
