#!/usr/bin/env bash
# Builds the fat Beam Flink job-server jar from flink/uberjar/pom.xml and
# prints its path. Idempotent: the jar is cached under
# $IHEARD_HOME/flink/uberjar, keyed by a hash of the pom, so a second run
# only prints the path.
#
#   flink/uberjar/build.sh           # build if needed, print the jar path
#   flink/uberjar/build.sh --force   # rebuild
#
# Maven output goes to $IHEARD_HOME/flink/uberjar/build.log; stdout carries
# only the path, so callers can do JAR=$(flink/uberjar/build.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IHEARD_HOME="${IHEARD_HOME:-$HOME/.cache/iheardai}"
CACHE_DIR="$IHEARD_HOME/flink/uberjar"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

POM_HASH="$(sha256sum "$HERE/pom.xml" | cut -c1-12)"
JAR="$CACHE_DIR/beam-runners-flink-1.19-job-server-2.70.0-$POM_HASH.jar"

if [[ -s "$JAR" && "$FORCE" == 0 ]]; then
  echo "$JAR"
  exit 0
fi

mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp "$HERE/pom.xml" "$WORK/pom.xml"

echo "building the Beam Flink job-server uber jar (log: $CACHE_DIR/build.log)" >&2
if ! mvn -B -f "$WORK/pom.xml" package >"$CACHE_DIR/build.log" 2>&1; then
  tail -n 40 "$CACHE_DIR/build.log" >&2
  echo "mvn package failed" >&2
  exit 1
fi

BUILT="$WORK/target/iheard-beam-flink-job-server-2.70.0.jar"
# The Python uber-jar submission needs these two entry points; fail here
# rather than on the cluster if the shade configuration ever drops them.
python3 - "$BUILT" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for cls in ("org/apache/beam/runners/flink/FlinkPipelineRunner.class",
            "org/apache/beam/runners/flink/FlinkJobServerDriver.class",
            "org/apache/beam/runners/jobsubmission/PortablePipelineJarUtils.class"):
    if cls not in names:
        sys.exit(f"built jar lacks {cls}")
PY

# Write under a temporary name first, so an interrupted build never leaves a
# truncated jar where the cache check above would accept it.
mv "$BUILT" "$JAR.tmp"
mv "$JAR.tmp" "$JAR"
# Older builds (other pom hashes) are dead weight.
find "$CACHE_DIR" -maxdepth 1 -name 'beam-runners-flink-1.19-job-server-2.70.0-*.jar' ! -path "$JAR" -delete
echo "$JAR"
