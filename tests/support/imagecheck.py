"""Independent checks of a built image with tools that are not ours: skopeo copies it
into an OCI layout, umoci unpacks it, tarfile reads the raw layer headers (rootless
unpacking maps owners, so owner 0:0 is read from the tar headers themselves)."""

from __future__ import annotations

import json
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Unpacked:
    layout: Path
    rootfs: Path
    manifest: dict
    config: dict

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def model_members(self) -> dict[str, tarfile.TarInfo]:
        """Every models/ entry of every layer, by name (a later layer wins)."""
        out: dict[str, tarfile.TarInfo] = {}
        for layer in self.manifest["layers"]:
            with tarfile.open(self.blob(layer["digest"]), "r:*") as tar:
                for member in tar.getmembers():
                    if member.name.rstrip("/").startswith("models"):
                        out[member.name.rstrip("/")] = member
        return out


def skopeo_to_layout(src: str, dest: Path, tls_verify: bool = False) -> str:
    dest_ref = f"oci:{dest}:img"
    argv = ["skopeo", "copy", "-q"]
    if src.startswith("docker://"):
        argv.append(f"--src-tls-verify={'true' if tls_verify else 'false'}")
    proc = subprocess.run([*argv, src, dest_ref], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dest_ref


def unpack(src: str, workdir: Path) -> Unpacked:
    layout = workdir / "pulled"
    workdir.mkdir(parents=True, exist_ok=True)
    skopeo_to_layout(src, layout)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    config = json.loads(
        (layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_text()
    )
    bundle = workdir / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:img", str(bundle)],
        check=True,
        capture_output=True,
    )
    return Unpacked(layout, bundle / "rootfs", manifest, config)


def assert_models_match(
    img: Unpacked,
    files: dict[str, bytes],
    owner_names: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset({("", "")}),
) -> None:
    """/models holds exactly ``files``, byte for byte, 0644/0755, owned 0:0.
    ``owner_names``: the tar header names allowed with those ids (dockerd writes root)."""
    models = img.rootfs / "models"
    found = {
        p.relative_to(models).as_posix(): p.read_bytes() for p in models.rglob("*") if p.is_file()
    }
    assert found.keys() == files.keys()
    for path, data in files.items():
        assert found[path] == data, path
    for name, member in img.model_members().items():
        assert (member.uid, member.gid) == (0, 0), name
        assert (member.uname, member.gname) in owner_names, name
        want = 0o755 if member.isdir() else 0o644
        assert stat.S_IMODE(member.mode) == want, f"{name} {member.mode:o}"
    for p in [models, *models.rglob("*")]:
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def assert_modelcar_config(img: Unpacked, labels: dict[str, str]) -> None:
    runtime = img.config.get("config") or {}
    assert not runtime.get("Entrypoint") and not runtime.get("Cmd")
    for key, value in labels.items():
        assert runtime["Labels"][key] == value
