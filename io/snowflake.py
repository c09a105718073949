"""Snowflake sink: staged CSV files, ``COPY INTO`` a staging table, ``MERGE`` on the key.

``WriteToSnowflake`` loads row dicts of a project table (``frontend_analytics``,
``agent_turns``, ``marketo_leads``) into its warehouse table (``FRONTEND_EVENTS``,
``AGENT_TURNS``, ``MARKETO_LEADS``: ``schemas.warehouse``) through ``snowflake-connector-python``::

    rows
      -> Reshuffle          (``reshuffle=True``, the default) materialises the
                            rows first, so a retried write bundle loads the
                            same rows, and the number of loaders is not tied to
                            the upstream Kafka partitions; the streaming
                            pipelines pass ``reshuffle=False`` (see
                            iheard_io.postgres for why)
      -> MergeRows          _WriteToSnowflakeFn: one connection per DoFn
                            instance; rows buffered and loaded every
                            ``batch_size`` rows and at the end of each bundle
      => failed             FailedRecord per row Snowflake would refuse

One load of a batch, on the DoFn's own session:

1. ``schemas.warehouse.load_fields`` turns each row into CSV fields, refusing
   what Snowflake would (NULL in a NOT NULL column, text over its
   ``VARCHAR(n)``, a non-number, a non-time); rows with the same key are
   reduced to the last one, because a ``MERGE`` whose source matches a target
   row twice is nondeterministic;
2. the batch is written to a local CSV file (every non-NULL field quoted, so
   an empty field is NULL) and ``PUT`` on the table stage of a session-private
   ``TEMPORARY`` staging table, always under the same file name
   (``OVERWRITE=TRUE``);
3. ``TRUNCATE`` the staging table, ``COPY INTO`` it with ``FORCE=TRUE`` (a
   retried load of a file of the same name must not be skipped as "already
   loaded") and ``PURGE=TRUE``;
4. ``MERGE INTO target USING (SELECT ... PARSE_JSON(..) FROM staging) ON key
   WHEN MATCHED THEN UPDATE ... WHEN NOT MATCHED THEN INSERT ...``: one
   atomic statement, the only one that touches the target.

Errors:

* transient (network, HTTP 5xx/429, expired session, ``OperationalError``):
  the load is retried with exponential backoff on a fresh connection (and a
  new staging table), up to ``max_retries`` times; then the bundle fails and
  the runner retries it;
* caused by the data (``load_fields`` refusals, and a database
  ``IntegrityError``/``DataError`` or an SQLSTATE of class 22 or 23): the
  batch is bisected until the bad rows are isolated; those become
  ``FailedRecord``s (stage ``sink:snowflake``, the row as JSON, its
  ``_source`` origin) on the ``failed`` output; all other rows are loaded;
* anything else (a missing table, bad credentials) fails the bundle loudly.

Delivery guarantee: at-least-once; replays are harmless because the only write
to the target is a ``MERGE`` on the table's key (a replayed row updates its
own row to the same values).

Schema: ``ensure_snowflake_schema(settings)`` creates the warehouse tables
(``CREATE TABLE IF NOT EXISTS``; the database and schema must exist); the
pipelines call it before the job starts, and each DoFn instance repeats it in
``setup()`` when ``create_schema=True``.

Connection settings are explicit (``SnowflakeSettings``); the pipelines fill
them from ``--snowflake_*`` flags or the ``SNOWFLAKE_*`` variables
(beam_pipelines/options.py). Verified against ``fakesnow`` (an in-process
emulator that patches ``snowflake.connector.connect``), not a real account:
see the README.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
import typing
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas.records import failed_from_event
from schemas.warehouse import (
    JSON,
    WAREHOUSE_TABLES,
    WarehouseTable,
    load_fields,
    quote,
    snowflake_ddl,
)

__all__ = [
    "SnowflakeSettings",
    "WriteToSnowflake",
    "ensure_snowflake_schema",
    "merge_sql",
    "csv_line",
    "isolate_bad_rows",
]

_LOG = logging.getLogger(__name__)

STAGE = "sink:snowflake"

# A COPY + MERGE costs a few round trips and a warehouse slice whatever its
# size, so batches are larger than the PostgreSQL sink's.
DEFAULT_BATCH_SIZE = 5000
DEFAULT_MAX_RETRIES = 5
# 0.5, 1, 2, 4, 8 s: rides out a warehouse resume or a short network loss.
DEFAULT_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
# One file name per staging table: PUT OVERWRITE replaces it, so the stage
# never holds a leftover of an earlier failed load.
_LOAD_FILE = "batch.csv"
_COPY_OPTIONS = (
    "FILE_FORMAT = (TYPE = CSV FIELD_OPTIONALLY_ENCLOSED_BY = '\"' "
    "EMPTY_FIELD_AS_NULL = TRUE NULL_IF = ()) FORCE = TRUE PURGE = TRUE"
)


@dataclasses.dataclass(frozen=True)
class SnowflakeSettings:
    """Where to connect; ``schema`` defaults to Snowflake's ``PUBLIC``."""

    account: str
    user: str
    database: str
    password: typing.Optional[str] = dataclasses.field(default=None, repr=False)
    schema: str = "PUBLIC"
    warehouse: typing.Optional[str] = None
    role: typing.Optional[str] = None

    def __post_init__(self):
        for name in ("account", "user", "database", "schema"):
            if not getattr(self, name):
                raise ValueError(f"Snowflake {name} is required")

    def connect_kwargs(self) -> typing.Dict[str, typing.Any]:
        kwargs = {
            "account": self.account, "user": self.user, "password": self.password,
            "database": self.database, "schema": self.schema,
            "warehouse": self.warehouse, "role": self.role,
            # Times are loaded as UTC wall-clock (TIMESTAMP_NTZ).
            "session_parameters": {"TIMEZONE": "UTC"},
        }
        return {k: v for k, v in kwargs.items() if v is not None}


