"""The builder image as tests/test_deploy_run.py and tests/test_deploy_parts.py run it:
scripts/builder-image.sh builds containerfiles/Containerfile (on a Debian root fs made
offline with mmdebstrap, tests/support/builder_image), pushes it to the loopback registry
and pins its digest into a copy of deploy/; every overlay of that copy is rendered with
`kubectl kustomize`. Session-scoped (conftest.py registers this module): the build takes
minutes, and both test modules run the manifests of the same pinned copy.

Also what those tests give a pod the way a cluster would: a PVC-like directory owned by
another UID, a results directory, a service-account token."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import builder_image
from tests.support.podman import Podman, make_podman, podman_available
from tests.support.registry import sa_like_token

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "modelcar_builder" / "examples" / "tiny-model"
OPENSHIFT_UID = 1000680000  # what restricted-v2 assigns: a UID with no passwd entry, group 0
VOLUME_OWNER = 4242  # the PVC belongs to someone else; group 0 may write (setgid dir)
OVERLAYS = ("openshift", "kubernetes", "kubernetes-indexed", "kubernetes-parts", "tekton")
MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))  # fmt: skip


@dataclass
class Builder:
    podman: Podman
    image: str  # REGISTRY/REPO@sha256:..., pinned by the script, pulled into podman
    rendered: dict[str, list[dict]]  # overlay -> its objects, from the pinned copy
    build: builder_image.ScriptBuild
    base: str  # the Debian base's reference in the loopback registry

    def objects(self, overlay: str, kind: str) -> list[dict]:
        return [d for d in self.rendered[overlay] if d["kind"] == kind]

    def named(self, overlay: str, kind: str, name: str) -> dict:
        return next(d for d in self.objects(overlay, kind) if d["metadata"]["name"] == name)

    def task(self, name: str) -> dict:
        return self.named("openshift", "Task", name)

    def step_actions(self) -> dict[str, dict]:
        return {d["metadata"]["name"]: d for d in self.objects("openshift", "StepAction")}


def registry_digest(host: str, repo: str, reference: str) -> str:
    """The manifest digest the registry itself answers with (Docker-Content-Digest)."""
    resp = requests.head(f"http://{host}/v2/{repo}/manifests/{reference}",
                         headers={"Accept": MANIFEST_TYPES}, timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.headers["Docker-Content-Digest"]


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/install-deps.sh installs it)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def builder(tmp_path_factory, session_registry) -> Iterator[Builder]:
    why = podman_available()
    if why:
        pytest.skip(why)
    tar = builder_image.debian_base_tar()
    if isinstance(tar, str):
        print(f"skipping: {tar}")
        pytest.skip(tar)
    wheels = builder_image.wheelhouse()
    if isinstance(wheels, str):
        print(f"skipping: {wheels}")
        pytest.skip(wheels)
    podman = make_podman(tmp_path_factory.mktemp("podman"))
    try:
        local_base = builder_image.import_base(podman, tar)
        base = builder_image.push_base(podman, local_base, session_registry.host)
        checkout = builder_image.copy_checkout(tmp_path_factory.mktemp("checkout"))
        target = f"{session_registry.host}/modelcar/builder:test"
        build = builder_image.build_with_script(podman, base, wheels, target, checkout)
        podman.pull(build.image)  # the pods run it with imagePullPolicy Never
        rendered = {o: kustomize(checkout / "deploy" / "overlays" / o) for o in OVERLAYS}
        yield Builder(podman, build.image, rendered, build, base)
    finally:
        podman.close()


def volume_dir(path: Path, model: bool = True) -> Path:
    """A PVC-like directory owned by another UID, group 0, setgid, group-writable, with
    the tiny model in models/tiny (owned by that UID too)."""
    path.mkdir(parents=True)
    if model:
        shutil.copytree(TINY, path / "models" / "tiny")
    for p in [path, *path.rglob("*")]:
        os.chown(p, VOLUME_OWNER, 0, follow_symlinks=False)
        if p.is_dir():
            p.chmod(0o2775)
    return path


def results_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)  # Tekton's /tekton/results is writable by the step's UID
    return path


def sa_token(path: Path) -> Path:
    path.write_text(sa_like_token())
    path.chmod(0o644)
    return path
