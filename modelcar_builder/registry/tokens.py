"""Registry authentication: the ``WWW-Authenticate`` challenge, Basic and Bearer headers,
bearer tokens cached per scope and renewed before they expire, and the one
re-authentication round every request gets on a 401.

Facts this code is shaped by (docs/architecture.md §5):
- a streamed body cannot be replayed after a 401: such a request fails as Transient and
  the caller restarts it with a fresh stream and the new credential;
- Bearer tokens may live only 60 s: they are cached per scope with their expiry and
  refetched shortly before it, or after the registry rejects one.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import requests

from modelcar_builder.auth import Credentials
from modelcar_builder.errors import RegistryError, RegistryUnreachable
from modelcar_builder.registry.transport import (
    TLS_HINT,
    Body,
    TokenServerUnreachable,
    Transient,
    Transport,
    error_detail,
    reason,
    url_host,
    url_path,
)

_DEFAULT_TOKEN_TTL = 60  # distribution token spec: expires_in defaults to 60 s
_TOKEN_MARGIN = 15.0  # refresh a token this long before it expires (bounded by ttl/4)
_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')

Scopes = tuple[str, ...]


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" | "bearer"
    params: dict[str, str]


@dataclass
class Token:
    value: str = field(repr=False)
    expires_at: float  # time.monotonic() deadline
    margin: float


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None
    params = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM_RE.finditer(rest)}
    return Challenge(scheme, params)


def pull(repo: str) -> Scopes:
    return (f"repository:{repo}:pull",)


def push(repo: str) -> Scopes:
    return (f"repository:{repo}:pull,push",)


def _scope_key(scopes: Scopes) -> Scopes:
    return tuple(sorted(scopes))


class Authenticator:
    """Sends requests to the registry with the credential each one needs.

    Thread-safe: the auth state lock is held across a token fetch, so parallel uploads
    wait for one token instead of each fetching its own."""

    def __init__(self, http: Transport, creds: Credentials | None) -> None:
        self.creds = creds
        self._http = http
        self._base: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[Scopes, Token] = {}
        # Scopes a challenge asked for beyond ours (e.g. a mount source), per our scope key.
        self._extra_scopes: dict[Scopes, Scopes] = {}
        self._lock = threading.RLock()

    # -- requests --------------------------------------------------------------------------

    def send_checked(
        self,
        method: str,
        path: str,
        scopes: Scopes,
        *,
        ok: tuple[int, ...],
        allow: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
        data: Body = None,
        stream: bool = False,
    ) -> requests.Response:
        resp = self.send(method, path, scopes, headers=headers, data=data, stream=stream)
        return self._http.check(resp, method, path, ok=ok + allow)

    def send(
        self,
        method: str,
        path: str,
        scopes: Scopes,
        *,
        headers: dict[str, str] | None = None,
        data: Body = None,
        stream: bool = False,
        replayable: bool = True,
    ) -> requests.Response:
        """One request, with one re-authentication round on 401 when the body allows."""
        url = urljoin(self.base_url(), path)
        for round_ in range(2):
            auth = self.header(scopes)
            resp = self._http.request(method, url, {**(headers or {}), **auth}, data, stream)
            if resp.status_code != 401:
                return resp
            resp.close()
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if challenge is None:
                raise self._http.auth_error(
                    f"answered 401 to {method} {url_path(url)} with no challenge"
                )
            if round_ == 1 or (auth and challenge.scheme == "basic"):
                raise self._http.auth_error()
            self._learn(challenge, scopes, rejected=bool(auth))
            if not replayable:
                # The body iterator is spent; the caller restarts with a fresh stream.
                raise Transient(resp)
        raise self._http.auth_error()  # unreachable: the loop returns or raises

    def base_url(self) -> str:
        """``https://host`` or ``http://host``, decided once with a GET /v2/ whose 401
        challenge (if any) tells the first request how to authenticate."""
        if self._base is not None:
            return self._base
        with self._lock:
            if self._base is None:
                base, resp = self._http.probe()
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                if resp.status_code == 401 and challenge is not None:
                    self._challenge = challenge
                self._base = base
        return self._base

    # -- credentials -----------------------------------------------------------------------

    def header(self, scopes: Scopes) -> dict[str, str]:
        """The header to send, fetching a bearer token when ours is missing or expiring."""
        challenge = self._challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            if self.creds is None:
                return {}
            raw = f"{self.creds.username}:{self.creds.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        return {"Authorization": f"Bearer {self._token_for(scopes, challenge)}"}

    def _learn(self, challenge: Challenge, scopes: Scopes, rejected: bool) -> None:
        with self._lock:
            self._challenge = challenge
            if rejected:
                # The registry refused a token we thought valid (expired early, revoked).
                self._tokens.pop(_scope_key(scopes), None)
            wanted = challenge.params.get("scope")
            if wanted and challenge.scheme == "bearer":
                merged = tuple(dict.fromkeys((*scopes, *wanted.split(" "))))
                if merged != scopes:
                    self._tokens.pop(_scope_key(scopes), None)
                    self._extra_scopes[_scope_key(scopes)] = merged

    def _token_for(self, scopes: Scopes, challenge: Challenge) -> str:
        key = _scope_key(scopes)
        with self._lock:
            token = self._tokens.get(key)
            if token is None or time.monotonic() >= token.expires_at - token.margin:
                token = self._fetch_token(challenge, self._extra_scopes.get(key, scopes))
                self._tokens[key] = token
            return token.value

    # -- the token server ------------------------------------------------------------------

    def _fetch_token(self, challenge: Challenge, scopes: Scopes) -> Token:
        params = challenge.params
        realm = params.get("realm")
        if not realm:
            raise self._http.auth_error("sent a Bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        started = time.monotonic()
        resp = self._token_request(realm, query)
        if resp.status_code in (401, 403):
            raise self._http.auth_error()
        host = self._http.host
        if resp.status_code != 200:
            raise RegistryError(
                f"token server {url_host(realm)} of registry {host} answered "
                f"{resp.status_code}{error_detail(resp)}"
            )
        try:
            data = resp.json()
            value = data.get("token") or data["access_token"]
            ttl = float(data.get("expires_in") or _DEFAULT_TOKEN_TTL)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(
                f"token server {url_host(realm)} of registry {host} sent no usable token"
            ) from None
        self._http.hide(value)
        return Token(value, started + ttl, margin=min(_TOKEN_MARGIN, ttl / 4))

    def _token_request(self, realm: str, query: list[tuple[str, str]]) -> requests.Response:
        http = self._http
        http.count(token_requests=1)
        creds = self.creds
        try:
            with http.unverified_ok():
                if creds is not None and creds.identity_token:
                    # docker's OAuth2 refresh-token grant for "identitytoken" entries.
                    form = dict(query)
                    form["scope"] = " ".join(v for k, v in query if k == "scope")
                    form.update(
                        grant_type="refresh_token",
                        refresh_token=creds.identity_token,
                        client_id="modelcar-builder",
                    )
                    return http.session.post(
                        realm, data=form, verify=http.verify, timeout=http.timeout
                    )
                auth = (creds.username, creds.password) if creds is not None else None
                return http.session.get(
                    realm, params=query, auth=auth, verify=http.verify, timeout=http.timeout
                )
        except requests.exceptions.SSLError as exc:
            raise RegistryUnreachable(
                f"TLS handshake with token server {url_host(realm)} of registry "
                f"{http.host}: {reason(exc)}",
                hint=TLS_HINT,
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TokenServerUnreachable(
                f"cannot reach token server {url_host(realm)} of registry {http.host}: "
                f"{reason(exc)}"
            ) from None
