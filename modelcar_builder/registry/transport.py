"""HTTP to one registry host: the session, TLS verification, the https/http probe,
retries with backoff, and the mapping of every failure to the tool's errors.

Facts this code is shaped by (docs/architecture.md §5):
- ``REQUESTS_CA_BUNDLE`` overrides ``Session.verify``, so ``verify=`` goes on each request;
- messages name the host, the method and the URL path, never the query (an upload
  ``Location`` carries signed state) and never a secret: they pass through ``scrub``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3
from urllib3.exceptions import InsecureRequestWarning

from modelcar_builder import __version__
from modelcar_builder.errors import (
    BuildFailed,
    ModelcarError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)

# A child of "modelcar", the logger the CLI configures (prefix, --debug, --quiet).
log = logging.getLogger("modelcar.registry.transport")
_T = TypeVar("_T")
# A request body: bytes, or chunks sent as they come (a length-aware iterable or a generator).
Body = bytes | Iterable[bytes | memoryview] | None

_ERROR_BODY_MAX = 200
TLS_HINT = (
    "pass --ca-file with the CA that signed the registry certificate (in OpenShift the "
    "service CA), or --tls-verify=false for a test registry"
)


DEFAULT_RETRY_WINDOW = 120.0  # seconds: a rolling registry update takes 30-60 s


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for connection errors and 5xx answers; each retry re-opens the stream.

    Two budgets, because two failures look alike at first: a registry that never
    answered (a wrong host, a firewall) fails after ``attempts`` tries, in seconds; one
    that answered earlier in this run and went away (a restart, a rolling update) is
    retried for ``window`` seconds before the build gives up."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 10.0
    window: float = DEFAULT_RETRY_WINDOW


@dataclass
class TransferStats:
    """What this client did; the engine reports it, tests assert on it."""

    requests: int = 0  # HTTP requests to the registry (token server excluded)
    token_requests: int = 0
    bytes_uploaded: int = 0  # blob body bytes handed to the socket, retries included
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    retries: int = 0


class Transient(Exception):
    """A retryable registry answer (5xx, 429, or a 401 on a body we could not replay)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class TokenServerUnreachable(requests.ConnectionError):
    """The registry's token server did not answer. A ConnectionError, so a request whose
    credential it was fetching is retried like the registry's own (OpenShift's registry
    serves its tokens itself: a restart takes both away); the message names the server."""


