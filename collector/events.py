"""Validation and routing of incoming events: the collector's pure core.

A request body is one ``trackEvent`` object or a JSON array of them. Each
object is validated with the model of the source it belongs to, the same
models the pipelines' parse step uses (``schemas/``), so an event the
collector accepts is one the pipeline will accept::

    event_type in text-agent spellings -> TextAgentTurn -> text_agent_turn_completed
    anything else                      -> FrontendEvent -> frontend_user_interaction

The value published is the object exactly as received (re-serialised), not
the validated model: the pipeline derives ``event_id`` from the payload, so a
client that retries a request yields the same id and is de-duplicated
downstream. The Kafka key is the validated ``session_id``, so one visit's
events stay in one partition, in order.

A batch is all or nothing: when one object is invalid the request is refused
with every invalid index and its reason, and nothing is published.
"""
from __future__ import annotations

import dataclasses
import typing

import orjson
from pydantic import ValidationError

from schemas.events import FrontendEvent
from schemas.text_agent import TextAgentTurn, _EVENT_TYPE_ALIASES
from schemas.errors import format_validation_error

__all__ = [
    "SOURCES",
    "DEFAULT_TOPICS",
    "OutgoingRecord",
    "Rejected",
    "BodyError",
    "source_of",
    "prepare_event",
    "parse_body",
]

FRONTEND = "frontend"
TEXT_AGENT = "text_agent"
SOURCES = (FRONTEND, TEXT_AGENT)
DEFAULT_TOPICS = {
    FRONTEND: "frontend_user_interaction",
    TEXT_AGENT: "text_agent_turn_completed",
}
_MODELS = {FRONTEND: FrontendEvent, TEXT_AGENT: TextAgentTurn}


@dataclasses.dataclass(frozen=True)
class OutgoingRecord:
    """One validated event, ready for Kafka."""

    source: str
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: typing.Optional[int]


@dataclasses.dataclass(frozen=True)
class Rejected:
    """Why the object at ``index`` of the body was refused."""

    index: int
    reason: str


class BodyError(ValueError):
    """The body as a whole is unusable; ``kind`` is the counter label."""

    def __init__(self, kind: str, message: str, rejected: typing.Sequence[Rejected] = ()):
        super().__init__(message)
        self.kind = kind
        self.rejected = list(rejected)


def source_of(payload: dict) -> str:
    """The source an event belongs to, from its ``event_type`` alone."""
    event_type = payload.get("event_type", payload.get("eventType"))
    if isinstance(event_type, str) and event_type.strip() in _EVENT_TYPE_ALIASES:
        return TEXT_AGENT
    return FRONTEND


def prepare_event(
    payload: typing.Any,
    topics: typing.Mapping[str, str] = DEFAULT_TOPICS,
    source: typing.Optional[str] = None,
) -> OutgoingRecord:
    """Validates one event; raises ``ValueError`` with a reason naming the field.

    ``source`` forces the model (the text-agent client knows what it sends);
    otherwise it is taken from ``event_type``.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"event must be a JSON object, got {type(payload).__name__}")
    source = source or source_of(payload)
    if source not in _MODELS:
        raise ValueError(f"unknown source {source!r}; one of {SOURCES}")
    try:
        # The core validator directly, as the parse step does (no wrapper cost).
        model = _MODELS[source].__pydantic_validator__.validate_python(payload)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc)) from None
    try:
        value = orjson.dumps(payload)
    except TypeError as exc:  # integers beyond 64 bits, non-str keys (client objects)
        raise ValueError(f"event cannot be encoded as JSON: {exc}") from None
    return OutgoingRecord(
        source=source,
        topic=topics[source],
        key=model.session_id.encode("utf-8"),
        value=value,
        timestamp_ms=getattr(model, "timestamp_ms", None),
    )


def parse_body(
    body: bytes,
    topics: typing.Mapping[str, str] = DEFAULT_TOPICS,
    max_events: int = 500,
) -> typing.List[OutgoingRecord]:
    """A request body -> its records, or ``BodyError`` (kind ``invalid_json``,
    ``not_an_object``, ``empty_batch``, ``too_many_events`` or
    ``invalid_event`` with every rejected index)."""
    if not body.strip():
        raise BodyError("invalid_json", "body is empty")
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError("invalid_json", f"body is not valid JSON: {exc}") from None
    if isinstance(decoded, dict):
        items = [decoded]
    elif isinstance(decoded, list):
        items = decoded
        if not items:
            raise BodyError("empty_batch", "batch is an empty array")
        if len(items) > max_events:
            raise BodyError("too_many_events",
                            f"batch has {len(items)} events, at most {max_events} allowed")
    else:
        raise BodyError("not_an_object",
                        f"body must be a JSON object or an array of objects, got {type(decoded).__name__}")
    records, rejected = [], []
    for index, item in enumerate(items):
        try:
            records.append(prepare_event(item, topics))
        except ValueError as exc:
            rejected.append(Rejected(index, str(exc)))
    if rejected:
        noun = "event" if len(items) == 1 else f"{len(rejected)} of {len(items)} events"
        raise BodyError("invalid_event", f"{noun} invalid; nothing was published", rejected)
    return records
