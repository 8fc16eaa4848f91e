"""RegistryClient and verify_push against real distribution 2.8 registries (no mocks)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelcar_builder.auth import Credentials
from modelcar_builder.errors import (
    BuildFailed,
    ImageNotFound,
    RegistryAuthError,
    RegistryUnreachable,
    VerificationFailed,
)
from modelcar_builder.oci import MEDIA_TYPE_INDEX as OCI_INDEX
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST as OCI_MANIFEST
from modelcar_builder.registry import (
    RegistryClient,
    RetryPolicy,
)
from modelcar_builder.verify import verify_push
from tests.support.logwatch import on_nth_warning
from tests.support.ports import free_port
from tests.support.registry import (
    BaseImage,
    RegistryInstance,
    private_containers_env,
    resolve_platform,
)

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=4, initial=0.05, maximum=0.2, window=1.0)
LABELS = {"org.opencontainers.image.source": "https://huggingface.co/org/tiny"}


def client_for(
    reg: RegistryInstance, creds: Credentials | None = None, **kwargs: object
) -> RegistryClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return RegistryClient(
        reg.host,
        creds,
        plain_http=True if reg.plain_http else None,
        ca_file=str(reg.ca_file) if reg.ca_file else None,
        **kwargs,  # type: ignore[arg-type]
    )


def creds_for(reg: RegistryInstance, source: str = "authfile /test/auth.json") -> Credentials:
    assert reg.username is not None and reg.password is not None
    return Credentials(reg.username, reg.password, source)


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def chunks_of(data: bytes, size: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    return lambda: (data[i : i + size] for i in range(0, len(data), size))


@dataclass
class TinyImage:
    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def tiny_image(
    text: str = "hello", labels: dict[str, str] | None = None, **cfg: object
) -> TinyImage:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("models/config.json")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    layer = buf.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": dict(LABELS if labels is None else labels), **cfg},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    return TinyImage(layer, config, manifest)


def push(client: RegistryClient, repo: str, image: TinyImage, tag: str = "v1") -> str:
    """The push protocol as the native engine does it: HEAD, upload what is missing, PUT."""
    for blob in (image.layer, image.config):
        if client.blob_size(repo, digest_of(blob)) is None:
            client.upload_blob(repo, digest_of(blob), len(blob), chunks_of(blob))
    return client.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)


def round_trip(reg: RegistryInstance, client: RegistryClient) -> None:
    image = tiny_image()
    mark = reg.mark()
    digest = push(client, "models/tiny", image)
    assert digest == image.digest
    assert reg.bytes_uploaded(since=mark) == len(image.layer) + len(image.config)
    assert client.bytes_uploaded == len(image.layer) + len(image.config)
    assert client.blob_size("models/tiny", digest_of(image.layer)) == len(image.layer)

    body, media_type, got = client.get_manifest("models/tiny", "v1")
    assert (body, media_type, got) == (image.manifest, OCI_MANIFEST, digest)
    assert b"".join(client.get_blob("models/tiny", digest_of(image.layer))) == image.layer
    assert client.mount_blob("other/repo", digest_of(image.layer), "models/tiny") is True
    assert client.blob_size("other/repo", digest_of(image.layer)) == len(image.layer)
    assert len(reg.mounts(since=mark)) == 1

    mark = reg.mark()
    assert push(client, "models/tiny", image) == digest  # a re-push uploads nothing
    assert reg.bytes_uploaded(since=mark) == 0
    assert reg.upload_requests(since=mark) == []


# -- plain, htpasswd, token, TLS round trips ------------------------------------------------


def test_round_trip_plain(registry: RegistryInstance) -> None:
    start = registry.mark()  # after the fixture's own readiness probe
    with client_for(registry) as client:
        client.ping()
        round_trip(registry, client)
        assert client.requests_made == registry.count_requests(since=start)
        assert client.mount_blob("x/y", "sha256:" + "0" * 64, "models/tiny") is False


def test_round_trip_htpasswd(session_registry_htpasswd: RegistryInstance) -> None:
    reg = session_registry_htpasswd
    with client_for(reg, creds_for(reg)) as client:
        client.ping()
        round_trip(reg, client)


def test_round_trip_token(session_registry_token: RegistryInstance) -> None:
    reg = session_registry_token
    with client_for(reg, creds_for(reg)) as client:
        client.ping()
        round_trip(reg, client)
        assert client.stats.token_requests >= 2  # per scope: push repo, mount source


def test_round_trip_tls(session_registry_tls: RegistryInstance) -> None:
    with client_for(session_registry_tls) as client:
        round_trip(session_registry_tls, client)


def test_tls_without_ca_is_unreachable_with_hint(session_registry_tls: RegistryInstance) -> None:
    client = RegistryClient(session_registry_tls.host, retry=FAST_RETRY)
    with pytest.raises(RegistryUnreachable) as info:
        client.blob_size("a/b", "sha256:" + "0" * 64)
    assert session_registry_tls.host in str(info.value)
    assert "certificate verify failed" in str(info.value)
    assert "--ca-file" in info.value.hint


def test_https_client_against_plain_http_registry(session_registry: RegistryInstance) -> None:
    with pytest.raises(RegistryUnreachable, match="TLS"):
        RegistryClient(session_registry.host, retry=FAST_RETRY).ping()
    # --tls-verify=false falls back to plain HTTP, as podman does.
    RegistryClient(session_registry.host, tls_verify=False, retry=FAST_RETRY).ping()


def test_connection_refused_names_registry(registry_launcher: object) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RegistryClient(f"127.0.0.1:{port}", plain_http=True, retry=FAST_RETRY)
    with pytest.raises(RegistryUnreachable) as info:
        client.ping()
    assert f"127.0.0.1:{port}" in str(info.value) and "connection refused" in str(info.value)


# -- auth failures never leak the secret ----------------------------------------------------


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_wrong_password_names_source_not_secret(
    kind: str,
    session_registry_htpasswd: RegistryInstance,
    session_registry_token: RegistryInstance,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = session_registry_htpasswd if kind == "htpasswd" else session_registry_token
    wrong = "eyJWRONG" + "w" * 900
    creds = Credentials("serviceaccount", wrong, "token file /var/run/secrets/tok")
    caplog.set_level(logging.DEBUG)
    client = client_for(reg, creds)
    with pytest.raises(RegistryAuthError) as info:
        client.ping()
    with pytest.raises(RegistryAuthError):
        client.upload_blob("a/b", digest_of(b"x"), 1, chunks_of(b"x"))
    message = str(info.value)
    assert "token file /var/run/secrets/tok" in message and reg.host in message
    assert "\n" not in message
    for text in (message, info.value.hint, repr(info.value), caplog.text, repr(creds)):
        assert "WRONG" not in text and "wwwwwwww" not in text


def test_no_credentials_message(session_registry_token: RegistryInstance) -> None:
    with pytest.raises(RegistryAuthError, match="no credentials found"):
        client_for(session_registry_token).ping()


# -- token lifetime -------------------------------------------------------------------------


def test_token_rejected_early_is_refetched(registry_token: RegistryInstance) -> None:
    """The registry rejects the token (expired) while the client still trusts it: the
    client must take the 401, fetch a new token and go on, including for a streamed PUT.
    Each short-lived token is waited out by the registry's own answer, and the tokens
    fetched after it live long, so a slow machine changes nothing."""
    ts = registry_token.token_server
    assert ts is not None
    ts.set_lifetime(2, expires_in=300)  # client believes 300 s, registry accepts 2 s
    image = tiny_image("expiring")
    with client_for(registry_token, creds_for(registry_token)) as client:
        client.upload_blob("m/t", digest_of(image.layer), len(image.layer), chunks_of(image.layer))
        issued = len(ts.issued)
        ts.set_lifetime(60, expires_in=300)
        registry_token.wait_expired(ts.issued[-1], client_too=False)
        push(client, "m/t", image)
        assert len(ts.issued) > issued
        assert client.get_manifest("m/t", "v1").digest == image.digest

        # The token dies between the POST and the streamed PUT: the PUT's 401 cannot be
        # answered by replaying the body, so the whole upload restarts with a fresh stream.
        # (A repository not asked about yet, so that its push token is a new, short one.)
        data, opened = b"q" * 500_000, []
        ts.set_lifetime(2, expires_in=300)

        def open_slowly() -> Iterator[bytes]:
            opened.append(1)
            if len(opened) == 1:
                ts.set_lifetime(60, expires_in=300)
                registry_token.wait_expired(ts.issued[-1], client_too=False)
            return chunks_of(data)()

        client.upload_blob("m/u", digest_of(data), len(data), open_slowly)
        assert len(opened) == 2
        assert client.blob_size("m/u", digest_of(data)) == len(data)


def test_short_lived_token_refreshed_before_use(registry_token: RegistryInstance) -> None:
    ts = registry_token.token_server
    assert ts is not None
    ts.set_lifetime(2)  # honest expires_in=2: the client refreshes without a 401
    data = b"z" * 300_000
    with client_for(registry_token, creds_for(registry_token)) as client:
        client.ping()
        client.upload_blob("m/s", digest_of(data), len(data), chunks_of(data))
        ts.set_lifetime(60)  # the refreshed token outlives the check, however slow
        registry_token.wait_expired(ts.issued[-1])  # for the registry and the client
        mark = registry_token.mark()
        assert client.blob_size("m/s", digest_of(data)) == len(data)
        assert [e.status for e in registry_token.requests(since=mark)] == [200]


# -- streaming and uploads ------------------------------------------------------------------


def test_50mib_upload_streams_in_small_memory(session_registry: RegistryInstance) -> None:
    size, piece = 50 * MiB, MiB
    block = hashlib.sha256(b"seed").digest() * (piece // 32)

    def open_chunks() -> Iterator[bytes]:
        for i in range(size // piece):
            yield i.to_bytes(8, "big") + block[8:]  # distinct pieces, generated on the fly

    hasher = hashlib.sha256()
    for c in open_chunks():
        hasher.update(c)
    digest = f"sha256:{hasher.hexdigest()}"
    with client_for(session_registry) as client:
        client.ping()
        tracemalloc.start()
        try:
            client.upload_blob("big/blob", digest, size, open_chunks)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20 * MiB, f"peak {peak / MiB:.1f} MiB"
        assert client.blob_size("big/blob", digest) == size
    assert session_registry.blob_file(digest).stat().st_size == size


def test_upload_blob_stream_unknown_digest(session_registry: RegistryInstance) -> None:
    parts = [b"a" * 100_000, b"b" * 50_000, b"", b"c"]
    with client_for(session_registry) as client:
        digest, size = client.upload_blob_stream("s/stream", iter(parts))
        data = b"".join(parts)
        assert (digest, size) == (digest_of(data), len(data))
        assert b"".join(client.get_blob("s/stream", digest)) == data


def test_upload_retries_with_fresh_stream_after_registry_crash(registry: RegistryInstance) -> None:
    data = bytes(range(256)) * 16 * 1024  # 4 MiB
    opened = []

    def open_chunks() -> Iterator[bytes]:
        opened.append(1)
        for i in range(0, len(data), 256 * 1024):
            if len(opened) == 1 and i == MiB:
                registry.kill()  # mid-PUT: the connection breaks under the client
                registry.start()
            yield data[i : i + 256 * 1024]

    with client_for(registry) as client:
        client.upload_blob("crash/blob", digest_of(data), len(data), open_chunks)
        assert len(opened) == 2 and client.stats.retries >= 1
        assert client.blob_size("crash/blob", digest_of(data)) == len(data)


def test_chunked_upload_resumes_from_range(registry: RegistryInstance) -> None:
    data = hashlib.sha256(b"r").digest() * (5 * MiB // 32)
    offsets = []

    def open_at(offset: int) -> Iterator[bytes]:
        offsets.append(offset)
        for i in range(offset, len(data), 256 * 1024):
            if len(offsets) == 1 and i == 3 * MiB:
                registry.kill()  # fixed http.secret: the upload survives the restart
                registry.start()
            yield data[i : i + 256 * 1024]

    with client_for(registry) as client:
        client.upload_blob_chunked("res/blob", digest_of(data), len(data), open_at, MiB)
        assert offsets == [0, 3 * MiB]
        assert client.bytes_uploaded < len(data) + MiB  # a restart from 0 would be 8 MiB
        assert client.blob_size("res/blob", digest_of(data)) == len(data)


def test_stream_shorter_than_declared_is_a_build_error(session_registry: RegistryInstance) -> None:
    with client_for(session_registry) as client, pytest.raises(BuildFailed, match="ended at 3"):
        client.upload_blob("short/blob", digest_of(b"abcd"), 4, chunks_of(b"abc"))


# -- manifests, verify, interop -------------------------------------------------------------


def test_resolve_platform() -> None:
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": "sha256:" + "1" * 64,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": "sha256:" + "2" * 64,
                 "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    ).encode()  # fmt: skip
    assert resolve_platform(index, "linux/amd64") == "sha256:" + "2" * 64
    assert resolve_platform(index, "linux/arm64/v8") == "sha256:" + "1" * 64
    with pytest.raises(Exception, match="linux/s390x"):
        resolve_platform(index, "linux/s390x")


def test_verify_push_success_and_tamper(session_registry: RegistryInstance) -> None:
    reg = session_registry
    image = tiny_image("verify me")
    with client_for(reg) as client:
        digest = push(client, "v/model", image, tag="v1")
        result = verify_push(client, "v/model", "v1", digest, LABELS)
        assert result.digest == digest and result.layer_count == 1
        assert result.total_size == len(image.layer) + len(image.config)
        assert verify_push(client, "v/model", digest, digest, LABELS).digest == digest

        with pytest.raises(VerificationFailed, match="lacks label extra"):
            verify_push(client, "v/model", "v1", digest, {**LABELS, "extra": "1"})

        # Someone pushes another image to our tag: the tag no longer resolves to ours.
        other = tiny_image("tampered")
        push(client, "v/model", other, tag="v1")
        with pytest.raises(VerificationFailed) as info:
            verify_push(client, "v/model", "v1", digest, LABELS)
        assert f"resolves to {other.digest}, but we pushed {digest}" in str(info.value)

        with_entrypoint = tiny_image("ep", Entrypoint=["/bin/sh"])
        ep_digest = push(client, "v/model", with_entrypoint, tag="ep")
        with pytest.raises(VerificationFailed, match="Entrypoint"):
            verify_push(client, "v/model", "ep", ep_digest, LABELS)

        with pytest.raises(ImageNotFound, match="does not exist"):
            verify_push(client, "v/model", "nope", digest, LABELS)


def test_verify_push_missing_blob(registry: RegistryInstance) -> None:
    image = tiny_image("lost")
    with client_for(registry) as client:
        digest = push(client, "v/lost", image)
        registry.blob_file(digest_of(image.layer)).unlink()  # storage lost the layer
        with pytest.raises(VerificationFailed, match="missing"):
            verify_push(client, "v/lost", "v1", digest, LABELS)


def test_skopeo_sees_what_the_client_pushed(
    session_registry: RegistryInstance, tmp_path: Path
) -> None:
    image = tiny_image("for skopeo")
    with client_for(session_registry) as client:
        digest = push(client, "interop/model", image, tag="v1")
    proc = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false",
         f"docker://{session_registry.host}/interop/model:v1"],
        env=private_containers_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    info = json.loads(proc.stdout)
    assert info["Digest"] == digest
    assert info["Labels"] == LABELS
    assert info["Layers"] == [digest_of(image.layer)]


def test_base_image_fixture(base_image: BaseImage) -> None:
    reg = base_image.registry
    with client_for(reg) as client:
        manifest = client.get_manifest(base_image.repository, base_image.tag)
        assert manifest.digest == base_image.digest
        doc = json.loads(manifest.body)
        config = json.loads(client.read_blob(base_image.repository, doc["config"]["digest"]))
    assert not config["config"].get("Entrypoint") and not config["config"].get("Cmd")
    assert (base_image.oci_dir / "index.json").is_file()
    assert base_image.oci_ref.endswith(":latest")


def test_a_registry_restart_mid_push_is_ridden_out(registry: RegistryInstance) -> None:
    """A rolling update takes the registry away for 30-60 s. Once it has answered, the
    client keeps retrying for the window (here 30 s; the default is 120 s), far past
    the 4 quick attempts that are all a registry that never answered gets."""
    data = hashlib.sha256(b"w").digest() * (2 * MiB // 32)
    policy = RetryPolicy(attempts=4, initial=0.05, maximum=1.0, window=30.0)
    opened: list[bool] = []  # per attempt: was the registry back already?
    back = threading.Event()

    def restart() -> None:
        registry.start()
        back.set()

    def open_chunks() -> Iterator[bytes]:
        opened.append(back.is_set())
        if len(opened) == 1:
            registry.kill()  # gone mid-upload for 6 s, far longer than 4 quick attempts
            threading.Timer(6.0, restart).start()
        yield data

    with client_for(registry, retry=policy) as client:
        client.ping()
        client.upload_blob("outage/blob", digest_of(data), len(data), open_chunks)
        # More retries than the 4 attempts allow, and the last attempt came after the
        # restart: the window kept the upload going until the registry was back.
        assert opened[-1] and client.stats.retries >= 4
        assert client.blob_size("outage/blob", digest_of(data)) == len(data)


def test_the_blob_head_before_an_upload_rides_out_a_restart(registry: RegistryInstance) -> None:
    """The HEAD the engines send before each layer's upload (does the target have it?)
    was a single try: a registry killed just before it ended a build with exit 50
    `connection refused` inside the retry window. Restarted only at the third retry
    (past the 2 quick attempts: the window, not the attempts, keeps it going)."""
    policy = RetryPolicy(attempts=2, initial=0.05, maximum=0.2, window=30.0)
    watch = on_nth_warning("modelcar.registry", "connection refused", 3, registry.start)
    with watch as refused, client_for(registry, retry=policy) as client:
        client.ping()
        registry.kill()
        assert client.blob_size("outage/head", digest_of(b"absent")) is None
    assert len(refused) == 3, refused


def test_a_token_server_outage_is_ridden_out_like_the_registrys(
    registry_token: RegistryInstance,
) -> None:
    """OpenShift's registry serves its own tokens, so a restart takes the token server
    away too: a token fetched during it (a new scope, a renewal) failed at once with exit
    50. It is retried within the window, its retry lines naming the token server."""
    ts = registry_token.token_server
    assert ts is not None
    policy = RetryPolicy(attempts=2, initial=0.05, maximum=0.2, window=30.0)
    watch = on_nth_warning("modelcar.registry", "cannot reach token server", 3, ts.start)
    with watch as lines, client_for(registry_token, creds_for(registry_token), retry=policy) as c:
        c.ping()
        ts.stop()
        # A repository not asked about yet: its pull token must be fetched now.
        assert c.blob_size("outage/token", digest_of(b"absent")) is None
    assert len(lines) == 3, lines


def test_a_registry_that_never_answered_fails_in_seconds() -> None:
    policy = RetryPolicy(attempts=3, initial=0.05, maximum=0.2, window=120.0)
    client = RegistryClient(f"127.0.0.1:{free_port()}", plain_http=True, retry=policy)
    with client, pytest.raises(RegistryUnreachable):
        client.ping()
    # At most the 3 attempts, not the 120 s window (which retries far past them).
    assert client.stats.requests <= policy.attempts and client.stats.retries < policy.attempts
