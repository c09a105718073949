"""The batched archive path: records Avro-encoded before the shuffle, files
assembled from the encoded records (io/archive.py ``container_bytes``)."""
import io

import apache_beam as beam
import fastavro
import pytest
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from apache_beam.coders.coders import FastPrimitivesCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow

from iheard_io.archive import ENCODED_FIELD, EncodeForArchive, _KeyBatchByPartitionFn, container_bytes
from schemas.records import EventBatch

SCHEMA = {"type": "record", "name": "R", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "timestamp_ms", "type": "long"},
    {"name": "note", "type": ["null", "string"], "default": None}]}


def _encode(record):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(SCHEMA), record)
    return buf.getvalue()


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_container_reads_back_with_fastavro_in_order(codec):
    records = [{"event_id": f"e{i}", "timestamp_ms": 1_700_000_000_000 + i, "note": "x" * (i % 50) or None}
               for i in range(3000)]  # several blocks
    data = container_bytes(SCHEMA, codec, b"0123456789abcdef", (_encode(r) for r in records))
    reader = fastavro.reader(io.BytesIO(data))
    assert reader.codec == codec
    assert list(reader) == records
    # Same records, same bytes: a replay rewrites an identical object.
    assert data == container_bytes(SCHEMA, codec, b"0123456789abcdef", (_encode(r) for r in records))


def test_container_rejects_other_codecs():
    with pytest.raises(ValueError):
        container_bytes(SCHEMA, "snappy", b"0" * 16, [])


def test_batch_keying_encodes_records_and_routes_schema_rejects():
    fn = _KeyBatchByPartitionFn(4, None, lambda r: r["event_id"], "frontend", SCHEMA)
    fn.setup()
    good = {"event_id": "a", "timestamp_ms": 1_705_314_600_000}
    bad = {"event_id": "b", "timestamp_ms": 1_705_314_600_000, "note": 42}  # not a string
    out = list(fn.process([good, bad], timestamp=Timestamp(1_705_314_600), window=GlobalWindow()))
    failures = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    keyed = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert len(failures) == 1 and failures[0].stage == "sink:archive"
    assert '"event_id": "b"' in failures[0].raw and "note" in failures[0].error_message
    ((key, values),) = keyed
    assert key[:2] == ("2024-01-15", "10") and key[3] == "global"
    ((sort_key, encoded),) = values
    assert sort_key == "a" and fastavro.schemaless_reader(io.BytesIO(encoded), fastavro.parse_schema(SCHEMA)) == {
        **good, "note": None}


def _keyed(fn, records, window):
    out = list(fn.process(records, timestamp=Timestamp(1_705_314_600), window=window))
    return ([o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)],
            [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)])


def test_pre_encoded_keying_gives_the_same_groups_as_encoding_there():
    # EncodeForArchive in the source stage, then WriteToArchive(pre_encoded):
    # the same partitions, shards and bytes as encoding after the shuffle.
    records = [{"event_id": f"e{i}", "timestamp_ms": 1_705_314_600_000 + i * 700_000,
                "note": "n" * (i % 3) or None} for i in range(40)]  # spans two hours
    window = IntervalWindow(Timestamp(1_705_314_600), Timestamp(1_705_314_900))
    plain = _KeyBatchByPartitionFn(4, None, lambda r: r["event_id"], "frontend", SCHEMA)
    plain.setup()
    pre = _KeyBatchByPartitionFn(4, None, lambda r: r["event_id"], "frontend", SCHEMA, pre_encoded=True)
    pre.setup()
    slim = [{"event_id": r["event_id"], "timestamp_ms": r["timestamp_ms"], ENCODED_FIELD: _encode(r)}
            for r in records]
    expected, no_failures = _keyed(plain, records, window)
    got, also_none = _keyed(pre, slim, window)
    assert no_failures == also_none == []
    assert sorted(got) == sorted(expected)
    # 10:30 + 40 x 700 s: hours 10 to 18 of 2024-01-15.
    assert {k[:2] for k, _ in got} == {("2024-01-15", f"{h:02d}") for h in range(10, 19)}
    assert all(k[3] == "20240115T103000Z-20240115T103500Z" for k, _ in got)
    assert all(isinstance(v, EventBatch) for _, v in got)


def test_encode_for_archive_keeps_the_named_fields_and_dead_letters_schema_rejects():
    good = {"event_id": "a", "timestamp_ms": 1_705_314_600_000, "note": "kept in bytes", "other": 1}
    bad = {"event_id": "b", "timestamp_ms": 1_705_314_600_000, "note": 42}
    with TestPipeline() as p:
        out = (p | beam.Create([EventBatch([good, bad])])
               | EncodeForArchive(SCHEMA, ("event_id", "timestamp_ms"), "frontend"))
        assert_that(out.encoded, equal_to([[{"event_id": "a", "timestamp_ms": 1_705_314_600_000,
                                             ENCODED_FIELD: _encode(good)}]]), label="Slim")
        assert_that(out[EncodeForArchive.FAILED] | beam.Map(lambda f: (f.stage, '"event_id": "b"' in f.raw)),
                    equal_to([("sink:archive", True)]), label="Rejected")
    with pytest.raises(ValueError):
        EncodeForArchive(SCHEMA, ("event_id",), "frontend")  # no timestamp_ms


def test_event_batch_is_pickled_whole_by_beams_default_coder():
    coder = FastPrimitivesCoder()
    events = [{"event_id": f"e{i}", "page_url": "https://example.com/a", "n": i} for i in range(50)]
    batch_bytes = coder.encode(EventBatch(events))
    decoded = coder.decode(batch_bytes)
    assert type(decoded) is EventBatch and decoded == events
    # Field names are shared across the list instead of repeated per event.
    assert len(batch_bytes) < len(coder.encode(list(events))) / 2
