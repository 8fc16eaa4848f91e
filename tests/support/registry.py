"""Real OCI registries for tests: Debian's ``docker-registry`` (CNCF distribution 2.8).

Fixtures (function-scoped / session-scoped):
  registry            session_registry            plain HTTP, no auth
  registry_htpasswd   session_registry_htpasswd   Basic auth (htpasswd -B), SA-token-like password
  registry_token      session_registry_token      Bearer tokens from an in-test token server
  registry_tls        session_registry_tls        HTTPS, self-signed CA (``ca_file``)
  registry_launcher   (session) ``start(kind, tls=...)`` for any other combination
  base_image          (session) busybox base image in ``session_registry`` and as OCI layout

Each registry yields a ``RegistryInstance``. Upload accounting comes from the registry's
own access log (one line per request, written before the response is sent, so it is
complete when the client has its answer):

    mark = reg.mark()
    ... push ...
    assert reg.bytes_uploaded(since=mark) == 0       # sizes of blobs committed by upload
    assert reg.upload_requests(since=mark) == []     # no PATCH/PUT body was sent at all

Registries start in ~0.1 s; they are stopped by pid (SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from modelcar_builder.oci.image import platform_entry
from tests.support.ports import free_port, stop_server
from tests.support.waiting import wait_until

HTTP_SECRET = "modelcar-test-http-secret"  # fixed: resumable uploads survive a restart
SA_USERNAME = "serviceaccount"
TOKEN_SERVICE = "modelcar-test-registry"
TOKEN_ISSUER = "modelcar-test-issuer"
# distribution 2.8 accepts a token up to this long past its exp (token.Leeway).
DISTRIBUTION_LEEWAY = 60
_START_TIMEOUT = 10.0
_REGISTRY_BIN = "docker-registry"
_BUSYBOX = Path("/bin/busybox")
_BUSYBOX_LINKS = (
    *("sh", "ln", "sleep", "ls", "cat", "echo", "test", "[", "mkdir", "rm", "cp", "mv"),
    *("env", "true", "false", "readlink", "find", "wc", "head", "tail", "sha256sum", "tar"),
    *("id", "stat", "du", "df", "grep", "sed"),
)


# -- PKI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Key material made once per session with openssl."""

    ca_cert: Path  # self-signed CA; clients trust it via ca_file
    server_cert: Path  # 127.0.0.1 / localhost, signed by ca_cert
    server_key: Path
    token_cert: Path  # registry's rootcertbundle; token server signs with token_key
    token_key: Path


def _openssl(*args: str, cwd: Path, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, input=stdin, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def make_pki(directory: Path) -> Pki:
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=modelcar test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
        cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3", "-out", "server.crt", "-extfile", "server.ext",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
        "-keyout", "token.key", "-out", "token.crt", "-subj", "/CN=modelcar test token issuer",
        cwd=d,
    )  # fmt: skip
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "token.crt", d / "token.key")


def sa_like_token(namespace: str = "models", account: str = "pipeline") -> str:
    """A ~900-char string shaped like an OpenShift service-account JWT.

    Random from its first bytes on (the ``kid``): bcrypt (htpasswd -B) only compares the
    first 72 bytes, so two such tokens must differ early to be told apart."""
    now = int(time.time())
    header = {"alg": "RS256", "kid": secrets.token_urlsafe(32)}
    payload = {
        "aud": ["https://kubernetes.default.svc"],
        "exp": now + 31536000,
        "iat": now,
        "iss": "https://kubernetes.default.svc",
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": f"{account}-build-pod-x7k2p", "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
            "warnafter": now + 3607,
        },
        "nbf": now,
        "sub": f"system:serviceaccount:{namespace}:{account}",
    }
    parts = [_b64url(json.dumps(p).encode()) for p in (header, payload)]
    token = ".".join([*parts, _b64url(secrets.token_bytes(200))])
    return token


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- token server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    account: str
    scopes: tuple[str, ...]
    expires_in: int  # what the client was told
    lifetime: int  # how long the registry accepts it
    issued_at: float
    token: str = field(default="", repr=False)


