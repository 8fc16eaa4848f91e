"""The one free-port helper, shared by the test registry fixture and the benchmark (which
must import it without pytest, so this module imports nothing from the test framework)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago. Callers retry on a bind race:
    another process can take the port between this probe and their own bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
