"""WriteToArchive against the project's S3 server (moto) and a local folder.

Each test writes under its own prefix; files are read back with fastavro
(S3 objects through boto3, not through Beam) and a replay is checked to
rewrite the same object names with the same bytes.
"""
import datetime as dt
import io
import re
import uuid

import apache_beam as beam
import boto3
import fastavro
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from iheard_io.archive import WriteToArchive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCHEMA = {
    "type": "record", "name": "ArchivedEvent", "namespace": "ai.iheard.test",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_type", "type": "string"},
        {"name": "timestamp_ms", "type": "long"},
        {"name": "engagement_score", "type": ["null", "int"], "default": None},
    ],
}
BASE_TS_MS = 1_699_999_200_000  # 2023-11-14T22:00:00Z
NAME = re.compile(r"source=frontend/date=(\d{4}-\d\d-\d\d)/hour=(\d\d)/"
                  r"part-([^/]+)-(\d{5})-of-(\d{5})\.avro$")


def events(n=120):
    # Two per minute over an hour and a bit: hours 22 and 23, shuffled ids.
    return [
        {"event_id": f"e{(i * 37) % n:04d}", "event_type": "page_view" if i % 3 else "widget_open",
         "timestamp_ms": BASE_TS_MS + i * 35_000, "engagement_score": i % 50 or None,
         "_source": {"topic": "frontend_user_interaction", "partition": 0, "offset": i}}
        for i in range(n)
    ]


def archived(record):
    return {k: record[k] for k in ("event_id", "event_type", "timestamp_ms", "engagement_score")}


def s3_client(services):
    return boto3.client("s3", endpoint_url=services.s3_endpoint,
                        aws_access_key_id=services.s3_access_key,
                        aws_secret_access_key=services.s3_secret_key,
                        region_name=services.s3_region)


def s3_options(services):
    """What a job on S3 passes: Beam's S3Options, read by FileSystems."""
    return PipelineOptions([
        f"--s3_endpoint_url={services.s3_endpoint}",
        f"--s3_access_key_id={services.s3_access_key}",
        f"--s3_secret_access_key={services.s3_secret_key}",
        f"--s3_region_name={services.s3_region}"])


def write(records, base_path, options=None, **kwargs):
    with BeamTestPipeline(runner=FnApiRunner(), options=options) as p:
        failed = p | beam.Create(records) | WriteToArchive(base_path, "frontend", SCHEMA, **kwargs)
        assert_that(failed, equal_to([]), label="NoFailures")


def check_layout(files, records, shards):
    """files: {relative name: bytes}. Every record once, in the file of its
    hour, files sorted by event_id."""
    seen = []
    for name, data in files.items():
        match = NAME.search(name)
        assert match, name
        date, hour, window, shard, total = match.groups()
        assert window == "global" and int(total) == shards and int(shard) < shards
        rows = list(fastavro.reader(io.BytesIO(data)))
        assert rows == sorted(rows, key=lambda r: r["event_id"])
        for row in rows:
            moment = dt.datetime.fromtimestamp(row["timestamp_ms"] / 1000, tz=dt.timezone.utc)
            assert (moment.strftime("%Y-%m-%d"), moment.strftime("%H")) == (date, hour)
        seen.extend(rows)
    assert sorted(seen, key=lambda r: r["event_id"]) == sorted(
        (archived(r) for r in records), key=lambda r: r["event_id"])


def test_archive_to_s3_is_partitioned_and_replay_rewrites_identical_objects(services, s3_bucket):
    prefix = f"it-archive-{uuid.uuid4().hex[:8]}"
    client = s3_client(services)
    records = events()

    def objects():
        listing = client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix + "/")
        return {o["Key"][len(prefix) + 1:]: client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
                for o in listing.get("Contents", [])}

    write(records, f"s3://{s3_bucket}/{prefix}", s3_options(services), shards=3)
    first = objects()
    # 2 hours x up to 3 shards.
    assert {NAME.search(k).group(2) for k in first} == {"22", "23"}
    assert 4 <= len(first) <= 6
    check_layout(first, records, shards=3)

    # Replay in another order: same names, same bytes, nothing added.
    write(list(reversed(records)), f"s3://{s3_bucket}/{prefix}", s3_options(services), shards=3)
    assert objects() == first


