#!/bin/sh
# The builder image's entrypoint: a passwd entry for an arbitrary UID, then `modelcar`.
# OpenShift (restricted-v2) runs the container as a UID the image has never heard of, in
# group 0. Tools that look the user up (buildah: "unknown userid") need an entry: point
# nss_wrapper at a copy of /etc/passwd with one in $TMPDIR (an emptyDir in deploy/), or, on
# a base without nss_wrapper (where the image leaves /etc/passwd group-writable), append
# one; else go on without one (the native engine does not need it).
if ! whoami >/dev/null 2>&1; then
  entry="modelcar:x:$(id -u):$(id -g):modelcar builder:${HOME:-/home/modelcar}:/sbin/nologin"
  if [ -f "${NSS_WRAPPER_LIB:-}" ] && dir="$(mktemp -d 2>/dev/null)"; then
    cp /etc/passwd "$dir/passwd" && echo "$entry" >>"$dir/passwd"
    cp /etc/group "$dir/group"
    export LD_PRELOAD="$NSS_WRAPPER_LIB" NSS_WRAPPER_PASSWD="$dir/passwd" NSS_WRAPPER_GROUP="$dir/group"
  elif [ -w /etc/passwd ]; then
    echo "$entry" >>/etc/passwd
  fi
fi
# Tekton's optional workspaces (deploy/components/tekton): an unbound one's path is "", so these name
# a directory only when the workspace is bound. dockerconfig: a config.json, or a
# kubernetes.io/dockerconfigjson Secret's .dockerconfigjson; ca-bundle: a ConfigMap/Secret.
if [ -n "${DOCKER_CONFIG:-}" ] && [ -z "${REGISTRY_AUTH_FILE:-}" ]; then
  for f in config.json .dockerconfigjson; do
    if [ -f "$DOCKER_CONFIG/$f" ]; then export REGISTRY_AUTH_FILE="$DOCKER_CONFIG/$f"; break; fi
  done
fi
[ -n "${DOCKER_CONFIG:-}" ] || unset DOCKER_CONFIG
if [ -n "${CA_BUNDLE_DIR:-}" ] && [ -z "${MODELCAR_CA_FILE:-}" ]; then
  for f in ca-bundle.crt ca.crt service-ca.crt tls-ca-bundle.pem; do
    if [ -f "$CA_BUNDLE_DIR/$f" ]; then export MODELCAR_CA_FILE="$CA_BUNDLE_DIR/$f"; break; fi
  done
fi
unset CA_BUNDLE_DIR
# signing-secret: a Secret laid out as Tekton Chains' signing-secrets (cosign.key and
# cosign.password, from `cosign generate-key-pair k8s://…` or `modelcar keygen`). Bound,
# `build` signs (README "Signing and provenance"); the password stays in its file.
if [ -n "${SIGNING_SECRET_DIR:-}" ] && [ -z "${MODELCAR_SIGN_KEY:-}" ] \
   && [ -f "$SIGNING_SECRET_DIR/cosign.key" ]; then
  export MODELCAR_SIGN_KEY="$SIGNING_SECRET_DIR/cosign.key"
  if [ -f "$SIGNING_SECRET_DIR/cosign.password" ] && [ -z "${MODELCAR_SIGN_KEY_PASSWORD_FILE:-}" ]; then
    export MODELCAR_SIGN_KEY_PASSWORD_FILE="$SIGNING_SECRET_DIR/cosign.password"
  fi
fi
unset SIGNING_SECRET_DIR
# A Tekton param left at its "" default: the Hub's own URL, not an empty one.
[ -n "${HF_ENDPOINT:-}" ] || unset HF_ENDPOINT
# In a Tekton step (MODELCAR_RESULTS_DIR set), a successful build also writes Chains'
# input-artifact result (the Hub repo at the commit built) from its report; modelcar runs
# as a child then, with TERM and INT passed on. Anywhere else modelcar replaces this shell.
if [ "${1:-}" != build ] || [ -z "${MODELCAR_RESULTS_DIR:-}" ] || [ -z "${MODELCAR_REPORT:-}" ]; then
  exec modelcar "$@"
fi
modelcar "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
while :; do
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || break   # wait returned for a signal, not the exit
done
if [ "$code" = 0 ]; then
  py="$(dirname "$(command -v modelcar)")/python3"   # the venv's, beside modelcar
  [ -x "$py" ] || py=python3
  "$py" -m modelcar_builder.chains "$MODELCAR_REPORT" "$MODELCAR_RESULTS_DIR" || code=$?
fi
exit "$code"
