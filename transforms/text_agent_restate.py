"""Re-pricing archived agent turns under another price-book version.

Pure ``restate_turn`` (one archived turn -> its ``agent_cost_restatements``
row) and ``RestateTurns`` (archived turns -> one row per turn), used by the
batch job ``beam_pipelines.restate_costs``. Kept out of the job's module,
which may run as ``__main__``, so that what the workers run is pickled by
reference (docs/ARCHITECTURE.md, "Imports").
"""
from __future__ import annotations

import json
import typing

import apache_beam as beam

from schemas.records import ms_to_iso
from transforms.text_agent_pricing import load_price_book

__all__ = ["restate_turn", "RestateTurns", "json_line", "sum_costs"]


def _difference(new, old):
    if new is None or old is None:
        return None
    return round(new - old, 6)


def restate_turn(record: typing.Mapping, price_book, version: str, restated_at: str) -> dict:
    """The ``agent_cost_restatements`` row for one archived turn."""
    estimate = price_book.estimate(
        record["model"], record["tokens_in"], record["tokens_out"],
        record.get("cached_tokens_in") or 0, version=version)
    original = record.get("estimated_cost_usd")
    return {
        "session_id": record["session_id"],
        "turn_id": record["turn_id"],
        "price_book_version": version,
        "event_id": record.get("event_id"),
        "tenant_id": record.get("tenant_id"),
        "model": record["model"],
        "timestamp": record["timestamp_ms"],
        "tokens_in": record["tokens_in"],
        "tokens_out": record["tokens_out"],
        "cached_tokens_in": estimate.cached_tokens_in,
        "original_price_book_version": record.get("price_book_version"),
        "original_cost_usd": original,
        "restated_cost_usd": estimate.cost_usd,
        "difference_usd": _difference(estimate.cost_usd, original),
        "price_key": estimate.price_key,
        "restated_at": restated_at,
    }


class _RestateFn(beam.DoFn):
    def __init__(self, price_book_path, version, restated_at):
        self._path = price_book_path
        self._version = version
        self._restated_at = restated_at
        self._book = None

    def setup(self):
        self._book = load_price_book(self._path)

    def process(self, record):
        yield restate_turn(record, self._book, self._version, self._restated_at)


def _one_per_turn(keyed):
    _, records = keyed
    return min(records, key=lambda r: (r.get("event_id") or "", r["timestamp_ms"]))


class RestateTurns(beam.PTransform):
    """Archived turn records -> restatement rows (one per turn: a turn
    archived more than once, by a late pane or a re-run, is restated once,
    from its smallest event_id). ``only_changed`` keeps the turns whose cost
    changes (or cannot be priced)."""

    def __init__(self, version: str, price_book_path: typing.Optional[str], restated_at: str,
                 only_changed: bool = False):
        super().__init__()
        self._version = version
        self._price_book_path = price_book_path
        self._restated_at = restated_at
        self._only_changed = only_changed

    def expand(self, records):
        rows = (
            records
            | "KeyByTurn" >> beam.Map(lambda r: ((r["session_id"], r["turn_id"]), r))
            | "GroupByTurn" >> beam.GroupByKey()
            | "OneRecordPerTurn" >> beam.Map(_one_per_turn)
            | "Reprice" >> beam.ParDo(
                _RestateFn(self._price_book_path, self._version, self._restated_at))
        )
        if self._only_changed:
            rows = rows | "OnlyChanged" >> beam.Filter(
                lambda r: r["difference_usd"] is None or r["difference_usd"] != 0)
        return rows


def sum_costs(rows) -> tuple:
    """(turns, original USD, restated USD) of ``(1, original, restated)`` tuples."""
    rows = list(rows)
    return tuple(round(sum(c), 6) for c in zip(*rows)) if rows else (0, 0.0, 0.0)


def json_line(row: dict) -> str:
    """A restatement row as a JSON line, its timestamp as ISO-8601."""
    out = dict(row)
    out["timestamp"] = ms_to_iso(row["timestamp"])
    return json.dumps(out, sort_keys=True)
