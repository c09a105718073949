"""ReadFromKafka / WriteToKafka against the project's Kafka broker.

Every test makes its own topic (unique name), so tests never see each other's
records nor the seed topics the pipeline tests use. Pipelines run on the
FnApiRunner, in-process.
"""
import io
import json
import struct
import threading
import time
import uuid

import apache_beam as beam
import fastavro
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.restriction_trackers import OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.sdf_utils import RestrictionTrackerView
from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from iheard_io.kafka import ReadFromKafka
from iheard_io.kafka import WriteToKafka
from iheard_io.kafka_read import _PartitionSpec
from iheard_io.kafka_read import _ReadFromKafkaPartitionUnboundedFn
from iheard_io.kafka import avro_decoder
from iheard_io.kafka import json_decoder
from iheard_io.kafka import kafka_client_config
from schemas.records import FailedRecord
from schemas.records import SourceRecord

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# An hour-aligned base (2023-11-14T22:00:00Z) so timestamps are easy to read.
BASE_TS_MS = 1_699_999_200_000


def make_topic(bootstrap, partitions, prefix="it-kafka"):
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def produce(bootstrap, topic, records):
    """records: (partition, key, value, timestamp_ms). Returns the
    SourceRecords Kafka assigned (with their real offsets)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [
            (producer.send(topic, key=key, value=value, partition=partition, timestamp_ms=ts), key, value, ts)
            for partition, key, value, ts in records
        ]
        producer.flush()
        out = []
        for future, key, value, ts in futures:
            meta = future.get(timeout=30)
            out.append(SourceRecord(value, topic, meta.partition, meta.offset, key, ts))
        return out
    finally:
        producer.close()


def committed_offsets(bootstrap, topic, group_id, partitions):
    from kafka import KafkaConsumer
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        return [consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        consumer.close(autocommit=False)


def run(pipeline_fn):
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        pipeline_fn(p)


def test_bounded_read_returns_every_record_with_its_offset_timestamp_and_value(kafka_bootstrap):
    topic = make_topic(kafka_bootstrap, partitions=3)
    sent = produce(kafka_bootstrap, topic, [
        (i % 3, f"k{i % 5}".encode(), json.dumps({"i": i}).encode(), BASE_TS_MS + i * 1000)
        for i in range(300)
    ])
    # Per partition the offsets are 0..99.
    assert sorted(r.offset for r in sent if r.partition == 1) == list(range(100))

    def pipeline(p):
        records = p | ReadFromKafka(kafka_bootstrap, [topic], mode="bounded")
        assert_that(records, equal_to(sent), label="CheckRecords")
        timestamps = records | "WithTimestamp" >> beam.Map(
            lambda r, ts=beam.DoFn.TimestampParam: (r.partition, r.offset, ts.micros // 1000))
        assert_that(
            timestamps,
            equal_to([(r.partition, r.offset, r.timestamp_ms) for r in sent]),
            label="CheckTimestamps")

    run(pipeline)


def test_bounded_read_commits_group_offsets_and_next_run_starts_there(kafka_bootstrap):
    topic = make_topic(kafka_bootstrap, partitions=2)
    group = f"it-group-{uuid.uuid4().hex[:8]}"
    first = produce(kafka_bootstrap, topic, [
        (i % 2, None, f"first-{i}".encode(), BASE_TS_MS + i) for i in range(40)])

    # Bounded reads commit only when asked (portable Flink batch has no
    # bundle finalization); the FnApiRunner has it.
    run(lambda p: assert_that(
        p | ReadFromKafka(kafka_bootstrap, topic, group_id=group, commit_offsets=True)
        | beam.Map(lambda r: r.value),
        equal_to([r.value for r in first])))
    # Committed by the bundle finalizer: one past the last offset read.
    assert committed_offsets(kafka_bootstrap, topic, group, 2) == [20, 20]

    second = produce(kafka_bootstrap, topic, [
        (i % 2, None, f"second-{i}".encode(), BASE_TS_MS + 100 + i) for i in range(10)])
    run(lambda p: assert_that(
        p | ReadFromKafka(kafka_bootstrap, topic, group_id=group, commit_offsets=True)
        | beam.Map(lambda r: (r.partition, r.offset, r.value)),
        equal_to([(r.partition, r.offset, r.value) for r in second])))
    assert committed_offsets(kafka_bootstrap, topic, group, 2) == [25, 25]

    # start_from="earliest" ignores the group's position.
    run(lambda p: assert_that(
        p | ReadFromKafka(kafka_bootstrap, topic, group_id=group, start_from="earliest")
        | beam.combiners.Count.Globally(),
        equal_to([50])))
    # ... and by default a bounded read leaves the group where it was.
    assert committed_offsets(kafka_bootstrap, topic, group, 2) == [25, 25]


def test_bounded_read_finishes_when_offsets_have_gaps(kafka_bootstrap):
    """Transaction markers take offsets no record has, here the last offset of
    the partition: the reader must still finish (try_claim of the stop)."""
    from kafka import KafkaProducer

    topic = make_topic(kafka_bootstrap, partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap,
                             transactional_id=f"it-tx-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    for batch in range(3):
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, value=f"{batch}-{i}".encode(), partition=0)
        producer.commit_transaction()
    producer.close()

    from kafka import KafkaConsumer
    from kafka import TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    end = consumer.end_offsets([TopicPartition(topic, 0)])[TopicPartition(topic, 0)]
    consumer.close()
    assert end == 18  # 15 records + 3 commit markers

    def pipeline(p):
        offsets = p | ReadFromKafka(kafka_bootstrap, topic) | beam.Map(lambda r: (r.offset, r.value))
        # Markers at 5, 11 and 17 are skipped.
        expected = [(b * 6 + i, f"{b}-{i}".encode()) for b in range(3) for i in range(5)]
        assert_that(offsets, equal_to(expected))

    run(pipeline)


def test_streaming_read_picks_up_new_records_and_closes_sessions(kafka_bootstrap):
    """Streaming mode on the FnApiRunner: records produced while the job runs
    arrive; the restriction ends after 3 s without records (test-only stop);
    session windows downstream close."""
    topic = make_topic(kafka_bootstrap, partitions=2)
    now_ms = int(time.time() * 1000)
    # Session A: 20 records 1 s apart, a minute ago. Session B: produced
    # while the pipeline runs, timestamped now.
    produce(kafka_bootstrap, topic, [
        (i % 2, b"a", f"a{i}".encode(), now_ms - 60_000 + i * 1000) for i in range(20)])

    def produce_later():
        time.sleep(3)
        produce(kafka_bootstrap, topic, [
            (0, b"b", f"b{i}".encode(), now_ms + i) for i in range(7)])

    producer_thread = threading.Thread(target=produce_later)
    producer_thread.start()
    try:
        def pipeline(p):
            records = p | ReadFromKafka(
                kafka_bootstrap, topic, mode="streaming", stop_after_idle_seconds=4,
                idle_watermark_lag_seconds=1, poll_timeout_ms=100)
            sessions = (
                records
                | "Sessions" >> beam.WindowInto(window.Sessions(10))
                | "ByKey" >> beam.Map(lambda r: (r.key, r.value))
                | "Group" >> beam.GroupByKey()
                | "Size" >> beam.MapTuple(lambda key, values: (key, len(list(values)))))
            assert_that(sessions, equal_to([(b"a", 20), (b"b", 7)]))

        run(pipeline)
    finally:
        producer_thread.join()


class _Finalizer:
    """Collects bundle-finalizer callbacks, as a runner would."""

    def __init__(self):
        self.callbacks = []

    def register(self, callback):
        self.callbacks.append(callback)


def test_streaming_reader_watermark_and_deferral(kafka_bootstrap):
    """The SDF itself, driven like a runner does: it claims what it emitted,
    returns once caught up and defers the rest, moves the watermark to the
    newest record time, and on an idle partition to wall clock minus the idle
    lag (never before it knows the partition's end: no jump over a backlog)."""
    topic = make_topic(kafka_bootstrap, partitions=1)
    produce(kafka_bootstrap, topic, [
        (0, None, f"v{i}".encode(), BASE_TS_MS + i * 1000) for i in range(10)])
    group = f"it-group-{uuid.uuid4().hex[:8]}"
    config = kafka_client_config(kafka_bootstrap)
    fn = _ReadFromKafkaPartitionUnboundedFn(
        config, group, {}, False, max_records_per_poll=4, poll_timeout_ms=100,
        idle_watermark_lag_s=30, max_out_of_order_s=0, timestamp_fn=None,
        max_read_time_s=0.5, stop_after_idle_s=None, commit_offsets=True)
    fn.setup()
    try:
        spec = _PartitionSpec(topic, 0, 0, 2**63 - 1)
        tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(0, 2**63 - 1)))
        estimator = ManualWatermarkEstimator(None)
        finalizer = _Finalizer()
        out = list(fn.process(spec, finalizer, RestrictionTrackerView(tracker), estimator))

        assert [v.value.offset for v in out] == list(range(10))
        assert [v.timestamp for v in out] == [
            Timestamp(micros=(BASE_TS_MS + i * 1000) * 1000) for i in range(10)]
        # The call returned as soon as it had caught up (no idle polling), and
        # the empty polls before the first fetch answered did not move the
        # watermark to wall clock: it is the newest record's time.
        assert estimator.current_watermark() == Timestamp(micros=(BASE_TS_MS + 9000) * 1000)
        # Deferred, not finished: this call owns [0, 10), the runner resumes
        # the residual [10, inf) later.
        residual, _delay = tracker.deferred_status()
        assert tracker.current_restriction() == OffsetRange(0, 10)
        assert residual == OffsetRange(10, 2**63 - 1)
        tracker.check_done()
        # Commits wait for the finalizer (bundle durable), then land.
        assert committed_offsets(kafka_bootstrap, topic, group, 1) == [None]
        for callback in finalizer.callbacks:
            callback()
        assert committed_offsets(kafka_bootstrap, topic, group, 1) == [10]

        # Resume with nothing new: caught up and idle for the whole 0.5 s,
        # the watermark moves to wall clock - 30 s.
        tracker2 = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(residual))
        assert list(fn.process(spec, _Finalizer(), RestrictionTrackerView(tracker2), estimator)) == []
        watermark = estimator.current_watermark()
        assert Timestamp.now() - 40 < watermark < Timestamp.now() - 20
        residual2, _delay = tracker2.deferred_status()
        assert residual2 == OffsetRange(10, 2**63 - 1)

        # Resume again: new records, and the watermark never goes back
        # although they are older than it.
        produce(kafka_bootstrap, topic, [(0, None, b"late", BASE_TS_MS)])
        tracker3 = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(residual2))
        out3 = list(fn.process(spec, _Finalizer(), RestrictionTrackerView(tracker3), estimator))
        assert [(v.value.offset, v.value.value) for v in out3] == [(10, b"late")]
        assert estimator.current_watermark() >= watermark
    finally:
        fn.teardown()


