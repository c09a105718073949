#!/usr/bin/env bash
# Installs, starts and stops the servers the pipelines talk to, all on
# 127.0.0.1 and on non-default ports (docs/ARCHITECTURE.md):
#
#   kafka     Apache Kafka 4.x, KRaft, broker+controller  19092 (controller 19093)
#   postgres  PostgreSQL 15, db analytics, user iheard    15433
#   redis     Redis 7                                     16380
#   s3        moto server (S3 API), bucket iheardai-archive 19000
#
# Usage: services/services.sh [--secure | --instance=NAME] install|up|down|status|env|reset [service...]
#
#   --instance=NAME (or IHEARD_INSTANCE=NAME) runs a separate named set with
#   its own block of ports and its own folders under
#   $IHEARD_HOME/instances/NAME (the port table is in services/instance.sh);
#   up/down/env/status/reset then touch only that instance. Without a name
#   everything is as below (the default instance).
#
#   --secure runs a second, separate set (own IHEARD_HOME subdir, own ports)
#   that only speaks TLS and wants passwords, beside the plain one:
#
#   kafka     SASL_SSL listener, SCRAM-SHA-512 users admin/iheard 29092 (controller 29093, mTLS)
#   postgres  hostssl only, scram-sha-256 password             25433
#   redis     TLS only (port 0), requirepass                   26380
#   s3        moto over HTTPS, requests signed by an IAM key   29000
#
#   Certificates come from a throwaway CA made with openssl under
#   <secure home>/tls; passwords are random, made once, in <secure home>/secrets
#   (mode 0600). `env --secure` prints them with the CA path.
#
#   install  fetch what is missing (apt packages, Kafka jars via mvn, pip)
#   up       install if needed, start what is not running, wait until healthy
#   down     stop what we started (only processes named by our pid files)
#   status   one line per service; exit 1 when any is not running and healthy
#   env      print `export` lines with the connection settings
#   reset    down, then delete the services' data (the download cache stays)
#
# State lives under $IHEARD_HOME (default ~/.cache/iheardai): downloads in
# cache/, and per service <service>/{data,log,run} (run/ holds the pid file).
# Every command is idempotent; up/down/install/reset hold a lock so parallel
# callers (test sessions, make targets) queue instead of racing.
set -euo pipefail

SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IHEARD_HOME="${IHEARD_HOME:-$HOME/.cache/iheardai}"
IHEARD_ROOT="$IHEARD_HOME"
CACHE_DIR="$IHEARD_HOME/cache"
# shellcheck source=instance.sh
source "$SERVICES_DIR/instance.sh"

SECURE=0
for arg in "$@"; do [[ "$arg" == --secure ]] && SECURE=1; done
instance_parse_args "$@"
if [[ -n "$IHEARD_INSTANCE" ]]; then
  ((SECURE == 0)) || { echo "[services] ERROR: --secure and --instance do not combine" >&2; exit 2; }
  # A named instance (services/instance.sh): its own state under
  # instances/NAME and its own block of ports; the download cache is shared.
  IHEARD_HOME="$(instance_dir "$IHEARD_ROOT")"
  IHEARD_KAFKA_PORT="$(instance_port "$IHEARD_ROOT" 0)"
  IHEARD_KAFKA_CONTROLLER_PORT="$(instance_port "$IHEARD_ROOT" 1)"
  IHEARD_POSTGRES_PORT="$(instance_port "$IHEARD_ROOT" 2)"
  IHEARD_REDIS_PORT="$(instance_port "$IHEARD_ROOT" 3)"
  IHEARD_S3_PORT="$(instance_port "$IHEARD_ROOT" 4)"
fi
if ((SECURE)); then
  # Its own state (data, pids, lock) and ports, so it runs beside the plain
  # set and neither's up/down touches the other; the download cache is shared.
  IHEARD_HOME="${IHEARD_SECURE_HOME:-$IHEARD_HOME/secure}"
  IHEARD_KAFKA_PORT="${IHEARD_SECURE_KAFKA_PORT:-29092}"
  IHEARD_KAFKA_CONTROLLER_PORT="${IHEARD_SECURE_KAFKA_CONTROLLER_PORT:-29093}"
  IHEARD_POSTGRES_PORT="${IHEARD_SECURE_POSTGRES_PORT:-25433}"
  IHEARD_REDIS_PORT="${IHEARD_SECURE_REDIS_PORT:-26380}"
  IHEARD_S3_PORT="${IHEARD_SECURE_S3_PORT:-29000}"
fi
TLS_DIR="$IHEARD_HOME/tls"
SECRETS_DIR="$IHEARD_HOME/secrets"
KAFKA_ADMIN_USER=admin
KAFKA_USER=iheard
ALL_SERVICES=(kafka postgres redis s3)

