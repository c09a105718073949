"""The ``text_agent.turn_completed`` event, as text-agent-server's
``on_turn_completed`` publishes it.

Payload (one JSON object per Kafka record on ``text_agent_turn_completed``)::

    {"event_type": "text_agent.turn_completed",
     "session_id": "...", "turn_id": "turn_1732590000",
     "user_id": "..." | null, "channel": "web_chat",
     "model_name": "claude-3-sonnet", "tokens_in": 812, "tokens_out": 164,
     "latency_ms": 2310.4,
     "response_text": "...", "user_message": "..." | null,
     "tools_used": ["search_docs"],
     "tool_results": {"search_docs": {"success": true}},
     "conversation_context": {"previous_turns": 3,
                              "topic_history": ["pricing"],
                              "user_intent": "purchase" | null},
     "timestamp": 1732590000123}

Required are the fields the producer reads with ``turn_data[...]`` /
``response_data[...]`` (session_id, turn_id, model_name, tokens_in,
tokens_out, latency_ms, response_text, timestamp); the ones it reads with
``.get`` may be missing or null and get the producer's defaults (``channel``
-> ``web_chat``, ``previous_turns`` -> 0, ``topic_history`` -> []).

Leniency, on purpose and nowhere else:

* ``timestamp`` may be epoch s/ms/us/ns (number or numeric text) or ISO-8601
  text (naive means UTC); it becomes UTC epoch ms by the project-wide rule in
  ``schemas.events.normalize_timestamp_ms`` (plausible range 2000..2100).
* every field may also be spelt in camelCase (``sessionId``, ``tokensIn``),
  and ``model`` is accepted for ``model_name`` (the producer's own key).
* numbers may arrive as numeric text (``"812"``); ``response_text`` may be
  null (a tool-only turn) and becomes ``""``; a tool result may be a bare
  boolean (``{"search": true}``) and ``tools_used`` entries may be objects
  with a ``name``.
* ``event_type`` may be missing (the topic already says what it is) or spelt
  like the topic (``text_agent_turn_completed``, ``text.agent.turn.completed``);
  anything else is rejected, because it is not a turn.
* ids may arrive as numbers; they are kept as text.
* unknown top-level fields are kept (``extra='allow'``): the pipeline reads the
  tenant and cached-token counts from them (see ``transforms/text_agent.py``).

Everything else is strict: missing required fields, negative token counts or
latency, a tool result without a boolean ``success``, ``tools_used`` that is
not a list of names, blank ids, an implausible timestamp - each is a
validation error whose message names the field, and the record goes to the
dead-letter output.

After validation every field is a plain value (``tool_results`` and
``conversation_context`` are dicts, not models), so the parse step's event
dict is cheap to pickle between transforms.
"""
from __future__ import annotations

import typing

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from schemas.events import field_aliases, normalize_timestamp_ms

__all__ = [
    "TextAgentTurn",
    "ToolResult",
    "ConversationContext",
    "EVENT_TYPE",
]

EVENT_TYPE = "text_agent.turn_completed"
# agent_turns stores counts as INTEGER; a larger count is a producer bug.
_MAX_INT32 = 2**31 - 1
_EVENT_TYPE_ALIASES = frozenset(
    {EVENT_TYPE, "text_agent_turn_completed", "text.agent.turn.completed"}
)


_CONFIG = ConfigDict(
    extra="allow",
    coerce_numbers_to_str=True,
    populate_by_name=True,
    str_max_length=262_144,
    alias_generator=AliasGenerator(validation_alias=field_aliases),
)


class ToolResult(BaseModel):
    """One entry of ``tool_results``: ``{"success": bool, ...}``; other keys
    (outputs, error text) are kept and go through PII redaction."""

    model_config = _CONFIG

    success: bool


