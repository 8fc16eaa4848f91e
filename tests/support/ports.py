"""Loopback server plumbing shared by the test fixtures and the benchmark (which must
import it without pytest, so this module imports nothing from the test framework)."""

from __future__ import annotations

import socket
import socketserver
import threading


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago. Callers retry on a bind race:
    another process can take the port between this probe and their own bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(server: socketserver.BaseServer, wait: float = 5.0) -> None:
    """``shutdown()`` waits without a limit for ``serve_forever`` to notice. A teardown
    runs after a test's timeout has fired, so nothing would end that wait: ask from a
    helper thread, give it ``wait`` seconds, then close the listening socket anyway."""
    asker = threading.Thread(target=server.shutdown, daemon=True, name="server-stop")
    asker.start()
    asker.join(wait)
    server.server_close()
