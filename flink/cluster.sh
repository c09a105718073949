#!/usr/bin/env bash
# Provision, start and stop the project's local Apache Flink 1.19 session
# cluster, and build the classpath launcher of the Beam Flink job server.
#
#   flink/cluster.sh install   download the Flink distribution (PyPI wheels,
#                              unpacked outside the project's environment) and
#                              the Beam job-server classpath (Maven Central)
#   flink/cluster.sh up        install if needed, start JobManager and
#                              TaskManager, wait until the REST API reports a
#                              TaskManager (starts only what is not running)
#   flink/cluster.sh down      stop every daemon this script started
#   flink/cluster.sh status    daemons, their pids and the REST overview
#   flink/cluster.sh env       `export` lines for FLINK_MASTER & co.
#   flink/cluster.sh pids      "<daemon> <pid>" per running daemon
#
# Every command takes --instance=NAME (or IHEARD_INSTANCE=NAME): a separate
# cluster with its own ports and its state under $IHEARD_HOME/instances/NAME/
# flink (port table in services/instance.sh); `down` then stops only it. The
# default instance (no name) keeps the ports and folders below.
#
# Everything is cached under $IHEARD_HOME/flink (IHEARD_HOME defaults to
# ~/.cache/iheardai): dist/ (Flink), jobserver/ (jars + launcher), conf/
# (rendered from flink/conf/config.yaml.template), log/, run/ (pid files),
# checkpoints/, savepoints/, tmp/. Every command is idempotent.
#
# Environment knobs: IHEARD_HOME, FLINK_UP_TIMEOUT_S (default 180),
# FLINK_TASKMANAGERS (TaskManagers `up` keeps running, default 1),
# PIP (default "python3 -m pip"), MVN (default mvn).
set -euo pipefail

readonly FLINK_PATCH_VERSION=1.19.3
readonly FLINK_MINOR_VERSION=1.19
readonly BEAM_VERSION=2.70.0

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IHEARD_HOME=${IHEARD_HOME:-$HOME/.cache/iheardai}
# shellcheck source=../services/instance.sh
source "$REPO_DIR/services/instance.sh"
instance_parse_args "$@"
set -- "${INSTANCE_REST_ARGS[@]}"
# The downloads (dist/, jobserver/) are shared by every instance.
SHARED_STATE=$IHEARD_HOME/flink
if [[ -n $IHEARD_INSTANCE ]]; then
  # A named instance (services/instance.sh): its own ports and state.
  STATE=$(instance_dir "$IHEARD_HOME")/flink
  port() { instance_port "$IHEARD_HOME" "$1"; }
  REST_PORT=$(port 10)
  JM_RPC_PORT=$(port 11)
  BLOB_PORT=$(port 12)
  TM_RPC_PORTS="$(port 13)-$(port 17)"
  TM_DATA_PORTS="$(port 18)-$(port 22)"
  QUERY_PORTS="$(port 23)-$(port 32)"
  PROMETHEUS_TM_PORTS="$(port 40)-$(port 48)"
  PROMETHEUS_JM_PORT=$(port 49)
else
  STATE=$SHARED_STATE
  REST_PORT=18081
  JM_RPC_PORT=16123
  BLOB_PORT=16124
  TM_RPC_PORTS=16125-16129
  TM_DATA_PORTS=16130-16134
  QUERY_PORTS=16135-16144
  PROMETHEUS_TM_PORTS=19249-19258
  PROMETHEUS_JM_PORT=19259
fi
PROMETHEUS_TM_PORT=${PROMETHEUS_TM_PORTS%-*}
readonly REST_PORT JM_RPC_PORT BLOB_PORT TM_RPC_PORTS TM_DATA_PORTS QUERY_PORTS PROMETHEUS_TM_PORTS \
  PROMETHEUS_TM_PORT PROMETHEUS_JM_PORT
DIST_DIR=$SHARED_STATE/dist/$FLINK_PATCH_VERSION
FLINK_DIST_HOME=$DIST_DIR/pyflink
JOBSERVER_DIR=$SHARED_STATE/jobserver/$BEAM_VERSION
LAUNCHER_JAR=$JOBSERVER_DIR/beam-runners-flink-$FLINK_MINOR_VERSION-job-server-launcher-$BEAM_VERSION.jar
CONF_DIR=$STATE/conf
LOG_DIR=$STATE/log
PID_DIR=$STATE/run
UP_TIMEOUT_S=${FLINK_UP_TIMEOUT_S:-180}
# TaskManagers `up` keeps running (4 slots each).
TASKMANAGERS=${FLINK_TASKMANAGERS:-1}
PIP=${PIP:-python3 -m pip}
MVN=${MVN:-mvn}

