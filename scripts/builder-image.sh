#!/usr/bin/env bash
# From a clone to a cluster-ready deploy/: builds the builder image
# (containerfiles/Containerfile) with podman or buildah, pushes it, reads its digest back
# from the registry, and pins that digest in deploy/components/images (the one place the
# overlays take their images from). Then `kubectl apply -k deploy/overlays/...` runs it.
#
#   scripts/builder-image.sh quay.io/YOU/modelcar-builder            # tag: the package version
#   scripts/builder-image.sh quay.io/YOU/modelcar-builder:0.1.0-rc1
#   scripts/builder-image.sh --base-image registry.access.redhat.com/ubi9/buildah:9.6 REGISTRY/REPO
#
# Options (before the image):
#   --base-image IMAGE   the base, by a versioned tag (default: the Containerfile's). Its
#                        digest is read from its registry (skopeo) and the image is built
#                        FROM it by that digest; both go into the labels (base.name,
#                        base.digest). A base no registry serves cannot be pinned: refused.
#   --tls-verify=false   for registries on plain HTTP or with a self-signed certificate
#                        (base, push and read-back alike).
#   --build-arg K=V      passed to the build (repeatable), e.g. PIP_ARGS=... for an offline build.
#   --volume SRC:DST[:O] passed to the build (repeatable), e.g. a wheelhouse.
#   --network MODE       the build's network, e.g. none for an offline build.
#   --source-url URL     the org.opencontainers.image.source/url labels (default: git's
#                        remote.origin.url, if any).
#   --no-pin             build and push only; leave deploy/ as it is.
# Environment: ENGINE=podman|buildah (default: podman if installed, else buildah);
# ENGINE_ARGS, global options for it (e.g. --root DIR --runroot DIR --storage-driver vfs).
# Needs: podman or buildah, skopeo, python3 (to edit the kustomization).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
base=""; tls=true; pin=true; source_url=""
build_args=(); volumes=(); network=()
while (($#)); do
  case "$1" in
    --base-image) base="$2"; shift 2 ;;
    --base-image=*) base="${1#*=}"; shift ;;
    --tls-verify=false) tls=false; shift ;;
    --tls-verify=true|--tls-verify) tls=true; shift ;;
    --build-arg) build_args+=(--build-arg "$2"); shift 2 ;;
    --volume|-v) volumes+=(-v "$2"); shift 2 ;;
    --network) network=(--network "$2"); shift 2 ;;
    --source-url) source_url="$2"; shift 2 ;;
    --no-pin) pin=false; shift ;;
    -h|--help) usage ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# == 1)) || usage
target="$1"

engine="${ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; elif command -v buildah >/dev/null; then engine=buildah
  else echo "error: neither podman nor buildah is installed" >&2; exit 1; fi
fi
read -r -a engine_args <<<"${ENGINE_ARGS:-}"
command -v skopeo >/dev/null || { echo "error: skopeo is needed to read digests from the registry" >&2; exit 1; }

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' modelcar_builder/__init__.py)"
# REGISTRY/REPO[:TAG]: a tag is the part after the last ':' when it has no '/'.
last="${target##*/}"
if [[ "$last" == *:* ]]; then repo="${target%:*}"; tag="${last##*:}"; else repo="$target"; tag="$version"; fi
[[ "$repo" == */* && "$repo" != *@* ]] || { echo "error: expected REGISTRY/REPO[:TAG], got $target" >&2; exit 2; }
ref="$repo:$tag"

if [ -z "$base" ]; then
  base="$(sed -n 's/^ARG BASE_IMAGE=\(.*\)$/\1/p' containerfiles/Containerfile)"
fi
case "$base" in *:latest|*@*) echo "error: base $base: give a versioned tag (the digest is read here)" >&2; exit 2 ;; esac
base_digest="$(skopeo inspect --tls-verify="$tls" --format '{{.Digest}}' "docker://$base")" || {
  echo "error: cannot read $base from its registry; a base must be pinned by the digest its registry gives" >&2; exit 1; }
base_repo="${base%:*}"
[ -n "$source_url" ] || source_url="$(git config --get remote.origin.url 2>/dev/null || true)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%dT%H:%M:%SZ)"

echo "building $ref FROM $base_repo@$base_digest ($base) with $engine" >&2
build=(build -f containerfiles/Containerfile
       --build-arg "BASE_IMAGE=$base_repo@$base_digest" --build-arg "BASE_NAME=$base"
       --build-arg "BASE_DIGEST=$base_digest" --build-arg "VERSION=$version"
       --build-arg "REVISION=$revision" --build-arg "SOURCE_URL=$source_url"
       --build-arg "CREATED=$created" "${build_args[@]}" "${volumes[@]}" "${network[@]}"
       --tls-verify="$tls" -t "$ref" .)
"$engine" "${engine_args[@]}" "${build[@]}"

digestfile="$(mktemp)"; trap 'rm -f "$digestfile"' EXIT
"$engine" "${engine_args[@]}" push --tls-verify="$tls" --digestfile "$digestfile" "$ref" "docker://$ref"
pushed="$(cat "$digestfile")"
# The digest as the registry serves it now, not only as the engine says it sent it.
served="$(skopeo inspect --tls-verify="$tls" --format '{{.Digest}}' "docker://$ref")"
if [ "$served" != "$pushed" ]; then
  echo "error: pushed $pushed but the registry serves $served for $ref" >&2; exit 1
fi
echo "pushed $ref@$served" >&2

if $pin; then
  python3 - deploy/components/images/kustomization.yaml "$repo" "$served" <<'EOF'
import re, sys
path, name, digest = sys.argv[1:]
text = open(path).read()
entry = re.compile(r"(  - name: modelcar-builder\n)(    new\w+: .*\n|    digest: .*\n)+")
assert entry.search(text), f"no modelcar-builder entry in {path}"
text = entry.sub(lambda m: f"{m.group(1)}    newName: {name}\n    digest: {digest}\n", text, count=1)
open(path, "w").write(text)
EOF
  echo "deploy/components/images now names $repo@$served" >&2
fi
echo "$repo@$served"