def _connect(settings: SnowflakeSettings):
    # Looked up at call time, so an emulator that patches the module attribute
    # (fakesnow) is honoured.
    import snowflake.connector

    return snowflake.connector.connect(**settings.connect_kwargs())


def _apply_ddl(conn) -> None:
    cur = conn.cursor()
    try:
        for statement in snowflake_ddl():
            cur.execute(statement)
    finally:
        cur.close()


def ensure_snowflake_schema(settings: SnowflakeSettings) -> None:
    """Creates the warehouse tables (idempotent)."""
    conn = _connect(settings)
    try:
        _apply_ddl(conn)
    finally:
        conn.close()


def merge_sql(table: WarehouseTable, staging: str) -> str:
    """``MERGE INTO table USING (SELECT ... FROM staging) s ON key ...``: JSON
    columns are parsed in the source query, so the match arms only copy; with
    ``table.newer_wins`` an older incoming row leaves the stored one alone."""
    select = ", ".join(
        f"PARSE_JSON({quote(c.name)}) AS {quote(c.name)}" if c.kind == JSON else quote(c.name)
        for c in table.columns)
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in table.key)
    updates = ", ".join(f"{quote(c.name)} = s.{quote(c.name)}"
                        for c in table.columns if c.name not in table.key)
    cols = ", ".join(quote(c.name) for c in table.columns)
    values = ", ".join(f"s.{quote(c.name)}" for c in table.columns)
    newer = ""
    if table.newer_wins:
        column = quote(table.newer_wins)
        newer = f" AND (t.{column} IS NULL OR s.{column} >= t.{column})"
    matched = f" WHEN MATCHED{newer} THEN UPDATE SET {updates}" if updates else ""
    return (f"MERGE INTO {quote(table.name)} t USING (SELECT {select} FROM {staging}) s "
            f"ON {on}{matched} WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")


def csv_line(fields: typing.Sequence[typing.Optional[str]]) -> str:
    """One CSV line for ``COPY INTO``: None is an empty (NULL) field, every
    other field is quoted with doubled inner quotes, so an empty string, a
    comma or a newline survive."""
    return ",".join(
        "" if f is None else '"' + f.replace('"', '""') + '"' for f in fields) + "\n"