# The distribution's scripts read these.
export FLINK_CONF_DIR=$CONF_DIR FLINK_LOG_DIR=$LOG_DIR FLINK_PID_DIR=$PID_DIR
export FLINK_IDENT_STRING=iheardai

log() { echo "[flink] $*" >&2; }
die() { echo "[flink] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- install ---

install_dist() {
  local marker=$DIST_DIR/.installed
  if [[ -f $marker ]]; then return; fi
  command -v java >/dev/null || die "java not found (Flink $FLINK_MINOR_VERSION needs Java 11 or 17)"
  log "installing Flink $FLINK_PATCH_VERSION distribution into $DIST_DIR"
  local tmp=$DIST_DIR.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$(dirname "$DIST_DIR")"
  # --no-deps --target: the wheels' own Python requirements pin an old
  # apache-beam; only the Java distribution under pyflink/ is wanted.
  $PIP install --quiet --disable-pip-version-check --no-deps --target "$tmp" \
    "apache-flink==$FLINK_PATCH_VERSION" "apache-flink-libraries==$FLINK_PATCH_VERSION" >&2
  [[ -x $tmp/pyflink/bin/jobmanager.sh ]] || die "wheel has no pyflink/bin/jobmanager.sh"
  [[ -f $tmp/pyflink/lib/flink-dist-$FLINK_PATCH_VERSION.jar ]] || die "wheel has no lib/flink-dist jar"
  ls "$tmp"/pyflink/plugins/metrics-prometheus/flink-metrics-prometheus-*.jar >/dev/null \
    || die "wheel has no plugins/metrics-prometheus"
  rm -rf "$DIST_DIR"
  mv "$tmp" "$DIST_DIR"
  touch "$marker"
}

install_jobserver() {
  local pom=$REPO_DIR/flink/jobserver/pom.xml
  local stamp
  stamp=$(sha256sum "$pom" | cut -c1-16)
  local marker=$JOBSERVER_DIR/.installed-$stamp
  if [[ -f $marker && -f $LAUNCHER_JAR ]]; then return; fi
  command -v "${MVN%% *}" >/dev/null || die "mvn not found"
  command -v jar >/dev/null || die "the JDK's jar tool not found"
  log "resolving the Beam $BEAM_VERSION Flink job-server classpath into $JOBSERVER_DIR"
  rm -rf "$JOBSERVER_DIR"
  mkdir -p "$JOBSERVER_DIR"
  $MVN -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$JOBSERVER_DIR/lib" -DincludeScope=runtime >&2
  # A launcher jar with only a manifest: Main-Class plus a Class-Path of the
  # jars relative to the launcher, so `java -jar launcher.jar` behaves like
  # the official (shaded) job-server jar the Python FlinkRunner expects.
  # Manifest lines are at most 72 bytes; continuation lines start with a space.
  local classpath
  classpath=$(cd "$JOBSERVER_DIR" && ls lib/*.jar | tr '\n' ' ')
  {
    echo "Manifest-Version: 1.0"
    echo "Main-Class: org.apache.beam.runners.flink.FlinkJobServerDriver"
    printf 'Class-Path: %s' "$classpath" | fold -w 70 | sed '2,$s/^/ /'
    echo
  } >"$JOBSERVER_DIR/MANIFEST.MF"
  jar --create --file "$LAUNCHER_JAR" --manifest "$JOBSERVER_DIR/MANIFEST.MF"
  # The driver rejects --help but prints its usage: proof the classpath loads.
  local usage
  usage=$(java -jar "$LAUNCHER_JAR" --help 2>&1 || true)
  if [[ $usage != *--flink-master* ]]; then
    echo "$usage" >&2
    die "job-server launcher does not start"
  fi
  touch "$marker"
}

# Flink's PrometheusReporter binds all interfaces; ours (flink/conf/prometheus)
# is the same reporter bound to 127.0.0.1. Compiled here, next to the plugin.
install_reporter() {
  local src=$REPO_DIR/flink/conf/prometheus/LoopbackPrometheusReporterFactory.java
  local stamp
  stamp=$(sha256sum "$src" | cut -c1-16)
  local plugin_dir=$FLINK_DIST_HOME/plugins/metrics-prometheus
  local target=$plugin_dir/iheardai-loopback-prometheus-reporter.jar
  local marker=$DIST_DIR/.reporter-$stamp
  if [[ -f $marker && -f $target ]]; then return; fi
  command -v javac >/dev/null || die "javac not found (a JDK is needed)"
  log "building the loopback Prometheus reporter"
  local build=$STATE/build/reporter
  rm -rf "$build"
  mkdir -p "$build/classes/META-INF/services"
  javac --release 11 -nowarn -d "$build/classes" \
    -cp "$(ls "$plugin_dir"/flink-metrics-prometheus-*.jar):$FLINK_DIST_HOME/lib/flink-dist-$FLINK_PATCH_VERSION.jar:$(ls "$FLINK_DIST_HOME"/lib/log4j-slf4j-impl-*.jar)" \
    "$src" >&2
  echo org.apache.flink.metrics.prometheus.LoopbackPrometheusReporterFactory \
    >"$build/classes/META-INF/services/org.apache.flink.metrics.reporter.MetricReporterFactory"
  jar --create --file "$build/reporter.jar" -C "$build/classes" .
  mv "$build/reporter.jar" "$target"
  rm -f "$DIST_DIR"/.reporter-*
  touch "$marker"
}

render_conf() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$PID_DIR" "$STATE/checkpoints" "$STATE/savepoints" \
    "$STATE/tmp/blobs" "$STATE/tmp/web"
  sed -e "s|@FLINK_STATE@|$STATE|g" -e "s|@REST_PORT@|$REST_PORT|g" -e "s|@JM_RPC_PORT@|$JM_RPC_PORT|g" \
    -e "s|@BLOB_PORT@|$BLOB_PORT|g" -e "s|@TM_RPC_PORTS@|$TM_RPC_PORTS|g" -e "s|@TM_DATA_PORTS@|$TM_DATA_PORTS|g" \
    -e "s|@QUERY_PORTS@|$QUERY_PORTS|g" -e "s|@PROMETHEUS_TM_PORTS@|$PROMETHEUS_TM_PORTS|g" \
    "$REPO_DIR/flink/conf/config.yaml.template" >"$CONF_DIR/config.yaml.new"
  mv "$CONF_DIR/config.yaml.new" "$CONF_DIR/config.yaml"
  local f
  for f in log4j.properties log4j-console.properties log4j-cli.properties logback.xml; do
    cp "$FLINK_DIST_HOME/conf/$f" "$CONF_DIR/$f"
  done
}

cmd_install() {
  # The shared downloads are made under a lock of their own, so the default
  # instance and named ones (each holding only its own cluster.lock) never
  # unpack into the same folder at once.
  mkdir -p "$SHARED_STATE"
  (
    flock -w 900 7 || die "another flink/cluster.sh holds $SHARED_STATE/install.lock"
    install_dist
    install_reporter
    install_jobserver
  ) 7>"$SHARED_STATE/install.lock"
  render_conf
  log "Flink $FLINK_PATCH_VERSION: $FLINK_DIST_HOME"
  log "job-server launcher: $LAUNCHER_JAR"
}

# ---------------------------------------------------------------- daemons ---

# daemon name in flink-daemon.sh -> main class, to tell our JVMs from a
# recycled pid.
main_class() {
  case $1 in
    standalonesession) echo org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint ;;
    taskexecutor) echo org.apache.flink.runtime.taskexecutor.TaskManagerRunner ;;
  esac
}

pid_file() { echo "$PID_DIR/flink-$FLINK_IDENT_STRING-$1.pid"; }

# Live pids of a daemon; drops dead ones from its pid file (a killed
# TaskManager leaves its pid behind).
live_pids() {
  local daemon=$1 file class p
  file=$(pid_file "$daemon")
  class=$(main_class "$daemon")
  [[ -f $file ]] || return 0
  local alive=()
  while IFS= read -r p || [[ -n $p ]]; do
    [[ -n $p ]] || continue
    if kill -0 "$p" 2>/dev/null && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "$class"; then
      alive+=("$p")
    fi
  done <"$file"
  if ((${#alive[@]})); then
    printf '%s\n' "${alive[@]}" >"$file"
    printf '%s\n' "${alive[@]}"
  else
    rm -f "$file"
  fi
}

overview() { curl -fsS --max-time 3 "http://127.0.0.1:$REST_PORT/overview" 2>/dev/null; }

taskmanagers_registered() {
  local json
  json=$(overview) || { echo 0; return; }
  python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("taskmanagers", 0))' "$json"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log_tail() {
  local f
  for f in "$LOG_DIR"/*.log "$LOG_DIR"/*.out; do
    [[ -f $f ]] || continue
    echo "----- tail $f" >&2
    tail -n 40 "$f" >&2
  done
}

cmd_up() {
  cmd_install
  local started=0
  if [[ -z $(live_pids standalonesession) ]]; then
    if port_busy "$REST_PORT"; then
      die "port $REST_PORT is in use by a process this script did not start"
    fi
    log "starting JobManager"
    "$FLINK_DIST_HOME/bin/jobmanager.sh" start -D "metrics.reporter.prom.port=$PROMETHEUS_JM_PORT" >&2 {LOCK_FD}>&-
    started=1
  fi
  local running
  running=$(live_pids taskexecutor | wc -l)
  while ((running < TASKMANAGERS)); do
    log "starting TaskManager"
    "$FLINK_DIST_HOME/bin/taskmanager.sh" start >&2 {LOCK_FD}>&-
    started=1
    running=$((running + 1))
  done
  local deadline=$((SECONDS + UP_TIMEOUT_S)) n
  while :; do
    n=$(taskmanagers_registered)
    if ((n >= 1)); then break; fi
    if [[ -z $(live_pids standalonesession) || -z $(live_pids taskexecutor) ]]; then
      log_tail
      die "a Flink daemon exited during start-up (logs in $LOG_DIR)"
    fi
    if ((SECONDS >= deadline)); then
      log_tail
      die "no TaskManager registered at http://127.0.0.1:$REST_PORT within ${UP_TIMEOUT_S}s (logs in $LOG_DIR)"
    fi
    sleep 1
  done
  if ((started)); then
    log "up: $n TaskManager(s), dashboard http://localhost:$REST_PORT"
  else
    log "already up: $n TaskManager(s)"
  fi
}

stop_daemon() {
  local daemon=$1 script=$2 p
  if [[ -n $(live_pids "$daemon") ]]; then
    "$FLINK_DIST_HOME/bin/$script" stop-all >&2 || true
  fi
  # Belt and braces: anything still alive from our pid file.
  for p in $(live_pids "$daemon"); do
    kill -9 "$p" 2>/dev/null || true
  done
  rm -f "$(pid_file "$daemon")"
}

cmd_down() {
  if [[ ! -d $FLINK_DIST_HOME ]]; then
    log "not installed, nothing to stop"
    return
  fi
  stop_daemon taskexecutor taskmanager.sh
  stop_daemon standalonesession jobmanager.sh
  log "down"
}

cmd_pids() {
  local d p
  for d in standalonesession taskexecutor; do
    for p in $(live_pids "$d"); do echo "$d $p"; done
  done
}

cmd_status() {
  local jm tm
  jm=$(live_pids standalonesession | tr '\n' ' ')
  tm=$(live_pids taskexecutor | tr '\n' ' ')
  echo "jobmanager:   ${jm:-not running}"
  echo "taskmanagers: ${tm:-not running}"
  if json=$(overview); then
    echo "overview:     $json"
  else
    echo "overview:     REST API on 127.0.0.1:$REST_PORT not answering"
  fi
  [[ -n $jm && -n $tm ]]
}

cmd_env() {
  cat <<EOF
export FLINK_MASTER=localhost:$REST_PORT
export FLINK_VERSION=$FLINK_MINOR_VERSION
export FLINK_JOB_SERVER_JAR=$LAUNCHER_JAR
export FLINK_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_TM_PORT/metrics
export FLINK_JOBMANAGER_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_JM_PORT/metrics
export FLINK_HOME=$FLINK_DIST_HOME
export FLINK_CONF_DIR=$CONF_DIR
export FLINK_CHECKPOINTS_DIR=$STATE/checkpoints
EOF
  if [[ -n $IHEARD_INSTANCE ]]; then
    printf 'export IHEARD_INSTANCE=%q\n' "$IHEARD_INSTANCE"
  fi
}

# One cluster.sh at a time (tests and scripts may call `up` concurrently: two
# would both see no TaskManager and start one each). The lock fd is closed for
# the daemons (see start_daemon), so it is released when this script exits.
take_lock() {
  mkdir -p "$STATE"
  exec {LOCK_FD}>"$STATE/cluster.lock"
  flock -w 900 "$LOCK_FD" || die "another flink/cluster.sh holds $STATE/cluster.lock"
}

case ${1:-} in
  install | up | down) take_lock ;;
esac

case ${1:-} in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  pids) cmd_pids ;;
  *)
    echo "usage: $0 install|up|down|status|env|pids" >&2
    exit 2
    ;;
esac
