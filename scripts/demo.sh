#!/usr/bin/env bash
# The main job on an embedded default, offline, with no apt package and no registry:
# installs this checkout into the active Python (pip install .), builds the bundled tiny
# model into a ModelCar in an OCI layout under ./demo/, and checks the result with code
# that is not the build's (Python's tarfile against the source files' sha256).
# It writes nothing outside the checkout and the active Python environment.
#
# Base image: scratch, so nothing has to be pulled or made. The image then holds the
# model alone: what KServe's oci+fetch mode and image volumes read; the sidecar mode
# needs a base with sh (see README, "Base images").
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1
out="${DEMO_DIR:-$PWD/demo}"
model=modelcar_builder/examples/tiny-model
rm -rf "$out"; mkdir -p "$out"
started=$SECONDS

if [ "${MODELCAR_DEMO_NO_INSTALL:-}" = 1 ]; then
  echo "== 1. install: skipped (MODELCAR_DEMO_NO_INSTALL=1)"
else
  echo "== 1. install: python3 -m pip install . (into $(python3 -c 'import sys; print(sys.prefix)'))"
  python3 -m pip install -q --disable-pip-version-check . 2>&1 | grep -v '^WARNING' || true
fi

echo "== 2. plan"
python3 -m modelcar_builder plan "$model"

echo "== 3. build + verify (native engine: no daemon, no privilege, no registry)"
# --source-url: the label names where the model comes from, not where this checkout
# sits, so the digest is the same from any path.
url="$(python3 -m modelcar_builder build "$model" --engine native --base-image scratch \
        --image "oci:$out/modelcar:tiny" --workspace "$out/work" \
        --source-url "urn:modelcar-builder:examples/tiny-model" --report "$out/report.json")"

echo "== 4. independent check: every layer read with tarfile, every file's sha256 compared"
python3 scripts/demo_check.py "$out/modelcar" tiny "$model"

echo "== done in $((SECONDS - started)) s"
echo "$url"
