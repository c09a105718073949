"""runners.submit rewind against the local Kafka broker: moves, the dry run, the refusal."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _rewind(services, group, topic, *extra):
    return subprocess.run(
        [sys.executable, "-m", "runners.submit", "rewind", "--job=frontend", f"--kafka_group_id={group}",
         f"--topic={topic}", f"--kafka_bootstrap={services.kafka_bootstrap}", "--to=1970-01-01T00:16:44", *extra],
        capture_output=True, text=True, timeout=120,
    )


def test_rewind_moves_each_partition_to_the_first_record_at_the_time_and_refuses_an_active_group(services):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    bootstrap = services.kafka_bootstrap
    topic, group = f"rewind-{uuid.uuid4().hex[:8]}", f"rewind-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(12):  # partition i % 3, record timestamps 1,000,000 + i s
        producer.send(topic, b"x", partition=i % 3, timestamp_ms=1_000_000 + i * 1000)
    producer.flush()
    producer.close()
    tps = [TopicPartition(topic, p) for p in range(3)]
    # as the job's reader commits: outside any generation; partition 2 not read as far as the time
    admin.alter_group_offsets(group, {tps[0]: OffsetAndMetadata(4, "", -1), tps[1]: OffsetAndMetadata(3, "", -1),
                                      tps[2]: OffsetAndMetadata(0, "", -1)})

    def committed():
        return {tp.partition: meta.offset for tp, meta in admin.list_group_offsets(group)[group].items()}

    # 1,004,000 ms: partition 0 holds 0,3,6,9 s -> offset 2; partition 1 holds 1,4,7,10 s -> offset 1;
    # partition 2 holds 2,5,8,11 s -> offset 1, after the committed 0: kept
    dry = _rewind(services, group, topic, "--dry_run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.splitlines()[:3] == ["0: 4 -> 2", "1: 3 -> 1", "2: 0 -> 0 (kept: the job had not read that far)"]
    assert committed() == {0: 4, 1: 3, 2: 0}
    done = _rewind(services, group, topic)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["moved"] == {"0": [4, 2], "1": [3, 1], "2": [0, 0]}
    assert committed() == {0: 2, 1: 1, 2: 0}

    member = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        member.poll(3000)
        member.poll(3000)
        refused = _rewind(services, group, topic)
    finally:
        member.close(autocommit=False)
        admin.close()
    assert refused.returncode == 1
    assert "active member(s)" in refused.stderr and "runners.submit stop" in refused.stderr, refused.stderr[-2000:]
