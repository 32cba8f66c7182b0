#!/usr/bin/env bash
# `make deploy-check`: renders every overlay of deploy/ with kustomize and validates it offline.
#   1. a venv in var/deploy-venv with scripts/requirements-deploy.txt (re-created only when that
#      file or the Python changes; the first run needs PyPI, later runs need no network);
#   2. per overlay: `kubectl kustomize` (the venv's kubectl, not the system one) into
#      var/deploy/<overlay>.yaml, then kubernetes-validate --strict against the Kubernetes
#      versions below (bundled schemas), then deploy/check_manifests.py (no Secret values,
#      probes, security context, references, env names the code reads, ...);
#   3. the Dockerfile (BuildKit's parser) and the Grafana dashboard (metrics the code emits).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=var/deploy-venv
REQ=scripts/requirements-deploy.txt
OUT=var/deploy
OVERLAYS=(dev prod)
# The oldest Kubernetes the manifests target (native gRPC probes are GA since 1.27, matchLabelKeys
# of topology spread beta since 1.27) and the newest the validator knows.
K8S_VERSIONS=(${FINESTRA_DEPLOY_K8S_VERSIONS:-1.30.0 1.37.0})

say() { printf '[deploy-check] %s\n' "$*"; }

PYTHON=${PYTHON:-python3}
want=$({ sha256sum "$REQ"; "$PYTHON" --version 2>&1; } | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/kubectl" ] || [ ! -x "$VENV/bin/kubernetes-validate" ] \
  || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
  say "installing $REQ into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input --requirement "$REQ"
  echo "$want" >"$VENV/.requirements.sha256"
fi
KUBECTL="$VENV/bin/kubectl"
VALIDATE="$VENV/bin/kubernetes-validate"
PY="$VENV/bin/python"
say "$("$KUBECTL" version --client | tr '\n' ' ')| kubernetes-validate $("$VALIDATE" --version)"

mkdir -p "$OUT"
failed=0
k_args=()
for v in "${K8S_VERSIONS[@]}"; do k_args+=(-k "$v"); done

for overlay in "${OVERLAYS[@]}"; do
  rendered="$OUT/$overlay.yaml"
  if ! "$KUBECTL" kustomize "deploy/overlays/$overlay" >"$rendered" 2>"$OUT/$overlay.err"; then
    say "$overlay: kustomize failed:"; cat "$OUT/$overlay.err"; failed=1; continue
  fi
  # --quiet prints only problems. A WARN (e.g. a kind without a schema) counts as a failure too:
  # every object here must be validated.
  set +e
  report=$("$VALIDATE" --strict --quiet "${k_args[@]}" "$rendered" 2>&1)
  rc=$?
  set -e
  if [ $rc -ne 0 ] || grep -qE '^(ERROR|WARN|FATAL)' <<<"$report"; then
    say "$overlay: kubernetes-validate failed:"; printf '%s\n' "$report"; failed=1
  else
    say "$overlay: schema-valid (--strict) against Kubernetes ${K8S_VERSIONS[*]}"
  fi
  if ! summary=$("$PY" deploy/check_manifests.py manifests "$overlay" "$rendered"); then
    failed=1
  fi
  while IFS= read -r line; do say "$line"; done <<<"$summary"
done

for what in dockerfile dashboard; do
  if ! summary=$("$PY" deploy/check_manifests.py "$what"); then failed=1; fi
  while IFS= read -r line; do say "$line"; done <<<"$summary"
done

if [ $failed -ne 0 ]; then
  say "FAILED"
  exit 1
fi
say "all overlays (${OVERLAYS[*]}) rendered into $OUT/ and valid"
