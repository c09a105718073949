"""PostgreSQL sink: batched COPY + upsert with psycopg 3.

``WriteToPostgres`` writes row dicts into one of the tables in
``schemas.tables.TABLES``::

    rows
      -> Reshuffle          (``reshuffle=True``, the default) materialises
                            the rows before the write, so a retried write
                            bundle sees exactly the same rows on runners
                            that replay from a materialised shuffle (upstream
                            steps stamp times such as updated_at), and so the
                            number of writers is not tied to the number of
                            Kafka partitions upstream (fusion break). On
                            Flink streaming a shuffle is not materialised (a
                            restore replays from the source), so the
                            streaming pipelines pass ``reshuffle=False`` and
                            write from the stage that makes the rows: one
                            encode, network hop and decode less per row
      -> UpsertRows         _WriteToPostgresFn: one connection per DoFn
                            instance; rows buffered and flushed every
                            ``batch_size`` rows and at the end of each bundle
      => failed             FailedRecord per row the database refused

One flush is one transaction: ``COPY`` into a session-local temp table, then
``INSERT INTO t SELECT ... FROM stage ON CONFLICT (key) DO UPDATE SET ...``.
Rows with the same key inside a batch are reduced to the last one first (the
first one for ``on_conflict="nothing"``), because one ``INSERT ... ON
CONFLICT`` may not touch a row twice.

Errors, batching and counters are those of ``iheard_io.sink_base`` (one
policy for every sink): a row the database refuses for its content
(``DataError``, ``IntegrityError`` such as a check or not-null violation, a
value ``row_values`` cannot convert or psycopg cannot adapt) is isolated by
bisection and becomes a ``FailedRecord`` (stage ``sink:postgres``) on the
``failed`` output, the other rows are written; a database that is down
(connection lost, server shutdown or restart, serialization failure,
deadlock) is retried on a fresh connection with capped exponential backoff
for ``retry_budget_seconds`` (default 60 s), then **the bundle fails** and
the runner replays it from its checkpoint (nothing was committed for that
batch, nothing is lost); anything else (a missing column, a refused password)
fails the bundle at once.

What a flush writes is the table's declaration (``schemas.tables.TableSpec``):
its columns, its key, and ``on_conflict``, which says what a second row with a
stored key does (``"update"``: replace the stored row, under
``update_condition`` if set; ``"nothing"``: the first row written wins).
``WriteToPostgres(first_writer_wins=True)`` makes it ``"nothing"`` for one
sink (the streaming frontend job writes ``frontend_analytics`` before
de-duplication: a later duplicate must not replace the copy that
de-duplication passes on).

Delivery guarantee: at-least-once; replays are harmless because every write is
an upsert on the table's key.

Schema: with ``create_schema=True`` (default) each DoFn instance applies
``schemas.tables.ddl_statements("postgres")`` in ``setup()`` inside a
transaction holding an advisory lock, so concurrent workers don't race on
``CREATE TABLE IF NOT EXISTS``; ``ensure_schema(dsn)`` does the same for
scripts and tests.

Connection settings: ``dsn``, a libpq connection string, is required; this
module reads no environment (the pipelines build the DSN from ``--postgres_dsn``
or the POSTGRES_* variables in ``beam_pipelines.options.resolve_connections``).
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam

from iheard_io.retry import DEFAULT_FIRST_BACKOFF_S
from iheard_io.retry import DEFAULT_RETRY_BUDGET_S
from iheard_io.retry import OnExhausted
from iheard_io.retry import PostgresErrors
from iheard_io.retry import is_postgres_refusal as is_refusal
from iheard_io.sink_base import BatchSinkFn
from iheard_io.sink_base import retry_policy
from schemas.tables import TABLES
from schemas.tables import TableSpec
from schemas.tables import ddl_statements
from schemas.tables import row_values

__all__ = [
    "WriteToPostgres",
    "ensure_schema",
    "upsert_sql",
    "is_refusal",
]

STAGE = "sink:postgres"

# Arbitrary but fixed: every process applying the DDL takes this advisory lock.
_DDL_LOCK_ID = 0x1EA2D_0001

DEFAULT_BATCH_SIZE = 1000


def _apply_ddl(conn) -> None:
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK_ID,))
            for statement in ddl_statements("postgres"):
                cur.execute(statement)


def ensure_schema(dsn: str) -> None:
    """Applies the project's DDL (idempotent, serialised by an advisory lock)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        _apply_ddl(conn)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upsert_sql(spec: TableSpec, source: str, first_writer_wins: bool = False) -> str:
    """``INSERT ... SELECT ... FROM source ON CONFLICT (key) DO UPDATE``, or
    ``DO NOTHING`` when the table declares ``on_conflict="nothing"`` or with
    ``first_writer_wins`` (a stored row is never changed)."""
    if first_writer_wins:
        spec = dataclasses.replace(spec, on_conflict="nothing")
    cols = ", ".join(_quote(c) for c in spec.columns)
    updates = [c for c in spec.columns if c not in spec.key]
    conflict = ", ".join(_quote(c) for c in spec.key)
    if updates and spec.on_conflict == "update":
        action = "DO UPDATE SET " + ", ".join(
            f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in updates)
        if spec.update_condition:
            action += f" WHERE {spec.update_condition}"
    else:
        action = "DO NOTHING"
    return (f"INSERT INTO {_quote(spec.name)} ({cols}) SELECT {cols} FROM {source} "
            f"ON CONFLICT ({conflict}) {action}")


