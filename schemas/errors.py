"""Readable validation errors, shared by the pipelines' parse step and the
collector (which must not import Beam to say why an event was refused)."""
from __future__ import annotations

from pydantic import ValidationError

__all__ = ["format_validation_error"]


def format_validation_error(exc: ValidationError) -> str:
    """``field: message; other.field: message`` - short and names every field."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<payload>"
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err.get("type") == "missing":
            msg = "field required"
        elif err.get("type") == "string_too_short" and (err.get("ctx") or {}).get("min_length") == 1:
            msg = "must be a non-empty string"
        elif "input" in err and err["input"] is None:
            msg = f"must not be null ({msg[:1].lower() + msg[1:]})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
