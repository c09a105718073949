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

Errors, batching and counters are those of ``iheard_io.sink_base`` (one
policy for every sink): rows Snowflake would refuse for their content
(``load_fields`` refusals, a database ``IntegrityError``/``DataError`` or an
SQLSTATE of class 22 or 23) are isolated by bisection and become
``FailedRecord``s (stage ``sink:snowflake``) on the ``failed`` output, the
other rows are loaded; a Snowflake that is unreachable (network, HTTP
5xx/429, expired session) is retried on a fresh connection (and a new
staging table) with capped exponential backoff for ``retry_budget_seconds``
(default 60 s); then, because the warehouse is an optional copy that must
not stop the PostgreSQL writes, every row of the batch becomes a dead letter
(``StoreUnavailable``; ``on_exhausted="fail"`` fails the bundle instead);
anything else (a missing table, bad credentials) fails the bundle at once.

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
import os
import shutil
import tempfile
import typing
import uuid

import apache_beam as beam

from iheard_io.retry import DEFAULT_FIRST_BACKOFF_S
from iheard_io.retry import DEFAULT_RETRY_BUDGET_S
from iheard_io.retry import OnExhausted
from iheard_io.retry import SnowflakeErrors
from iheard_io.sink_base import BatchSinkFn
from iheard_io.sink_base import retry_policy
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
]

STAGE = "sink:snowflake"

# A COPY + MERGE costs a few round trips and a warehouse slice whatever its
# size, so batches are larger than the PostgreSQL sink's.
DEFAULT_BATCH_SIZE = 5000
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


class _WriteToSnowflakeFn(BatchSinkFn):
    counter_namespace = "WriteToSnowflake"
    stage = STAGE
    dedupe = True  # a MERGE whose source matches a target row twice is nondeterministic

    def __init__(self, settings: SnowflakeSettings, table: WarehouseTable,
                 batch_size=DEFAULT_BATCH_SIZE, retry_budget_s=DEFAULT_RETRY_BUDGET_S,
                 backoff_s=DEFAULT_FIRST_BACKOFF_S, pipeline="", create_schema=True,
                 batched=False, on_exhausted=OnExhausted.DEAD_LETTER):
        super().__init__(errors=SnowflakeErrors(),
                         retry=retry_policy(retry_budget_s, backoff_s, on_exhausted),
                         batch_size=batch_size, pipeline=pipeline, batched=batched)
        self._settings = settings
        self._table = table
        self._create_schema = create_schema
        self._workdir = None

    def setup(self):
        self._workdir = tempfile.mkdtemp(prefix="iheard-snowflake-")
        super().setup()

    def teardown(self):
        super().teardown()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def open_client(self):
        """A connection and its session-private staging table (concurrent
        loaders never share one; the random suffix also keeps emulators that
        share one namespace apart; unquoted: a table stage is ``@%<table>``)."""
        conn = _connect(self._settings)
        try:
            if self._create_schema:
                _apply_ddl(conn)
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
        return _Session(conn, staging)

    def close_client(self, session):
        session.conn.close()

    def prepare(self, row):
        return load_fields(self._table, row)

    def key_of(self, fields):
        return self._table.key_of(fields)

    def write(self, session, batch):
        path = os.path.join(self._workdir, _LOAD_FILE)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            for fields in batch:
                handle.write(csv_line(fields))
        staging = session.staging
        cur = session.conn.cursor()
        try:
            cur.execute(f"TRUNCATE TABLE {staging}")
            cur.execute(f"PUT 'file://{path}' @%{staging} OVERWRITE = TRUE")
            cur.execute(f"COPY INTO {staging} FROM @%{staging} {_COPY_OPTIONS}")
            cur.execute(merge_sql(self._table, staging))
        finally:
            cur.close()


@dataclasses.dataclass(frozen=True)
class _Session:
    conn: typing.Any
    staging: str


class WriteToSnowflake(beam.PTransform):
    """Merges row dicts into warehouse table ``table`` (a
    ``schemas.warehouse.WAREHOUSE_TABLES`` name, e.g. ``FRONTEND_EVENTS``).

    Returns the PCollection of ``FailedRecord``s for rows Snowflake would
    refuse, and (by default) for rows of a batch Snowflake stayed unreachable
    for past ``retry_budget_seconds`` (default 60 s; ``on_exhausted="fail"``
    fails the bundle instead). Delivery guarantee: at-least-once, idempotent
    by ``MERGE`` on the table's key (module docstring). ``batched=True``: each
    element is a list of row dicts (transforms/batches.py); rows are still
    buffered per bundle and loaded with one COPY + MERGE per ``batch_size``."""

    def __init__(
        self,
        settings: SnowflakeSettings,
        table: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        pipeline: str = "",
        create_schema: bool = True,
        retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_S,
        retry_backoff_seconds: float = DEFAULT_FIRST_BACKOFF_S,
        reshuffle: bool = True,
        batched: bool = False,
        on_exhausted: str = OnExhausted.DEAD_LETTER.value,
    ):
        super().__init__()
        if not isinstance(settings, SnowflakeSettings):
            raise ValueError("settings must be a SnowflakeSettings")
        if table not in WAREHOUSE_TABLES:
            raise ValueError(f"unknown warehouse table {table!r}; known: {sorted(WAREHOUSE_TABLES)}")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if retry_budget_seconds < 0:
            raise ValueError("retry_budget_seconds must be >= 0")
        self._fn_args = dict(settings=settings, table=WAREHOUSE_TABLES[table],
                             batch_size=batch_size, retry_budget_s=retry_budget_seconds,
                             backoff_s=retry_backoff_seconds, pipeline=pipeline,
                             create_schema=create_schema, batched=batched,
                             on_exhausted=OnExhausted(on_exhausted))
        self._reshuffle = reshuffle

    def expand(self, rows):
        if self._reshuffle:
            rows = rows | "Reshuffle" >> beam.Reshuffle()
        results = (
            rows
            | "MergeRows" >> beam.ParDo(_WriteToSnowflakeFn(**self._fn_args))
            .with_outputs(_WriteToSnowflakeFn.FAILED, main="written")
        )
        return results[_WriteToSnowflakeFn.FAILED]
