"""Decode and validate source records into event dicts (first step of every pipeline).

``parse_record`` is the pure core: bytes/text/dict -> validated event dict (see
docs/ARCHITECTURE.md, "Element types")::

    {<model fields>, "event_id", "timestamp_ms", "extra": {unknown fields},
     "_source": {"topic", "partition", "offset"}}

``ParseEvents`` wraps it for a ``PCollection[SourceRecord]``::

    SourceRecord --ParseFn--+--> valid  : event dict, timestamped at its event time
                            +--> failed : FailedRecord (stage "decode" | "validate")

Every input ends in exactly one output; counters ``received``, ``valid`` and
``failed`` (namespace = pipeline name) count them.

``decoder``: ``None`` or the ``json`` module means JSON text (decoded with
orjson, falling back to the standard library for its readable error
messages); anything else is a binary decoder, an object with ``.loads`` or a
callable, given the raw bytes and returning a dict (e.g.
``iheard_io.kafka.avro_decoder``). A decoded ``envelope_v1`` record is
unwrapped to its payload (``schemas/avro.py``).

A payload without its own timestamp takes the source record's (the Kafka
record timestamp); with neither it fails validation.

``event_id`` is the payload's own ``event_id`` if it has one, else the
SHA-256 hex of the payload's canonical JSON (sorted keys, no whitespace,
UTF-8), so a producer retry or a replayed Kafka range yields the same id and
the dedupe step and the upserting sinks absorb it.
"""
from __future__ import annotations

import hashlib
import json
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from pydantic import ValidationError

from schemas.errors import format_validation_error
from schemas.events import normalize_timestamp_ms
from schemas.records import (
    SourceRecord,
    failed_from_source,
)
from transforms.batches import MapBatchMixin, timestamped_batch
from transforms.beam_compat import relax_gc

__all__ = [
    "ParseEvents",
    "parse_record",
    "DecodeError",
    "event_id_for",
    "format_validation_error",
]


class DecodeError(ValueError):
    """The payload is not a UTF-8 JSON object."""


# orjson is a declared dependency (setup.py) and defines the canonical form:
# it is ~8x faster than json, and the two differ only in how they spell
# floats below 1e-4 (1e-05 vs 0.00001), so every worker must use the same
# one. The stdlib form is used only for payloads orjson refuses (integers
# beyond 64 bits), which is a property of the payload, hence deterministic.
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - only if the dependency is missing
    _orjson = None


def _canonical_json_stdlib(payload: dict) -> bytes:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        default=str,
    ).encode("utf-8")


def _canonical_json(payload: dict) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not \\u-escaped)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(payload, option=_orjson.OPT_SORT_KEYS, default=str)
        except TypeError:  # e.g. integers beyond 64 bits, non-str keys
            pass
    return _canonical_json_stdlib(payload)


def _loads(text):
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except ValueError:
            pass  # re-parse with json: its error messages are the readable ones
    try:
        payload = json.loads(text)
    except RecursionError:
        # orjson stops at 1024 levels; the stdlib parser recurses until the
        # interpreter's limit. Either way: not an event.
        raise DecodeError("payload is not valid JSON: nested too deeply") from None
    if _orjson is not None:
        # orjson refused what the stdlib accepted: NaN/Infinity literals,
        # numbers beyond a double, or lone surrogates; none is data a sink
        # can store.
        _check_stdlib_only_values(payload)
    return payload


