#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it.
# Starts the project's services and Flink cluster (idempotent, cached), runs
# pytest over every layer, stops what it started, and exits with pytest's code
# (exit 5, "no tests collected", counts as a failure: a suite that ran nothing
# proved nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

cleanup() {
  bash flink/cluster.sh down >/dev/null 2>&1 || true
  bash services/services.sh down >/dev/null 2>&1 || true
  # started by the secure-mode tests' fixture (tests/integration/conftest.py)
  bash services/services.sh down --secure >/dev/null 2>&1 || true
}
trap cleanup EXIT

start=$(date +%s)
bash services/services.sh up
bash flink/cluster.sh up
echo "services and Flink up in $(( $(date +%s) - start )) s"

set +e
"$PYTHON" -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing the run" >&2
  exit 1
fi
echo "test suite finished in $(( $(date +%s) - start )) s (pytest exit $rc)"
exit "$rc"
