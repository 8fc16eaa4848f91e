"""The docker engine, for workstations: the Docker Engine API through the ``docker``
package (optional extra ``docker``), at ``DOCKER_HOST``: dockerd, or podman's
Docker-compatible service (``podman system service``).

The generated context (one COPY per planned layer) is sent as a tar made while it
streams, to the classic builder (one layer per COPY); the push gets credentials in the
API's auth config (an HTTP header to the daemon), never on any command line. The shared
verification then reads the pushed image back by digest. Registry TLS is the daemon's
business (``insecure-registries``, ``/etc/docker/certs.d``; 127.0.0.1 is insecure-allowed
by default); ``--no-tls-verify``/``--ca-file`` apply to our own read-back."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping

from modelcar_builder.context import prepare_context
from modelcar_builder.engines import BuildRequest, BuildResult, Readiness, fetched_bytes
from modelcar_builder.engines.archive import DockerStore, base_archive, docker_client
from modelcar_builder.engines.buildah.credentials import resolve_for_build
from modelcar_builder.engines.buildah.failures import scrub, scrubbed, secret_forms
from modelcar_builder.engines.workstation import (
    context_tar,
    local_name,
    local_result,
    open_layout_base,
    previous_blobs,
    pushed_result,
    require_files,
    resolve_base,
)
from modelcar_builder.errors import BuildFailed, RegistryAuthError, UsageError
from modelcar_builder.oci import DOCKER_MANIFEST, MEDIA_TYPE_MANIFEST
from modelcar_builder.plan import Plan
from modelcar_builder.target import RegistryTarget
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.engines.docker")
_ACCEPT = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)
_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def auth_config(creds) -> dict[str, str] | None:
    """The Engine API's auth config: sent to the daemon in the X-Registry-Auth header."""
    if creds is None:
        return None
    if creds.identity_token:
        return {"identitytoken": creds.identity_token}
    return {"username": creds.username, "password": creds.password}


class DockerEngine:
    name = "docker"
    pushes_while_fetching = False  # its build context streams every file up front
    builds_locally = True  # the image is in the daemon's store after a build

    def check_compression(self, compression: str) -> None:
        if compression != "gzip":
            raise UsageError(
                f"--compression {compression}: docker pushes gzip layers only",
                hint="drop --compression, or --engine native for uncompressed layers",
            )

    def preflight(self, workspace: Workspace) -> Readiness:
        docker_client().close()  # the package is installed and the daemon answers
        return Readiness("docker: the Docker Engine API answers (DOCKER_HOST)")

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        """The fetched files; the daemon's store (wherever it is) holds the layers again."""
        return {self.name: fetched_bytes(plan)}

    def build(self, request: BuildRequest) -> BuildResult:
        started = time.monotonic()
        files_dir = require_files(request, self.name)
        self.check_compression(request.compression)
        target_creds, base_creds = resolve_for_build(request)
        secrets = [*secret_forms(target_creds), *secret_forms(base_creds)]
        client = docker_client()
        try:
            with scrubbed(secrets):
                return self._build(request, client, files_dir, target_creds, base_creds,
                                   secrets, started)  # fmt: skip
        finally:
            client.close()

    def _build(self, request, client, files_dir, target_creds, base_creds, secrets, started):
        from docker.errors import APIError

        api = client.api
        base = resolve_base(request)
        name = local_name(request)
        try:
            if base.layout is not None:
                self._load_base(client, request, base.from_ref)
            elif base.registry is not None:
                repo, _, digest = base.from_ref.partition("@")
                log.info("pulling base %s", base.from_ref)
                _stream(api.pull(repo, tag=digest, stream=True, decode=True,
                                 auth_config=auth_config(base_creds)), "pull", secrets)  # fmt: skip
            context = prepare_context(request.plan, files_dir, request.workspace, base.from_ref)
            output = api.build(
                fileobj=context_tar(context.directory),
                custom_context=True,
                dockerfile="Containerfile",
                tag=name,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            image_id = _stream(output, "build", secrets).get("ID")
            log.info("built %s (%s)", name, image_id)
            if not request.push:
                inspected = DockerStore(client).inspect(name)
                return local_result(
                    request, self.name, inspected["id"], inspected["diff_ids"], base.layers
                )
            before = previous_blobs(request)
            target = request.target
            repo = f"{target.ref.name}"
            aux = _stream(
                api.push(repo, tag=target.tag, stream=True, decode=True,
                         auth_config=auth_config(target_creds)),
                "push", secrets,
            )  # fmt: skip
        except APIError as exc:
            raise BuildFailed(f"docker: {scrub(str(exc.explanation or exc), secrets)}") from None
        pushed = aux.get("Digest") or aux.get("status_digest") or _tag_digest(request)
        if not pushed:
            raise BuildFailed("docker push reported no digest", hint="rerun with --debug")
        result = pushed_result(request, self.name, pushed, base.layers, before)
        result.timings["total"] = time.monotonic() - started
        return result

    @staticmethod
    def _load_base(client, request: BuildRequest, name: str) -> None:
        """An oci: layout base reaches the daemon as a docker-archive (docker 20.10
        cannot load OCI archives)."""
        from docker.errors import ImageNotFound

        try:
            client.images.get(name)
            return
        except ImageNotFound:
            pass
        base = open_layout_base(request)
        try:
            DockerStore(client).load(base_archive(base, name))
        finally:
            base.close()


def _tag_digest(request: BuildRequest) -> str | None:
    """What the tag points to right after the push, for daemons that report no digest
    (the verification then checks that tag and digest still agree)."""
    target = request.target
    if not isinstance(target, RegistryTarget):
        raise UsageError(f"{target}: only a registry target has a tag to read back")
    with request.registry.client_for(target.ref) as client:
        info = client.head_manifest(target.repository, target.tag, accept=_ACCEPT)
    return info.digest if info else None


def _stream(lines: Iterable[dict], what: str, secrets) -> dict:
    """Follow a decoded progress stream; an error entry fails the build. Returns the
    last ``aux`` entry (build: the image ID; push: tag, digest, size)."""
    aux: dict = {}
    for line in lines:
        if "error" in line or "errorDetail" in line:
            message = scrub(str(line.get("error") or line["errorDetail"]), secrets)
            low = message.lower()
            if what in ("push", "pull") and ("unauthorized" in low or "denied" in low):
                raise RegistryAuthError(f"docker {what}: {message}")
            raise BuildFailed(f"docker {what} failed: {message}", hint="rerun with --debug")
        if "aux" in line and isinstance(line["aux"], dict):
            aux = {**aux, **line["aux"]}
        text = line.get("stream") or line.get("status")
        # "TAG: digest: sha256:… size: N": podman's compat service sends no aux entry.
        if what == "push" and text and (found := _DIGEST.search(text)):
            aux.setdefault("status_digest", found.group(1))
        if text and text.strip():
            log.debug("docker %s: %s", what, scrub(text.strip(), secrets))
    return aux