HOST=127.0.0.1
# The ports of docs/ARCHITECTURE.md. Overriding them (with another
# IHEARD_HOME) runs a second, separate set, e.g. to time a cold start while
# the usual one keeps serving; `env` prints whatever is in force.
KAFKA_PORT="${IHEARD_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${IHEARD_KAFKA_CONTROLLER_PORT:-19093}"
PG_PORT="${IHEARD_POSTGRES_PORT:-15433}"
REDIS_PORT="${IHEARD_REDIS_PORT:-16380}"
S3_PORT="${IHEARD_S3_PORT:-19000}"

PG_USER=iheard
PG_PASSWORD=iheard
PG_DB=analytics
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
S3_ACCESS_KEY="test"
S3_SECRET_KEY="test"
S3_REGION=us-east-1
ARCHIVE_BUCKET=iheardai-archive

# Health-wait limits. Kafka is a JVM and, on the 2-core CI machine, the
# slowest to come up; the others are up within seconds.
KAFKA_TIMEOUT_S="${KAFKA_TIMEOUT_S:-150}"
PG_TIMEOUT_S="${PG_TIMEOUT_S:-60}"
REDIS_TIMEOUT_S="${REDIS_TIMEOUT_S:-30}"
S3_TIMEOUT_S="${S3_TIMEOUT_S:-60}"
STOP_TIMEOUT_S=30
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

# The Kafka version is the one in the pom, so the pom stays the only place
# to change it.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$SERVICES_DIR/kafka/pom.xml")"

# Resolve pyenv shims etc. to the real interpreter, so pid files name the
# process that actually runs.
PYTHON="$(${PYTHON:-python3} -c 'import sys; print(sys.executable)')"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

svc_dir() { printf '%s/%s' "$IHEARD_HOME" "$1"; }
pid_file() { printf '%s/%s/run/%s.pid' "$IHEARD_HOME" "$1" "$1"; }
log_file() { printf '%s/%s/log/%s.log' "$IHEARD_HOME" "$1" "$1"; }

svc_port() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;;
    postgres) echo "$PG_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    s3) echo "$S3_PORT" ;;
  esac
}

# Fragments, one a line, of which the service's process has one on its
# command line; checked before we trust (or signal) a pid from a pid file,
# because pids get reused.
svc_signatures() {
  case "$1" in
    kafka) echo "$(svc_dir kafka)/server.properties" ;;
    postgres) echo "$(svc_dir postgres)/data" ;;
    # redis-server rewrites its process title once it has read its config;
    # proc-title-template (redis.conf) keeps the config path in it.
    redis) echo "$(svc_dir redis)/redis.conf" ;;
    # moto's command line names no file of ours, so start_s3 adds one as
    # an (ignored) interpreter option.
    s3) echo "-X iheard_service=$(svc_dir s3) -m moto.server" ;;
  esac
}

