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
Rows with the same key inside a batch are reduced to the last one first,
because one ``INSERT ... ON CONFLICT`` may not touch a row twice.

Errors:

* transient (connection lost, server shutdown or restart, serialization
  failure, deadlock, ``OperationalError``): the batch is retried with
  exponential backoff on a fresh connection, up to ``max_retries`` times; then
  the bundle fails and the runner retries it (nothing is lost; nothing was
  committed for that batch);
* permanent, caused by the data (``DataError``, ``IntegrityError`` such as a
  check or not-null violation, a value ``row_values`` cannot convert or
  psycopg cannot adapt, e.g. a dict in a text column): the
  batch is bisected until the bad rows are isolated; those become
  ``FailedRecord``s (stage ``sink:postgres``, the row as JSON, the row's
  ``_source`` origin) on the ``failed`` output, which the PTransform returns,
  and all other rows are written;
* anything else (e.g. a missing column: a code or schema bug) fails the
  bundle loudly.

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

import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas.records import failed_from_event
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

_LOG = logging.getLogger(__name__)

STAGE = "sink:postgres"

# Arbitrary but fixed: every process applying the DDL takes this advisory lock.
_DDL_LOCK_ID = 0x1EA2D_0001

DEFAULT_BATCH_SIZE = 1000
DEFAULT_MAX_RETRIES = 5
# First retry after 0.2 s, doubling: 0.2, 0.4, 0.8, 1.6, 3.2 s (about 6 s in
# all), long enough to ride out a server restart on the same host.
DEFAULT_BACKOFF_S = 0.2
_MAX_BACKOFF_S = 10.0


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
    ``DO NOTHING`` with ``first_writer_wins`` (a stored row is never changed)."""
    cols = ", ".join(_quote(c) for c in spec.columns)
    updates = [] if first_writer_wins else [c for c in spec.columns if c not in spec.key]
    conflict = ", ".join(_quote(c) for c in spec.key)
    if updates:
        action = "DO UPDATE SET " + ", ".join(
            f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in updates)
        if spec.update_condition:
            action += f" WHERE {spec.update_condition}"
    else:
        action = "DO NOTHING"
    return (f"INSERT INTO {_quote(spec.name)} ({cols}) SELECT {cols} FROM {source} "
            f"ON CONFLICT ({conflict}) {action}")


# A server that refuses us (password, pg_hba.conf, TLS verification) will
# refuse every retry too: a configuration error, raised at once. libpq
# reports these at connect time without a SQLSTATE, so the text decides.
_REFUSALS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "certificate verify failed",
    "server does not support SSL",
    "root certificate file",
    "does not match host name",
    "fe_sendauth: no password supplied",
)


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing our credentials or TLS."""
    message = str(exc)
    return any(marker in message for marker in _REFUSALS)


def _is_transient(exc: BaseException) -> bool:
    import psycopg

    # OperationalError covers lost connections, AdminShutdown (terminated
    # backend), CannotConnectNow (server starting), and TransactionRollback
    # (serialization failure, deadlock).
    return (isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
            and not is_refusal(exc))


def _is_data_error(exc: BaseException) -> bool:
    """Errors caused by a row's content: the server refused a value or a
    constraint, or psycopg could not turn a Python value into the column's
    text form (a ProgrammingError without SQLSTATE, e.g. "cannot adapt type
    'dict'")."""
    import psycopg

    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
        return True
    if isinstance(exc, psycopg.ProgrammingError) and getattr(exc, "sqlstate", None) is None:
        return True
    return isinstance(exc, (TypeError, ValueError, UnicodeError))