def test_avro_confluent_and_json_payloads_survive_the_reader(kafka_bootstrap):
    """The reader passes bytes through untouched: Confluent-framed Avro, raw
    Avro and JSON decode after the read; junk stays a SourceRecord (the parse
    step turns it into a dead letter)."""
    schema = {
        "type": "record", "name": "Ping", "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "n", "type": ["null", "int"], "default": None},
        ]}
    parsed = fastavro.parse_schema(schema)

    def avro_bytes(record):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    confluent = struct.pack(">bI", 0, 42) + avro_bytes({"event_id": "c1", "n": 7})
    raw = avro_bytes({"event_id": "r1", "n": None})
    topic = make_topic(kafka_bootstrap, partitions=1)
    produce(kafka_bootstrap, topic, [
        (0, None, confluent, BASE_TS_MS),
        (0, None, raw, BASE_TS_MS + 1),
        (0, None, b'{"event_id": "j1"}', BASE_TS_MS + 2),
        (0, None, b"\xff\x00junk", BASE_TS_MS + 3),
    ])
    decode_avro = avro_decoder(parsed)

    def decode(record):
        for decoder in (decode_avro, json_decoder):
            try:
                return decoder(record.value)["event_id"]
            except Exception:  # pylint: disable=broad-except
                continue
        return f"undecodable@{record.offset}"

    run(lambda p: assert_that(
        p | ReadFromKafka(kafka_bootstrap, topic) | beam.Map(decode),
        equal_to(["c1", "r1", "j1", "undecodable@3"])))

    assert avro_decoder(parsed, wire_format="confluent")(confluent) == {"event_id": "c1", "n": 7}
    with pytest.raises(ValueError):
        avro_decoder(parsed, wire_format="confluent")(raw[1:])
    with pytest.raises(ValueError):
        json_decoder(b"[1, 2]")