# Prints the pid of the service if its pid file names a live process of ours.
svc_pid() {
  local svc=$1 pidfile pid cmdline
  pidfile="$(pid_file "$svc")"
  [[ -f "$pidfile" ]] || return 1
  pid="$(tr -dc '0-9' <"$pidfile")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  local signature matched=0
  while IFS= read -r signature; do
    [[ "$cmdline" == *"$signature"* ]] && matched=1
  done < <(svc_signatures "$svc")
  ((matched)) || return 1
  # A zombie is not running.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

port_holder() {
  ss -ltnpH "sport = :$1" 2>/dev/null | sed 's/^/    /' || true
}

# Prints the pid of the process listening on the service's port when it is
# this IHEARD_HOME's server whose pid file got lost (its command line has our
# signature), so `up` can adopt it instead of starting a second one.
find_own_listener() {
  local svc=$1 pid
  for pid in $(ss -ltnpH "sport = :$(svc_port "$svc")" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    echo "$pid" >"$(pid_file "$svc")"
    if svc_pid "$svc"; then return 0; fi
  done
  rm -f "$(pid_file "$svc")"
  return 1
}

# Refuses to start a service whose port is taken by something that is not
# ours (a server from another IHEARD_HOME, a system service...). We never
# kill it: only pid files we wrote tell us what is ours.
require_free_port() {
  local svc=$1 port=$2
  if port_open "$port"; then
    die "$svc: port $port on $HOST is already in use by a process this IHEARD_HOME did not start:
$(port_holder "$port")
    Stop it (if it is a leftover, run 'services.sh down' with the IHEARD_HOME that started it)."
  fi
}

fail_service() {
  local svc=$1 msg=$2 logfile
  logfile="$(log_file "$svc")"
  printf '[services] ERROR: %s: %s\n' "$svc" "$msg" >&2
  if [[ -f "$logfile" ]]; then
    printf '[services] last lines of %s:\n' "$logfile" >&2
    tail -n 40 "$logfile" | sed 's/^/    /' >&2
  fi
  if [[ "$svc" == kafka && -f "$(svc_dir kafka)/log/server.log" ]]; then
    printf '[services] last lines of %s:\n' "$(svc_dir kafka)/log/server.log" >&2
    tail -n 40 "$(svc_dir kafka)/log/server.log" | sed 's/^/    /' >&2
  fi
  exit 1
}

# wait_for SERVICE TIMEOUT_S WHAT CMD...: polls CMD until it succeeds; fails
# early, with the log tail, if the service's process is gone.
wait_for() {
  local svc=$1 timeout_s=$2 what=$3
  shift 3
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    svc_pid "$svc" >/dev/null || fail_service "$svc" "process exited while waiting for $what"
    ((SECONDS < deadline)) || fail_service "$svc" "no $what within ${timeout_s}s"
    sleep 0.3
  done
}

# Starts CMD detached in its own session (so a Ctrl-C in the terminal or
# test run that called `up` does not reach it), output to the service log.
spawn() {
  local svc=$1
  shift
  # 9>&- : the server must not inherit the lock, or it would hold it forever.
  setsid "$@" >>"$(log_file "$svc")" 2>&1 </dev/null 9>&- &
  local pid=$! deadline=$((SECONDS + 10))
  echo "$pid" >"$(pid_file "$svc")"
  # Until the forked shell has exec'd the server, its command line is ours
  # and svc_pid would call the service dead; wait for the exec.
  until svc_pid "$svc" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then break; fi
    sleep 0.05
  done
}

make_dirs() {
  local svc=$1
  mkdir -p "$(svc_dir "$svc")"/{data,log,run}
}

# --- secure mode: throwaway CA and passwords ---------------------------------

secret() { tr -d '\n' <"$SECRETS_DIR/$1"; }

# Writes a random password to secrets/NAME unless it is there (mode 0600).
make_secret() {
  [[ -s "$SECRETS_DIR/$1" ]] && return 0
  (umask 077 && openssl rand -hex 16 >"$SECRETS_DIR/$1.tmp" && mv "$SECRETS_DIR/$1.tmp" "$SECRETS_DIR/$1")
}

# A CA made here and nowhere else, and one server certificate for 127.0.0.1
# and localhost that every secure service presents (serverAuth) and that the
# Kafka broker also shows its own controller (clientAuth, mutual TLS).
# Made once; `reset --secure` deletes them with the rest of the state.
ensure_tls_and_secrets() {
  command -v openssl >/dev/null || die "secure mode needs openssl"
  mkdir -p "$TLS_DIR" "$SECRETS_DIR"
  chmod 0700 "$SECRETS_DIR"
  if [[ ! -s "$TLS_DIR/server-keystore.pem" ]]; then
    log "tls: making a throwaway CA and a server certificate in $TLS_DIR"
    local tmp="$TLS_DIR/.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (
      umask 077
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
        -subj "/CN=iheardai throwaway test CA" 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -keyout "$tmp/server.key" -out "$tmp/server.csr" \
        -subj "/CN=127.0.0.1" 2>/dev/null
      printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth,clientAuth" >"$tmp/ext.cnf"
      openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
        -days 825 -sha256 -extfile "$tmp/ext.cnf" -out "$tmp/server.pem" 2>/dev/null
      # Kafka's PEM keystore: the PKCS#8 key, then the certificate chain.
      cat "$tmp/server.key" "$tmp/server.pem" "$tmp/ca.pem" >"$tmp/server-keystore.pem"
    ) || die "tls: openssl failed"
    chmod 0644 "$tmp/ca.pem" "$tmp/server.pem"
    mv "$tmp"/{ca.key,ca.pem,server.key,server.pem,server-keystore.pem} "$TLS_DIR/"
    rm -rf "$tmp"
  fi
  local name
  for name in kafka_admin_password kafka_password postgres_password redis_password; do
    make_secret "$name"
  done
  # The PostgreSQL password as a pgpass file: a DSN with passfile= carries
  # only this path (libpq reads it where the client runs).
  (umask 077 && printf '%s:%s:*:%s:%s\n' "$HOST" "$PG_PORT" "$PG_USER" "$(secret postgres_password)" \
    >"$SECRETS_DIR/pgpass")
}

# --- installing -------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  [[ $EUID -eq 0 ]] || die "need root to apt-get install $*; install it yourself and rerun"
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The versions of the project's lock (constraints.txt), like `make install`.
pip_install() {
  PIP_CONSTRAINT="$SERVICES_DIR/../constraints.txt" "$PYTHON" -m pip install -q "$@"
}

pip_install_if_missing() {
  local module=$1 requirement=$2
  # find_spec instead of import: importing moto.server alone takes seconds.
  if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$module') is None)" 2>/dev/null; then
    log "pip install $requirement"
    pip_install "$requirement"
  fi
}

# The jar directory is keyed by a hash of the pom, so editing the pom (a new
# Kafka version) resolves a fresh classpath while the old one stays cached.
kafka_libs() {
  local pom_hash
  pom_hash="$(sha256sum "$SERVICES_DIR/kafka/pom.xml" | cut -c1-12)"
  printf '%s/kafka-%s-%s/libs' "$CACHE_DIR" "$KAFKA_VERSION" "$pom_hash"
}

install_kafka() {
  command -v java >/dev/null || die "kafka: java (17+) is not installed"
  # topics.py uses the admin API of kafka-python 3 (dict topic specs).
  if ! "$PYTHON" -c 'import sys, importlib.metadata as m; sys.exit(int(m.version("kafka-python").split(".")[0]) < 3)' 2>/dev/null; then
    log "pip install kafka-python>=3"
    pip_install "kafka-python>=3"
  fi
  local libs tmp
  libs="$(kafka_libs)"
  [[ -f "$libs/.complete" ]] && return 0
  command -v mvn >/dev/null || die "kafka: mvn is needed to fetch the Kafka jars"
  log "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION jars with mvn"
  tmp="$libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -B -q -f "$SERVICES_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    tail -n 40 "$tmp.mvn.log" >&2
    die "kafka: mvn could not resolve the Kafka jars (full output: $tmp.mvn.log)"
  fi
  rm -f "$tmp.mvn.log"
  touch "$tmp/.complete"
  rm -rf "$libs"
  mv "$tmp" "$libs"
}

install_postgres() {
  [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/psql" ]] || apt_install postgresql-15 postgresql-client-15
}

install_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
}

install_s3() {
  pip_install_if_missing moto.server "moto[server]>=5.2.6,<5.3"
  pip_install_if_missing boto3 boto3
}

# --- kafka ------------------------------------------------------------------

# java command line for the Kafka classes, in the array KAFKA_JAVA.
set_kafka_java() {
  local heap_opts
  read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS"
  KAFKA_JAVA=(java "${heap_opts[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    -Dkafka.logs.dir="$(svc_dir kafka)/log"
    -Dlog4j2.configurationFile="$SERVICES_DIR/kafka/log4j2.properties"
    -cp "$(kafka_libs)/*")
}

write_kafka_config() {
  local dir
  dir="$(svc_dir kafka)"
  (umask 077 && : >"$dir/server.properties")
  if ((SECURE)); then
    # Clients get SASL_SSL only (SCRAM-SHA-512, users made at format time);
    # the broker talks to itself over it as `admin`. The KRaft controller
    # cannot use SCRAM (its credentials live in the metadata it serves), so
    # its listener wants mutual TLS with a certificate of our CA.
    cat >>"$dir/server.properties" <<EOF
# Written by services/services.sh --secure on every start; holds a password (0600).
listeners=SASL_SSL://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$HOST:$KAFKA_PORT
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_ADMIN_USER" password="$(secret kafka_admin_password)";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.endpoint.identification.algorithm=https
EOF
  else
    cat >>"$dir/server.properties" <<EOF
# Written by services/services.sh on every start; edit the script, not this.
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
  fi
  cat >>"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=1
# One node: internal topics cannot have more than one replica. And a few
# partitions instead of 50 each: every partition is files to create and to
# load at each start, and tests have a handful of consumer groups.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4
# Tests start consumer groups often; do not wait 3 s for more members.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
EOF
}

start_kafka() {
  local dir cluster_id
  dir="$(svc_dir kafka)"
  make_dirs kafka
  write_kafka_config
  set_kafka_java
  # Format the storage once; the cluster id is kept so a restart finds the
  # same cluster.
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    [[ -f "$dir/cluster.id" ]] ||
      "$PYTHON" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())' >"$dir/cluster.id"
    cluster_id="$(cat "$dir/cluster.id")"
    log "kafka: formatting storage (cluster id $cluster_id)"
    local scram=()
    if ((SECURE)); then
      # SCRAM users of a KRaft cluster are made at format time (the broker
      # needs its own before it can start). This short-lived command line is
      # the one place the passwords appear; it runs once per data dir.
      scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_ADMIN_USER,password=$(secret kafka_admin_password)]"
        --add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$(secret kafka_password)]")
    fi
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --ignore-formatted \
      -t "$cluster_id" -c "$dir/server.properties" "${scram[@]}" >>"$(log_file kafka)" 2>&1 ||
      fail_service kafka "storage format failed"
  fi
  spawn kafka "${KAFKA_JAVA[@]}" kafka.Kafka "$dir/server.properties"
}

