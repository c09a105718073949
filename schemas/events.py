"""Pydantic models for the payloads the sources send, exactly as sent.

``FrontendEvent`` is the body of the widget's ``trackEvent`` call (see the
design document's integration guide); ``MarketoLead`` is one lead record from
Marketo's REST API. The text-agent model lives in ``schemas/text_agent.py``.

Validation policy: liberal where a real client legitimately varies, strict
where the event would be meaningless.

* Liberal: optional fields may be null or absent; ``referrer`` may be ``""``;
  numbers may arrive as numeric strings (``"45"``) and ids as numbers
  (``session_id: 12345`` becomes ``"12345"``); camelCase spellings of the
  documented fields (``sessionId``) are accepted; unknown fields are kept
  (``extra='allow'``) and surfaced as ``.extra``.
* Strict: a missing/blank ``event_type`` or ``session_id``, a timestamp that is
  negative, not a time, or outside [2000-01-01, 2100-01-01), and values of the
  wrong type (an object where text is expected) are rejected with a message
  naming the field.

Timestamps (``normalize_timestamp_ms``) are normalised to UTC epoch
milliseconds. A number (or numeric string) is read by magnitude::

    |v| < 1e11            -> epoch seconds       (1e11 s is the year 5138)
    1e11 <= |v| < 1e14    -> epoch milliseconds  (1e11 ms is 1973-03-03)
    1e14 <= |v| < 1e17    -> epoch microseconds
    1e17 <= |v|           -> epoch nanoseconds

Every plausible event time (2000..2100) falls in exactly one band for each
unit, so the rule never confuses units for real data. Text is read as
ISO-8601 (``2024-01-15T10:30:00Z``, ``...+02:00``, or without a zone, which
is taken as UTC), or the strings JavaScript's ``Date`` produces
(``toUTCString()``, ``toString()``). The result must lie in [2000-01-01, 2100-01-01) UTC;
anything else is "absurd" and rejected. No wall-clock check is made, so a
replay validates exactly like the first run.
"""
from __future__ import annotations

import datetime as _dt
import email.utils
import math
import re
import typing

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

__all__ = [
    "FrontendEvent",
    "MarketoLead",
    "normalize_timestamp_ms",
    "field_aliases",
    "MIN_TIMESTAMP_MS",
    "MAX_TIMESTAMP_MS",
]

# Plausible event-time range; outside it a timestamp is a bug, not an event.
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

_SECONDS_LIMIT = 1e11
_MILLIS_LIMIT = 1e14
_MICROS_LIMIT = 1e17

_UTC = _dt.timezone.utc


def _check_range(ms: int, original) -> int:
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise ValueError(
            f"timestamp {original!r} is outside the plausible range "
            "2000-01-01..2100-01-01 UTC"
        )
    return ms


def _from_number(value: float, original) -> int:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"timestamp {original!r} is not a finite number")
    if value < 0:
        raise ValueError(f"timestamp {original!r} is negative")
    if value < _SECONDS_LIMIT:
        ms = value * 1000.0
    elif value < _MILLIS_LIMIT:
        ms = value
    elif value < _MICROS_LIMIT:
        ms = value / 1000.0
    else:
        ms = value / 1_000_000.0
    return _check_range(int(round(ms)), original)


_JS_DATE_STRING = re.compile(
    r"^[A-Za-z]{3} ([A-Za-z]{3} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})")


