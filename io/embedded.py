"""Writes rows into an embedded DuckDB file: the no-server default sink.

The tables are the ones PostgreSQL gets (``schemas/sql/*.sql`` with JSONB read
as JSON), so the design document's example queries run against the file with
at most trivial dialect changes (``duckdb output/iheardai.duckdb``).

Delivery guarantee: at-least-once, idempotent by upsert on the table's key
(``INSERT ... ON CONFLICT (key) DO UPDATE``), so a re-run over the same input
leaves the same rows. DuckDB allows a single writing process, so this sink is
for local runs in one process (the DirectRunner's in-process FnApiRunner, which
is what the pipelines use with embedded defaults); use ``WriteToPostgres`` for
anything distributed.

Expansion::

    rows --WriteBatches (_WriteToDuckDbFn)--> failed rows (FailedRecord)

Rows are buffered per bundle and flushed every ``batch_size`` rows and in
``finish_bundle``; each flush loads the batch as an Arrow table and upserts it in
one (atomic) statement. A batch the database rejects is retried
row by row so one bad row cannot sink its neighbours; rejected rows go to the
failed output with the database's reason.
"""
from __future__ import annotations

import logging
import os
import threading
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from schemas.records import FailedRecord, failed_from_event
from schemas.tables import TABLES, TableSpec, ddl_statements, row_values

__all__ = ["WriteToEmbeddedDb", "ensure_embedded_schema", "upsert_rows", "embedded_database",
           "close_embedded"]

_LOG = logging.getLogger(__name__)

# One DuckDB database instance per file per process: DuckDB refuses a second
# instance on the same file, while cursors on one instance share it safely.
_DATABASES: typing.Dict[str, typing.Any] = {}
_DATABASES_LOCK = threading.Lock()


def _database(path: str):
    import duckdb

    key = os.path.abspath(path)
    with _DATABASES_LOCK:
        db = _DATABASES.get(key)
        if db is None:
            os.makedirs(os.path.dirname(key) or ".", exist_ok=True)
            db = duckdb.connect(key)
            for statement in ddl_statements("duckdb"):
                db.execute(statement)
            _DATABASES[key] = db
        return db


def embedded_database(path: str):
    """This process's DuckDB instance on ``path`` (tables created); take a
    ``.cursor()`` from it. A DirectRunner job in the same process shares it."""
    return _database(path)


def ensure_embedded_schema(path: str) -> None:
    """Creates the file and every table (idempotent)."""
    _database(path)


def close_embedded(path: str) -> None:
    """Closes this process's instance on ``path`` (so another process may open it)."""
    key = os.path.abspath(path)
    with _DATABASES_LOCK:
        db = _DATABASES.pop(key, None)
    if db is not None:
        db.close()


def _upsert_sql(spec: TableSpec, source: str) -> str:
    columns = ", ".join(f'"{c}"' for c in spec.columns)
    keys = ", ".join(f'"{c}"' for c in spec.key)
    updates = ", ".join(
        f'"{c}" = excluded."{c}"' for c in spec.columns if c not in spec.key
    )
    condition = f" WHERE {spec.update_condition}" if spec.update_condition else ""
    action = (f"DO UPDATE SET {updates}{condition}"
              if updates and spec.on_conflict == "update" else "DO NOTHING")
    return (
        f'INSERT INTO "{spec.name}" ({columns}) SELECT {columns} FROM {source} '
        f"ON CONFLICT ({keys}) {action}"
    )


def _arrow_batch(spec: TableSpec, tuples: typing.List[tuple]):
    import pyarrow as pa

    columns = list(zip(*tuples)) if tuples else [[] for _ in spec.columns]
    arrays = [pa.array(list(col)) for col in columns]
    return pa.Table.from_arrays(arrays, names=list(spec.columns))


def upsert_rows(cursor, spec: TableSpec, rows: typing.Sequence[typing.Mapping]) -> None:
    """Upserts ``rows`` into ``spec``'s table in one statement.

    Rows with the same key keep the last one: one statement may not update the
    same row twice.
    """
    by_key = {}
    for row in rows:
        values = row_values(spec, row)
        by_key[tuple(values[spec.columns.index(k)] for k in spec.key)] = values
    batch = _arrow_batch(spec, list(by_key.values()))
    cursor.register("_iheard_batch", batch)
    try:
        cursor.execute(_upsert_sql(spec, "_iheard_batch"))
    finally:
        cursor.unregister("_iheard_batch")


class _WriteToDuckDbFn(beam.DoFn):
    def __init__(self, path: str, table: str, batch_size: int, pipeline: str):
        self._path = path
        self._spec = TABLES[table]
        self._batch_size = batch_size
        self._pipeline = pipeline
        self._written = Metrics.counter(pipeline, f"embedded_{table}_written")
        self._failed = Metrics.counter(pipeline, f"embedded_{table}_failed")

    def setup(self):
        self._cursor = _database(self._path).cursor()

    def start_bundle(self):
        self._rows = []

    def process(self, row):
        self._rows.append(row)
        if len(self._rows) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for failed in self._flush():
            # Only failures of the last partial batch are emitted here; the
            # embedded sink runs on globally windowed (batch) input.
            yield WindowedValue(failed, GlobalWindow().max_timestamp(), [GlobalWindow()])

    def teardown(self):
        cursor = getattr(self, "_cursor", None)
        if cursor is not None:
            cursor.close()

    def _flush(self):
        rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            self._upsert(rows)
            self._written.inc(len(rows))
            return
        except Exception as exc:  # a bad row poisons the batch: isolate it
            _LOG.warning("embedded %s batch rejected (%s); retrying row by row",
                         self._spec.name, exc)
        for row in rows:
            try:
                self._upsert([row])
                self._written.inc()
            except Exception as exc:
                self._failed.inc()
                yield _failed_row(row, exc, self._spec.name, self._pipeline)

    def _upsert(self, rows):
        # One INSERT statement in autocommit mode is atomic: the batch lands
        # whole or not at all.
        upsert_rows(self._cursor, self._spec, rows)


def _failed_row(row, exc, table, pipeline) -> FailedRecord:
    failed = failed_from_event(row, exc, "sink:embedded", pipeline)
    return failed._replace(error_message=f"{table}: {exc}"[:4000])


class WriteToEmbeddedDb(beam.PTransform):
    """Upserts dict rows into ``table`` of the DuckDB file at ``path``.

    Returns the ``PCollection[FailedRecord]`` of rows the database rejected.
    """

    def __init__(self, path: str, table: str, batch_size: int = 5000, pipeline: str = "iheard"):
        super().__init__()
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; known: {sorted(TABLES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._path = path
        self._table = table
        self._batch_size = batch_size
        self._pipeline = pipeline

    def expand(self, rows):
        return rows | "UpsertBatches" >> beam.ParDo(
            _WriteToDuckDbFn(self._path, self._table, self._batch_size, self._pipeline)
        )
