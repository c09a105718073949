"""Element types that flow between the project's transforms and connectors.

``SourceRecord`` is what every source emits (a Kafka record, or a line of a
JSONL file with the file path as topic and the line number as offset), so
parse steps and dead letters always know where a record came from.

``FailedRecord`` is the one dead-letter shape: every transform that can fail on
data emits it on its ``failed`` output, and every dead-letter sink
(``failed_events`` table, dead-letter topic) stores it unchanged.
"""
from __future__ import annotations

import datetime as _dt
import typing

__all__ = [
    "SourceRecord",
    "FailedRecord",
    "PIPELINE_VERSION",
    "failed_from_source",
    "utc_now_iso",
]

# Written into every dead letter and into transformation_metadata so a row can
# be traced to the code that produced it.
PIPELINE_VERSION = "0.1.0"


class SourceRecord(typing.NamedTuple):
    value: bytes
    topic: str
    partition: int = 0
    offset: int = 0
    key: typing.Optional[bytes] = None
    timestamp_ms: typing.Optional[int] = None


class FailedRecord(typing.NamedTuple):
    raw: str  # the payload as text (undecodable bytes replaced), never dropped
    error_class: str  # e.g. "ValidationError", "JSONDecodeError"
    error_message: str
    stage: str  # "decode" | "validate" | "redact" | "enrich" | "sink:postgres" ...
    pipeline: str  # "frontend" | "text_agent" | "marketo"
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    pipeline_version: str = PIPELINE_VERSION
    received_at: str = ""  # ISO-8601 UTC

    def as_dict(self) -> dict:
        return self._asdict()


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def failed_from_source(
    record: SourceRecord, exc: BaseException, stage: str, pipeline: str
) -> FailedRecord:
    """Builds the dead letter for a source record that failed at ``stage``."""
    return FailedRecord(
        raw=record.value.decode("utf-8", errors="replace")
        if isinstance(record.value, (bytes, bytearray))
        else str(record.value),
        error_class=type(exc).__name__,
        error_message=str(exc)[:4000],
        stage=stage,
        pipeline=pipeline,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        received_at=utc_now_iso(),
    )
