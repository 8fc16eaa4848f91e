#!/usr/bin/env bash
# The main job on an embedded default, on a fresh machine, offline: builds the bundled
# tiny model into a ModelCar (OCI layout under ./demo/), on a busybox base made here,
# verifies it, and runs KServe's own readiness check against the unpacked image.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export HF_HUB_DISABLE_TELEMETRY=1
out="${DEMO_DIR:-$PWD/demo}"
rm -rf "$out"; mkdir -p "$out"

echo "== 1. base image with sh/ln/sleep (busybox-static, umoci, no daemon)"
scripts/make-busybox-base.sh "$out/base" busybox

echo "== 2. plan"
python3 -m modelcar_builder plan modelcar_builder/examples/tiny-model

echo "== 3. build + verify (native engine, no privilege)"
url="$(python3 -m modelcar_builder build modelcar_builder/examples/tiny-model \
        --engine native --base-image "oci:$out/base:busybox" \
        --image "oci:$out/modelcar:tiny" --workspace "$out/work" --report "$out/report.json")"
echo "$url"

echo "== 4. inspect with skopeo, unpack with umoci"
skopeo inspect "oci:$out/modelcar:tiny" | python3 -c \
  'import json,sys; d=json.load(sys.stdin); print("digest", d["Digest"]); print("layers", len(d["Layers"])); print("labels", d["Labels"])'
umoci unpack --rootless --image "$out/modelcar:tiny" "$out/unpacked" >/dev/null
find "$out/unpacked/rootfs/models" -printf '%M %u:%g %p\n' | sed "s#$out/unpacked/rootfs##"

echo "== 5. KServe's modelcar init check inside the image's root fs"
if [ "$(id -u)" = 0 ]; then
  chroot "$out/unpacked/rootfs" /bin/sh -c '[ -d /models ] && [ "$(ls -A /models)" ] && echo "init check: ok"'
else
  echo "(skipped: chroot needs root)"
fi
echo "== done: $url"