def test_write_to_kafka_round_trips_dead_letters(kafka_bootstrap):
    topic = make_topic(kafka_bootstrap, partitions=3, prefix="it-dead-letter")
    failures = [
        FailedRecord(raw=f"payload {i}", error_class="ValueError", error_message="bad",
                     stage="validate", pipeline="frontend", source_topic="t",
                     source_partition=i % 3, source_offset=i)
        for i in range(25)
    ]
    too_big = FailedRecord(raw="x" * 2_000_000, error_class="ValueError", error_message="huge",
                           stage="validate", pipeline="frontend", source_offset=999)

    def write(p):
        failed = p | beam.Create(failures + [too_big]) | WriteToKafka(
            kafka_bootstrap, topic, key_fn=lambda f: f"{f.source_topic}:{f.source_offset}",
            pipeline="frontend")
        # Over the producer's 1 MB request limit: a dead letter, not a
        # bundle that fails forever.
        assert_that(failed | beam.Map(lambda f: (f.stage, f.error_class, f.source_topic)),
                    equal_to([("sink:kafka", "MessageSizeTooLargeError", topic)]))

    run(write)

    def pipeline(p):
        back = (p | ReadFromKafka(kafka_bootstrap, topic)
                | beam.Map(lambda r: (r.key.decode(), json_decoder(r.value))))
        assert_that(back, equal_to([(f"t:{f.source_offset}", f._asdict()) for f in failures]))

    run(pipeline)


def test_credentials_are_arguments_fixed_at_construction():
    read = ReadFromKafka("127.0.0.1:1", "t", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", username="alice", password="s3cret",
                         ssl_cafile="/etc/ca.pem")
    # They travel with the pickled transform: workers read no environment.
    assert read._client_config["sasl_plain_username"] == "alice"
    assert read._client_config["sasl_plain_password"] == "s3cret"
    assert read._client_config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert read._client_config["ssl_cafile"] == "/etc/ca.pem"
    with pytest.raises(ValueError):
        WriteToKafka("127.0.0.1:1", "t", security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValueError):
        ReadFromKafka("127.0.0.1:1", "t", security_protocol="SASL_SSL",
                      sasl_mechanism="GSSAPI", username="u", password="p")