# topics.py's security arguments: as admin over SASL_SSL, password from its file.
kafka_admin_args() {
  ((SECURE)) || return 0
  printf '%s\n' --security-protocol SASL_SSL --sasl-mechanism SCRAM-SHA-512 \
    --username "$KAFKA_ADMIN_USER" --password-file "$SECRETS_DIR/kafka_admin_password" \
    --cafile "$TLS_DIR/ca.pem"
}

ready_kafka() {
  local out deadline=$((SECONDS + KAFKA_TIMEOUT_S)) security
  mapfile -t security < <(kafka_admin_args)
  wait_for kafka "$KAFKA_TIMEOUT_S" "listener on port $KAFKA_PORT" port_open "$KAFKA_PORT"
  out="$("$PYTHON" "$SERVICES_DIR/kafka/topics.py" --bootstrap "$HOST:$KAFKA_PORT" "${security[@]}" \
    --timeout-s "$((deadline - SECONDS > 10 ? deadline - SECONDS : 10))" 2>&1)" ||
    fail_service kafka "broker metadata or topic setup failed: $out"
}

healthy_kafka() {
  local security
  mapfile -t security < <(kafka_admin_args)
  "$PYTHON" "$SERVICES_DIR/kafka/topics.py" --bootstrap "$HOST:$KAFKA_PORT" "${security[@]}" --check --timeout-s 5
}