_Item = typing.TypeVar("_Item")


def isolate_bad_rows(
    batch: typing.Sequence[_Item],
    write: typing.Callable[[typing.Sequence[_Item]], None],
    is_data_error: typing.Callable[[BaseException], bool],
) -> typing.Iterator[typing.Tuple[_Item, BaseException]]:
    """Writes ``batch``; when the database refuses it for its data, writes
    each half again, down to single rows, and yields ``(item, error)`` for
    every row refused alone. Other errors propagate. Rows that were fine are
    written once (a refused write changed nothing)."""
    if not batch:
        return
    try:
        write(batch)
    except Exception as exc:  # pylint: disable=broad-except
        if not is_data_error(exc):
            raise
        if len(batch) == 1:
            yield batch[0], exc
            return
        middle = len(batch) // 2
        yield from isolate_bad_rows(batch[:middle], write, is_data_error)
        yield from isolate_bad_rows(batch[middle:], write, is_data_error)


def _is_transient(exc: BaseException) -> bool:
    from snowflake.connector import errors

    retryable = (
        errors.OperationalError, errors.InterfaceError, errors.HttpError,
        errors.InternalServerError, errors.ServiceUnavailableError,
        errors.GatewayTimeoutError, errors.RequestTimeoutError,
        errors.BadGatewayError, errors.TooManyRequests,
        errors.OtherHTTPRetryableError, errors.RequestExceedMaxRetryError,
        errors.TokenExpiredError, errors.PresignedUrlExpiredError,
    )
    if isinstance(exc, errors.NonRetryableTlsError):
        return False
    return isinstance(exc, retryable) or isinstance(exc, (ConnectionError, TimeoutError))


def _is_data_error(exc: BaseException) -> bool:
    """Errors caused by a row's content. Snowflake reports them with an
    SQLSTATE of class 22 (data exception: NULL in a NOT NULL column, numeric
    value not recognized, string too long) or 23 (integrity); a DB-API
    ``IntegrityError``/``DataError`` of any driver counts too (fakesnow lets
    its engine's constraint errors through unwrapped)."""
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate[:2] in ("22", "23"):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"IntegrityError", "DataError"})