class TokenServer:
    """distribution's token protocol: ``GET /token?service=&scope=`` with Basic creds,
    answers a JWT signed with the key the registry trusts (x5c header).

    ``lifetime`` is how long the registry accepts a token; ``expires_in`` what the client
    is told (defaults to ``lifetime``). Set them apart to force the 401-then-refresh path.
    """

    def __init__(self, pki: Pki, users: dict[str, str], lifetime: int = 60) -> None:
        self._pki = pki
        self._users = dict(users)
        self._allowed: dict[str, tuple[str, ...]] = {}  # user -> actions; absent: all
        self.lifetime = lifetime
        self.expires_in: int | None = None
        self.issued: list[IssuedToken] = []
        self.refused = 0
        self._x5c = base64.b64encode(
            _openssl("x509", "-in", str(pki.token_cert), "-outform", "DER", cwd=pki.ca_cert.parent)
        ).decode("ascii")
        self._listen(0)
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def _listen(self, port: int) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        stop_server(self._server)

    def start(self) -> None:
        """Listen again on the same port (the realm the registry names), after stop()."""
        self._listen(int(urlsplit(self.realm).port or 0))

    def add_user(self, username: str, password: str, actions: tuple[str, ...] = ("pull",)) -> None:
        """Another account, whose tokens grant at most ``actions`` (default: pull only, a
        read-only robot account); the registry then refuses its pushes."""
        self._users[username] = password
        self._allowed[username] = actions

    def set_lifetime(self, lifetime: int, expires_in: int | None = None) -> None:
        self.lifetime, self.expires_in = lifetime, expires_in

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._serve(self)

            def log_message(self, *args: object) -> None:
                pass  # keep pytest output clean

        return Handler

    def _serve(self, req: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        query = parse_qs(url.query)
        account = self._check_basic(req.headers.get("Authorization", ""))
        if url.path != "/token" or query.get("service") != [TOKEN_SERVICE]:
            self._reply(req, 400, {"errors": [{"code": "UNSUPPORTED", "message": "bad request"}]})
            return
        if account is None:
            self.refused += 1
            self._reply(req, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]})
            return
        scopes = tuple(query.get("scope", []))
        lifetime = self.lifetime
        expires_in = self.expires_in if self.expires_in is not None else lifetime
        token = self._sign(account, scopes, lifetime)
        self.issued.append(IssuedToken(account, scopes, expires_in, lifetime, time.time(), token))
        self._reply(req, 200, {"token": token, "access_token": token, "expires_in": expires_in})

    def _check_basic(self, header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        ok = user in self._users and secrets.compare_digest(self._users[user], password)
        return user if ok else None

    def _sign(self, account: str, scopes: tuple[str, ...], lifetime: int) -> str:
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": account,
            "aud": TOKEN_SERVICE,
            # The registry adds DISTRIBUTION_LEEWAY to exp; subtract it so a token really
            # dies after `lifetime` seconds (what a short-lived-token test needs).
            "exp": now + lifetime - DISTRIBUTION_LEEWAY,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [_access(s, self._allowed.get(account)) for s in scopes if s.count(":") >= 2],
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = ".".join(_b64url(json.dumps(p).encode()) for p in (header, claims))
        sig = _openssl(
            "dgst", "-sha256", "-sign", str(self._pki.token_key),
            cwd=self._pki.ca_cert.parent, stdin=signing_input.encode(),
        )  # fmt: skip
        return f"{signing_input}.{_b64url(sig)}"

    @staticmethod
    def _reply(req: http.server.BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def _access(scope: str, allowed: tuple[str, ...] | None = None) -> dict[str, object]:
    """``repository:org/name:pull,push`` → the claim entry; grants what was asked, or of
    it only the ``allowed`` actions."""
    kind, rest = scope.split(":", 1)
    name, _, actions = rest.rpartition(":")
    wanted = [a for a in actions.split(",") if a and (allowed is None or a in allowed)]
    return {"type": kind, "name": name, "actions": wanted}


# -- registry process -----------------------------------------------------------------------

_ACCESS_RE = re.compile(
    r'^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)
_UPLOAD_PATH_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<uuid>[^/]*)$")


@dataclass(frozen=True)
class AccessEntry:
    method: str
    path: str  # without query
    query: dict[str, str]
    status: int
    response_bytes: int


@dataclass(frozen=True)
class CommittedBlob:
    repo: str
    digest: str
    size: int


@dataclass
class RegistryInstance:
    kind: str  # "plain" | "htpasswd" | "token"
    host: str  # "127.0.0.1:PORT"
    url: str  # "http(s)://127.0.0.1:PORT"
    port: int
    workdir: Path
    storage_dir: Path
    config_file: Path
    access_log: Path  # registry stdout: one combined-format line per request
    app_log: Path  # registry stderr: JSON lines
    pid: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    token_server: TokenServer | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")

    @property
    def plain_http(self) -> bool:
        return not self.tls

    def refuses(self, token: str) -> bool:
        """Whether the registry answers 401 to ``GET /v2/`` with this bearer token."""
        import requests

        verify = str(self.ca_file) if self.tls and self.ca_file else True
        headers = {"Authorization": f"Bearer {token}"}
        return (
            requests.get(f"{self.url}/v2/", headers=headers, verify=verify, timeout=10).status_code
            == 401
        )

    def wait_expired(self, issued: IssuedToken, client_too: bool = True) -> None:
        """Until the registry refuses ``issued`` and, with ``client_too``, the client is
        past the ``expires_in`` it was told as well: an event, not a guessed sleep."""

        def dead() -> bool:
            told = not client_too or time.time() >= issued.issued_at + issued.expires_in
            return told and self.refuses(issued.token)

        wait_until(dead, f"token of {issued.account} ({issued.lifetime} s) to expire", 30, 0.1)

    # process control

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        # REGISTRY_* would override the config (REGISTRY_AUTH_FILE is a containers var!).
        with open(self.access_log, "ab") as out, open(self.app_log, "ab") as err:
            self._proc = subprocess.Popen(
                [_REGISTRY_BIN, "serve", str(self.config_file)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        _wait_listening(self)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash would (for interruption tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Same port, storage and http.secret: in-progress uploads stay resumable."""
        self.stop()
        self.start()

    # accounting

    def entries(self) -> list[AccessEntry]:
        out = []
        text = self.access_log.read_text(errors="replace") if self.access_log.exists() else ""
        for line in text.splitlines():
            m = _ACCESS_RE.match(line)
            if not m:
                continue
            parts = urlsplit(m["uri"])
            out.append(
                AccessEntry(
                    method=m["method"],
                    path=parts.path,
                    query=dict(parse_qsl(parts.query)),
                    status=int(m["status"]),
                    response_bytes=0 if m["size"] == "-" else int(m["size"]),
                )
            )
        return out

    def mark(self) -> int:
        """A position in the access log; pass it as ``since=`` to the counters."""
        return len(self.entries())

    def requests(
        self, since: int = 0, method: str | None = None, path_contains: str = ""
    ) -> list[AccessEntry]:
        return [
            e
            for e in self.entries()[since:]
            if (method is None or e.method == method) and path_contains in e.path
        ]

    def count_requests(self, since: int = 0, method: str | None = None) -> int:
        return len(self.requests(since, method))

    def upload_requests(self, since: int = 0) -> list[AccessEntry]:
        """PATCH and PUT requests on upload sessions: every request that carried blob bytes."""
        return [
            e
            for e in self.entries()[since:]
            if e.method in ("PATCH", "PUT") and _UPLOAD_PATH_RE.match(e.path)
        ]

    def committed_blobs(self, since: int = 0) -> list[CommittedBlob]:
        """Blobs completed by an upload (the final ``PUT ?digest=`` answered 201)."""
        out = []
        for e in self.entries()[since:]:
            m = _UPLOAD_PATH_RE.match(e.path)
            if e.method == "PUT" and e.status == 201 and m and "digest" in e.query:
                digest = e.query["digest"]
                out.append(CommittedBlob(m["repo"], digest, self.blob_file(digest).stat().st_size))
        return out

    def bytes_uploaded(self, since: int = 0) -> int:
        """Sum of the sizes of blobs committed by upload since ``since`` (mounted or
        skipped blobs count 0; bytes of aborted attempts are not included)."""
        return sum(b.size for b in self.committed_blobs(since))

    def mounts(self, since: int = 0) -> list[AccessEntry]:
        return [
            e
            for e in self.entries()[since:]
            if e.method == "POST" and e.status == 201 and "mount" in e.query
        ]

    def blob_file(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def write_authfile(self, path: Path) -> Path:
        """A containers auth.json (mode 0600) for this registry's user, for skopeo/buildah."""
        entries = {}
        if self.username is not None and self.password is not None:
            raw = f"{self.username}:{self.password}".encode()
            entries[self.host] = {"auth": base64.b64encode(raw).decode("ascii")}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"auths": entries}, fh)
        return path


def _wait_listening(reg: RegistryInstance) -> None:
    def answers() -> bool:
        proc = reg._proc
        if proc is not None and proc.poll() is not None:
            tail = reg.app_log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"docker-registry exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            return _v2_answers(reg)
        return False

    wait_until(answers, f"docker-registry to answer on {reg.url}/v2/", _START_TIMEOUT, 0.01)


def _v2_answers(reg: RegistryInstance) -> bool:
    with socket.create_connection(("127.0.0.1", reg.port), timeout=1) as sock:
        conn: socket.socket | ssl.SSLSocket = sock
        if reg.tls:
            ctx = ssl.create_default_context(cafile=str(reg.ca_file))
            conn = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        conn.sendall(b"GET /v2/ HTTP/1.0\r\nHost: " + reg.host.encode() + b"\r\n\r\n")
        return conn.recv(12).startswith(b"HTTP/1.")


class RegistryLauncher:
    """Starts registries under ``base_dir``; stops every one it started at ``close()``."""

    def __init__(self, base_dir: Path, pki: Pki) -> None:
        self.base_dir = base_dir
        self.pki = pki
        self._started: list[RegistryInstance] = []
        self._htpasswd_cache: dict[tuple[str, str], str] = {}

    def start(
        self,
        kind: str = "plain",
        *,
        tls: bool = False,
        username: str = SA_USERNAME,
        password: str | None = None,
        token_lifetime: int = 60,
    ) -> RegistryInstance:
        if kind not in ("plain", "htpasswd", "token"):
            raise ValueError(f"unknown registry kind {kind!r}")
        workdir = Path(
            os.path.realpath(
                self.base_dir / f"{kind}{'-tls' if tls else ''}-{uuid.uuid4().hex[:8]}"
            )
        )
        workdir.mkdir(parents=True)
        if kind != "plain" and password is None:
            password = sa_like_token()
        for _ in range(3):  # a free port can be taken between probe and bind
            reg = self._configure(workdir, kind, tls, username, password, token_lifetime)
            try:
                reg.start()
            except RuntimeError as exc:
                if reg.token_server:
                    reg.token_server.stop()
                if "address already in use" in str(exc):
                    continue
                raise
            self._started.append(reg)
            return reg
        raise RuntimeError("could not find a free port for docker-registry")

    def stop(self, reg: RegistryInstance, remove: bool = True) -> None:
        reg.stop()
        if reg.token_server:
            reg.token_server.stop()
        if reg in self._started:
            self._started.remove(reg)
        if remove:
            shutil.rmtree(reg.workdir, ignore_errors=True)

    def close(self) -> None:
        for reg in list(self._started):
            self.stop(reg, remove=False)

    def _configure(
        self,
        workdir: Path,
        kind: str,
        tls: bool,
        username: str,
        password: str | None,
        token_lifetime: int,
    ) -> RegistryInstance:
        port = free_port()
        storage = workdir / "storage"
        storage.mkdir(exist_ok=True)
        http_cfg: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": HTTP_SECRET}
        if tls:
            http_cfg["tls"] = {
                "certificate": str(self.pki.server_cert),
                "key": str(self.pki.server_key),
            }
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_cfg,
            "health": {"storagedriver": {"enabled": False}},
        }
        token_server = None
        if kind == "htpasswd":
            assert password is not None
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(self._htpasswd_line(username, password))
            config["auth"] = {"htpasswd": {"realm": "modelcar-test", "path": str(htpasswd)}}
        elif kind == "token":
            assert password is not None
            token_server = TokenServer(self.pki, {username: password}, token_lifetime)
            config["auth"] = {
                "token": {
                    "realm": token_server.realm,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(self.pki.token_cert),
                }
            }
        config_file = workdir / "config.yml"
        config_file.write_text(json.dumps(config, indent=1))  # YAML is a superset of JSON
        return RegistryInstance(
            kind=kind,
            host=f"127.0.0.1:{port}",
            url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            port=port,
            workdir=workdir,
            storage_dir=storage,
            config_file=config_file,
            access_log=workdir / "access.log",
            app_log=workdir / "registry.log",
            username=username if kind != "plain" else None,
            password=password if kind != "plain" else None,
            ca_file=self.pki.ca_cert if tls else None,
            token_server=token_server,
        )

    def _htpasswd_line(self, username: str, password: str) -> str:
        key = (username, password)
        if key not in self._htpasswd_cache:
            # -i: password on stdin, never on argv; -B: bcrypt (distribution needs it).
            # htpasswd refuses passwords over 256 bytes, and bcrypt only ever reads the
            # first 72: hashing those 72 gives the very hash of the whole token.
            proc = subprocess.run(
                ["htpasswd", "-niB", "-C", "4", username],
                input=password.encode()[:72],
                capture_output=True,
                check=True,
            )
            self._htpasswd_cache[key] = proc.stdout.decode().strip() + "\n"
        return self._htpasswd_cache[key]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("registry-pki"))


@pytest.fixture(scope="session")
def registry_launcher(
    tmp_path_factory: pytest.TempPathFactory, registry_pki: Pki
) -> Iterator[RegistryLauncher]:
    launcher = RegistryLauncher(tmp_path_factory.mktemp("registries"), registry_pki)
    yield launcher
    launcher.close()


@contextlib.contextmanager
def _running(
    launcher: RegistryLauncher, kind: str, tls: bool = False, remove: bool = True
) -> Iterator[RegistryInstance]:
    reg = launcher.start(kind, tls=tls)
    try:
        yield reg
    finally:
        launcher.stop(reg, remove=remove)


@pytest.fixture
def registry(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "plain") as reg:
        yield reg


@pytest.fixture
def registry_htpasswd(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "htpasswd") as reg:
        yield reg


@pytest.fixture
def registry_token(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "token") as reg:
        yield reg


@pytest.fixture
def registry_tls(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "plain", tls=True) as reg:
        yield reg


@pytest.fixture(scope="session")
def session_registry(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "plain") as reg:
        yield reg


@pytest.fixture(scope="session")
def session_registry_htpasswd(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "htpasswd") as reg:
        yield reg


@pytest.fixture(scope="session")
def session_registry_token(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "token") as reg:
        yield reg


@pytest.fixture(scope="session")
def session_registry_tls(registry_launcher: RegistryLauncher) -> Iterator[RegistryInstance]:
    with _running(registry_launcher, "plain", tls=True) as reg:
        yield reg


# -- base image -----------------------------------------------------------------------------


def private_containers_env(directory: Path) -> dict[str, str]:
    """Environment for buildah/skopeo that keeps all their state under ``directory``.

    As root, containers/image writes its blob-info cache to /var/lib/containers/cache no
    matter what --root says; the only knob is to look rootless (_CONTAINERS_ROOTLESS_UID)
    with _CONTAINERS_USERNS_CONFIGURED set so buildah does not re-exec into a user
    namespace. The cache then goes to $XDG_DATA_HOME. We stay real root, so chown works."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REGISTRY_", "CONTAINERS_", "BUILDAH_", "XDG_"))
    }
    for sub in ("data", "config", "run", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        XDG_DATA_HOME=str(directory / "data"),
        XDG_CONFIG_HOME=str(directory / "config"),
        XDG_RUNTIME_DIR=str(directory / "run"),
        TMPDIR=str(directory / "tmp"),
    )
    if os.geteuid() == 0:
        env.update(_CONTAINERS_USERNS_CONFIGURED="done", _CONTAINERS_ROOTLESS_UID="4242")
    return env


@dataclass(frozen=True)
class BaseImage:
    registry: RegistryInstance
    repository: str  # "base/busybox"
    tag: str
    digest: str  # manifest digest in `registry`
    ref: str  # "127.0.0.1:PORT/base/busybox:latest"
    docker_ref: str  # "docker://127.0.0.1:PORT/base/busybox:latest"
    oci_dir: Path
    oci_ref: str  # "oci:/…/layout:latest"
    env: dict[str, str] = field(repr=False)  # private containers env used to build it

    def copy_to(
        self, reg: RegistryInstance, repository: str = "base/busybox", tag: str = "latest"
    ) -> str:
        """Copy the base into another test registry; returns ``host/repo:tag``."""
        dest = f"{reg.host}/{repository}:{tag}"
        tmp = Path(self.env["TMPDIR"]) / f"auth-{uuid.uuid4().hex[:8]}.json"
        reg.write_authfile(tmp)
        try:
            _run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-authfile", str(tmp),
                 self.oci_ref, f"docker://{dest}"],
                self.env,
            )  # fmt: skip
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def resolve_platform(index_body: bytes, platform: str = "linux/amd64") -> str:
    """The manifest digest for ``os/arch[/variant]`` in raw index bytes. Only tests want
    bytes in and a digest out; the choosing is the engines' own (``select_platform``)."""
    return str(platform_entry(json.loads(index_body), tuple(platform.split("/")))["digest"])


def _run(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def build_base_image(reg: RegistryInstance, workdir: Path) -> BaseImage:
    """busybox-static + links, no Entrypoint/Cmd, committed with buildah from scratch."""
    env = private_containers_env(workdir / "state")
    rootfs = workdir / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(_BUSYBOX, rootfs / "bin" / "busybox")
    for name in _BUSYBOX_LINKS:
        (rootfs / "bin" / name).symlink_to("busybox")
    buildah = [
        "buildah",
        "--root", str(workdir / "storage"),
        "--runroot", str(workdir / "runroot"),
        "--storage-driver", "vfs",
    ]  # fmt: skip
    repository, tag = "base/busybox", "latest"
    ref = f"{reg.host}/{repository}:{tag}"
    ctr = _run([*buildah, "from", "--quiet", "scratch"], env).strip()
    try:
        _run([*buildah, "copy", "--quiet", ctr, str(rootfs), "/"], env)
        _run([*buildah, "config", "--env", "PATH=/bin", "--os", "linux", "--arch", "amd64", ctr],
             env)  # fmt: skip
        _run(
            [*buildah, "commit", "--quiet", "--timestamp", "0", "--tls-verify=false",
             ctr, f"docker://{ref}"],
            env,
        )  # fmt: skip
    finally:
        _run([*buildah, "rm", ctr], env)
    oci_dir = workdir / "oci-layout"
    oci_ref = f"oci:{oci_dir}:{tag}"
    _run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", oci_ref], env)
    inspect = ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}"]
    digest = _run([*inspect, f"docker://{ref}"], env).strip()
    return BaseImage(
        registry=reg,
        repository=repository,
        tag=tag,
        digest=digest,
        ref=ref,
        docker_ref=f"docker://{ref}",
        oci_dir=oci_dir,
        oci_ref=oci_ref,
        env=env,
    )


@pytest.fixture(scope="session")
def base_image(
    session_registry: RegistryInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BaseImage]:
    workdir = tmp_path_factory.mktemp("base-image")
    image = build_base_image(session_registry, workdir)
    # The image lives in the registry and the layout; the build storage is not needed.
    shutil.rmtree(workdir / "storage", ignore_errors=True)
    shutil.rmtree(workdir / "runroot", ignore_errors=True)
    yield image
    shutil.rmtree(workdir, ignore_errors=True)