# --- postgres ---------------------------------------------------------------

# PostgreSQL refuses to run as root. As root we run it as the `postgres`
# user; that user cannot enter a root-only home (~ is 0700), so it gets
# CAP_DAC_READ_SEARCH (look up and read paths, nothing more) instead of us
# loosening permissions on $HOME. Its own dirs belong to it.
# AS_PG is the command prefix that does that (empty when not root).
AS_PG=()
if [[ $EUID -eq 0 ]]; then
  AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups
    --inh-caps=+dac_read_search --ambient-caps=+dac_read_search --)
fi

pg_psql_admin() {
  "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$(svc_dir postgres)/run" -p "$PG_PORT" \
    -U postgres -d postgres
}

pg_password() { if ((SECURE)); then secret postgres_password; else echo "$PG_PASSWORD"; fi; }

pg_select_1() {
  local conninfo="host=$HOST port=$PG_PORT user=$PG_USER dbname=$PG_DB connect_timeout=3"
  ((SECURE)) && conninfo+=" sslmode=verify-full sslrootcert=$TLS_DIR/ca.pem"
  PGPASSWORD="$(pg_password)" "$PG_BIN/psql" -X -At -d "$conninfo" -c 'select 1' | grep -qx 1
}

start_postgres() {
  local dir data
  dir="$(svc_dir postgres)"
  data="$dir/data"
  make_dirs postgres
  if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "postgres: no 'postgres' user to run the server as"
    chown postgres: "$data" "$dir/run" "$dir/log"
  fi
  chmod 0700 "$data" "$dir/run"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    # A half-made cluster (initdb interrupted) is removed and made again.
    find "$data" -mindepth 1 -delete
    log "postgres: initdb"
    "${AS_PG[@]}" "$PG_BIN/initdb" -D "$data" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >>"$(log_file postgres)" 2>&1 ||
      fail_service postgres "initdb failed"
  fi
  # After a hard kill, postmaster.pid and the socket's lock file stay
  # behind, naming the dead postmaster. PostgreSQL refuses to start while
  # that pid exists at all, even as a not yet reaped zombie or reused by an
  # unrelated process. We only get here when our pid file names no live
  # server, so such a lock is stale: drop it (but stop if it names a live
  # postmaster of this data dir: two servers on one dir would corrupt it).
  local lock lock_pid
  for lock in "$data/postmaster.pid" "$dir/run/.s.PGSQL.$PG_PORT.lock"; do
    [[ -f "$lock" ]] || continue
    lock_pid="$(head -n1 "$lock" | tr -dc '0-9')"
    if [[ -n "$lock_pid" && -r "/proc/$lock_pid/cmdline" ]] &&
      tr '\0' ' ' <"/proc/$lock_pid/cmdline" | grep -qF -- "$data"; then
      die "postgres: a server (pid $lock_pid) still runs on $data without our pid file; stop it first"
    fi
    rm -f "$lock"
  done
  local tls_args=()
  if ((SECURE)); then
    # TCP only with TLS and a password; the admin's trust login stays on the
    # Unix socket in run/ (0700), which no one else can reach.
    install -m 0600 "$TLS_DIR/server.key" "$dir/server.key"
    install -m 0644 "$TLS_DIR/server.pem" "$dir/server.pem"
    printf '%s\n' "# Written by services.sh --secure on every start." \
      "local all postgres trust" \
      "hostssl all all $HOST/32 scram-sha-256" >"$data/pg_hba.conf"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$dir/server.key" "$dir/server.pem" "$data/pg_hba.conf"; fi
    tls_args=(-c ssl=on -c ssl_cert_file="$dir/server.pem" -c ssl_key_file="$dir/server.key"
      -c ssl_min_protocol_version=TLSv1.2 -c password_encryption=scram-sha-256)
  fi
  # fsync/full_page_writes/synchronous_commit off: a disposable test
  # cluster; crash safety is not worth the slower DDL and inserts on a
  # shared 2-core box. Never use these settings for real data.
  spawn postgres "${AS_PG[@]}" "$PG_BIN/postgres" -D "$data" \
    -c listen_addresses="$HOST" -c port="$PG_PORT" \
    -c unix_socket_directories="$dir/run" -c max_connections=200 \
    -c fsync=off -c full_page_writes=off -c synchronous_commit=off "${tls_args[@]}"
}

