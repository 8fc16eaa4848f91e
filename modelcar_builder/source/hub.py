"""A Hugging Face Hub repo as a snapshot pinned to one commit.

huggingface_hub does the metadata call, auth headers and error classification. It reads
HF_ENDPOINT once at import time, so the endpoint is read here per call and passed in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors surface as-is
import requests
import tenacity
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers

from modelcar_builder import __version__
from modelcar_builder.errors import (
    AccessDenied,
    DownloadFailed,
    IntegrityError,
    RevisionNotFound,
    SourceNotFound,
    UsageError,
)
from modelcar_builder.selection import Selection, select_files
from modelcar_builder.settings import environment
from modelcar_builder.snapshot import FileEntry, Snapshot
from modelcar_builder.source.fetch_options import READ_TIMEOUT
from modelcar_builder.source.http import rate_limit_wait

DEFAULT_ENDPOINT = "https://huggingface.co"
METADATA_ATTEMPTS = 3  # one lost or stalled answer, or a 5xx blip, must not end a build
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})

log = logging.getLogger("modelcar.source.hub")


@dataclass(frozen=True)
class HubAccess:
    """Where the Hub is and how to authenticate. ``token`` is never printed."""

    endpoint: str
    token: str | None = None
    token_source: str = "none"
    # huggingface_hub's own client waits forever by default: a Hub (or proxy) that takes
    # the connection and never answers would hang the build before its first byte.
    timeout: float = READ_TIMEOUT

    def __repr__(self) -> str:  # keep the token out of any traceback or log
        return f"HubAccess(endpoint={self.endpoint!r}, token_source={self.token_source!r})"

    def file_url(self, repo_id: str, path: str, commit: str) -> str:
        return hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)

    def headers(self) -> dict[str, str]:
        return build_hf_headers(
            token=self.token or False,
            library_name="modelcar-builder",
            library_version=__version__,
        )


def hub_access(token_file: str | None = None, env: Mapping[str, str] | None = None) -> HubAccess:
    env = environment() if env is None else env
    endpoint = env.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read --hf-token-file {token_file}: {exc.strerror}",
                hint="pass a readable file that holds only the Hub token",
            ) from None
        return HubAccess(endpoint, token or None, f"--hf-token-file {token_file}")
    if env.get("HF_TOKEN"):
        return HubAccess(endpoint, env["HF_TOKEN"].strip(), "HF_TOKEN")
    return HubAccess(endpoint, None, "none")


def hub_snapshot(
    repo_id: str, revision: str | None, selection: Selection, access: HubAccess
) -> Snapshot:
    """Resolve REVISION to a commit and list that commit's files, in one metadata call."""
    api = HfApi(endpoint=access.endpoint, library_name="modelcar-builder")
    try:
        info = _retrying(f"the Hub's metadata call for {repo_id}")(
            api.model_info,
            repo_id,
            revision=revision,
            files_metadata=True,
            token=access.token or False,
            timeout=access.timeout,
        )
    except hf_errors.GatedRepoError:
        raise AccessDenied(
            f"{repo_id} is gated and the Hub refused access (token: {access.token_source})"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise RevisionNotFound(f"revision {revision!r} not found in {repo_id}") from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceNotFound(
            f"Hub repo {repo_id} not found at {access.endpoint} (or private; token: "
            f"{access.token_source})"
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        raise _http_error(repo_id, access, exc) from None
    except (httpx2.HTTPError, OSError) as exc:  # transport errors: DNS, refused, timeouts
        raise _unreachable(access, exc) from None
    commit = (info.sha or "").lower()
    if getattr(info, "gated", False) and info.siblings:
        # Gated repos show their metadata to anyone and refuse only the bytes: probe one
        # file now so a missing or wrong token fails in seconds, not after a long plan.
        _probe_access(repo_id, commit or revision or "main", info.siblings[0].rfilename, access)
    if len(commit) != 40:
        raise DownloadFailed(f"the Hub returned no commit for {repo_id}@{revision or 'main'}")
    entries = [_entry(s) for s in info.siblings or []]
    kept, skipped = select_files(entries, selection)
    return Snapshot(
        kind="hub",
        location=repo_id,
        revision=revision,
        commit=commit,
        files=kept,
        skipped=skipped,
    )


def _status(exc: BaseException | None) -> int | None:
    """The HTTP status of a huggingface_hub error (None for a transport error)."""
    return getattr(getattr(exc, "response", None), "status_code", None)


class _RetryableAnswer(Exception):
    """A 429 or 5xx to one of our own small GETs, kept with its response (for the
    rate-limit headers and the message)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _transient(exc: BaseException) -> bool:
    """Worth another try: refused, reset, cut or timed out (transport), or a 429/5xx."""
    if isinstance(exc, (httpx2.TransportError, requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, _RetryableAnswer)):
        return True  # a body cut mid-way, or our own GET's 429/5xx
    return isinstance(exc, hf_errors.HfHubHTTPError) and _status(exc) in RETRIED_STATUSES


_backoff = tenacity.wait_exponential(multiplier=1, max=8)


def _wait(state: tenacity.RetryCallState) -> float:
    """A 429 is waited out as its Retry-After / RateLimit header asks (the same parser
    as the downloads); anything else backs off 1 s, then 2 s."""
    exc = state.outcome.exception() if state.outcome else None
    if _status(exc) == 429:
        return rate_limit_wait(exc.response)  # type: ignore[union-attr]
    return _backoff(state)


def _retrying(what: str) -> tenacity.Retrying:
    """huggingface_hub does not retry its metadata calls, and our own small GETs are one
    request: every Hub metadata read (model info, gated probe, shard index) gets a few
    tries for what is worth a retry; the answer a retry cannot change (404, 401) comes
    at once. ``what`` names the read in the one warning line per retry."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed (%s); retrying in %.0f s (try %d of %d)",
            what,
            _describe(exc),
            state.next_action.sleep if state.next_action else 0,
            state.attempt_number + 1,
            METADATA_ATTEMPTS,
        )

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(METADATA_ATTEMPTS),
        wait=_wait,
        retry=tenacity.retry_if_exception(_transient),
        before_sleep=before_sleep,
        reraise=True,
    )