def _parse_text_time(text: str) -> typing.Optional[_dt.datetime]:
    """ISO-8601 first; then the other forms a JS client can produce:
    ``Date.toUTCString()`` (RFC 2822), ``Date.toString()`` and a trailing
    `` UTC``/`` GMT``."""
    try:
        return _dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        pass
    for suffix in (" UTC", " GMT"):
        if text.endswith(suffix):
            try:
                return _dt.datetime.fromisoformat(text[: -len(suffix)]).replace(tzinfo=_UTC)
            except ValueError:
                pass
    js = _JS_DATE_STRING.match(text)
    if js:
        try:
            return _dt.datetime.strptime(f"{js.group(1)} {js.group(2)}", "%b %d %Y %H:%M:%S %z")
        except ValueError:
            return None
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def normalize_timestamp_ms(value) -> int:
    """Epoch s/ms/us/ns (number or numeric text) or ISO-8601 -> UTC epoch ms.

    Raises ``ValueError`` with a readable message for anything else (see the
    module docstring for the magnitude rule and the accepted range).
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"timestamp {value!r} is not a time")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"timestamp {value!r} is negative")
        if value < _SECONDS_LIMIT:
            return _check_range(value * 1000, value)
        if value < _MILLIS_LIMIT:
            return _check_range(value, value)
        return _from_number(float(value), value)
    if isinstance(value, float):
        return _from_number(value, value)
    if isinstance(value, _dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=_UTC)
        return _check_range(int(round(aware.timestamp() * 1000)), value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("timestamp is empty")
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            if text.lstrip("+-").isdigit():
                return normalize_timestamp_ms(int(text))
            return _from_number(number, value)
        parsed = _parse_text_time(text)
        if parsed is None:
            raise ValueError(
                f"timestamp {value!r} is neither epoch s/ms nor ISO-8601"
            )
        return normalize_timestamp_ms(parsed)
    raise ValueError(
        f"timestamp must be a number or an ISO-8601 string, "
        f"got {type(value).__name__}"
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def field_aliases(name: str) -> AliasChoices:
    """A field's accepted input names: ``name`` and its camelCase spelling
    (``session_id`` or ``sessionId``), for every event model."""
    camel = _camel(name)
    return AliasChoices(name, camel) if camel != name else AliasChoices(name)


def _opt_str(name: str, max_length: int = 8192):
    return Field(default=None, max_length=max_length,
                 validation_alias=field_aliases(name))


class _Payload(BaseModel):
    """Common configuration: keep unknown fields, coerce ids sent as numbers."""

    model_config = ConfigDict(
        extra="allow",
        coerce_numbers_to_str=True,
        populate_by_name=True,
        str_max_length=65536,
    )

    @property
    def extra(self) -> dict:
        """Fields the model does not declare, exactly as received."""
        return dict(self.__pydantic_extra__ or {})


_RequiredText = typing.Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class FrontendEvent(_Payload):
    """One ``trackEvent`` body from the chat widget.

    ``timestamp`` is ``Date.now()`` (epoch ms) in the integration guide; see
    ``normalize_timestamp_ms`` for the other accepted forms. It may be absent
    only if the caller can supply the transport's time instead (the parse
    step uses the Kafka record timestamp then); ``timestamp_ms`` is None in
    that case.
    """

    event_id: typing.Optional[str] = _opt_str("event_id", 200)
    # Stripped and checked non-empty in the Rust core (no Python validator).
    event_type: _RequiredText = Field(max_length=100, validation_alias=field_aliases("event_type"))
    session_id: _RequiredText = Field(max_length=200, validation_alias=field_aliases("session_id"))
    user_id: typing.Optional[str] = _opt_str("user_id", 200)
    page_url: typing.Optional[str] = _opt_str("page_url")
    page_title: typing.Optional[str] = _opt_str("page_title")
    referrer: typing.Optional[str] = _opt_str("referrer")
    user_agent: typing.Optional[str] = _opt_str("user_agent")
    screen_resolution: typing.Optional[str] = _opt_str("screen_resolution", 64)
    viewport_size: typing.Optional[str] = _opt_str("viewport_size", 64)
    widget_id: typing.Optional[str] = _opt_str("widget_id", 200)
    interaction_type: typing.Optional[str] = _opt_str("interaction_type", 100)
    timestamp: typing.Optional[typing.Any] = None
    time_on_page: typing.Optional[float] = Field(
        default=None, ge=0, allow_inf_nan=False, validation_alias=field_aliases("time_on_page"))
    element_id: typing.Optional[str] = _opt_str("element_id", 1024)
    element_class: typing.Optional[str] = _opt_str("element_class", 2048)
    element_text: typing.Optional[str] = _opt_str("element_text")
    click_coordinates: typing.Optional[typing.Dict[str, float]] = Field(
        default=None, validation_alias=field_aliases("click_coordinates"))
    country: typing.Optional[str] = _opt_str("country", 100)
    timezone: typing.Optional[str] = _opt_str("timezone", 100)
    message_length: typing.Optional[int] = Field(
        default=None, ge=0, validation_alias=field_aliases("message_length"))

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value):
        if value is None:
            return None
        # Keep the epoch ms form; the original spelling is not needed later.
        return normalize_timestamp_ms(value)

    @field_validator("click_coordinates", mode="before")
    @classmethod
    def _coordinates(cls, value):
        """{x, y} object, [x, y] list or "x,y" text -> {"x": float, "y": float}."""
        if type(value) is dict and len(value) == 2:
            x, y = value.get("x"), value.get("y")
            if type(x) in (int, float) and type(y) in (int, float) and \
                    math.isfinite(x) and math.isfinite(y):
                return {"x": float(x), "y": float(y)}  # the common case, fast
        if value is None or value == "" or value == [] or value == {}:
            return None
        if isinstance(value, str):
            value = [part for part in value.replace(";", ",").split(",")]
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError("click_coordinates list must be [x, y]")
            value = {"x": value[0], "y": value[1]}
        if isinstance(value, dict):
            if "x" not in value or "y" not in value:
                raise ValueError("click_coordinates object must have x and y")
            out = {}
            for key in ("x", "y"):
                item = value[key]
                if isinstance(item, bool):
                    raise ValueError(f"click_coordinates.{key} must be a number")
                try:
                    out[key] = float(item)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"click_coordinates.{key} must be a number, got {item!r}"
                    ) from None
                if math.isnan(out[key]) or math.isinf(out[key]):
                    raise ValueError(f"click_coordinates.{key} must be finite")
            return out
        raise ValueError(
            "click_coordinates must be an {x, y} object, an [x, y] list or null"
        )

    @property
    def timestamp_ms(self) -> typing.Optional[int]:
        return self.timestamp


class MarketoLead(_Payload):
    """One lead as Marketo's REST API returns it (``GET /rest/v1/leads.json``).

    ``id`` is required; everything else is optional because Marketo omits
    fields the API user cannot see. ``timestamp_ms`` is ``updatedAt``, else
    ``createdAt`` (None if neither is present).
    """

    event_id: typing.Optional[str] = _opt_str("event_id", 200)
    id: int = Field(gt=0)
    email: typing.Optional[str] = Field(default=None, max_length=255)
    firstName: typing.Optional[str] = Field(default=None, max_length=255)
    lastName: typing.Optional[str] = Field(default=None, max_length=255)
    company: typing.Optional[str] = Field(default=None, max_length=255)
    title: typing.Optional[str] = Field(default=None, max_length=255)
    phone: typing.Optional[str] = Field(default=None, max_length=100)
    leadSource: typing.Optional[str] = Field(default=None, max_length=255)
    leadStatus: typing.Optional[str] = Field(default=None, max_length=255)
    leadScore: typing.Optional[float] = None
    industry: typing.Optional[str] = Field(default=None, max_length=255)
    country: typing.Optional[str] = Field(default=None, max_length=255)
    state: typing.Optional[str] = Field(default=None, max_length=255)
    city: typing.Optional[str] = Field(default=None, max_length=255)
    postalCode: typing.Optional[str] = Field(default=None, max_length=64)
    website: typing.Optional[str] = Field(default=None, max_length=2048)
    createdAt: typing.Optional[int] = None
    updatedAt: typing.Optional[int] = None

    @field_validator("id", mode="before")
    @classmethod
    def _lead_id(cls, value):
        if isinstance(value, bool):
            raise ValueError("id must be a positive integer")
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        return value

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, value):
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("email must be a string")
        value = value.strip()
        if not value:
            return None
        if "@" not in value:
            raise ValueError(f"email {value!r} has no '@'")
        return value

    @field_validator("createdAt", "updatedAt", mode="before")
    @classmethod
    def _times(cls, value):
        if value is None or value == "":
            return None
        return normalize_timestamp_ms(value)

    @property
    def timestamp_ms(self) -> typing.Optional[int]:
        return self.updatedAt if self.updatedAt is not None else self.createdAt
