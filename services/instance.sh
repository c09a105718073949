# Named instances: sourced by services/services.sh and flink/cluster.sh.
#
# An instance is a separate set of servers (Kafka, PostgreSQL, Redis, S3 and
# a Flink cluster) beside the default one, e.g. for a test that stops a
# broker without breaking the tests beside it. It is named with
# `--instance=NAME` or IHEARD_INSTANCE=NAME (the option wins); no name (or
# `default`) is the default instance, whose ports and folders are those of
# docs/ARCHITECTURE.md, unchanged.
#
# Folders: $IHEARD_HOME/instances/NAME/ holds the instance's data, logs, pid
# files and locks (services as <service>/{data,log,run}, Flink as flink/);
# the download caches ($IHEARD_HOME/cache, $IHEARD_HOME/flink/{dist,jobserver})
# stay shared.
#
# Ports: the first time a name is used it gets the lowest free slot S in
# 0..49 (kept in instances/NAME/slot, allocated under a lock, so two live
# instances never share one); its ports are 20000 + 100*S + offset:
#
#   offset  what                         default instance
#   0       Kafka broker                 19092
#   1       Kafka KRaft controller       19093
#   2       PostgreSQL                   15433
#   3       Redis                        16380
#   4       S3 (moto)                    19000
#   10      Flink REST / dashboard       18081
#   11      Flink JobManager RPC         16123
#   12      Flink blob server            16124
#   13-17   Flink TaskManager RPC        16125-16129
#   18-22   Flink TaskManager data       16130-16134
#   23-32   Flink metrics query service  16135-16144
#   40-48   Flink TaskManager Prometheus 19249-19258
#   49      Flink JobManager Prometheus  19259
#   60      Prometheus server            (none)
#   61      the project's exporter       (none)
#
# 20000-24999 holds no port of the default set (15433-19259), of the
# --secure set (25433-29093) or of Linux's ephemeral range (32768-60999).
# The arithmetic is also in tests/support.py (instance_port), which the unit
# tests check against `env`.

INSTANCE_PORT_BASE=20000
INSTANCE_PORT_BLOCK=100
INSTANCE_SLOTS=50

# Sets IHEARD_INSTANCE from --instance=NAME among "$@" and puts the other
# arguments in INSTANCE_REST_ARGS.
instance_parse_args() {
  INSTANCE_REST_ARGS=()
  local arg
  for arg in "$@"; do
    case "$arg" in
      --instance=*) IHEARD_INSTANCE="${arg#--instance=}" ;;
      *) INSTANCE_REST_ARGS+=("$arg") ;;
    esac
  done
  IHEARD_INSTANCE="${IHEARD_INSTANCE:-}"
  [[ "$IHEARD_INSTANCE" == default ]] && IHEARD_INSTANCE=""
  if [[ -n "$IHEARD_INSTANCE" && ! "$IHEARD_INSTANCE" =~ ^[a-z0-9][a-z0-9-]{0,39}$ ]]; then
    printf 'instance name %q: use 1-40 of a-z, 0-9 and -, starting with a letter or digit\n' \
      "$IHEARD_INSTANCE" >&2
    exit 2
  fi
  return 0
}

# instance_dir ROOT: the instance's folder under the shared IHEARD_HOME ROOT.
instance_dir() { printf '%s/instances/%s' "$1" "$IHEARD_INSTANCE"; }

# instance_slot ROOT: prints the instance's slot, allocating it on first use.
instance_slot() {
  local root=$1 dir slot used f s
  dir="$(instance_dir "$root")"
  if [[ -s "$dir/slot" ]]; then
    tr -dc '0-9' <"$dir/slot"
    return 0
  fi
  mkdir -p "$root/instances"
  (
    flock -w 60 8 || { echo "instance: slot lock busy" >&2; exit 1; }
    if [[ -s "$dir/slot" ]]; then tr -dc '0-9' <"$dir/slot"; exit 0; fi
    used=" "
    for f in "$root"/instances/*/slot; do
      [[ -s "$f" ]] && used+="$(tr -dc '0-9' <"$f") "
    done
    for ((s = 0; s < INSTANCE_SLOTS; s++)); do
      if [[ "$used" != *" $s "* ]]; then
        mkdir -p "$dir"
        echo "$s" >"$dir/slot.tmp" && mv "$dir/slot.tmp" "$dir/slot"
        echo "$s"
        exit 0
      fi
    done
    echo "instance: all $INSTANCE_SLOTS slots are taken (delete unused folders under $root/instances)" >&2
    exit 1
  ) 8>"$root/instances/.slots.lock"
}

# instance_port ROOT OFFSET
instance_port() {
  local slot
  slot="$(instance_slot "$1")" || exit 1
  echo $((INSTANCE_PORT_BASE + INSTANCE_PORT_BLOCK * slot + $2))
}
