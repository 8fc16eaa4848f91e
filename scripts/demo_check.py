"""Check a ModelCar in an OCI layout with nothing but the standard library: the layout's
index names the manifest, every blob hashes to its digest, the config has no Entrypoint
or Cmd, and every file under models/ has the sha256, mode and owner the source implies.

Written without modelcar_builder on purpose: the demo's proof must not be the build's
own code. Usage: python3 scripts/demo_check.py LAYOUT TAG SOURCE_DIR
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def blob(layout: Path, digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    data = (layout / "blobs" / algo / hexd).read_bytes()
    if hashlib.sha256(data).hexdigest() != hexd:
        raise SystemExit(f"FAIL: blob {digest} does not hash to its name")
    return data


def main(layout: Path, tag: str, source: Path) -> int:
    index = json.loads((layout / "index.json").read_text())
    ref_name = "org.opencontainers.image.ref.name"
    tagged = [m for m in index["manifests"] if m.get("annotations", {}).get(ref_name) == tag]
    if len(tagged) != 1:
        raise SystemExit(f"FAIL: tag {tag} names {len(tagged)} manifests")
    manifest = json.loads(blob(layout, tagged[0]["digest"]))
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    if config.get("config", {}).get("Entrypoint") or config.get("config", {}).get("Cmd"):
        raise SystemExit("FAIL: the config has an Entrypoint or Cmd")
    if len(config["rootfs"]["diff_ids"]) != len(manifest["layers"]):
        raise SystemExit("FAIL: layers and diff_ids differ in number")
    seen: dict[str, str] = {}
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        data = blob(layout, desc["digest"])
        if desc["mediaType"].endswith("+gzip"):
            data = gzip.decompress(data)
        if "sha256:" + hashlib.sha256(data).hexdigest() != diff_id:
            raise SystemExit(f"FAIL: layer {desc['digest']} does not match its diff_id")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if (member.uid, member.gid) != (0, 0):
                    raise SystemExit(f"FAIL: {member.name} is not owned by 0:0")
                want = 0o644 if member.isfile() else 0o755
                if member.mode & 0o7777 != want:
                    raise SystemExit(f"FAIL: {member.name} has mode {member.mode:o}")
                if member.isfile() and member.name.startswith("models/"):
                    body = tar.extractfile(member).read()  # type: ignore[union-attr]
                    seen[member.name[len("models/") :]] = hashlib.sha256(body).hexdigest()
    expected = {
        p.relative_to(source).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(source.rglob("*"))
        if p.is_file()
    }
    if seen != expected:
        missing = sorted(set(expected) - set(seen))
        extra = sorted(set(seen) - set(expected))
        wrong = sorted(k for k in set(seen) & set(expected) if seen[k] != expected[k])
        raise SystemExit(f"FAIL: missing {missing}, extra {extra}, different {wrong}")
    print(
        f"check: ok: {len(manifest['layers'])} layer(s), {len(seen)} files under /models, "
        "each sha256 equal to the source's, modes 0644/0755, owner 0:0, no Entrypoint/Cmd"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
