"""A loopback TCP proxy that can cut a transfer mid-stream and then play dead, to test
what a rerun does after a push was interrupted (a registry restart, a network cut)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator

import pytest


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._budget: int | None = None  # client->upstream bytes left before the cut
        self._down = False
        self._down_for: float | None = None
        self._request_cut: tuple[bytes, int] | None = None
        self._refuse: tuple[bytes, bytes] | None = None  # request prefix -> raw answer
        self._body_limit: int | None = None
        self.too_large: list[bytes] = []  # request lines answered 413 by limit_body
        # on_request: (prefix, requests to let by, bytes of the request to pass, action)
        self._trigger: tuple[bytes, int, int, Callable[[], None]] | None = None
        self._trigger_left: int | None = None  # bytes still to pass once the request began
        self._on_refused: tuple[int, Callable[[], None]] | None = None
        self.refused = 0  # connections the upstream refused (it was down)
        self.fired: bytes | None = None  # the request line on_request's action fired in
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_after(self, n_bytes: int, down_for: float | None = None) -> None:
        """After n more request bytes, drop every connection and refuse new ones, for
        ``down_for`` seconds (until ``restore()`` when None)."""
        with self._lock:
            self._budget = n_bytes
            self._down_for = down_for

    def cut_before_request(self, prefix: bytes, skip: int, down_for: float) -> None:
        """Let ``skip`` requests starting with ``prefix`` through, then drop the connection
        as the next one starts, before the upstream sees a byte of it, and stay down for
        ``down_for`` seconds: a registry restarting between two upload chunks."""
        with self._lock:
            self._request_cut = (prefix, skip)
            self._down_for = down_for

    def refuse(self, prefix: bytes, status: bytes) -> None:
        """Answer every request starting with ``prefix`` with ``status`` (e.g.
        b"413 Request Entity Too Large") and close, before the upstream sees it: what
        nginx does with a body over its client_max_body_size."""
        with self._lock:
            self._refuse = (prefix, _answer(status))

    def limit_body(self, max_bytes: int) -> None:
        """Answer 413 to every request whose Content-Length is over ``max_bytes`` and
        close, before the upstream sees it: nginx's client_max_body_size (ingress-nginx:
        1 MiB unless annotated)."""
        with self._lock:
            self._body_limit = max_bytes

    def on_request(
        self,
        prefix: bytes,
        action: Callable[[], None],
        after_bytes: int = 0,
        skip: int = 0,
    ) -> None:
        """Let ``skip`` requests starting with ``prefix`` by; pass ``after_bytes`` bytes of
        the next one (headers included: 0 = the upstream sees none of it), then call
        ``action`` (e.g. kill the registry) and drop every connection. A crash timed by
        the request it hits, not by a clock."""
        with self._lock:
            self._trigger = (prefix, skip, after_bytes, action)

    def on_refused(self, count: int, action: Callable[[], None]) -> None:
        """Call ``action`` (e.g. restart the registry) once the upstream has refused
        ``count`` connections: the client has come back that often while it was down."""
        with self._lock:
            self._on_refused = (count, action)

    def restore(self) -> None:
        with self._lock:
            self._down, self._budget = False, None

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        self._drop_all()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:  # the registry is down: the client sees a dropped connection
                client.close()
                self._refused_one()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                refused = self._refuse if counted else None
                if refused is not None and data.startswith(refused[0]):
                    src.sendall(refused[1])
                    self._drop_pair(src, dst)
                    return
                if counted and self._over_limit(data):
                    src.sendall(_answer(b"413 Request Entity Too Large"))
                    self._drop_pair(src, dst)
                    return
                if counted and (hit := self._triggered(data)) is not None:
                    passed, action = hit
                    dst.sendall(data[:passed])
                    action()
                    self._drop_all()
                    return
                if counted and not self._spend(data):
                    self._drop_all()
                    return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _over_limit(self, data: bytes) -> bool:
        """``data`` starts a request (its head arrives first, in one piece on loopback)
        whose declared body is over the limit."""
        limit = self._body_limit
        if limit is None:
            return False
        if not re.match(rb"[A-Z]+ /", data):
            return False  # body bytes, not a request's head
        head = data.split(b"\r\n\r\n", 1)[0]
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
        if match is None or int(match.group(1)) <= limit:
            return False
        with self._lock:
            self.too_large.append(head.split(b"\r\n", 1)[0])
        return True

    def _triggered(self, data: bytes) -> tuple[int, Callable[[], None]] | None:
        """(bytes of ``data`` to pass, action) when on_request's moment is in ``data``."""
        with self._lock:
            if self._trigger is None:
                return None
            prefix, skip, after, action = self._trigger
            if self._trigger_left is None:
                if not data.startswith(prefix):
                    return None
                if skip:
                    self._trigger = (prefix, skip - 1, after, action)
                    return None
                self._trigger_left = after
                self.fired = data.split(b"\r\n", 1)[0]
            if self._trigger_left >= len(data):
                self._trigger_left -= len(data)
                return None
            passed, self._trigger, self._trigger_left = self._trigger_left, None, None
            return passed, action

    def _refused_one(self) -> None:
        with self._lock:
            self.refused += 1
            hook = self._on_refused
            if hook is None or self.refused < hook[0]:
                return
            self._on_refused = None
        hook[1]()

    def _spend(self, data: bytes) -> bool:
        n = len(data)
        with self._lock:
            if self._down:
                return False
            if self._request_cut is not None and data.startswith(self._request_cut[0]):
                prefix, skip = self._request_cut
                if skip == 0:
                    self._request_cut = None
                    return self._go_down()
                self._request_cut = (prefix, skip - 1)
            if self._budget is None:
                return True
            self._budget -= n
            if self._budget < 0:
                return self._go_down()
            return True

    def _go_down(self) -> bool:
        self._down = True
        if self._down_for is not None:
            threading.Timer(self._down_for, self.restore).start()
        return False

    def _drop_pair(self, a: socket.socket, b: socket.socket) -> None:
        for conn in (a, b):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def _answer(status: bytes) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection, as nginx sends it."""
    body = b"<html><body>" + status + b"</body></html>"
    head = b"HTTP/1.1 %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n" % (
        status,
        len(body),
    )
    return head + b"Connection: close\r\n\r\n" + body


@pytest.fixture
def cutting_proxy() -> Iterator[type[CuttingProxy]]:
    made: list[CuttingProxy] = []

    def factory(upstream: tuple[str, int]) -> CuttingProxy:
        proxy = CuttingProxy(upstream)
        made.append(proxy)
        return proxy

    yield factory  # type: ignore[misc]
    for proxy in made:
        proxy.close()
