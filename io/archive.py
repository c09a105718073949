"""Avro archive of records on S3-compatible storage or a local folder.

``WriteToArchive`` writes dict records as Avro files (fastavro) partitioned
like Hive tables, so Athena/Spark/DuckDB can prune by source, date and hour::

    <base_path>/source=<source>/date=YYYY-MM-DD/hour=HH/
        part-<window id>-<shard>-of-<shards>.avro

    records
      -> [RewindowForArchive]   only with window_seconds: FixedWindows, so a
                                streaming job closes one file set per window
      -> KeyByPartition         (date, hour, shard, window id, pane) from the
                                record's time and a stable hash of its sort key;
                                records without a usable time -> failed
      -> GroupByPartition       GroupByKey: one group = one file
      -> WriteAvroFiles         records sorted by sort key, written through
                                Beam's FileSystems (s3:// or local); if the
                                file does not encode, the records the schema
                                rejects -> failed and the rest are written
      => failed                 FailedRecord per record that was not archived

Why replays never duplicate: a file's name depends only on its partition,
window (``global`` for a bounded job, the window bounds otherwise), pane and
shard, and its bytes only on its records - they are sorted by ``sort_key_fn``
(default ``event_id``), and the Avro sync marker, normally random, is derived
from the file name. Re-running a bounded job, or replaying a window after a
Flink restore, rewrites the same object with the same bytes.

Delivery guarantee: at-least-once writes, idempotent by deterministic object
names; a reader sees each record once per window. Late firings of a window
(allowed lateness) get their own pane suffix, so they add files rather than
replace the on-time ones. A bounded run archives into ``global`` files per
hour; a later run whose input for the same hour differs replaces those files
(the archive then mirrors the latest run's input, which is what a backfill
wants).

S3: ``s3://bucket/prefix`` goes through ``apache_beam.io.aws.s3filesystem``
(boto3), configured by the pipeline options ``--s3_endpoint_url``,
``--s3_access_key_id``, ``--s3_secret_access_key`` (``S3Options``), which
Beam's FileSystems read from the running pipeline's options; checked against
the moto S3 server with a custom endpoint. Local paths are created as needed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import typing

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.trigger import AccumulationMode
from apache_beam.transforms.trigger import AfterCount
from apache_beam.transforms.trigger import AfterWatermark
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.timestamp import Timestamp

from schemas.records import EventBatch
from schemas.records import FailedRecord
from schemas.records import failed_from_event
from schemas.tables import to_utc_datetime

__all__ = ["WriteToArchive", "EncodeForArchive", "ENCODED_FIELD", "archive_path", "window_id",
           "container_bytes"]

_LOG = logging.getLogger(__name__)

STAGE = "sink:archive"
DEFAULT_SHARDS = 4
# deflate is deterministic for the same input and roughly halves JSON-ish
# event records.
DEFAULT_CODEC = "deflate"
# Streaming: one file set per 5 minutes per shard keeps objects few and the
# archive at most ~5 minutes behind.
DEFAULT_STREAMING_WINDOW_S = 300
# Late records (a phone that was offline) are archived for a day after their
# window closed.
DEFAULT_ALLOWED_LATENESS_S = 24 * 3600
# EncodeForArchive puts a record's Avro encoding under this key of the slim
# dict that replaces the record; WriteToArchive(pre_encoded=True) reads it.
ENCODED_FIELD = "_avro"
_HOUR_MS = 3600 * 1000


class _PartitionKey(typing.NamedTuple):
    date: str  # YYYY-MM-DD
    hour: str  # HH
    shard: int
    window: str  # "global" or the window bounds
    pane: int  # 0 for the first firing of a window


def window_id(window) -> str:
    """``global`` for the global window, else ``<start>-<end>`` in UTC."""
    if isinstance(window, beam_window.GlobalWindow):
        return "global"
    if hasattr(window, "start") and hasattr(window, "end"):
        def fmt(ts: Timestamp) -> str:
            moment = dt.datetime.fromtimestamp(ts.micros / 1e6, tz=dt.timezone.utc)
            text = moment.strftime("%Y%m%dT%H%M%S")
            if moment.microsecond:
                text += f".{moment.microsecond // 1000:03d}"
            return text + "Z"
        return f"{fmt(window.start)}-{fmt(window.end)}"
    return "w" + hashlib.sha256(repr(window).encode()).hexdigest()[:16]


def archive_path(base_path: str, source: str, key: _PartitionKey, shards: int,
                 file_prefix: str = "part") -> str:
    pane = f"-late{key.pane}" if key.pane else ""
    name = f"{file_prefix}-{key.window}{pane}-{key.shard:05d}-of-{shards:05d}.avro"
    return FileSystems.join(
        base_path, f"source={source}", f"date={key.date}", f"hour={key.hour}", name)


def default_sort_key(record) -> str:
    if isinstance(record, dict) and record.get("event_id") is not None:
        return str(record["event_id"])
    return json.dumps(record, sort_keys=True, default=str)


def _record_time(record, timestamp_fn, element_ts) -> dt.datetime:
    if timestamp_fn is not None:
        value = timestamp_fn(record)
    elif isinstance(record, dict) and record.get("timestamp_ms") is not None:
        value = record["timestamp_ms"]
    elif isinstance(record, dict) and record.get("timestamp") is not None:
        value = record["timestamp"]
    else:
        value = None
    moment = to_utc_datetime(value)
    if moment is None:
        moment = dt.datetime.fromtimestamp(element_ts.micros / 1e6, tz=dt.timezone.utc)
    return moment


def _failure(record, exc, pipeline) -> FailedRecord:
    return failed_from_event(record, exc, STAGE, pipeline)


class _KeyByPartitionFn(beam.DoFn):
    FAILED = "failed"

    def __init__(self, shards, timestamp_fn, sort_key_fn, pipeline):
        self._shards = shards
        self._timestamp_fn = timestamp_fn
        self._sort_key_fn = sort_key_fn
        self._pipeline = pipeline
        self._failed = Metrics.counter("WriteToArchive", "failed")

    def _key(self, record, timestamp, window):
        """((date, hour, shard, window id), (sort key, record)); raises on a
        record without a usable time or sort key."""
        moment = _record_time(record, self._timestamp_fn, timestamp)
        sort_key = str(self._sort_key_fn(record))
        shard = _shard_of(sort_key, self._shards)
        # A plain tuple key: its coder is deterministic, as GroupByKey needs.
        return (moment.strftime("%Y-%m-%d"), moment.strftime("%H"), shard, window_id(window)), (sort_key, record)

    def process(self, record, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        try:
            yield self._key(record, timestamp, window)
        except Exception as exc:  # pylint: disable=broad-except
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(self.FAILED, _failure(record, exc, self._pipeline))


def _shard_of(sort_key: str, shards: int) -> int:
    # A stable hash (not hash(), which is salted per process) so a replay
    # puts every record in the same shard.
    return int.from_bytes(hashlib.sha256(sort_key.encode()).digest()[:8], "big") % shards


class _AvroEncoder:
    """Encodes one record at a time with a parsed schema into reused memory;
    a record the schema rejects raises the validator's field-level message."""

    def __init__(self, schema):
        import fastavro

        self._parsed = fastavro.parse_schema(schema)
        self._buf = io.BytesIO()

    def encode(self, record) -> bytes:
        import fastavro

        buf = self._buf
        buf.seek(0)
        buf.truncate()
        try:
            fastavro.schemaless_writer(buf, self._parsed, record)
        except Exception:  # pylint: disable=broad-except
            _check_encodes(record, self._parsed)  # raises the validator's message
            raise
        return buf.getvalue()