class ConversationContext(BaseModel):
    model_config = _CONFIG

    previous_turns: int = Field(default=0, ge=0, le=_MAX_INT32)
    topic_history: typing.List[str] = Field(default_factory=list)
    user_intent: typing.Optional[str] = Field(default=None, max_length=100)

    @field_validator("previous_turns", mode="before")
    @classmethod
    def _null_turns(cls, v):
        return 0 if v is None else v

    @field_validator("topic_history", mode="before")
    @classmethod
    def _null_history(cls, v):
        return [] if v is None else v


class TextAgentTurn(BaseModel):
    """A completed agent turn; see the module docstring for the payload."""

    model_config = _CONFIG

    event_type: str = EVENT_TYPE
    # The producer's own id when it sends one (the parse step hashes the
    # payload otherwise); declared so that it is not kept among the unknown
    # fields (an archive re-run sends the archived id).
    event_id: typing.Optional[str] = Field(default=None, max_length=200)
    session_id: str = Field(min_length=1, max_length=100)
    turn_id: str = Field(min_length=1, max_length=100)
    user_id: typing.Optional[str] = Field(default=None, max_length=100)
    channel: str = Field(default="web_chat", max_length=50)
    model_name: str = Field(
        min_length=1, max_length=100,
        validation_alias=AliasChoices("model_name", "modelName", "model"),
    )
    tokens_in: int = Field(ge=0, le=_MAX_INT32)
    tokens_out: int = Field(ge=0, le=_MAX_INT32)
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    response_text: typing.Optional[str]
    user_message: typing.Optional[str] = None
    tools_used: typing.List[str] = Field(default_factory=list)
    tool_results: typing.Dict[str, typing.Dict[str, typing.Any]] = Field(default_factory=dict)
    conversation_context: typing.Dict[str, typing.Any] = Field(default_factory=dict)
    timestamp: int

    @property
    def timestamp_ms(self) -> int:
        return self.timestamp

    @property
    def extra(self) -> dict:
        """Fields the model does not declare, exactly as received."""
        return dict(self.__pydantic_extra__ or {})

    @field_validator("event_type", mode="before")
    @classmethod
    def _event_type(cls, v):
        if v is None:
            return EVENT_TYPE
        if not isinstance(v, str) or v.strip().lower() not in _EVENT_TYPE_ALIASES:
            raise ValueError(f"must be {EVENT_TYPE!r}, got {v!r}")
        return EVENT_TYPE

    @field_validator("session_id", "turn_id", "model_name", mode="before")
    @classmethod
    def _strip_ids(cls, v):
        return v.strip() if isinstance(v, str) else v

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, v):
        # The producer sends turn_data.get('channel', 'web_chat'): a present
        # but null channel is the producer's default too.
        return "web_chat" if v is None or v == "" else v

    @field_validator("response_text", mode="after")
    @classmethod
    def _response_text(cls, v):
        return "" if v is None else v

    @field_validator("tools_used", mode="before")
    @classmethod
    def _tools_used(cls, v):
        if v is None:
            return []
        if isinstance(v, list):
            return [t.get("name") if isinstance(t, dict) and "name" in t else t for t in v]
        return v

    @field_validator("tool_results", mode="before")
    @classmethod
    def _tool_results(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be an object {tool_name: {success: bool}}")
        out = {}
        for name, result in v.items():
            if isinstance(result, bool):
                result = {"success": result}
            if not isinstance(result, dict):
                raise ValueError(f"{name}: must be an object with 'success', got {result!r}")
            try:
                out[str(name)] = ToolResult.model_validate(result).model_dump()
            except ValueError as exc:
                raise ValueError(f"{name}: {_first_error(exc)}") from None
        return out

    @field_validator("conversation_context", mode="before")
    @classmethod
    def _context(cls, v):
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise ValueError("must be an object {previous_turns, topic_history, user_intent}")
        try:
            return ConversationContext.model_validate(v).model_dump()
        except ValueError as exc:
            raise ValueError(_first_error(exc)) from None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v):
        return normalize_timestamp_ms(v)


def _first_error(exc) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = "field required" if err.get("type") == "missing" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