ready_postgres() {
  wait_for postgres "$PG_TIMEOUT_S" "pg_isready" \
    "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -U postgres
  pg_psql_admin <<EOF >/dev/null || fail_service postgres "creating role/database failed"
SELECT 'CREATE ROLE $PG_USER LOGIN CREATEDB'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$(pg_password)';
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
EOF
  wait_for postgres 10 "'select 1' as $PG_USER" pg_select_1
}

healthy_postgres() { pg_select_1; }

# --- redis ------------------------------------------------------------------

start_redis() {
  local dir
  dir="$(svc_dir redis)"
  make_dirs redis
  # Persistence off (save "", no AOF): test data, and no fork for snapshots.
  # Daemonized by spawn (its own session, detached from the caller) rather
  # than by redis' own fork, so the pid file is written before we return
  # and holds the server's pid.
  (umask 077 && : >"$dir/redis.conf")
  if ((SECURE)); then
    # TLS only (no plaintext port), no client certificates, a password.
    cat >>"$dir/redis.conf" <<EOF
# Written by services/services.sh --secure on every start; holds a password (0600).
port 0
tls-port $REDIS_PORT
tls-cert-file $TLS_DIR/server.pem
tls-key-file $TLS_DIR/server.key
tls-ca-cert-file $TLS_DIR/ca.pem
tls-auth-clients no
requirepass $(secret redis_password)
EOF
  else
    printf '%s\n' "# Written by services/services.sh on every start; edit the script, not this." \
      "port $REDIS_PORT" >>"$dir/redis.conf"
  fi
  cat >>"$dir/redis.conf" <<EOF
bind $HOST
protected-mode yes
daemonize no
# Keep the config path in the process title: it is what tells our server
# from another Redis on this port (services.sh svc_signatures).
proc-title-template "{title} {listen-addr} {config-file}"
dir $dir/data
logfile ""
save ""
appendonly no
EOF
  spawn redis redis-server "$dir/redis.conf"
}