def _check_stdlib_only_values(value, path: str = "") -> None:
    """Raises ``DecodeError`` for a non-finite float or a string (or key)
    that is not valid Unicode (a lone surrogate) anywhere in ``value``."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DecodeError(f"payload is not valid JSON: {path or 'value'} is {value!r} "
                              "(NaN/Infinity or a number beyond a double)")
    elif isinstance(value, str):
        _check_unicode(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"{path}.{key}" if path else "a key")
            _check_stdlib_only_values(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_stdlib_only_values(item, f"{path}[{i}]")


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(
            f"payload is not valid JSON text: {path or 'value'} holds a lone UTF-16 "
            "surrogate") from None


def _find_nul(value, path: str = "") -> typing.Optional[str]:
    """The path of the first string or key holding U+0000, or None."""
    if isinstance(value, str):
        return (path or "value") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return f"a key in {path}" if path else "a key"
            found = _find_nul(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_nul(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _reject_nul(value, payload: dict) -> None:
    """PostgreSQL text cannot hold U+0000 and a NUL in an id or a name is
    never meant: the event fails validation, naming the field. JSON text is
    searched for the escape first (one C-level scan), so an ordinary event
    costs no walk; a decoded dict (Avro, tests) is walked."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if b"\\u0000" not in bytes(value):
            return
    elif isinstance(value, str):
        if "\\u0000" not in value:
            return
    found = _find_nul(payload)
    if found:
        raise ValueError(f"{found}: text holds a NUL character (U+0000), which is not stored")


def event_id_for(payload: dict) -> str:
    """The payload's ``event_id`` if non-empty, else SHA-256 of its canonical JSON."""
    given = payload.get("event_id")
    if given is not None and not isinstance(given, (dict, list, bool)):
        given = str(given).strip()
        if given:
            return given
    return hashlib.sha256(_canonical_json(payload)).hexdigest()


def _decode(value, decoder) -> dict:
    if isinstance(value, dict):
        return value
    if decoder is not None and decoder is not json:
        # A binary decoder (e.g. Avro) gets the raw bytes; it may be an object
        # with .loads or a plain callable.
        loads = getattr(decoder, "loads", decoder)
        try:
            payload = loads(bytes(value) if isinstance(value, (bytearray, memoryview)) else value)
        except Exception as exc:  # noqa: BLE001 - any decoder error is a decode failure
            raise DecodeError(f"payload could not be decoded: {type(exc).__name__}: {exc}") from None
        if isinstance(payload, dict) and "payload_json" in payload and "envelope_version" in payload:
            from schemas.avro import unwrap_envelope

            try:
                payload = unwrap_envelope(payload)
            except (ValueError, TypeError, KeyError) as exc:
                raise DecodeError(f"bad envelope: {exc}") from None
        if not isinstance(payload, dict):
            raise DecodeError(f"payload must decode to an object, got {type(payload).__name__}")
        return payload
    if isinstance(value, (bytes, bytearray, memoryview)):
        if _orjson is not None:
            try:
                payload = _orjson.loads(value)
            except ValueError:
                payload = None  # fall through: stdlib gives the readable message
            if isinstance(payload, dict):
                return payload
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"payload is not valid UTF-8: {exc}") from None
    elif isinstance(value, str):
        text = value
    else:
        raise DecodeError(f"payload must be bytes, str or dict, got {type(value).__name__}")
    if not text.strip():
        raise DecodeError("payload is empty")
    try:
        payload = _loads(text)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise DecodeError(
            f"payload must be a JSON object, got {type(payload).__name__}"
        )
    return payload


def parse_record(
    value: typing.Union[bytes, str, dict],
    model,
    decoder=json,
    *,
    source: typing.Optional[SourceRecord] = None,
) -> dict:
    """Decode ``value`` and validate it with ``model`` (a pydantic model class).

    Raises ``DecodeError`` (not JSON / not an object) or ``ValueError`` with a
    message naming the field (the model rejected it; a pydantic
    ``ValidationError`` is a ``ValueError``). ``source`` fills ``_source`` and
    provides the fallback event time (the Kafka record timestamp) for payloads
    without their own.
    """
    payload = _decode(value, decoder)
    _reject_nul(value, payload)
    # The core validator directly: same result as model.model_validate, without
    # its per-call Python wrapper (measurable at tens of thousands of events/s).
    obj = model.__pydantic_validator__.validate_python(payload)
    ts = getattr(obj, "timestamp_ms", None)
    # The model instance is discarded: its field dict becomes the record.
    record = obj.__dict__
    record["extra"] = obj.__pydantic_extra__ or {}
    if ts is None and source is not None and source.timestamp_ms is not None:
        # The payload has no time of its own: fall back to the transport's.
        ts = normalize_timestamp_ms(source.timestamp_ms)
    if ts is None:
        raise ValueError("timestamp: field required (no event time in payload or record)")
    record["timestamp_ms"] = int(ts)
    record["event_id"] = event_id_for(payload)
    record["_source"] = (
        {"topic": source.topic, "partition": source.partition, "offset": source.offset}
        if source is not None
        else {"topic": None, "partition": None, "offset": None}
    )
    return record