class _WriteToSnowflakeFn(beam.DoFn):
    FAILED = "failed"

    def __init__(self, settings: SnowflakeSettings, table: WarehouseTable, batch_size,
                 max_retries, backoff_s, pipeline, create_schema, batched=False):
        self._settings = settings
        self._table = table
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._pipeline = pipeline
        self._create_schema = create_schema
        self._batched = batched
        self._conn = None
        self._staging = None
        self._workdir = None
        self._buffer = []
        self._written = Metrics.counter("WriteToSnowflake", "written")
        self._failed = Metrics.counter("WriteToSnowflake", "failed")
        self._retries = Metrics.counter("WriteToSnowflake", "retries")

    # -- connection -------------------------------------------------------

    def _open(self):
        conn = _connect(self._settings)
        try:
            if self._create_schema:
                _apply_ddl(conn)
            # Session-private, so concurrent loaders never share one; the
            # random suffix also keeps emulators that share one namespace apart.
            # (unquoted: a table stage is named @%<table>)
            staging = f"IHEARD_STAGE_{self._table.name}_{uuid.uuid4().hex[:12].upper()}"
            columns = ", ".join(f"{quote(c.name)} {c.staging_type}" for c in self._table.columns)
            cur = conn.cursor()
            try:
                cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ({columns})")
            finally:
                cur.close()
        except BaseException:
            conn.close()
            raise
        self._conn, self._staging = conn, staging

    def _close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self._conn, self._staging = None, None

    def setup(self):
        self._workdir = tempfile.mkdtemp(prefix="iheard-snowflake-")
        self._retrying(self._open)

    def teardown(self):
        self._close()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

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

    # -- loading ----------------------------------------------------------

    def _flush(self):
        items, self._buffer = self._buffer, []
        if not items:
            return
        by_key = {}  # last row per key wins (MERGE must match a target row once)
        for row, ts, win in items:
            try:
                fields = load_fields(self._table, row)
            except (ValueError, TypeError) as exc:
                yield self._failure(row, ts, win, exc)
                continue
            key = self._table.key_of(fields)
            by_key.pop(key, None)
            by_key[key] = (row, ts, win, fields)
        batch = list(by_key.values())
        refused = 0
        for (row, ts, win, _), exc in isolate_bad_rows(batch, self._load, _is_data_error):
            refused += 1
            yield self._failure(row, ts, win, exc)
        self._written.inc(len(batch) - refused)

    def _load(self, batch):
        path = os.path.join(self._workdir, _LOAD_FILE)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            for _, _, _, fields in batch:
                handle.write(csv_line(fields))

        def load():
            if self._conn is None:
                self._open()
            cur = self._conn.cursor()
            try:
                cur.execute(f"TRUNCATE TABLE {self._staging}")
                cur.execute(f"PUT 'file://{path}' @%{self._staging} OVERWRITE = TRUE")
                cur.execute(f"COPY INTO {self._staging} FROM @%{self._staging} {_COPY_OPTIONS}")
                cur.execute(merge_sql(self._table, self._staging))
            finally:
                cur.close()
        self._retrying(load)

    def _retrying(self, action):
        attempt = 0
        while True:
            try:
                return action()
            except Exception as exc:  # pylint: disable=broad-except
                if not _is_transient(exc) or attempt >= self._max_retries:
                    if _is_transient(exc):
                        self._close()  # the bundle fails; the runner retries it
                    raise
                delay = min(self._backoff_s * (2 ** attempt), _MAX_BACKOFF_S)
                attempt += 1
                self._retries.inc()
                _LOG.warning("transient Snowflake error (%s: %s); retry %d/%d in %.1fs",
                             type(exc).__name__, exc, attempt, self._max_retries, delay)
                self._close()
                time.sleep(delay)

    def _failure(self, row, ts, win, exc):
        self._failed.inc()
        failed = failed_from_event(row, exc, STAGE, self._pipeline)
        return beam.pvalue.TaggedOutput(self.FAILED, WindowedValue(failed, ts, [win]))


class WriteToSnowflake(beam.PTransform):
    """Merges row dicts into warehouse table ``table`` (a
    ``schemas.warehouse.WAREHOUSE_TABLES`` name, e.g. ``FRONTEND_EVENTS``).

    Returns the PCollection of ``FailedRecord``s for rows Snowflake would
    refuse. Delivery guarantee: at-least-once, idempotent by ``MERGE`` on the
    table's key (module docstring). ``batched=True``: each element is a list
    of row dicts (transforms/batches.py); rows are still buffered per bundle
    and loaded with one COPY + MERGE per ``batch_size``."""

    def __init__(
        self,
        settings: SnowflakeSettings,
        table: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_retries: int = DEFAULT_MAX_RETRIES,
        pipeline: str = "",
        create_schema: bool = True,
        retry_backoff_seconds: float = DEFAULT_BACKOFF_S,
        reshuffle: bool = True,
        batched: bool = False,
    ):
        super().__init__()
        if not isinstance(settings, SnowflakeSettings):
            raise ValueError("settings must be a SnowflakeSettings")
        if table not in WAREHOUSE_TABLES:
            raise ValueError(f"unknown warehouse table {table!r}; known: {sorted(WAREHOUSE_TABLES)}")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._settings = settings
        self._table = WAREHOUSE_TABLES[table]
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._pipeline = pipeline
        self._create_schema = create_schema
        self._backoff_s = retry_backoff_seconds
        self._reshuffle = reshuffle
        self._batched = batched

    def expand(self, rows):
        if self._reshuffle:
            rows = rows | "Reshuffle" >> beam.Reshuffle()
        results = (
            rows
            | "MergeRows" >> beam.ParDo(_WriteToSnowflakeFn(
                self._settings, self._table, self._batch_size, self._max_retries,
                self._backoff_s, self._pipeline, self._create_schema, self._batched,
            )).with_outputs(_WriteToSnowflakeFn.FAILED, main="written")
        )
        return results[_WriteToSnowflakeFn.FAILED]
