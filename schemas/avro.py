"""Avro schemas (``schemas/avro/*.avsc``) and helpers to fill them.

* ``load_schema("frontend_enriched_v1")`` -> the fastavro-parsed schema
  (cached; callers must not mutate it).
* ``to_avro_record(record, schema)`` -> a dict that fastavro writes without
  complaint: only the schema's fields, missing ones as their default/None,
  ISO text turned into epoch ms for ``timestamp-millis`` fields, numbers
  coerced to the declared kind, dicts/lists given to string fields as JSON,
  and ``<name>_json`` string fields filled from ``record[<name>]`` (so
  ``extra_json`` carries the unknown payload fields).
* ``wrap_envelope`` / ``unwrap_envelope``: the Kafka wire envelope
  (``envelope_v1``) for producers that send Avro; the parse step unwraps it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import pathlib
import typing

import fastavro

__all__ = [
    "AVRO_DIR",
    "load_schema",
    "schema_json",
    "to_avro_record",
    "wrap_envelope",
    "unwrap_envelope",
]

AVRO_DIR = pathlib.Path(__file__).parent / "avro"
ENVELOPE_VERSION = 1


def schema_json(name: str) -> dict:
    """The raw (unparsed) schema dict of ``avro/<name>.avsc``."""
    path = AVRO_DIR / (name if name.endswith(".avsc") else name + ".avsc")
    if not path.is_file():
        known = sorted(p.stem for p in AVRO_DIR.glob("*.avsc"))
        raise ValueError(f"unknown Avro schema {name!r}; known: {known}")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=None)
def _parsed(name: str) -> dict:
    return fastavro.parse_schema(schema_json(name))


def load_schema(name: str) -> dict:
    """``fastavro.parse_schema`` of ``avro/<name>.avsc`` (``name`` with or without .avsc)."""
    return _parsed(name[:-5] if name.endswith(".avsc") else name)


# -- conversion ---------------------------------------------------------------
def _to_epoch_ms(value):
    if isinstance(value, bool):
        raise TypeError("a boolean is not a timestamp")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, _dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        return int(round(aware.timestamp() * 1000))
    if isinstance(value, str):
        parsed = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return _to_epoch_ms(parsed)
    raise TypeError(f"cannot read {type(value).__name__} as a timestamp")


def _json_text(value) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _convert(value, schema, named: dict):
    """``value`` shaped for Avro type ``schema`` (parsed form)."""
    if isinstance(schema, list):  # union: null first if allowed, else first branch that fits
        if value is None:
            if "null" in schema:
                return None
            raise ValueError("null given for a non-nullable union")
        errors = []
        for branch in schema:
            if branch == "null":
                continue
            try:
                return _convert(value, branch, named)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or "no branch fits")
    if isinstance(schema, str):
        if schema in named:
            return _convert(value, named[schema], named)
        kind = schema
        logical = None
    else:
        kind = schema.get("type")
        logical = schema.get("logicalType")
        name = schema.get("name")
        if kind in ("record", "error"):
            if name:
                named[name] = schema
            if not isinstance(value, dict):
                raise TypeError(f"record {name} needs a dict, got {type(value).__name__}")
            return _record(value, schema, named)
        if kind == "array":
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise TypeError("array needs a list")
            return [_convert(v, schema["items"], named) for v in value]
        if kind == "map":
            if not isinstance(value, dict):
                raise TypeError("map needs a dict")
            return {str(k): _convert(v, schema["values"], named) for k, v in value.items()}
        if kind == "enum":
            if value not in schema["symbols"]:
                raise ValueError(f"{value!r} not in enum {schema['symbols']}")
            return value
        if isinstance(kind, (dict, list)):
            return _convert(value, kind, named)
    if value is None:
        if kind == "null":
            return None
        raise ValueError(f"null given for {kind}")
    if logical in ("timestamp-millis", "local-timestamp-millis"):
        return _to_epoch_ms(value)
    if logical in ("timestamp-micros", "local-timestamp-micros"):
        return _to_epoch_ms(value) * 1000
    if kind == "string":
        if isinstance(value, (dict, list, tuple)):
            return _json_text(value)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return value if isinstance(value, str) else str(value)
    if kind in ("int", "long"):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("non-finite number for an integer field")
            return int(round(value))
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, int):
            return value
        raise TypeError(f"{type(value).__name__} for {kind}")
    if kind in ("float", "double"):
        if isinstance(value, bool):
            raise TypeError("boolean for a number field")
        return float(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        raise TypeError(f"{type(value).__name__} for boolean")
    if kind in ("bytes", "fixed"):
        return value if isinstance(value, bytes) else str(value).encode("utf-8")
    if kind == "null":
        raise ValueError("non-null value for a null field")
    raise TypeError(f"unsupported Avro type {kind!r}")


def _record(record: typing.Mapping, schema: dict, named: dict) -> dict:
    out = {}
    for field in schema["fields"]:
        name = field["name"]
        value = record.get(name)
        if value is None and name.endswith("_json") and name[:-5] in record:
            source = record[name[:-5]]
            value = _json_text(source) if source not in (None, {}, []) else None
        if value is None and "default" in field:
            value = copy.deepcopy(field["default"])
        try:
            out[name] = _convert(value, field["type"], named)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{schema.get('name', 'record')}.{name}: {exc}") from None
    return out


def to_avro_record(record: typing.Mapping, schema) -> dict:
    """An Avro-ready copy of ``record`` for ``schema`` (a name, raw or parsed
    schema). Raises ``ValueError`` naming the field that cannot fit."""
    if isinstance(schema, str):
        schema = load_schema(schema)
    elif "__fastavro_parsed" not in schema:
        schema = fastavro.parse_schema(schema)
    return _record(record, schema, {})


# -- wire envelope --------------------------------------------------------------
def wrap_envelope(payload: dict, source: str, *, event_id: typing.Optional[str] = None,
                  produced_at_ms: typing.Optional[int] = None) -> dict:
    """An ``envelope_v1`` record around a JSON-able payload."""
    return {
        "envelope_version": ENVELOPE_VERSION,
        "source": source,
        "event_type": payload.get("event_type") if isinstance(payload, dict) else None,
        "event_id": event_id if event_id is not None else (
            payload.get("event_id") if isinstance(payload, dict) else None),
        "produced_at": produced_at_ms,
        "payload_json": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
    }


def unwrap_envelope(record: typing.Mapping) -> dict:
    """The payload dict inside an ``envelope_v1`` record; the envelope's
    ``event_id`` is carried into the payload if the payload has none."""
    version = record.get("envelope_version")
    if version != ENVELOPE_VERSION:
        raise ValueError(f"unsupported envelope_version {version!r}")
    payload = json.loads(record["payload_json"])
    if not isinstance(payload, dict):
        raise ValueError("envelope payload_json must hold a JSON object")
    if record.get("event_id") and not payload.get("event_id"):
        payload["event_id"] = record["event_id"]
    return payload