class _ParseFn(beam.DoFn):
    def __init__(self, model, pipeline: str, decoder=None):
        self._model = model
        self._pipeline = pipeline
        self._decoder = decoder
        self._received = Metrics.counter(pipeline, "received")
        self._valid = Metrics.counter(pipeline, "valid")
        self._failed = Metrics.counter(pipeline, "failed")

    def setup(self):
        # First step of every pipeline: tunes the worker process it runs in.
        relax_gc()

    def _one(self, record: SourceRecord):
        """(event, None) or (None, FailedRecord); counts both."""
        self._received.inc()
        try:
            event = parse_record(record.value, self._model, self._decoder,
                                 source=record)
        except DecodeError as exc:
            self._failed.inc()
            return None, failed_from_source(record, exc, "decode", self._pipeline)
        except ValidationError as exc:
            self._failed.inc()
            readable = ValueError(format_validation_error(exc))
            failed = failed_from_source(record, readable, "validate", self._pipeline)
            return None, failed._replace(error_class="ValidationError")
        except Exception as exc:  # noqa: BLE001 - any data error is a dead letter
            self._failed.inc()
            return None, failed_from_source(record, exc, "validate", self._pipeline)
        self._valid.inc()
        return event, None

    def process(self, record: SourceRecord):
        event, failed = self._one(record)
        if failed is not None:
            yield beam.pvalue.TaggedOutput(ParseEvents.FAILED, failed)
        else:
            yield TimestampedValue(event, event["timestamp_ms"] / 1000.0)


class _ParseBatchFn(MapBatchMixin, _ParseFn):
    """A list of records -> one list of events (stamped with the oldest event
    time) and one ``FailedRecord`` per record that did not parse."""

    def _batch_of(self, values):
        return timestamped_batch(values)


class ParseEvents(beam.PTransform):
    """``PCollection[SourceRecord]`` -> tagged outputs ``valid`` (event dicts
    with event-time timestamps) and ``failed`` (``FailedRecord``).

    ``batched=True``: elements are lists of ``SourceRecord`` and ``valid``
    holds lists of event dicts (transforms/batches.py); failures stay one
    ``FailedRecord`` per record."""

    VALID = "valid"
    FAILED = "failed"

    def __init__(self, model, pipeline: str, decoder=None, batched: bool = False):
        super().__init__()
        if not hasattr(model, "model_validate"):
            raise ValueError("model must be a pydantic v2 model class")
        if not pipeline:
            raise ValueError("pipeline name is required (it names the counters)")
        self._model = model
        self._pipeline = pipeline
        self._decoder = decoder
        self._batched = batched

    def dofn(self) -> beam.DoFn:
        """The per-element DoFn ``expand`` applies (unbatched), for running
        the step in-process: a replay's dry run (beam_pipelines/replay.py)."""
        return _ParseFn(self._model, self._pipeline, self._decoder)

    def expand(self, records):
        fn_class = _ParseBatchFn if self._batched else _ParseFn
        return records | "ValidateAndTimestamp" >> beam.ParDo(
            fn_class(self._model, self._pipeline, self._decoder)
        ).with_outputs(self.FAILED, main=self.VALID)
