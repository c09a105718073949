"""Throughput of the IO connectors against the loopback services.

Prints, in one run:

1. raw kafka-python consume + JSON decode (records/s): the ceiling for any
   Python Kafka source on this machine;
2. ``ReadFromKafka`` (bounded) through a Beam pipeline on the FnApiRunner
   (records/s), next to the same pipeline fed from memory, so the cost of
   the SDF source and of the runner itself can be told apart;
3. ``WriteToPostgres``'s DoFn in-process, COPY into a temp table + upsert per
   batch (rows/s);
4. the seed architecture's consumer: a kafka-python loop doing one INSERT and
   one COMMIT per event (rows/s);
5. the whole frontend pipeline on the DirectRunner, Kafka (bounded) ->
   PostgreSQL + Redis + S3 archive, on ``--pipeline-events`` generated
   frontend events (events/s; 0 skips it);

and the ratios between them. Start the services first::

    bash services/services.sh up
    python benchmarks/io_bench.py                      # 20,000 events
    python benchmarks/io_bench.py --events 50000 --naive-events 5000

Everything is bounded: a fresh topic gets ``--events`` JSON events; the naive
consumer handles the first ``--naive-events`` of them. Rows are written under
a unique ``event_id`` prefix and deleted afterwards, and the topic is deleted.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid

BASE_TS_MS = 1_699_999_200_000
EVENT_TYPES = ["page_view"] * 6 + ["widget_open", "message_sent", "product_click", "conversion"]


def make_events(n: int, run_id: str, seed: int = 7):
    rnd = random.Random(seed)
    for i in range(n):
        yield {
            "event_id": f"{run_id}-{i:08d}",
            "session_id": f"{run_id}-s{rnd.randrange(n // 8 + 1)}",
            "event_type": rnd.choice(EVENT_TYPES),
            "timestamp_ms": BASE_TS_MS + i * 250,
            "page_url": f"https://shop.example.com/products/{rnd.randrange(200)}",
            "device_type": rnd.choice(["desktop", "mobile", "tablet"]),
            "browser": rnd.choice(["Chrome", "Safari", "Firefox"]),
            "engagement_score": rnd.randrange(101),
            "country": rnd.choice(["US", "DE", "GB", "FR"]),
        }


def to_row(event: dict) -> dict:
    """The frontend_analytics row a pipeline would write for an event."""
    return {
        "event_id": event["event_id"], "session_id": event["session_id"],
        "event_type": event["event_type"], "device_type": event["device_type"],
        "browser": event["browser"], "engagement_score": event["engagement_score"],
        "quality_score": 90, "transformation_metadata": {"bench": True},
        "timestamp": event["timestamp_ms"], "page_url": event["page_url"],
        "country": event["country"],
    }


def produce(bootstrap: str, topic: str, events) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    n = 0
    for event in events:
        producer.send(topic, json.dumps(event).encode())
        n += 1
    producer.flush()
    producer.close()
    return n


def consume(bootstrap: str, topic: str, partitions: int, limit: int, on_record) -> float:
    """Reads ``limit`` records from the start of ``topic``; returns seconds."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_poll_records=2000, fetch_max_bytes=32 * 1024 * 1024)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = 0
    started = time.perf_counter()
    deadline = time.monotonic() + 300
    while seen < limit and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if seen >= limit:
                    break
                on_record(record)
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close(autocommit=False)
    if seen < limit:
        raise RuntimeError(f"read only {seen} of {limit} records")
    return elapsed


def bench_beam_source(bootstrap: str, topic: str, expected: int) -> float:
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from iheard_io.kafka import ReadFromKafka

    def check(count):
        if count != expected:
            raise RuntimeError(f"ReadFromKafka read {count}, expected {expected}")

    started = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | ReadFromKafka(bootstrap, topic, commit_offsets=False)
             | beam.Map(lambda r: json.loads(r.value))
             | beam.combiners.Count.Globally() | beam.Map(check))
    return time.perf_counter() - started


