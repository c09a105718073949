"""Archived records back into the pipelines' input (archive re-runs).

The archive holds each event as the pipeline finished it: parsed, redacted,
enriched (``schemas/avro/frontend_enriched_v1.avsc``,
``agent_turn_v1.avsc``). A re-run sends it through the *current* chain
again, from the parse step on, so it must look like what a producer sent:

    archived record --frontend_payload / turn_payload--> the payload fields
        the event model declares (``FrontendEvent``, ``TextAgentTurn``),
        its ``event_id``, its time (``timestamp`` = the archived
        ``timestamp_ms``) and its unknown fields (``extra_json``)
    archived_source_record: SourceRecord(the archived record as JSON, topic =
        the archive object, offset = the record's index in it); the parse
        step's decoder (ArchiveDecoder) makes the payload of it

What the re-run gets back, and why it gives the first run's rows:

* the same ``event_id``: the archived one is sent as the payload's own id
  (the first run's id was the producer's, or a hash of the raw payload that
  a redacted payload could not give again), so every upsert hits the row
  the first run wrote;
* redacted text: redaction is idempotent (tokens are protected spans), and
  the re-run counts the tokens already there as values found
  (``PiiRedactor(count_existing_tokens=True)``), so ``pii_redacted``,
  ``lead_captured`` and the scores that read the counts come out as in the
  first run. Values a newer redactor finds are added to them;
* the enrichment's own fields (scores, stages, costs) are not sent: the
  current code computes them again, which is the point of a re-run.

A record that cannot be turned back (a field missing from a hand-made file)
becomes a dead letter of the parse step (stage ``decode``), its raw text the
archived record.
"""
from __future__ import annotations

import datetime as dt
import json
import typing

from schemas.events import FrontendEvent
from schemas.records import SourceRecord
from schemas.text_agent import TextAgentTurn

__all__ = [
    "frontend_payload",
    "turn_payload",
    "archived_source_record",
    "ArchiveDecoder",
]

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)

# Payload fields of each model, as the archive names them (the archive keeps
# the model's own names; the enrichment's fields are not payload).
_FRONTEND_FIELDS = tuple(name for name in FrontendEvent.model_fields if name != "timestamp")


def _epoch_ms(value) -> int:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=_UTC)
        return (aware - _EPOCH) // dt.timedelta(milliseconds=1)
    if value is None:
        raise ValueError("timestamp_ms: missing")
    return int(value)


def _extra(record: typing.Mapping, declared: typing.Iterable[str]) -> dict:
    """The unknown payload fields kept as ``extra_json`` (never overriding a
    declared field)."""
    text = record.get("extra_json")
    if not text:
        return {}
    extra = json.loads(text)
    if not isinstance(extra, dict):
        raise ValueError("extra_json: not a JSON object")
    declared = set(declared)
    return {k: v for k, v in extra.items() if k not in declared}


def frontend_payload(record: typing.Mapping) -> dict:
    """An archived ``frontend_enriched_v1`` record -> a ``trackEvent`` body."""
    payload = {name: record.get(name) for name in _FRONTEND_FIELDS
               if record.get(name) is not None}
    payload["event_id"] = record["event_id"]
    payload["timestamp"] = _epoch_ms(record.get("timestamp_ms"))
    payload.update(_extra(record, list(_FRONTEND_FIELDS) + ["timestamp"]))
    return payload


def _json_object(record: typing.Mapping, name: str) -> dict:
    text = record.get(name)
    value = json.loads(text) if text else {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: not a JSON object")
    return value


def turn_payload(record: typing.Mapping) -> dict:
    """An archived ``agent_turn_v1`` record -> a ``text_agent.turn_completed``
    payload (``model`` back to ``model_name``; tool results and context from
    their JSON text)."""
    payload = {
        "event_type": "text_agent.turn_completed",
        "event_id": record["event_id"],
        "session_id": record["session_id"],
        "turn_id": record["turn_id"],
        "user_id": record.get("user_id"),
        "channel": record.get("channel"),
        "model_name": record["model"],
        "tokens_in": record["tokens_in"],
        "tokens_out": record["tokens_out"],
        "latency_ms": record["latency_ms"],
        "response_text": record.get("response_text"),
        "user_message": record.get("user_message"),
        "tools_used": list(record.get("tools_used") or []),
        "tool_results": _json_object(record, "tool_results_json"),
        "conversation_context": _json_object(record, "conversation_context_json"),
        "timestamp": _epoch_ms(record.get("timestamp_ms")),
    }
    payload.update(_extra(record, list(TextAgentTurn.model_fields) + ["model"]))
    return payload


def _json_default(value):
    if isinstance(value, dt.datetime):
        return _epoch_ms(value)  # timestamp-millis fields, as the archive stores them
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return str(value)


def archived_source_record(record: typing.Mapping) -> SourceRecord:
    """The ``SourceRecord`` of one archived record: the record as JSON (its
    ``timestamp-millis`` fields as epoch ms), where it was read (``_archive``:
    object path, index) as topic and offset. ``ArchiveDecoder`` turns it into
    the payload in the parse step, so a record that cannot be turned back is
    a dead letter of that step, with the archived record as its raw text."""
    path, index = record.get("_archive") or ("archive", 0)
    fields = {k: v for k, v in record.items() if k != "_archive"}
    value = json.dumps(fields, separators=(",", ":"), ensure_ascii=False, sort_keys=True,
                       default=_json_default).encode("utf-8")
    ts = record.get("timestamp_ms")
    return SourceRecord(value=value, topic=path, partition=0, offset=int(index),
                        timestamp_ms=_epoch_ms(ts) if ts is not None else None)


class ArchiveDecoder:
    """The parse step's decoder for archived records (``ParseEvents(decoder=)``):
    JSON text of an archived record -> the payload ``to_payload`` makes of it
    (``frontend_payload`` or ``turn_payload``). Picklable by reference."""

    def __init__(self, to_payload: typing.Callable[[typing.Mapping], dict]):
        self._to_payload = to_payload

    def loads(self, value) -> dict:
        record = json.loads(value)
        if not isinstance(record, dict):
            raise ValueError("an archived record is a JSON object")
        return self._to_payload(record)
