"""`oci+native://`: the model image mounted as an image volume, read by podman (Debian's
podman 4.3), as an arbitrary UID of group 0 (OpenShift's restricted-v2 runs pods so).

Kubernetes mounts an image volume with `subPath: models` at /mnt/models. Debian's podman
4.3 has no `subpath=` for `--mount type=image`, and `podman kube play`
refuses image volumes, so subPath is covered in two steps, each with podman's own code:
  1. `--mount type=image,source=IMG,destination=/mnt/models` mounts the whole image root
     read-only: the model is at /mnt/models/models/, every file's sha256 is checked there;
  2. `podman image mount IMG` gives the same image root on the host, and its `models`
     subdirectory bind-mounted read-only at /mnt/models is what a kubelet does for a
     subPath: the files are then at /mnt/models/<path>, checked again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.support import podman_fixture
from tests.support.clitools import run
from tests.support.models import REPO, build_args, model_files

podman = podman_fixture.podman  # the fixture, taken by name
POD = Path(__file__).resolve().parent.parent / "deploy/kubernetes/pod-image-volume.yaml"
ARBITRARY_UID = "1000770000"  # an OpenShift-style UID, no /etc/passwd entry; group 0


def _sha256_lines(out: str, prefix: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        digest, path = line.split("  ", 1)
        assert path.startswith(prefix), path
        found[path[len(prefix) :]] = digest
    return found


@pytest.mark.slow
def test_podman_image_volume_reads_every_file_as_an_arbitrary_uid(
    hub, registry, base_image, podman, capsys, tmp_path
):
    hub.add_repo(REPO, model_files())
    image = f"{registry.host}/models/image-volume:v1"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref))
    assert res.code == 0, res.err
    podman.pull(image)
    podman.pull(base_image.ref)
    want = {n: hashlib.sha256(d).hexdigest() for n, d in model_files().items()}
    who = ["--user", f"{ARBITRARY_UID}:0", "--network", "none", "--read-only"]

    # 1. the image volume: the whole image root at /mnt/models, the model under models/
    script = "id -u; id -g; cd /mnt/models/models && find . -type f -exec sha256sum {} +"
    out = podman.run(
        "run", "--rm", *who,
        "--mount", f"type=image,source={image},destination=/mnt/models",
        base_image.ref, "/bin/sh", "-c", script,
    ).stdout.splitlines()  # fmt: skip
    assert out[:2] == [ARBITRARY_UID, "0"]
    assert _sha256_lines("\n".join(out[2:]), "./") == want

    # ... read-only, as an image volume is
    write = podman.run(
        "run", "--rm", *who, "--mount", f"type=image,source={image},destination=/mnt/models",
        base_image.ref, "/bin/sh", "-c", "touch /mnt/models/models/x", check=False,
    )  # fmt: skip
    assert write.returncode != 0

    # 2. the example Pod's volumeMount (deploy/): its subPath of the image root, bound
    # read-only at its mountPath, as the kubelet binds a subPath
    mount = _pod_volume_mount()
    root = podman.run("image", "mount", image).stdout.strip()
    try:
        out = podman.run(
            "run", "--rm", *who, "-v", f"{root}/{mount['subPath']}:{mount['mountPath']}:ro",
            base_image.ref, "/bin/sh", "-c",
            f"cd {mount['mountPath']} && find . -type f -exec sha256sum {{}} +",
        ).stdout  # fmt: skip
    finally:
        podman.run("image", "unmount", image, check=False)
    assert _sha256_lines(out, "./") == want


def _pod_volume_mount() -> dict:
    pod = yaml.safe_load(POD.read_text())
    volume = pod["spec"]["volumes"][0]
    assert "reference" in volume["image"]  # an image volume
    mount = pod["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert (mount["subPath"], mount["mountPath"]) == ("models", "/mnt/models")
    return mount


@pytest.mark.slow
def test_podman_kube_play_refuses_the_pods_image_volume(podman, tmp_path):
    """Why subPath is covered by a bind of the image root's models/ above: Debian's podman
    4.3 cannot play the example Pod at all (no image volume source). A podman
    that plays image volumes fails this test: then play the Pod itself."""
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD.read_text().replace("quay.io/YOUR-ORG/your-model:v1", "localhost/m:v1"))
    out = podman.run("kube", "play", "--start=false", str(pod), check=False)
    assert out.returncode != 0
    assert "currently the only supported VolumeSource" in out.stderr