class _KeyBatchByPartitionFn(_KeyByPartitionFn):
    """A list of records (all in one window) -> one ``(partition key,
    EventBatch[(sort key, Avro bytes), ...])`` per partition the list touches.

    Records are Avro-encoded before the GroupByKey (here, or earlier by
    ``EncodeForArchive`` with ``pre_encoded``): the runner then shuffles and
    buffers compact bytes instead of dicts (on Flink the buffered window
    contents live in the state backend until the window fires), and a record
    the schema rejects becomes a dead letter at once. The window id is
    computed once per list and the date/hour once per hour of
    ``timestamp_ms``: per record they cost as much as the encoding."""

    def __init__(self, shards, timestamp_fn, sort_key_fn, pipeline, schema, pre_encoded=False):
        super().__init__(shards, timestamp_fn, sort_key_fn, pipeline)
        self._schema = schema
        self._pre_encoded = pre_encoded
        self._encoder = None
        self._hours: typing.Dict[int, typing.Tuple[str, str]] = {}

    def setup(self):
        self._encoder = None if self._pre_encoded else _AvroEncoder(self._schema)
        self._hours = {}

    def _date_hour(self, record, timestamp) -> typing.Tuple[str, str]:
        ts = record.get("timestamp_ms") if self._timestamp_fn is None else None
        if type(ts) is not int:  # pylint: disable=unidiomatic-typecheck
            moment = _record_time(record, self._timestamp_fn, timestamp)
            return moment.strftime("%Y-%m-%d"), moment.strftime("%H")
        hour_ms = ts - ts % _HOUR_MS
        cached = self._hours.get(hour_ms)
        if cached is None:
            moment = dt.datetime.fromtimestamp(hour_ms / 1000, tz=dt.timezone.utc)
            cached = self._hours[hour_ms] = (moment.strftime("%Y-%m-%d"), moment.strftime("%H"))
        return cached

    def process(self, records, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        wid = window_id(window)
        groups: typing.Dict[tuple, EventBatch] = {}
        for record in records:
            try:
                date, hour = self._date_hour(record, timestamp)
                sort_key = str(self._sort_key_fn(record))
                encoded = record[ENCODED_FIELD] if self._pre_encoded else self._encoder.encode(record)
            except Exception as exc:  # pylint: disable=broad-except
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(self.FAILED, _failure(record, exc, self._pipeline))
                continue
            key = (date, hour, _shard_of(sort_key, self._shards), wid)
            group = groups.get(key)
            if group is None:
                groups[key] = EventBatch([(sort_key, encoded)])
            else:
                group.append((sort_key, encoded))
        yield from groups.items()


class _EncodeBatchFn(beam.DoFn):
    """A list of records -> the list of their slim forms: ``keep_fields`` of
    each record plus its Avro encoding under ``ENCODED_FIELD``; a record the
    schema rejects -> failed (a dead letter with the validator's reason)."""

    FAILED = "failed"

    def __init__(self, schema, keep_fields, pipeline):
        self._schema = schema
        self._keep = tuple(keep_fields)
        self._pipeline = pipeline
        self._encoder = None
        self._failed = Metrics.counter("WriteToArchive", "failed")

    def setup(self):
        self._encoder = _AvroEncoder(self._schema)

    def process(self, records):
        out = EventBatch()
        keep = self._keep
        for record in records:
            try:
                encoded = self._encoder.encode(record)
            except Exception as exc:  # pylint: disable=broad-except
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(self.FAILED, _failure(record, exc, self._pipeline))
                continue
            slim = {name: record.get(name) for name in keep}
            slim[ENCODED_FIELD] = encoded
            out.append(slim)
        if out:
            yield out  # keeps the input list's timestamp


class EncodeForArchive(beam.PTransform):
    """Lists of records -> lists of slim dicts, each the record's
    ``keep_fields`` plus its Avro bytes (``ENCODED_FIELD``); tagged output
    ``failed``: ``FailedRecord``s of records the schema rejects.

    Encoding in the stage that makes the records lets the steps after a
    shuffle (de-duplication, sessions, ``WriteToArchive(pre_encoded=True)``)
    receive a few fields and compact bytes instead of whole records. Keep
    ``timestamp_ms`` and the archive's sort key (default ``event_id``)."""

    FAILED = _EncodeBatchFn.FAILED

    def __init__(self, schema, keep_fields: typing.Sequence[str], pipeline: str):
        super().__init__()
        import fastavro

        fastavro.parse_schema(schema)  # fail at construction on a bad schema
        if "timestamp_ms" not in keep_fields:
            raise ValueError("keep_fields must include timestamp_ms (archive partitions and windows)")
        self._schema = schema
        self._keep = tuple(keep_fields)
        self._pipeline = pipeline

    def expand(self, batches):
        return batches | "EncodeAvro" >> beam.ParDo(
            _EncodeBatchFn(self._schema, self._keep, self._pipeline)).with_outputs(
                self.FAILED, main="encoded")


def _zigzag_varint(value: int) -> bytes:
    """An Avro ``long``."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Uncompressed bytes per block of a container written from encoded records.
_BLOCK_BYTES = 64 * 1024


def container_bytes(schema, codec: str, sync_marker: bytes,
                    encoded_records: typing.Iterable[bytes]) -> bytes:
    """An Avro object container file (the format ``fastavro.writer`` writes)
    from records already encoded with the schema, in the given order.
    ``codec``: ``null`` or ``deflate``."""
    import zlib

    if codec not in ("null", "deflate"):
        raise ValueError(f"codec must be 'null' or 'deflate', got {codec!r}")
    out = io.BytesIO()
    out.write(b"Obj\x01")
    if isinstance(schema, dict):  # fastavro's parse_schema adds private keys
        schema = {k: v for k, v in schema.items() if not k.startswith("__")}
    meta = {"avro.schema": json.dumps(schema).encode(), "avro.codec": codec.encode()}
    out.write(_zigzag_varint(len(meta)))
    for key, value in meta.items():
        out.write(_zigzag_varint(len(key)) + key.encode())
        out.write(_zigzag_varint(len(value)) + value)
    out.write(_zigzag_varint(0))
    out.write(sync_marker)

    def flush(block, count):
        data = b"".join(block)
        if codec == "deflate":
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            data = compressor.compress(data) + compressor.flush()
        out.write(_zigzag_varint(count) + _zigzag_varint(len(data)) + data + sync_marker)

    block, size = [], 0
    for encoded in encoded_records:
        block.append(encoded)
        size += len(encoded)
        if size >= _BLOCK_BYTES:
            flush(block, len(block))
            block, size = [], 0
    if block:
        flush(block, len(block))
    return out.getvalue()


def _split_by_window(window_ms: int):
    """A list of records -> one sub-list per fixed window of their
    ``timestamp_ms``, each stamped with its oldest record's time, so the
    windowing that follows puts every record where it would put it alone."""
    def split(records):
        by_window: typing.Dict[int, EventBatch] = {}
        for record in records:
            by_window.setdefault(record["timestamp_ms"] // window_ms, EventBatch()).append(record)
        for sub in by_window.values():
            yield beam.window.TimestampedValue(sub, min(r["timestamp_ms"] for r in sub) / 1000.0)
    return split


def _check_encodes(record, parsed_schema) -> None:
    """Raises if ``record`` cannot be written with ``parsed_schema``.

    Encoding is the check: it fails exactly where the file writer would and
    costs far less than ``fastavro.validation.validate``, which builds (and
    JSON-dumps) an error for every union branch it tries. Only a record that
    fails to encode is validated, to get the validator's field-level message.
    It runs only for a file whose write failed (see ``_WriteAvroFileFn``).
    """
    import fastavro
    from fastavro.validation import validate

    try:
        fastavro.schemaless_writer(io.BytesIO(), parsed_schema, record)
    except Exception as exc:  # pylint: disable=broad-except
        validate(record, parsed_schema, raise_errors=True)  # raises ValidationError
        raise exc


class _WriteAvroFileFn(beam.DoFn):
    FAILED = "failed"

    def __init__(self, base_path, source, schema, shards, codec, pipeline, batched=False,
                 file_prefix="part"):
        self._batched = batched
        self._file_prefix = file_prefix
        self._base_path = base_path
        self._source = source
        self._schema = schema
        self._shards = shards
        self._codec = codec
        self._pipeline = pipeline
        self._parsed = None
        self._s3io = None
        self._failed = Metrics.counter("WriteToArchive", "failed")
        self._files = Metrics.counter("WriteToArchive", "files")
        self._records = Metrics.counter("WriteToArchive", "records")

    def setup(self):
        import fastavro

        self._parsed = fastavro.parse_schema(self._schema)

    def process(self, keyed, pane=beam.DoFn.PaneInfoParam):
        (date, hour, shard, window), values = keyed
        key = _PartitionKey(date, hour, shard, window,
                            pane.index if pane is not None and pane.index else 0)
        path = archive_path(self._base_path, self._source, key, self._shards, self._file_prefix)
        if self._batched:
            # Encoded before the shuffle: sort key, then bytes, fix the order.
            encoded = sorted(value for group in values for value in group)
            data = container_bytes(self._schema, self._codec,
                                   hashlib.md5(path.encode()).digest(), (e for _, e in encoded))
            with self._create(path) as handle:
                handle.write(data)
            self._files.inc()
            self._records.inc(len(encoded))
            yield path
            return
        ordered = _deterministic_order(values)
        records = [record for _, record in ordered]
        try:
            data = self._encode(path, records)
        except Exception:  # pylint: disable=broad-except
            # Some record does not fit the schema: find it (them), archive
            # the rest, and send the rejects to the dead-letter output.
            good = []
            for record in records:
                try:
                    _check_encodes(record, self._parsed)
                    good.append(record)
                except Exception as exc:  # pylint: disable=broad-except
                    self._failed.inc()
                    yield beam.pvalue.TaggedOutput(
                        self.FAILED, _failure(record, exc, self._pipeline))
            records = good
            if not records:
                return
            data = self._encode(path, records)
        with self._create(path) as handle:
            handle.write(data)
        self._files.inc()
        self._records.inc(len(records))
        yield path

    def _create(self, path):
        """A write channel for ``path``. Beam's S3 filesystem builds a new
        boto3 client (about 0.25 s) for every file it opens, so s3:// files
        go through one ``S3IO`` kept for this DoFn instance, configured from
        the same pipeline options; other schemes use ``FileSystems``."""
        if not path.startswith("s3://"):
            return FileSystems.create(path, mime_type="application/avro")
        if self._s3io is None:
            from apache_beam.io.aws import s3io

            filesystem = FileSystems.get_filesystem(path)
            self._s3io = s3io.S3IO(options=getattr(filesystem, "_options", None))
        return self._s3io.open(path, "wb", mime_type="application/avro")

    def _encode(self, path, records) -> bytes:
        import fastavro

        buf = io.BytesIO()
        fastavro.writer(buf, self._parsed, records, codec=self._codec,
                        sync_marker=hashlib.md5(path.encode()).digest())
        return buf.getvalue()


def _deterministic_order(values) -> list:
    """Same records -> same order -> same bytes: by sort key, ties (duplicate
    keys) broken by canonical JSON, which is computed only for the ties."""
    ordered = sorted(values, key=lambda kv: kv[0])
    out, i = [], 0
    while i < len(ordered):
        j = i + 1
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        run = ordered[i:j]
        if len(run) > 1:
            run = sorted(run, key=lambda kv: json.dumps(kv[1], sort_keys=True, default=str))
        out.extend(run)
        i = j
    return out


class WriteToArchive(beam.PTransform):
    """Archives dict records as Avro under ``base_path`` (``s3://bucket/prefix``
    or a local folder); returns the ``FailedRecord``s of records the schema
    rejected. See the module docstring for the layout and the guarantee.

    Args:
      base_path: ``s3://bucket/prefix`` or a local directory.
      source: partition value for ``source=`` (e.g. ``frontend``).
      schema: the Avro record schema (dict or fastavro-parsed).
      shards: files per (date, hour, window).
      timestamp_fn: ``record -> epoch ms / ISO text / datetime`` choosing the
        date and hour; default the record's ``timestamp_ms`` / ``timestamp``,
        else the element timestamp.
      sort_key_fn: ``record -> str`` ordering records inside a file and
        choosing the shard; default ``event_id``.
      window_seconds: re-window into fixed windows of this length first.
        Unbounded input in the global window (which never closes) or in
        session windows gets ``DEFAULT_STREAMING_WINDOW_S`` without asking.
        Each window's files are written when the watermark passes its end.
      allowed_lateness_seconds: with fixed windows, records up to this late
        still get archived, in extra ``-late<k>`` files (one per late
        firing); later ones are dropped by the GroupByKey and counted by
        the runner as dropped due to lateness.
      pipeline: written into dead letters.
      batched: each element is a list of records with ``timestamp_ms``
        (transforms/batches.py; needs ``window_seconds``): lists are split
        per window and per partition, and each record is Avro-encoded before
        the shuffle (``container_bytes`` assembles the files), so the files
        hold the same records as with one element per record.
      pre_encoded: (with ``batched``) the records are ``EncodeForArchive``'s
        slim dicts: their Avro bytes are written as they are; the sort key
        and ``timestamp_ms`` are read from the slim dict.
      file_prefix: the files' name prefix (``part``). A run that adds records
        to hours another run archived (a dead-letter replay) names its own
        files (``replay-<run id>``), so a bounded run's ``global`` files of
        those hours are not replaced by files holding only the added records.
    """

    def __init__(
        self,
        base_path: str,
        source: str,
        schema,
        shards: int = DEFAULT_SHARDS,
        timestamp_fn: typing.Optional[typing.Callable] = None,
        sort_key_fn: typing.Callable = default_sort_key,
        window_seconds: typing.Optional[float] = None,
        allowed_lateness_seconds: float = DEFAULT_ALLOWED_LATENESS_S,
        codec: str = DEFAULT_CODEC,
        pipeline: typing.Optional[str] = None,
        batched: bool = False,
        pre_encoded: bool = False,
        file_prefix: str = "part",
    ):
        super().__init__()
        if not re.fullmatch(r"[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*", file_prefix or ""):
            raise ValueError(f"file_prefix must be a plain file-name part, got {file_prefix!r}")
        if pre_encoded and not batched:
            raise ValueError("pre_encoded records come in batches (batched=True)")
        if batched and window_seconds is None:
            raise ValueError("batched input needs window_seconds (streaming archive windows)")
        if batched and codec not in ("null", "deflate"):
            raise ValueError("batched archiving writes the 'null' or 'deflate' codec")
        if not base_path:
            raise ValueError("base_path is required")
        if not source or "/" in source or "=" in source:
            raise ValueError(f"source must be a plain name, got {source!r}")
        if shards <= 0:
            raise ValueError("shards must be positive")
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        import fastavro

        fastavro.parse_schema(schema)  # fail at construction on a bad schema
        self._base_path = base_path.rstrip("/")
        self._source = source
        self._schema = schema
        self._shards = shards
        self._timestamp_fn = timestamp_fn
        self._sort_key_fn = sort_key_fn
        self._window_seconds = window_seconds
        self._allowed_lateness_s = allowed_lateness_seconds
        self._codec = codec
        self._pipeline = pipeline if pipeline is not None else source
        self._batched = batched
        self._pre_encoded = pre_encoded
        self._file_prefix = file_prefix

    def expand(self, records):
        windowfn = records.windowing.windowfn
        window_seconds = self._window_seconds
        if window_seconds is None and not records.is_bounded and (
                isinstance(windowfn, beam_window.GlobalWindows) or windowfn.is_merging()):
            # A global window never closes on unbounded input.
            window_seconds = DEFAULT_STREAMING_WINDOW_S
        if self._batched:
            records = records | "SplitBatchesByWindow" >> beam.FlatMap(
                _split_by_window(int(window_seconds * 1000)))
        if window_seconds is not None:
            records = records | "RewindowForArchive" >> beam.WindowInto(
                beam_window.FixedWindows(window_seconds),
                trigger=AfterWatermark(late=AfterCount(1)),
                allowed_lateness=Duration(seconds=self._allowed_lateness_s),
                accumulation_mode=AccumulationMode.DISCARDING)
        elif windowfn.is_merging():
            # Session windows would be merged per (partition) key after the
            # keys were computed from unmerged windows: archive them whole.
            records = records | "RewindowForArchive" >> beam.WindowInto(beam_window.GlobalWindows())
        if self._batched:
            key_fn = _KeyBatchByPartitionFn(self._shards, self._timestamp_fn, self._sort_key_fn,
                                            self._pipeline, self._schema, self._pre_encoded)
        else:
            key_fn = _KeyByPartitionFn(self._shards, self._timestamp_fn, self._sort_key_fn,
                                       self._pipeline)
        keyed = records | "KeyByPartition" >> beam.ParDo(key_fn).with_outputs(
            _KeyByPartitionFn.FAILED, main="keyed")
        written = (
            keyed.keyed
            | "GroupByPartition" >> beam.GroupByKey()
            | "WriteAvroFiles" >> beam.ParDo(_WriteAvroFileFn(
                self._base_path, self._source, self._schema, self._shards, self._codec,
                self._pipeline, self._batched, self._file_prefix)).with_outputs(
                    _WriteAvroFileFn.FAILED, main="paths")
        )
        return (
            (keyed[_KeyByPartitionFn.FAILED], written[_WriteAvroFileFn.FAILED])
            | "FlattenArchiveFailures" >> beam.Flatten()
        )
