"""A durable high-water mark for incremental extractions (PostgreSQL or DuckDB).

One row per extraction ``name`` in ``marketo_extract_state``
(``schemas/sql/020_marketo.sql``). ``advance`` only ever moves the mark
forward (``GREATEST`` of stored and new) and is called by the extractor only
after Kafka acknowledged every record read up to the new mark, so:

* a crash between publish and advance re-reads those records next run
  (at-least-once; the transformation upserts by lead id, so a duplicate is
  harmless);
* a crash can never leave the mark past a record that was not published.

``record_run`` keeps the last run's status, reason and call statistics beside
the mark (``quota_exhausted``, ``ok`` ...) for the operator.

``SqlHighWaterMark(postgres_dsn=...)`` writes to PostgreSQL; with
``duckdb_path=...`` it writes to the embedded DuckDB file (opened per call,
so the file lock is held only for the moment of the read or write).
"""
from __future__ import annotations

import datetime as dt
import json
import typing

from iheard_io.embedded import ensure_embedded_schema
from iheard_io.postgres import ensure_schema

__all__ = ["SqlHighWaterMark", "WatermarkState"]


class WatermarkState(typing.NamedTuple):
    high_water_mark: typing.Optional[dt.datetime]
    page_token: typing.Optional[str]
    records_published: int
    last_status: typing.Optional[str]
    last_reason: typing.Optional[str]


def _utc(value: typing.Optional[dt.datetime]) -> typing.Optional[dt.datetime]:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else \
        value.astimezone(dt.timezone.utc)


class SqlHighWaterMark:
    """The mark for extraction ``name`` in PostgreSQL or a DuckDB file."""

    def __init__(self, name: str, postgres_dsn: typing.Optional[str] = None,
                 duckdb_path: typing.Optional[str] = None):
        if not name:
            raise ValueError("name is required")
        if bool(postgres_dsn) == bool(duckdb_path):
            raise ValueError("give exactly one of postgres_dsn and duckdb_path")
        self.name = name
        self._dsn = postgres_dsn
        self._duckdb_path = duckdb_path
        self._ensure_schema()

    @property
    def where(self) -> str:
        return "PostgreSQL" if self._dsn else f"DuckDB file {self._duckdb_path}"

    # -- connections -----------------------------------------------------------
    def _ensure_schema(self) -> None:
        if self._dsn:
            ensure_schema(self._dsn)
        else:
            ensure_embedded_schema(self._duckdb_path)

    def _execute(self, sql: str, params: tuple, fetch: bool = False):
        if self._dsn:
            import psycopg

            with psycopg.connect(self._dsn) as conn:
                with conn.cursor() as cur:
                    cur.execute(sql.replace("?", "%s"), params)
                    return cur.fetchone() if fetch else None
        import duckdb

        ensure_embedded_schema(self._duckdb_path)  # same in-process instance
        conn = duckdb.connect(self._duckdb_path)
        try:
            cur = conn.execute(sql, params)
            return cur.fetchone() if fetch else None
        finally:
            conn.close()

    # -- API ------------------------------------------------------------------------
    def load(self) -> WatermarkState:
        row = self._execute(
            "SELECT high_water_mark, page_token, records_published, last_status, last_reason "
            "FROM marketo_extract_state WHERE name = ?", (self.name,), fetch=True)
        if row is None:
            return WatermarkState(None, None, 0, None, None)
        return WatermarkState(_utc(row[0]), row[1], int(row[2] or 0), row[3], row[4])

    def advance(self, high_water_mark: dt.datetime, page_token: typing.Optional[str],
                records: int) -> None:
        """Moves the mark to ``high_water_mark`` unless it is already later;
        adds ``records`` to the published total."""
        now = dt.datetime.now(dt.timezone.utc)
        self._execute(
            "INSERT INTO marketo_extract_state AS s (name, high_water_mark, page_token, "
            "records_published, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "high_water_mark = GREATEST(COALESCE(s.high_water_mark, excluded.high_water_mark), "
            "excluded.high_water_mark), "
            "page_token = excluded.page_token, "
            "records_published = COALESCE(s.records_published, 0) + excluded.records_published, "
            "updated_at = excluded.updated_at",
            (self.name, _utc(high_water_mark), page_token, int(records), now))

    def record_run(self, status: str, reason: typing.Optional[str],
                   stats: typing.Mapping[str, int]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self._execute(
            "INSERT INTO marketo_extract_state AS s (name, last_status, last_reason, last_stats, "
            "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "last_status = excluded.last_status, last_reason = excluded.last_reason, "
            "last_stats = excluded.last_stats, updated_at = excluded.updated_at",
            (self.name, status, reason, json.dumps(dict(stats), sort_keys=True), now))