def bench_beam_baseline(payloads: list) -> float:
    """The same pipeline shape with the records already in memory: what the
    FnApiRunner itself costs on this machine, for comparison with (2)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    expected = len(payloads)

    def check(count):
        if count != expected:
            raise RuntimeError(f"baseline counted {count}, expected {expected}")

    started = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | beam.Impulse() | beam.FlatMap(lambda _: payloads)
             | beam.Map(json.loads)
             | beam.combiners.Count.Globally() | beam.Map(check))
    return time.perf_counter() - started


def bench_copy_upsert(dsn: str, rows: list, batch_size: int) -> float:
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp

    from iheard_io.postgres import _WriteToPostgresFn
    from schemas.tables import TABLES

    fn = _WriteToPostgresFn(dsn, TABLES["frontend_analytics"], batch_size,
                            pipeline="bench", create_schema=True)
    fn.setup()
    ts, win = Timestamp(0), GlobalWindow()
    try:
        started = time.perf_counter()
        fn.start_bundle()
        failed = []
        for row in rows:
            failed.extend(fn.process(row, ts, win))
        failed.extend(fn.finish_bundle() or [])
        elapsed = time.perf_counter() - started
    finally:
        fn.teardown()
    if failed:
        raise RuntimeError(f"{len(failed)} rows failed: {failed[0]}")
    return elapsed


def bench_naive(dsn: str, bootstrap: str, topic: str, partitions: int, limit: int) -> float:
    """The seed's consumer: per event, decode, INSERT, COMMIT."""
    import psycopg

    from schemas.tables import TABLES
    from schemas.tables import row_values

    spec = TABLES["frontend_analytics"]
    sql = (f"INSERT INTO frontend_analytics ({', '.join(spec.columns)}) "
           f"VALUES ({', '.join(['%s'] * len(spec.columns))}) ON CONFLICT (event_id) DO NOTHING")
    with psycopg.connect(dsn) as conn:
        def handle(record):
            event = json.loads(record.value)
            conn.execute(sql, row_values(spec, to_row(event)))
            conn.commit()

        return consume(bootstrap, topic, partitions, limit, handle)


