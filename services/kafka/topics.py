"""Wait for the local Kafka broker and make sure the project's topics exist.

services.sh runs this after starting the broker::

    python services/kafka/topics.py --bootstrap 127.0.0.1:19092 --timeout-s 120
    python services/kafka/topics.py --bootstrap 127.0.0.1:19092 --check

Without ``--check`` it creates missing topics, grows topics that have fewer
partitions than wanted and sets their retention, then verifies that every
partition has a leader. With ``--check`` it changes nothing and exits 1 when
a topic is missing or has the wrong partition count. Exit status 2 means the
broker did not answer a metadata request before the timeout.
"""
import argparse
import sys
import time

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

DAY_MS = 24 * 60 * 60 * 1000

# name -> (partitions, retention_ms). Partition counts and the 30/7-day
# retention follow the design doc; the dead-letter topic is ours: it keeps
# failures as long as the longest-lived source so they can be replayed.
TOPICS = {
    "frontend_user_interaction": (8, 30 * DAY_MS),
    "text_agent_turn_completed": (6, 30 * DAY_MS),
    "marketo_leads_delta": (3, 7 * DAY_MS),
    "pipeline_dead_letter": (3, 30 * DAY_MS),
}

# A single-node test broker cannot hold more than one replica.
REPLICATION_FACTOR = 1
POLL_INTERVAL_S = 0.5


def security_config(args):
    """kafka-python settings for a SASL_SSL broker (services.sh --secure).

    The password comes from a file, never from the command line (which any
    local user can read in /proc)."""
    if args.security_protocol == "PLAINTEXT":
        return {}
    config = {"security_protocol": args.security_protocol}
    if args.cafile:
        config["ssl_cafile"] = args.cafile
    if args.security_protocol.startswith("SASL_"):
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
        config.update(
            sasl_mechanism=args.sasl_mechanism,
            sasl_plain_username=args.username,
            sasl_plain_password=password,
        )
    return config


def connect(bootstrap, deadline, security=None):
    """Returns an admin client once the broker answers a metadata request."""
    last_error = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="iheard-services",
                request_timeout_ms=10000,
                **(security or {}),
            )
            admin.list_topics()
            return admin
        except (KafkaError, OSError) as exc:  # broker still starting
            last_error = exc
            time.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"Kafka at {bootstrap} gave no metadata: {last_error!r}")


def partition_counts(admin, names):
    """Topic name -> number of partitions that have a leader, for existing topics."""
    counts = {}
    for topic in admin.describe_topics(list(names)):
        if topic.get("error_code", 0) != 0:
            continue  # unknown topic
        partitions = topic["partitions"]
        led = [p for p in partitions if p.get("leader_id", p.get("leader", -1)) >= 0]
        counts[topic["name"]] = (len(partitions), len(led))
    return counts


def ensure(admin, deadline):
    """Creates or grows topics until all of TOPICS exist with leaders."""
    while True:
        counts = partition_counts(admin, TOPICS)
        missing = {n: spec for n, spec in TOPICS.items() if n not in counts}
        if missing:
            try:
                admin.create_topics(
                    {
                        name: {
                            "num_partitions": partitions,
                            "replication_factor": REPLICATION_FACTOR,
                            "configs": {"retention.ms": str(retention_ms)},
                        }
                        for name, (partitions, retention_ms) in missing.items()
                    },
                    timeout_ms=30000,
                    raise_errors=False,
                )
            except TopicAlreadyExistsError:
                pass  # another `up` got there first
        too_few = {
            name: TOPICS[name][0]
            for name, (total, _) in counts.items()
            if total < TOPICS[name][0]
        }
        if too_few:
            admin.create_partitions(too_few, timeout_ms=30000, raise_errors=False)
        if not missing and not too_few and all(
            led == total for total, led in counts.values()
        ):
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not ready: have {counts}, want {TOPICS}")
        time.sleep(POLL_INTERVAL_S)
    set_retention(admin)


def set_retention(admin):
    """Sets retention.ms on topics where it differs (e.g. made by auto-create)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in TOPICS]
    current = admin.describe_configs(resources)
    wrong = []
    for name, (_, retention_ms) in TOPICS.items():
        value = current.get("topic", {}).get(name, {}).get("retention.ms", {})
        if isinstance(value, dict):
            value = value.get("value")
        if value != str(retention_ms):
            wrong.append(
                ConfigResource(
                    ConfigResourceType.TOPIC, name, {"retention.ms": str(retention_ms)}
                )
            )
    if wrong:
        admin.alter_configs(wrong)


def check(admin):
    """Returns a list of problems; empty when every topic is as wanted."""
    counts = partition_counts(admin, TOPICS)
    problems = []
    for name, (partitions, _) in TOPICS.items():
        if name not in counts:
            problems.append(f"{name}: missing")
        elif counts[name][0] < partitions:
            problems.append(f"{name}: {counts[name][0]} partitions, want {partitions}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--check", action="store_true", help="verify only")
    parser.add_argument("--security-protocol", default="PLAINTEXT",
                        choices=["PLAINTEXT", "SSL", "SASL_SSL"])
    parser.add_argument("--sasl-mechanism", default="SCRAM-SHA-512")
    parser.add_argument("--username")
    parser.add_argument("--password-file", help="file holding the SASL password")
    parser.add_argument("--cafile", help="CA bundle that signed the broker's certificate")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout_s
    try:
        admin = connect(args.bootstrap, deadline, security_config(args))
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.check:
            problems = check(admin)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        ensure(admin, deadline)
        for name, (total, _) in sorted(partition_counts(admin, TOPICS).items()):
            print(f"{name}: {total} partitions")
        return 0
    except (TimeoutError, KafkaError) as exc:
        print(f"topic setup failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
