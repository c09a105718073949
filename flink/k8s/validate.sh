#!/usr/bin/env bash
# Validates Kubernetes manifests offline with kubeconform, against the
# Kubernetes API schemas and the Flink Kubernetes Operator's CRDs.
#
#   flink/k8s/validate.sh              every *.yaml under flink/k8s
#   flink/k8s/validate.sh FILE...      these files (- reads stdin)
#   flink/k8s/validate.sh --install    only fetch the tool and the schemas
#   flink/k8s/validate.sh --workflows  lint .github/workflows/*.yml with
#                                      actionlint (also via `go install`)
#
# Exit status 0 when every resource is valid, non-zero otherwise (kubeconform
# prints which resource and which field). A resource whose schema is unknown
# is an error, not a skip.
#
# Everything fetched is cached under $IHEARD_HOME (default ~/.cache/iheardai),
# never in the repository, and each comes from a package registry:
#   - kubeconform: `go install` through the Go module proxy -> $IHEARD_HOME/bin
#   - Kubernetes JSON schemas: the PyPI package kubernetes-validate ships them
#     (downloaded with pip, not installed; only one version's folder is kept)
#   - FlinkDeployment & co.: the CRD YAML inside the Maven Central artifact
#     org.apache.flink:flink-kubernetes-operator-api (META-INF/fabric8/),
#     turned into JSON schemas by crd_to_jsonschema.py
set -euo pipefail

readonly KUBECONFORM_VERSION=v0.7.0
readonly KUBERNETES_VERSION=1.30.0
readonly KUBERNETES_VALIDATE_VERSION=1.37.0
readonly OPERATOR_VERSION=1.10.0
readonly ACTIONLINT_VERSION=v1.7.12

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IHEARD_HOME=${IHEARD_HOME:-$HOME/.cache/iheardai}
BIN_DIR=$IHEARD_HOME/bin
CACHE=$IHEARD_HOME/k8s
KUBECONFORM=$BIN_DIR/kubeconform-$KUBECONFORM_VERSION
ACTIONLINT=$BIN_DIR/actionlint-$ACTIONLINT_VERSION
K8S_SCHEMAS=$CACHE/kubernetes-json-schema
CRD_SCHEMAS=$CACHE/crd-schemas/flink-kubernetes-operator-$OPERATOR_VERSION
PYTHON=${PYTHON:-python3}
MVN=${MVN:-mvn}

log() { echo "[k8s-validate] $*" >&2; }
die() { echo "[k8s-validate] ERROR: $*" >&2; exit 2; }

# go_tool PACKAGE VERSION TARGET: `go install` into a scratch GOBIN, then move
# the binary to TARGET (a versioned name, so a version bump reinstalls).
go_tool() {
  local package=$1 version=$2 target=$3
  [[ -x $target ]] && return
  command -v go >/dev/null || die "go not found: needed once to install $package"
  log "installing $package@$version"
  local gobin
  gobin=$(mktemp -d)
  GOBIN=$gobin go install "$package@$version" >&2
  mkdir -p "$BIN_DIR"
  mv "$gobin/$(basename "$package")" "$target"
  rm -rf "$gobin"
}

install_kubeconform() {
  go_tool github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" "$KUBECONFORM"
}

install_kubernetes_schemas() {
  local dir=$K8S_SCHEMAS/v$KUBERNETES_VERSION-local-strict
  [[ -f $dir/_definitions.json ]] && return
  rm -rf "$dir.tmp"
  log "fetching Kubernetes $KUBERNETES_VERSION JSON schemas (PyPI kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
  local tmp
  tmp=$(mktemp -d)
  $PYTHON -m pip download --quiet --disable-pip-version-check --no-deps \
    -d "$tmp" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  mkdir -p "$K8S_SCHEMAS"
  $PYTHON - "$tmp"/kubernetes_validate-*.whl "$K8S_SCHEMAS" "v$KUBERNETES_VERSION-local-strict" <<'PY'
import json, pathlib, sys, zipfile
wheel, out, folder = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
prefix = f"kubernetes_validate/kubernetes-json-schema/{folder}/"
staging = out / (folder + ".tmp")
count = 0
# The schemas name themselves https://kubernetes.io/api/... ($id) and refer
# to /api/_definitions.json, which a validator would fetch over HTTP. Drop the
# ids and make the references relative, so they resolve to the file beside.
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            schema = json.loads(zf.read(name))
            schema.pop("$id", None)
            text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
            target = staging / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            count += 1
if count == 0:
    sys.exit(f"{wheel} has no {prefix}")
staging.rename(out / folder)
PY
  rm -rf "$tmp"
}

install_crd_schemas() {
  [[ -f $CRD_SCHEMAS/flink.apache.org/flinkdeployment_v1beta1.json ]] && return
  command -v "$MVN" >/dev/null || die "mvn not found: needed once to fetch the Flink operator CRDs"
  log "fetching the Flink Kubernetes Operator $OPERATOR_VERSION CRDs (Maven Central)"
  local tmp
  tmp=$(mktemp -d)
  "$MVN" -B -q dependency:copy \
    "-Dartifact=org.apache.flink:flink-kubernetes-operator-api:$OPERATOR_VERSION" \
    "-DoutputDirectory=$tmp" -Dtransitive=false >&2
  $PYTHON - "$tmp/flink-kubernetes-operator-api-$OPERATOR_VERSION.jar" "$tmp/crds" <<'PY'
import pathlib, sys, zipfile
jar, out = sys.argv[1], pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
with zipfile.ZipFile(jar) as zf:
    # fabric8 writes one file per CRD and CRD API version; -v1 is
    # apiextensions.k8s.io/v1, the only one current clusters serve.
    names = [n for n in zf.namelist() if n.startswith("META-INF/fabric8/") and n.endswith("-v1.yml")]
    if not names:
        sys.exit(f"{jar} has no META-INF/fabric8/*-v1.yml")
    for name in names:
        (out / name.rsplit("/", 1)[-1]).write_bytes(zf.read(name))
PY
  rm -rf "$CRD_SCHEMAS.tmp"
  $PYTHON "$HERE/crd_to_jsonschema.py" "$CRD_SCHEMAS.tmp" "$tmp"/crds/*.yml >/dev/null
  rm -rf "$CRD_SCHEMAS"
  mv "$CRD_SCHEMAS.tmp" "$CRD_SCHEMAS"
  rm -rf "$tmp"
}

if [[ ${1:-} == --workflows ]]; then
  go_tool github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION" "$ACTIONLINT"
  shift
  if [[ $# -eq 0 ]]; then
    set -- "$HERE"/../../.github/workflows/*.yml
  fi
  exec "$ACTIONLINT" "$@"
fi

install_kubeconform
install_kubernetes_schemas
install_crd_schemas
if [[ ${1:-} == --install ]]; then
  exit 0
fi

if [[ $# -eq 0 ]]; then
  mapfile -t files < <(find "$HERE" -name '*.yaml' -o -name '*.yml' | sort)
  set -- "${files[@]}"
fi

exec "$KUBECONFORM" -strict -summary \
  -kubernetes-version "$KUBERNETES_VERSION" \
  -schema-location "file://$K8S_SCHEMAS/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "file://$CRD_SCHEMAS/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
  "$@"