class _WriteToPostgresFn(beam.DoFn):
    FAILED = "failed"

    def __init__(self, dsn, spec: TableSpec, batch_size, max_retries,
                 backoff_s, pipeline, create_schema, batched=False, first_writer_wins=False):
        self._dsn = dsn
        self._first_writer_wins = first_writer_wins
        self._batched = batched
        self._spec = spec
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._pipeline = pipeline
        self._create_schema = create_schema
        self._conn = None
        self._buffer = []
        self._stage = "_iheard_stage_" + spec.name
        self._key_indexes = tuple(spec.columns.index(k) for k in spec.key)
        self._written = Metrics.counter("WriteToPostgres", "written")
        self._failed = Metrics.counter("WriteToPostgres", "failed")
        self._retries = Metrics.counter("WriteToPostgres", "retries")

    # -- connection -------------------------------------------------------

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=False)
        with conn.transaction():
            # Session-local staging table; emptied by every commit.
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {self._stage} "
                f"(LIKE {_quote(self._spec.name)} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")
        return conn

    def _close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._conn = None

    def setup(self):
        def connect():
            if self._create_schema:
                ensure_schema(self._dsn)
            self._conn = self._connect()
        self._retrying(connect)

    def teardown(self):
        self._close()

    # -- bundle -----------------------------------------------------------

    def start_bundle(self):
        self._buffer = []

    def process(self, row, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        if self._batched:  # a list of rows
            self._buffer.extend((item, timestamp, window) for item in row)
        else:
            self._buffer.append((row, timestamp, window))
        if len(self._buffer) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    # -- writing ----------------------------------------------------------

    def _flush(self):
        items, self._buffer = self._buffer, []
        if not items:
            return
        # One row per key (ON CONFLICT may touch a row only once): the last
        # one, or the first with first_writer_wins, as the statement would.
        by_key = {}
        for row, ts, win in items:
            try:
                values = row_values(self._spec, row)
            except Exception as exc:  # pylint: disable=broad-except
                yield self._failure(row, ts, win, exc)
                continue
            key = tuple(values[i] for i in self._key_indexes)
            if self._first_writer_wins:
                by_key.setdefault(key, (row, ts, win, values))
                continue
            by_key.pop(key, None)
            by_key[key] = (row, ts, win, values)
        yield from self._write_isolating_bad_rows(list(by_key.values()))

    def _write_isolating_bad_rows(self, batch):
        if not batch:
            return
        try:
            self._write_with_retries([values for _, _, _, values in batch])
            self._written.inc(len(batch))
        except Exception as exc:  # pylint: disable=broad-except
            if not _is_data_error(exc):
                raise
            if len(batch) == 1:
                row, ts, win, _ = batch[0]
                yield self._failure(row, ts, win, exc)
                return
            middle = len(batch) // 2
            yield from self._write_isolating_bad_rows(batch[:middle])
            yield from self._write_isolating_bad_rows(batch[middle:])

    def _write_with_retries(self, values):
        def write():
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            self._upsert(values)
        self._retrying(write)

    def _retrying(self, action):
        attempt = 0
        while True:
            try:
                return action()
            except Exception as exc:  # pylint: disable=broad-except
                # (the failed transaction was already rolled back)
                if not _is_transient(exc) or attempt >= self._max_retries:
                    if _is_transient(exc):
                        # The bundle fails; the runner retries it later.
                        self._close()
                    raise
                delay = min(self._backoff_s * (2 ** attempt), _MAX_BACKOFF_S)
                attempt += 1
                self._retries.inc()
                _LOG.warning("transient PostgreSQL error (%s: %s); retry %d/%d in %.1fs",
                             type(exc).__name__, exc, attempt, self._max_retries, delay)
                self._close()
                time.sleep(delay)

    def _upsert(self, values):
        conn = self._conn
        cols = ", ".join(_quote(c) for c in self._spec.columns)
        with conn.transaction():
            with conn.cursor() as cur:
                with cur.copy(f"COPY {self._stage} ({cols}) FROM STDIN") as copy:
                    for row in values:
                        copy.write_row(row)
                cur.execute(upsert_sql(self._spec, self._stage, self._first_writer_wins))

    def _failure(self, row, ts, win, exc):
        self._failed.inc()
        failed = failed_from_event(row, exc, STAGE, self._pipeline)
        return beam.pvalue.TaggedOutput(self.FAILED, WindowedValue(failed, ts, [win]))


class WriteToPostgres(beam.PTransform):
    """Upserts row dicts into ``table`` (a ``schemas.tables.TABLES`` name).

    Returns the PCollection of ``FailedRecord``s for rows the database
    refused (see the module docstring for the error policy and the delivery
    guarantee: at-least-once, idempotent by upsert). ``batched=True``: each
    element is a list of row dicts (transforms/batches.py); rows are still
    buffered per bundle and written with one COPY per ``batch_size``.
    ``first_writer_wins=True``: ``ON CONFLICT DO NOTHING``, and the first row
    of a key within a batch: a row already stored is never changed, so rows
    written before de-duplication keep the copy that came first."""

    def __init__(
        self,
        dsn: str,
        table: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_retries: int = DEFAULT_MAX_RETRIES,
        pipeline: str = "",
        create_schema: bool = True,
        retry_backoff_seconds: float = DEFAULT_BACKOFF_S,
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
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._spec = TABLES[table]
        self._dsn = dsn
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._pipeline = pipeline
        self._create_schema = create_schema
        self._backoff_s = retry_backoff_seconds
        self._reshuffle = reshuffle
        self._batched = batched
        self._first_writer_wins = first_writer_wins

    def expand(self, rows):
        if self._reshuffle:
            rows = rows | "Reshuffle" >> beam.Reshuffle()
        results = (
            rows
            | "UpsertRows" >> beam.ParDo(_WriteToPostgresFn(
                self._dsn, self._spec, self._batch_size, self._max_retries,
                self._backoff_s, self._pipeline, self._create_schema, self._batched,
                self._first_writer_wins,
            )).with_outputs(_WriteToPostgresFn.FAILED, main="written")
        )
        return results[_WriteToPostgresFn.FAILED]