class SourceFailed(Exception):
    """The caller's byte stream failed (not the registry connection). Its own type, so
    neither urllib3 (which would retry an OSError itself) nor requests wraps it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


# What a caller's byte stream may raise: file and network I/O, a closed file (ValueError),
# and our own errors (a file that changed size, a failed Hub download). Anything else is
# a bug and propagates as it is.
SOURCE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    ModelcarError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate does not fix itself
    if isinstance(exc, SourceFailed):
        # A network-backed source (e.g. streaming from the Hub) may recover; a bug not.
        return isinstance(exc.error, (OSError, requests.RequestException))
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, Transient))


class Transport:
    """The connection to one host: counted requests, retries, errors with secrets scrubbed.

    Thread-safe: counters take their own lock, never held across I/O."""

    def __init__(
        self,
        host: str,
        *,
        verify: bool | str,
        plain_http: bool | None,
        timeout: tuple[float, float],
        retry: RetryPolicy,
        session: requests.Session,
        creds_source: str,
        secrets: Iterable[str] = (),
    ) -> None:
        self.host = host
        self.verify = verify
        self.timeout = timeout
        self.session = session
        self.session.headers["User-Agent"] = f"modelcar-builder/{__version__}"
        self.stats = TransferStats()
        self._plain_http = plain_http
        self._retry = retry
        self._creds_source = creds_source
        self._secrets = set(secrets)
        self._stats_lock = threading.Lock()
        self._answered = False  # the registry answered once: later failures are outages

    def close(self) -> None:
        self.session.close()

    def count(self, **deltas: int) -> None:
        """Add to the named ``TransferStats`` counters."""
        with self._stats_lock:
            for name, n in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    # -- requests --------------------------------------------------------------------------

    @contextlib.contextmanager
    def unverified_ok(self) -> Iterator[None]:
        """With ``--tls-verify=false`` the user asked for it: no warning per request."""
        with warnings.catch_warnings():
            if self.verify is False:
                warnings.simplefilter("ignore", InsecureRequestWarning)
            yield

    def request(
        self, method: str, url: str, headers: dict[str, str], data: Body, stream: bool
    ) -> requests.Response:
        """One counted request, no auth, no retry."""
        self.count(requests=1)
        with self.unverified_ok():
            resp = self.session.request(
                method,
                url,
                headers=headers,
                # types-requests says Iterable[bytes]; requests/urllib3 send memoryview
                # chunks as well (a TarLayer yields views of its buffer): the stub is narrow.
                data=data,  # type: ignore[arg-type]
                stream=stream,
                verify=self.verify,  # per request: REQUESTS_CA_BUNDLE beats session.verify
                timeout=self.timeout,
                allow_redirects=True,
            )
        log.debug("%s %s -> %d", method, url_path(url), resp.status_code)
        if resp.status_code < 500:
            self._answered = True
        return resp

    def probe(self) -> tuple[str, requests.Response]:
        """``https://host`` or ``http://host`` and its (closed) answer to GET /v2/.

        ``plain_http=None`` means HTTPS, falling back to HTTP only when verification is
        off (podman's meaning of ``--tls-verify=false``)."""
        if self._plain_http:
            return self._probe_scheme("http")
        if self._plain_http is None and self.verify is False:
            # SSLError is a ConnectionError too: a plain-HTTP registry fails the handshake.
            with contextlib.suppress(requests.ConnectionError):
                return self._probe_scheme("https")
            return self._probe_scheme("http")
        return self._probe_scheme("https")

    def _probe_scheme(self, scheme: str) -> tuple[str, requests.Response]:
        base = f"{scheme}://{self.host}"
        resp = self.request("GET", f"{base}/v2/", {}, None, False)
        resp.close()
        return base, resp

    def check(
        self, resp: requests.Response, method: str, path: str, *, ok: tuple[int, ...]
    ) -> requests.Response:
        """``resp`` if its status is in ``ok``; else the error (or Transient) it means."""
        status = resp.status_code
        if status in ok:
            return resp
        if status >= 500 or status in (408, 429) or status == 401:
            resp.close()
            raise Transient(resp)
        if status == 403:
            raise self.auth_error(f"denied {method} {url_path(path)}")
        if status == 413:  # e.g. nginx's client_max_body_size (1 MiB in ingress-nginx)
            raise RegistryError(
                f"registry {self.host} (or a proxy in front of it) refused {method} "
                f"{url_path(path)}: the request body is too large (HTTP 413)",
                hint="raise the proxy's body-size limit (ingress-nginx: the annotation "
                'nginx.ingress.kubernetes.io/proxy-body-size: "0"), or send each layer in '
                "smaller requests: --upload chunked --chunk-size 1 (MiB per request)",
            )
        detail = error_detail(resp)
        raise RegistryError(
            self.scrub(
                f"registry {self.host} answered {status} to {method} {url_path(path)}{detail}"
            )
        )

    # -- retries and errors ----------------------------------------------------------------

    def retrying(self, fn: Callable[[], _T]) -> _T:
        policy = self._retry
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(policy.attempts)
        if self._answered:  # at least the attempts, and on until the window has passed
            stop = stop & tenacity.stop_after_delay(policy.window)
        retrying = tenacity.Retrying(
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.maximum),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=self._before_retry,
            reraise=True,
        )
        return retrying(fn)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.count(retries=1)
        exc = state.outcome.exception() if state.outcome else None
        if self._answered:
            budget = f"retrying for up to {self._retry.window:.0f} s (it answered before)"
        else:
            budget = f"retry {state.attempt_number} of {self._retry.attempts - 1}"
        log.warning("registry %s: %s; %s", self.host, self.scrub(describe(exc)), budget)

    @contextlib.contextmanager
    def errors(self, what: str | None = None) -> Iterator[None]:
        """Turn transport failures into the tool's errors, with secrets scrubbed."""
        suffix = f" while transferring {what}" if what else ""
        try:
            yield
        except ModelcarError:
            raise
        except SourceFailed as exc:
            if isinstance(exc.error, ModelcarError):
                raise exc.error from None
            raise BuildFailed(
                self.scrub(f"reading the data{suffix} failed: {describe(exc.error)}"),
                hint="check the workspace / source files and rerun",
            ) from None
        except Transient as exc:
            raise self._answer_error(exc.response, suffix) from None
        except TokenServerUnreachable as exc:
            raise RegistryUnreachable(self.scrub(str(exc))) from None
        except requests.exceptions.SSLError as exc:
            raise RegistryUnreachable(
                self.scrub(f"TLS handshake with registry {self.host} failed: {reason(exc)}"),
                hint=TLS_HINT,
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RegistryUnreachable(
                self.scrub(f"cannot reach registry {self.host}{suffix}: {reason(exc)}")
            ) from None
        except requests.RequestException as exc:  # broken stream, bad redirect, …
            raise RegistryError(
                self.scrub(f"request to registry {self.host} failed{suffix}: {reason(exc)}")
            ) from None

    def _answer_error(self, resp: requests.Response, suffix: str) -> ModelcarError:
        """The error for a retryable answer that retries did not overcome."""
        if resp.status_code == 401:
            return self.auth_error()
        return RegistryError(
            self.scrub(
                f"registry {self.host} answered {resp.status_code} to "
                f"{resp.request.method} {url_path(resp.request.url or '')}{suffix}"
                f"{error_detail(resp)}"
            ),
            hint="the registry is failing; check its logs and storage, then rerun",
        )

    def auth_error(self, what: str | None = None) -> RegistryAuthError:
        """Names where the credentials came from, never what they are."""
        detail = what or "refused the credentials"
        return RegistryAuthError(
            self.scrub(f"registry {self.host} {detail} ({self._creds_source})")
        )

    # -- secrets ---------------------------------------------------------------------------

    def hide(self, secret: str) -> None:
        """Scrub ``secret`` (e.g. a bearer token just issued) from every later message."""
        self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text


# -- message pieces ----------------------------------------------------------------------


def url_path(url: str) -> str:
    """Path only: the query of an upload URL carries signed state, not for messages."""
    return urlsplit(url).path or url


def url_host(url: str) -> str:
    return urlsplit(url).netloc or url


def error_detail(resp: requests.Response) -> str:
    """``: CODE message`` from a distribution error body, short."""
    try:
        err = resp.json()["errors"][0]
        text = f"{err.get('code', '')} {err.get('message', '')}".strip()
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return f": {text[:_ERROR_BODY_MAX]}" if text else ""


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, Transient):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, SourceFailed):
        return f"source failed: {describe(exc.error)}"
    if isinstance(exc, TokenServerUnreachable):
        return str(exc)  # names the token server, not the registry
    if isinstance(exc, requests.RequestException):
        return reason(exc)
    return str(exc) or type(exc).__name__


_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", None),
    ("WRONG_VERSION_NUMBER", "the server does not speak TLS (plain HTTP registry?)"),
    ("Connection refused", "connection refused"),
    ("Name or service not known", "DNS lookup failed"),
    ("nodename nor servname", "DNS lookup failed"),
    ("Temporary failure in name resolution", "DNS lookup failed"),
    ("No route to host", "no route to host"),
    ("Connection reset", "connection reset"),
    ("Broken pipe", "connection closed by the registry"),
    ("RemoteDisconnected", "connection closed by the registry"),
    ("timed out", "timed out"),
)


def reason(exc: BaseException) -> str:
    """A short reason from requests' nested exception text (it never holds a secret,
    since credentials travel only in headers)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        m = re.search(r"certificate verify failed: ([^(')\"]+)", text)
        return "certificate verify failed" + (f": {m.group(1).strip()}" if m else "")
    for needle, why in _REASONS:
        if needle in text and why:
            return why
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
