"""Fixes for dead letters before a replay: a small declarative spec, or a function.

A producer bug leaves thousands of dead letters; once it is understood, a fix
turns each raw record (its decoded JSON object) into what the producer should
have sent, and ``python -m beam_pipelines.replay`` runs the result through
the pipeline again. Two ways to write one:

``--fix=MODULE:FUNCTION``
    any importable function ``fix(obj: dict) -> dict | None``: the fixed
    object, or None to leave the record as it is (``load_fix``).

``--fix_spec=FILE`` (YAML or JSON), for the common cases, applied in this
order (every section optional, unknown keys refused)::

    version: 1
    rename:                 # a field's old name -> its new name (top level)
      sessionId: session_id
      ts: timestamp
    event_type_map:         # old event type -> new one, in event_type_field
      pageview: page_view
      "widget.opened": widget_open
    event_type_field: event_type        # default: event_type
    timestamp_unit:         # a numeric time field in this unit -> epoch ms
      timestamp: s          # s | ms | us | ns
    defaults:               # set when the field is missing or null
      tenant_id: default

Rules that keep a fix safe to apply twice (a replay may retry what failed
again): a rename whose new name is already present leaves both alone; a
time is converted only when its size is that of its unit (seconds below
1e11, milliseconds below 1e14, microseconds below 1e17, nanoseconds above),
so a value already in milliseconds stays; defaults never replace a value.
``FixSpec.apply`` returns None when nothing changed ("leave it").

Pure: no Beam, no I/O besides reading the spec file (``load_fix_spec``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pathlib
import typing

import yaml

__all__ = ["FixSpec", "load_fix_spec", "load_fix", "fix_fingerprint", "TIME_UNITS"]

# Epoch values below this bound are read in the unit; the bounds are the
# magnitudes a present-day time has in each unit (1e11 s is the year 5138,
# 1e11 ms is 1973), so a value already converted is never converted again.
TIME_UNITS: typing.Dict[str, typing.Tuple[float, float, float]] = {
    # unit: (lower bound, upper bound, factor to ms)
    "s": (0, 1e11, 1000.0),
    "ms": (1e11, 1e14, 1.0),
    "us": (1e14, 1e17, 1e-3),
    "ns": (1e17, float("inf"), 1e-6),
}

_SECTIONS = ("version", "rename", "event_type_map", "event_type_field", "timestamp_unit",
             "defaults")


@dataclasses.dataclass(frozen=True)
class FixSpec:
    """A validated fix spec (see the module docstring for the format)."""

    rename: typing.Tuple[typing.Tuple[str, str], ...] = ()
    event_type_map: typing.Tuple[typing.Tuple[str, str], ...] = ()
    event_type_field: str = "event_type"
    timestamp_unit: typing.Tuple[typing.Tuple[str, str], ...] = ()
    defaults: typing.Tuple[typing.Tuple[str, typing.Any], ...] = ()

    @classmethod
    def from_dict(cls, spec: typing.Any, where: str = "fix spec") -> "FixSpec":
        """Validates ``spec`` (the parsed file); ``ValueError`` naming the
        section and entry that is wrong."""
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: must be a mapping of sections, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"{where}: unknown section(s) {unknown}; known: {list(_SECTIONS)}")
        if spec.get("version", 1) != 1:
            raise ValueError(f"{where}: version must be 1")
        rename = _pairs(spec, "rename", where, str)
        targets = [new for _, new in rename]
        if len(set(targets)) != len(targets):
            raise ValueError(f"{where}: rename: two fields renamed to the same name")
        if any(old == new for old, new in rename):
            raise ValueError(f"{where}: rename: a field renamed to itself")
        units = _pairs(spec, "timestamp_unit", where, str)
        for field, unit in units:
            if unit not in TIME_UNITS:
                raise ValueError(f"{where}: timestamp_unit.{field}: unit {unit!r} is not one "
                                 f"of {sorted(TIME_UNITS)}")
        field = spec.get("event_type_field", "event_type")
        if not isinstance(field, str) or not field:
            raise ValueError(f"{where}: event_type_field must be a field name")
        spec_obj = cls(
            rename=rename,
            event_type_map=_pairs(spec, "event_type_map", where, str),
            event_type_field=field,
            timestamp_unit=units,
            defaults=_pairs(spec, "defaults", where, None),
        )
        if not (spec_obj.rename or spec_obj.event_type_map or spec_obj.timestamp_unit
                or spec_obj.defaults):
            raise ValueError(f"{where}: has no fix (rename, event_type_map, timestamp_unit "
                             "or defaults)")
        return spec_obj

    def apply(self, obj: typing.Any) -> typing.Optional[dict]:
        """The fixed copy of ``obj``, or None when the spec changes nothing
        (or ``obj`` is not a JSON object)."""
        if not isinstance(obj, dict):
            return None
        out = dict(obj)
        for old, new in self.rename:
            if old in out and new not in out:
                out[new] = out.pop(old)
        mapping = dict(self.event_type_map)
        value = out.get(self.event_type_field)
        if isinstance(value, str) and value in mapping:
            out[self.event_type_field] = mapping[value]
        for field, unit in self.timestamp_unit:
            converted = _to_ms(out.get(field), unit)
            if converted is not None:
                out[field] = converted
        for field, default in self.defaults:
            if out.get(field) is None:
                out[field] = default
        return out if out != obj else None

    def __call__(self, obj):
        return self.apply(obj)

    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return "spec:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _pairs(spec: dict, name: str, where: str, value_type) -> tuple:
    section = spec.get(name)
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise ValueError(f"{where}: {name} must be a mapping, got {type(section).__name__}")
    out = []
    for key, value in section.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: {name}: field names must be non-empty text, got {key!r}")
        if value_type is not None and not isinstance(value, value_type):
            raise ValueError(f"{where}: {name}.{key} must be text, got {value!r}")
        out.append((key, value))
    return tuple(out)


def _to_ms(value, unit: str) -> typing.Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    low, high, factor = TIME_UNITS[unit]
    if not low <= value < high or factor == 1.0:
        return None
    return int(round(value * factor))


def load_fix_spec(path: str) -> FixSpec:
    """Reads and validates a fix spec (``.json`` as JSON, anything else as YAML)."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                         f"{exc}") from None
    return FixSpec.from_dict(data, where=path)


def load_fix(fix: typing.Optional[str] = None, fix_spec: typing.Optional[str] = None,
             ) -> typing.Optional[typing.Callable[[dict], typing.Optional[dict]]]:
    """The fix named by ``--fix=MODULE:FUNCTION`` or ``--fix_spec=FILE``
    (at most one), or None; ``ValueError`` when it cannot be loaded."""
    if fix and fix_spec:
        raise ValueError("give --fix or --fix_spec, not both")
    if fix_spec:
        return load_fix_spec(fix_spec)
    if not fix:
        return None
    module_name, _, attr = fix.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--fix={fix}: expected MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--fix={fix}: cannot import {module_name}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"--fix={fix}: {module_name} has no function {attr}")
    return function


def fix_fingerprint(fix) -> typing.Optional[str]:
    """A short name of a fix for the run's summary (the spec's hash or the
    function's qualified name)."""
    if fix is None:
        return None
    if isinstance(fix, FixSpec):
        return fix.fingerprint()
    return f"{getattr(fix, '__module__', '?')}:{getattr(fix, '__qualname__', repr(fix))}"