def bench_frontend_pipeline(args, run_id: str) -> tuple:
    """The frontend job, Kafka -> PostgreSQL + Redis + S3, on the DirectRunner.
    Returns (events, seconds); its rows are deleted afterwards."""
    import psycopg
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic

    from beam_pipelines import frontend, generate

    topic = f"io-bench-frontend-{run_id}"
    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    admin.create_topics([NewTopic(topic, 8, 1)])
    lines = [line.replace('"sess_', f'"sess_{run_id}_') for line in
             generate.frontend_events(args.pipeline_events, seed=11)]
    try:
        generate._produce(lines, args.kafka, topic)
        t0 = time.perf_counter()
        frontend.run([
            f"--kafka_bootstrap={args.kafka}", f"--kafka_topic={topic}", "--kafka_mode=bounded",
            "--kafka_start_from=earliest", f"--postgres_dsn={args.dsn}",
            f"--redis_url={args.redis}", f"--archive_path=s3://{args.s3_bucket}/io-bench-{run_id}",
            f"--s3_endpoint_url={args.s3_endpoint}", "--s3_access_key_id=test",
            "--s3_secret_access_key=test", "--s3_region_name=us-east-1",
            "--pii_secret=io-bench-secret-0123456789", "--runner=DirectRunner",
        ])
        seconds = time.perf_counter() - t0
    finally:
        with psycopg.connect(args.dsn) as conn:
            pattern = f"sess_{run_id}_%"
            conn.execute("DELETE FROM frontend_analytics WHERE session_id LIKE %s", (pattern,))
            conn.execute("DELETE FROM frontend_sessions WHERE session_id LIKE %s", (pattern,))
            conn.execute("DELETE FROM failed_events WHERE source_topic = %s", (topic,))
        admin.delete_topics([topic])
        admin.close()
    return len(lines), seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", default="127.0.0.1:19092")
    parser.add_argument("--dsn", default="postgresql://iheard:iheard@127.0.0.1:15433/analytics")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--naive-events", type=int, default=2_000,
                        help="events for the one-INSERT-per-event consumer (slow)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pipeline-events", type=int, default=20_000,
                        help="generated frontend events for the whole-pipeline run (0 skips it)")
    parser.add_argument("--redis", default="redis://127.0.0.1:16380/0")
    parser.add_argument("--s3-endpoint", default="http://127.0.0.1:19000")
    parser.add_argument("--s3-bucket", default="iheardai-archive")
    args = parser.parse_args(argv)

    import psycopg
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic

    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"io-bench-{run_id}"
    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    admin.create_topics([NewTopic(topic, args.partitions, 1)])
    try:
        t0 = time.perf_counter()
        n = produce(args.kafka, topic, make_events(args.events, run_id))
        print(f"produced {n} events to {topic} in {time.perf_counter() - t0:.1f}s")

        decoded = []
        payloads = []

        def keep(record):
            payloads.append(record.value)
            decoded.append(json.loads(record.value))

        raw_s = consume(args.kafka, topic, args.partitions, n, keep)
        beam_s = bench_beam_source(args.kafka, topic, n)
        baseline_s = bench_beam_baseline(payloads)
        rows = [to_row(e) for e in decoded]
        copy_s = bench_copy_upsert(args.dsn, rows, args.batch_size)
        naive_n = min(args.naive_events, n)
        # The naive consumer writes rows the COPY run already wrote; give it
        # fresh ids by cleaning up first, so both do real inserts.
        with psycopg.connect(args.dsn) as conn:
            conn.execute("DELETE FROM frontend_analytics WHERE event_id LIKE %s", (run_id + "-%",))
        naive_s = bench_naive(args.dsn, args.kafka, topic, args.partitions, naive_n)
        pipeline_n, pipeline_s = (bench_frontend_pipeline(args, run_id.replace("-", "_"))
                                  if args.pipeline_events > 0 else (0, None))
    finally:
        with psycopg.connect(args.dsn) as conn:
            conn.execute("DELETE FROM frontend_analytics WHERE event_id LIKE %s", (run_id + "-%",))
        admin.delete_topics([topic])
        admin.close()

    raw_rate = n / raw_s
    beam_rate = n / beam_s
    copy_rate = n / copy_s
    naive_rate = naive_n / naive_s
    print()
    print(f"{'measure':<52}{'records':>9}{'seconds':>9}{'per s':>11}")
    for label, count, secs in [
        ("kafka-python consume + json decode (raw)", n, raw_s),
        ("ReadFromKafka bounded, FnApiRunner (+decode, count)", n, beam_s),
        ("same pipeline from memory (FnApiRunner baseline)", n, baseline_s),
        (f"WriteToPostgres DoFn, COPY+upsert, batch {args.batch_size}", n, copy_s),
        ("naive consumer: INSERT + COMMIT per event", naive_n, naive_s),
    ] + ([("frontend pipeline Kafka->PG+Redis+S3, DirectRunner", pipeline_n, pipeline_s)]
         if pipeline_s else []):
        print(f"{label:<52}{count:>9}{secs:>9.2f}{count / secs:>11,.0f}")
    print()
    print(f"COPY+upsert / naive per-event insert: {copy_rate / naive_rate:6.1f}x")
    print(f"raw consume+decode / COPY+upsert:     {raw_rate / copy_rate:6.1f}x")
    print(f"raw consume+decode / ReadFromKafka:   {raw_rate / beam_rate:6.1f}x "
          "(includes Beam pipeline start-up)")
    print(f"ReadFromKafka time / in-memory baseline time: {beam_s / baseline_s:6.2f}")
    if pipeline_s:
        print(f"frontend pipeline / naive per-event insert: "
              f"{(pipeline_n / pipeline_s) / naive_rate:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
