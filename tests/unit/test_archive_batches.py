"""The batched archive path: records Avro-encoded before the shuffle, files
assembled from the encoded records (io/archive.py ``container_bytes``)."""
import io

import apache_beam as beam
import fastavro
import pytest
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from iheard_io.archive import _KeyBatchByPartitionFn, container_bytes

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