class _WriteToPostgresFn(BatchSinkFn):
    """One connection per DoFn instance; one flush is one transaction:
    ``COPY`` into a session-local temp table, then the table's upsert."""

    counter_namespace = "WriteToPostgres"
    stage = STAGE
    dedupe = True  # one INSERT ... ON CONFLICT may not touch a row twice

    def __init__(self, dsn, spec: TableSpec, batch_size=DEFAULT_BATCH_SIZE,
                 retry_budget_s=DEFAULT_RETRY_BUDGET_S, backoff_s=DEFAULT_FIRST_BACKOFF_S,
                 pipeline="", create_schema=True, batched=False):
        super().__init__(errors=PostgresErrors(),
                         retry=retry_policy(retry_budget_s, backoff_s, OnExhausted.FAIL),
                         batch_size=batch_size, pipeline=pipeline, batched=batched)
        self._dsn = dsn
        self._spec = spec
        self._create_schema = create_schema
        self._stage_table = "_iheard_stage_" + spec.name
        self._key_indexes = tuple(spec.columns.index(k) for k in spec.key)
        self._copy_sql = (f"COPY {self._stage_table} "
                          f"({', '.join(_quote(c) for c in spec.columns)}) FROM STDIN")
        self._upsert_sql = upsert_sql(spec, self._stage_table)
        # DO NOTHING keeps the stored row: within a batch the first row wins too.
        self.dedupe_keeps_first = spec.on_conflict == "nothing"

    def open_client(self):
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=False)
        try:
            if self._create_schema:
                _apply_ddl(conn)
                self._create_schema = False  # once per DoFn instance
            with conn.transaction():
                # Session-local staging table; emptied by every commit.
                conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {self._stage_table} "
                    f"(LIKE {_quote(self._spec.name)} INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS")
        except BaseException:
            conn.close()
            raise
        return conn

    def prepare(self, row):
        return row_values(self._spec, row)

    def key_of(self, values):
        return tuple(values[i] for i in self._key_indexes)

    def write(self, conn, batch):
        with conn.transaction():
            with conn.cursor() as cur:
                with cur.copy(self._copy_sql) as copy:
                    for values in batch:
                        copy.write_row(values)
                cur.execute(self._upsert_sql)


class WriteToPostgres(beam.PTransform):
    """Upserts row dicts into ``table`` (a ``schemas.tables.TABLES`` name).

    Returns the PCollection of ``FailedRecord``s for rows the database
    refused (see the module docstring for the error policy and the delivery
    guarantee: at-least-once, idempotent by upsert). ``batched=True``: each
    element is a list of row dicts (transforms/batches.py); rows are still
    buffered per bundle and written with one COPY per ``batch_size``.
    ``retry_budget_seconds``: how long a database that is down is retried
    before the bundle fails (default 60 s); ``retry_backoff_seconds``: the
    first wait (doubling, capped at 5 s). ``first_writer_wins=True``: ``ON
    CONFLICT DO NOTHING``, and the first row of a key within a batch: a row
    already stored is never changed, so rows written before de-duplication
    keep the copy that came first."""

    def __init__(
        self,
        dsn: str,
        table: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        pipeline: str = "",
        create_schema: bool = True,
        retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_S,
        retry_backoff_seconds: float = DEFAULT_FIRST_BACKOFF_S,
        reshuffle: bool = True,
        batched: bool = False,
        first_writer_wins: bool = False,
    ):
        super().__init__()
        if not dsn:
            raise ValueError("dsn is required (a libpq connection string)")
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; known: {sorted(TABLES)}")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if retry_budget_seconds < 0:
            raise ValueError("retry_budget_seconds must be >= 0")
        spec = TABLES[table]
        if first_writer_wins:
            spec = dataclasses.replace(spec, on_conflict="nothing")
        self._fn_args = dict(dsn=dsn, spec=spec, batch_size=batch_size,
                             retry_budget_s=retry_budget_seconds,
                             backoff_s=retry_backoff_seconds, pipeline=pipeline,
                             create_schema=create_schema, batched=batched)
        self._reshuffle = reshuffle

    def expand(self, rows):
        if self._reshuffle:
            rows = rows | "Reshuffle" >> beam.Reshuffle()
        results = (
            rows
            | "UpsertRows" >> beam.ParDo(_WriteToPostgresFn(**self._fn_args))
            .with_outputs(_WriteToPostgresFn.FAILED, main="written")
        )
        return results[_WriteToPostgresFn.FAILED]
