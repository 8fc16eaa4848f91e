#!/usr/bin/env bash
# Builds an offline base image (Debian's busybox-static: sh, ln, sleep, ls, ...) as an
# OCI layout, with umoci only: no daemon, no registry, no network, no privilege.
# Usage: scripts/make-busybox-base.sh LAYOUT_DIR [TAG]
set -euo pipefail
layout="$1"; tag="${2:-latest}"
busybox="$(command -v busybox || echo /bin/busybox)"
[ -x "$busybox" ] || { echo "error: busybox not found; apt-get install busybox-static" >&2; exit 1; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
[ -f "$layout/oci-layout" ] || umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --rootless --image "$layout:$tag" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/proc" "$rootfs/mnt"
cp "$busybox" "$rootfs/bin/busybox"
for applet in sh ln sleep ls cat echo test "[" mkdir; do ln -sf busybox "$rootfs/bin/$applet"; done
umoci repack --image "$layout:$tag" "$work/bundle" >/dev/null
umoci config --image "$layout:$tag" --config.env PATH=/bin --clear=config.entrypoint --clear=config.cmd
umoci gc --layout "$layout"
echo "oci:$layout:$tag"
