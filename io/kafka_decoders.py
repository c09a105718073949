"""Payload decoders for the parse step (JSON, Avro with or without the Confluent header).

The reader never looks inside a payload; the parse step gets one of these, so
an undecodable payload becomes a dead letter with its topic, partition and
offset (see iheard_io.kafka).
"""
from __future__ import annotations

import io
import json
import logging
import typing


__all__ = ['json_decoder', 'avro_decoder']

_LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Payload decoders (used by the parse step, not by the reader)
# --------------------------------------------------------------------------


def json_decoder(value: bytes) -> dict:
    """UTF-8 JSON object -> dict. Raises ``ValueError`` (incl.
    ``json.JSONDecodeError``/``UnicodeDecodeError``) on anything else, so the
    parse step can route the record to the dead letter with the reason."""
    if value is None:
        raise ValueError("empty Kafka record value (tombstone)")
    obj = json.loads(value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


_CONFLUENT_MAGIC = 0
# Magic byte + 4-byte schema id (struct ">bI"). A plain int: the decoder is a
# closure, which Beam 2.70's pickler (cloudpickle) copies by value with the
# globals it uses, and a struct.Struct cannot be pickled.
_CONFLUENT_HEADER_BYTES = 5


def avro_decoder(schema, wire_format: str = "auto") -> typing.Callable[[bytes], dict]:
    """A decoder for Avro records written with ``schema`` (a fastavro parsed
    schema or a schema dict).

    ``wire_format``: ``"raw"`` (schemaless Avro binary), ``"confluent"``
    (magic byte 0 + 4-byte schema id + Avro binary, the Schema Registry
    framing) or ``"auto"``: a value that starts with the magic byte is first
    read as Confluent framing, and as raw Avro if that does not consume the
    value exactly (a raw record can also start with a zero byte, e.g. a union
    whose first branch is ``null``). Every mode insists that the record uses
    all the bytes, so truncated or trailing garbage is an error, not a
    silently wrong row.
    """
    import fastavro

    if wire_format not in ("auto", "raw", "confluent"):
        raise ValueError(f"wire_format must be auto, raw or confluent, got {wire_format!r}")
    parsed = fastavro.parse_schema(schema)

    def _read_exact(payload: bytes) -> dict:
        buf = io.BytesIO(payload)
        record = fastavro.schemaless_reader(buf, parsed, None)
        if buf.tell() != len(payload):
            raise ValueError(
                f"Avro record used {buf.tell()} of {len(payload)} bytes")
        return record

    def decode(value: bytes) -> dict:
        if value is None:
            raise ValueError("empty Kafka record value (tombstone)")
        value = bytes(value)
        framed = len(value) > _CONFLUENT_HEADER_BYTES and value[0] == _CONFLUENT_MAGIC
        if wire_format == "confluent":
            if not framed:
                raise ValueError("value lacks the Confluent magic byte / schema id")
            return _read_exact(value[_CONFLUENT_HEADER_BYTES:])
        if wire_format == "raw" or not framed:
            return _read_exact(value)
        try:
            return _read_exact(value[_CONFLUENT_HEADER_BYTES:])
        except Exception:  # pylint: disable=broad-except
            return _read_exact(value)

    return decode