redis_ping() {
  if ((SECURE)); then
    # REDISCLI_AUTH, not -a: a password on the command line is visible in ps.
    [[ "$(REDISCLI_AUTH="$(secret redis_password)" redis-cli --tls --cacert "$TLS_DIR/ca.pem" \
      -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
  else
    [[ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
  fi
}

ready_redis() { wait_for redis "$REDIS_TIMEOUT_S" "PONG" redis_ping; }

healthy_redis() { redis_ping; }

# --- s3 ---------------------------------------------------------------------

# moto keeps every bucket and object in memory: a restart loses them, and
# ready_s3 creates the archive bucket again.
S3_BOOTSTRAP_ACTIONS=3 # bucket.py BOOTSTRAP_ACTIONS

s3_credentials_file() { printf '%s/s3_credentials' "$SECRETS_DIR"; }

start_s3() {
  make_dirs s3
  if ((SECURE)); then
    # HTTPS with our certificate; signatures checked once the IAM bootstrap
    # (ready_s3) has spent the unsigned requests. A new server has no users:
    # its key is made again.
    rm -f "$(s3_credentials_file)"
    # moto checks signatures against the raw path from 5.2.6 on; ready_s3
    # probes that with an archive-shaped key (bucket.py --probe).
    INITIAL_NO_AUTH_ACTION_COUNT=$S3_BOOTSTRAP_ACTIONS spawn s3 "$PYTHON" -X iheard_service="$(svc_dir s3)" \
      -m moto.server -H "$HOST" -p "$S3_PORT" \
      --ssl-cert "$TLS_DIR/server.pem" --ssl-key "$TLS_DIR/server.key"
  else
    spawn s3 "$PYTHON" -X iheard_service="$(svc_dir s3)" -m moto.server -H "$HOST" -p "$S3_PORT"
  fi
}

s3_endpoint() {
  if ((SECURE)); then printf 'https://%s:%s' "$HOST" "$S3_PORT"; else printf 'http://%s:%s' "$HOST" "$S3_PORT"; fi
}

s3_bucket() {
  local auth=(--access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY")
  ((SECURE)) && auth=(--credentials-file "$(s3_credentials_file)" --ca-bundle "$TLS_DIR/ca.pem")
  "$PYTHON" "$SERVICES_DIR/s3/bucket.py" --endpoint "$(s3_endpoint)" \
    --bucket "$ARCHIVE_BUCKET" "${auth[@]}" --region "$S3_REGION" "$@"
}

ready_s3() {
  local out bootstrap=()
  wait_for s3 "$S3_TIMEOUT_S" "listener on port $S3_PORT" port_open "$S3_PORT"
  if ((SECURE)); then
    bootstrap=(--probe)
    [[ -s "$(s3_credentials_file)" ]] || bootstrap+=(--bootstrap-iam)
  fi
  out="$(s3_bucket "${bootstrap[@]}" --timeout-s "$S3_TIMEOUT_S" 2>&1)" ||
    fail_service s3 "ListBuckets/CreateBucket failed: $out"
}

healthy_s3() { s3_bucket --check --timeout-s 5; }

# --- commands ---------------------------------------------------------------

take_lock() {
  mkdir -p "$IHEARD_HOME"
  exec 9>"$IHEARD_HOME/.services.lock"
  flock -w 900 9 || die "another services.sh held $IHEARD_HOME/.services.lock for 15 minutes"
}

cmd_install() {
  local svc
  for svc in "$@"; do "install_$svc"; done
}

cmd_up() {
  local svc pid t0=$SECONDS started=()
  cmd_install "$@"
  if ((SECURE)); then ensure_tls_and_secrets; fi
  ((SECONDS - t0 < 1)) || log "install: $((SECONDS - t0))s"
  # Start everything first, then wait: the JVM warms up while the others start.
  for svc in "$@"; do
    if pid="$(svc_pid "$svc")"; then
      log "$svc: already running (pid $pid)"
      continue
    fi
    if [[ -f "$(pid_file "$svc")" ]]; then
      log "$svc: removing stale pid file"
      rm -f "$(pid_file "$svc")"
    fi
    make_dirs "$svc"
    if pid="$(find_own_listener "$svc")"; then
      log "$svc: adopting running server pid $pid (its pid file was missing)"
      continue
    fi
    require_free_port "$svc" "$(svc_port "$svc")"
    log "$svc: starting"
    "start_$svc"
    started+=("$svc")
  done
  for svc in "$@"; do
    "ready_$svc"
    log "$svc: healthy on $HOST:$(svc_port "$svc") (pid $(svc_pid "$svc"), +$((SECONDS - t0))s)"
  done
  log "up: ${*} ready in $((SECONDS - t0))s (started: ${started[*]:-none})"
}

stop_one() {
  local svc=$1 pid signal=TERM
  if ! pid="$(svc_pid "$svc")"; then
    rm -f "$(pid_file "$svc")"
    log "$svc: not running"
    return 0
  fi
  # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for clients.
  [[ "$svc" == postgres ]] && signal=INT
  log "$svc: stopping pid $pid"
  kill "-$signal" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$svc: still running after ${STOP_TIMEOUT_S}s, killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pid_file "$svc")"
}

cmd_down() {
  local svc
  for svc in "$@"; do stop_one "$svc"; done
}

cmd_status() {
  local svc pid rc=0
  for svc in "$@"; do
    if pid="$(svc_pid "$svc")"; then
      if "healthy_$svc" >/dev/null 2>&1; then
        printf '%-9s running  pid %-8s %s:%s healthy\n' "$svc" "$pid" "$HOST" "$(svc_port "$svc")"
      else
        printf '%-9s running  pid %-8s %s:%s NOT healthy\n' "$svc" "$pid" "$HOST" "$(svc_port "$svc")"
        rc=1
      fi
    else
      if [[ -f "$(pid_file "$svc")" ]]; then
        printf '%-9s stopped  (stale pid file)\n' "$svc"
      else
        printf '%-9s stopped\n' "$svc"
      fi
      rc=1
    fi
  done
  return "$rc"
}

cmd_env() {
  local name
  local -A settings=(
    [IHEARD_HOME]="$IHEARD_ROOT"
    [KAFKA_BOOTSTRAP]="$HOST:$KAFKA_PORT"
    [POSTGRES_HOST]="$HOST"
    [POSTGRES_PORT]="$PG_PORT"
    [POSTGRES_USER]="$PG_USER"
    [POSTGRES_PASSWORD]="$PG_PASSWORD"
    [POSTGRES_DB]="$PG_DB"
    [REDIS_HOST]="$HOST"
    [REDIS_PORT]="$REDIS_PORT"
    [SPACES_ENDPOINT]="http://$HOST:$S3_PORT"
    [SPACES_REGION]="$S3_REGION"
    [SPACES_ACCESS_KEY]="$S3_ACCESS_KEY"
    [SPACES_SECRET_KEY]="$S3_SECRET_KEY"
    [ARCHIVE_BUCKET]="$ARCHIVE_BUCKET"
  )
  if [[ -n "$IHEARD_INSTANCE" ]]; then
    # IHEARD_HOME stays the shared root: with IHEARD_INSTANCE, a shell that
    # evals this points later services.sh / cluster.sh calls at this instance.
    settings+=(
      [IHEARD_INSTANCE]="$IHEARD_INSTANCE"
      [IHEARD_INSTANCE_DIR]="$IHEARD_HOME"
      [IHEARD_INSTANCE_SLOT]="$(instance_slot "$IHEARD_ROOT")"
    )
  fi
  if ((SECURE)); then
    local ca="$TLS_DIR/ca.pem" pg_password redis_password s3_key="" s3_secret=""
    pg_password="$(secret postgres_password 2>/dev/null || true)"
    redis_password="$(secret redis_password 2>/dev/null || true)"
    if [[ -s "$(s3_credentials_file)" ]]; then
      s3_key="$(sed -n 's/^aws_access_key_id *= *//p' "$(s3_credentials_file)")"
      s3_secret="$(sed -n 's/^aws_secret_access_key *= *//p' "$(s3_credentials_file)")"
    fi
    settings+=(
      [IHEARD_SECURE]=1
      [IHEARD_CA_FILE]="$ca"
      [KAFKA_SECURITY_PROTOCOL]=SASL_SSL
      [KAFKA_SASL_MECHANISM]=SCRAM-SHA-512
      [KAFKA_USER]="$KAFKA_USER"
      [KAFKA_PASSWORD]="$(secret kafka_password 2>/dev/null || true)"
      [KAFKA_SSL_CAFILE]="$ca"
      [POSTGRES_PASSWORD]="$pg_password"
      [POSTGRES_SSLMODE]=verify-full
      [POSTGRES_SSLROOTCERT]="$ca"
      [REDIS_PASSWORD]="$redis_password"
      [REDIS_TLS]=1
      [REDIS_CA_CERT]="$ca"
      [SPACES_ENDPOINT]="$(s3_endpoint)"
      [SPACES_CA_BUNDLE]="$ca"
      [SPACES_ACCESS_KEY]="$s3_key"
      [SPACES_SECRET_KEY]="$s3_secret"
      [IHEARD_SECRETS_DIR]="$SECRETS_DIR"
      [IHEARD_SECURE_HOME]="$IHEARD_HOME"
    )
    # Not IHEARD_HOME: a shell that evals this must not point a later plain
    # `services.sh up` at the secure set's directories.
    unset 'settings[IHEARD_HOME]'
  fi
  # Shell-quoted, so `eval "$(services.sh env)"` is safe for any IHEARD_HOME.
  for name in $(printf '%s\n' "${!settings[@]}" | sort); do
    printf 'export %s=%q\n' "$name" "${settings[$name]}"
  done
}

cmd_reset() {
  local svc
  cmd_down "$@"
  for svc in "$@"; do
    log "$svc: deleting $(svc_dir "$svc")"
    rm -rf "$(svc_dir "$svc")"
  done
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

main() {
  local args=() arg
  for arg in "$@"; do [[ "$arg" == --secure || "$arg" == --instance=* ]] || args+=("$arg"); done
  set -- "${args[@]}"
  [[ $# -ge 1 ]] || usage
  local cmd=$1 svc
  shift
  local services=("$@")
  [[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
  for svc in "${services[@]}"; do
    [[ " ${ALL_SERVICES[*]} " == *" $svc "* ]] || die "unknown service '$svc' (known: ${ALL_SERVICES[*]})"
  done
  case "$cmd" in
    install | up | down | reset)
      take_lock
      "cmd_$cmd" "${services[@]}"
      ;;
    status | env) "cmd_$cmd" "${services[@]}" ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