def test_archive_to_local_folder_and_bad_records_fail(tmp_path):
    records = events(60)
    base = str(tmp_path / "archive")
    bad = {"event_id": "bad", "event_type": None, "timestamp_ms": BASE_TS_MS,
           "_source": {"topic": "frontend_user_interaction", "partition": 2, "offset": 99}}

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create(records + [bad]) | WriteToArchive(base, "frontend", SCHEMA, shards=2)
        assert_that(failed | beam.Map(lambda f: (f.stage, f.error_class, f.source_partition, f.source_offset)),
                    equal_to([("sink:archive", "ValidationError", 2, 99)]))

    def files():
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(tmp_path.joinpath("archive").rglob("*.avro"))}

    first = files()
    check_layout(first, records, shards=2)
    write(records, base, shards=2)
    assert files() == first


def test_windowed_input_names_files_after_the_window(tmp_path):
    records = events(40)  # 22:00:00 .. 22:22:45
    base = str(tmp_path / "archive")
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        stamped = (p | beam.Create(records)
                   | beam.Map(lambda r: beam.window.TimestampedValue(r, r["timestamp_ms"] / 1000)))
        failed = stamped | WriteToArchive(base, "frontend", SCHEMA, shards=1, window_seconds=600)
        assert_that(failed, equal_to([]))
    names = sorted(p.name for p in tmp_path.joinpath("archive").rglob("*.avro"))
    assert names == [
        "part-20231114T220000Z-20231114T221000Z-00000-of-00001.avro",
        "part-20231114T221000Z-20231114T222000Z-00000-of-00001.avro",
        "part-20231114T222000Z-20231114T223000Z-00000-of-00001.avro",
    ]
    total = sum(len(list(fastavro.reader(open(p, "rb"))))
                for p in tmp_path.joinpath("archive").rglob("*.avro"))
    assert total == 40


def test_streaming_windows_and_late_records_get_their_own_files(tmp_path):
    """Unbounded input on the BundleBasedDirectRunner (TestStream): each
    10-minute window's files are written once the watermark passes its end;
    a record arriving after that (within the allowed lateness) lands in a
    separate ``-late1`` file instead of replacing the on-time one.

        22:00:00-22:10:00 window: e1 (22:01), e2 (22:04)
        watermark -> 22:15          on-time pane: part-...-00000-of-00001.avro
        e3 (22:05) arrives late     late pane 1:  part-...-late1-00000-of-00001.avro
        e4 (22:12) on time for 22:10-22:20, written at watermark +inf
    """
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.testing.test_stream import TestStream

    def event(name, minute):
        ts_ms = BASE_TS_MS + minute * 60_000
        return beam.window.TimestampedValue(
            {"event_id": name, "event_type": "page_view", "timestamp_ms": ts_ms,
             "engagement_score": None}, ts_ms / 1000)

    stream = (TestStream()
              .advance_watermark_to(BASE_TS_MS / 1000)
              .add_elements([event("e1", 1), event("e2", 4)])
              .advance_watermark_to(BASE_TS_MS / 1000 + 15 * 60)
              .add_elements([event("e3", 5), event("e4", 12)])
              .advance_watermark_to(BASE_TS_MS / 1000 + 16 * 60)
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    base = str(tmp_path / "archive")
    with BeamTestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        failed = p | stream | WriteToArchive(base, "frontend", SCHEMA, shards=1, window_seconds=600)
        assert_that(failed, equal_to([]))

    contents = {
        p.name: [r["event_id"] for r in fastavro.reader(open(p, "rb"))]
        for p in tmp_path.joinpath("archive").rglob("*.avro")}
    assert contents == {
        "part-20231114T220000Z-20231114T221000Z-00000-of-00001.avro": ["e1", "e2"],
        "part-20231114T220000Z-20231114T221000Z-late1-00000-of-00001.avro": ["e3"],
        "part-20231114T221000Z-20231114T222000Z-00000-of-00001.avro": ["e4"],
    }