def _describe(exc: BaseException | None) -> str:
    status = _status(exc)
    return f"HTTP {status}" if status else type(exc).__name__


def _probe_access(repo_id: str, revision: str, path: str, access: HubAccess) -> None:
    try:
        _retrying(f"the Hub's access check on {repo_id}")(
            get_hf_file_metadata,
            access.file_url(repo_id, path, revision),
            token=access.token or False,
            endpoint=access.endpoint,
            timeout=access.timeout,
        )
    except (hf_errors.GatedRepoError, hf_errors.HfHubHTTPError) as exc:
        status = _status(exc)
        if isinstance(exc, hf_errors.GatedRepoError) or status in (401, 403):
            raise AccessDenied(
                f"{repo_id} is gated and the Hub refused access (token: {access.token_source})"
            ) from None
        raise _http_error(repo_id, access, exc) from None
    except (httpx2.HTTPError, OSError) as exc:
        raise _unreachable(access, exc) from None


def _unreachable(access: HubAccess, exc: BaseException) -> DownloadFailed:
    return DownloadFailed(
        f"cannot reach the Hub at {access.endpoint}: {type(exc).__name__}",
        hint="check network access and HF_ENDPOINT; rerun to continue",
    )


def _entry(sibling) -> FileEntry:
    if sibling.lfs is not None:
        return FileEntry(path=sibling.rfilename, size=sibling.lfs.size, sha256=sibling.lfs.sha256)
    return FileEntry(path=sibling.rfilename, size=sibling.size or 0, blob_id=sibling.blob_id)


def _http_error(repo_id: str, access: HubAccess, exc: Exception) -> Exception:
    status = _status(exc)
    if status in (401, 403):
        return AccessDenied(
            f"the Hub refused access to {repo_id} (HTTP {status}; token: {access.token_source})"
        )
    return DownloadFailed(f"Hub metadata request for {repo_id} failed (HTTP {status})")


def read_small_file(access: HubAccess, repo_id: str, commit: str, entry: FileEntry) -> bytes:
    """One small file's bytes into memory, checked against its id (for shard indexes,
    read while planning: before any shard moves). Retried like the metadata call."""
    try:
        data = _retrying(f"reading {entry.path} from the Hub")(
            _get_small, access, repo_id, commit, entry
        )
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
        raise DownloadFailed(
            f"cannot read {entry.path} from the Hub: {type(exc).__name__}",
            hint="check network access and HF_ENDPOINT; rerun to continue",
        ) from None
    except _RetryableAnswer as exc:
        raise DownloadFailed(
            f"reading {entry.path} from the Hub failed (HTTP {exc.response.status_code})"
        ) from None
    if entry.sha256:
        got = hashlib.sha256(data).hexdigest()
    else:
        got = hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
    if got != (entry.sha256 or entry.blob_id):
        raise IntegrityError(f"{entry.path}: content does not match the Hub's id")
    return data


def _get_small(access: HubAccess, repo_id: str, commit: str, entry: FileEntry) -> bytes:
    """One GET of the whole file; a 429/5xx raises _RetryableAnswer for the retry loop."""
    url = access.file_url(repo_id, entry.path, commit)
    resp = requests.get(url, headers=access.headers(), timeout=(10, access.timeout))
    if resp.status_code in (401, 403):
        raise AccessDenied(f"the Hub refused {entry.path} (token: {access.token_source})")
    if resp.status_code in RETRIED_STATUSES:
        raise _RetryableAnswer(resp)
    if resp.status_code != 200:
        raise DownloadFailed(f"reading {entry.path} from the Hub failed (HTTP {resp.status_code})")
    return resp.content  # a cut body raises ChunkedEncodingError/ConnectionError: retried
