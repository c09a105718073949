"""A plain client over the project's tables, on PostgreSQL or the embedded DuckDB file.

Not a Beam connector: the steps that run after (or instead of) a job and need
whole tables at once use it (the aggregate recompute of a replay or archive
re-run, the dead-letter replay's selection and marks, its dry run):

    with SqlTables.open(dsn=..., embedded_db=...) as db:
        rows = db.select("SELECT ... WHERE session_id IN ({})", ids)   # dicts
        db.replace("frontend_sessions", "session_id", ids, new_rows)  # one transaction
        db.execute("UPDATE failed_events SET ... WHERE failure_id = %s", [...])

SQL is written with ``%s`` placeholders (psycopg's); on DuckDB they become
``?``. ``replace`` deletes every stored row whose ``column`` is one of the
keys and upserts the new rows (``schemas.tables.row_values``) in one
transaction, so a reader sees the old rows or the new ones, never a gap.

The embedded file is opened through ``iheard_io.embedded``'s one instance per
process, so this client and a DirectRunner job in the same process share it.
"""
from __future__ import annotations

import typing

from iheard_io.embedded import embedded_database, upsert_rows
from iheard_io.postgres import ensure_schema, upsert_sql
from schemas.tables import TABLES, row_values

__all__ = ["SqlTables", "IN_CHUNK"]

# Keys per ``IN (...)`` list: well below both databases' parameter limits.
IN_CHUNK = 1000


def chunks(values: typing.Sequence, size: int = IN_CHUNK):
    for i in range(0, len(values), size):
        yield values[i:i + size]


class SqlTables:
    """One connection to PostgreSQL (``dsn``) or the DuckDB file (``embedded_db``)."""

    def __init__(self, conn, dialect: str):
        self._conn = conn
        self.dialect = dialect

    @classmethod
    def open(cls, dsn: typing.Optional[str] = None,
             embedded_db: typing.Optional[str] = None) -> "SqlTables":
        """PostgreSQL when ``dsn`` is given, else the DuckDB file; the DDL is
        applied first (idempotent), as the sinks' prepare step does."""
        if dsn:
            import psycopg

            ensure_schema(dsn)
            return cls(psycopg.connect(dsn, autocommit=True), "postgres")
        if not embedded_db:
            raise ValueError("either dsn or embedded_db is required")
        return cls(embedded_database(embedded_db).cursor(), "duckdb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "postgres" else sql.replace("%s", "?")

    def select(self, sql: str, params: typing.Sequence = ()) -> typing.List[dict]:
        """Rows of a query as dicts (column name -> value)."""
        if self.dialect == "postgres":
            with self._conn.cursor() as cur:
                cur.execute(sql, list(params))
                names = [d.name for d in cur.description]
                return [dict(zip(names, values)) for values in cur.fetchall()]
        self._conn.execute(self._sql(sql), list(params))
        names = [d[0] for d in self._conn.description]
        return [dict(zip(names, values)) for values in self._conn.fetchall()]

    def select_in(self, sql: str, keys: typing.Iterable, params: typing.Sequence = (),
                  ) -> typing.List[dict]:
        """``sql`` with one ``{}`` where the placeholders of ``keys`` go
        (``... WHERE session_id IN ({})``), run per ``IN_CHUNK`` keys."""
        keys = list(keys)
        out: typing.List[dict] = []
        for part in chunks(keys):
            out.extend(self.select(sql.format(", ".join(["%s"] * len(part))),
                                   list(params) + list(part)))
        return out

    def execute(self, sql: str, params: typing.Sequence = ()) -> int:
        """Runs one statement; returns the number of rows it changed when known."""
        if self.dialect == "postgres":
            with self._conn.cursor() as cur:
                cur.execute(sql, list(params))
                return cur.rowcount
        self._conn.execute(self._sql(sql), list(params))
        try:
            result = self._conn.fetchall()
            return int(result[0][0]) if result else 0
        except Exception:
            return -1

    def executemany(self, sql: str, rows: typing.Sequence[typing.Sequence]) -> None:
        if not rows:
            return
        if self.dialect == "postgres":
            with self._conn.cursor() as cur:
                cur.executemany(sql, [list(r) for r in rows])
            return
        self._conn.executemany(self._sql(sql), [list(r) for r in rows])

    def transaction(self):
        """A context manager: everything inside commits together or not at all."""
        if self.dialect == "postgres":
            return self._conn.transaction()
        return _DuckTransaction(self._conn)

    def upsert(self, table: str, rows: typing.Sequence[typing.Mapping]) -> None:
        """Upserts rows on the table's key (the sinks' statement)."""
        if not rows:
            return
        spec = TABLES[table]
        if self.dialect == "duckdb":
            upsert_rows(self._conn, spec, rows)
            return
        by_key = {}
        for row in rows:
            values = row_values(spec, row)
            by_key[tuple(values[spec.columns.index(k)] for k in spec.key)] = values
        stage = "_iheard_replace_" + spec.name
        with self._conn.cursor() as cur:
            cur.execute(f'CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE "{spec.name}" '
                        "INCLUDING DEFAULTS)")
            cur.execute(f"TRUNCATE {stage}")
            columns = ", ".join(f'"{c}"' for c in spec.columns)
            with cur.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
                for values in by_key.values():
                    copy.write_row(values)
            cur.execute(upsert_sql(spec, stage))
            cur.execute(f"TRUNCATE {stage}")

    def update_by_key(self, table: str, key: str, columns: typing.Sequence[str],
                      values: typing.Sequence[typing.Sequence], condition: str = "") -> None:
        """Sets ``columns`` of the rows whose ``key`` is each value tuple's
        first item to its other items, in one statement (a staged batch
        joined to the table: thousands of single-row UPDATEs take seconds
        on DuckDB). ``condition``: extra SQL on the stored row (``t``)."""
        if not values:
            return
        names = [key, *columns]
        sets = ", ".join(f'"{c}" = s."{c}"' for c in columns)
        where = f't."{key}" = s."{key}"' + (f" AND {condition}" if condition else "")
        stage = "_iheard_update_" + table
        if self.dialect == "duckdb":
            import pyarrow as pa

            batch = pa.Table.from_arrays([pa.array([v[i] for v in values])
                                          for i in range(len(names))], names=names)
            self._conn.register(stage, batch)
            try:
                self._conn.execute(f'UPDATE "{table}" AS t SET {sets} FROM {stage} AS s '
                                   f"WHERE {where}")
            finally:
                self._conn.unregister(stage)
            return
        with self._conn.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT "
                        + ", ".join(f'"{c}"' for c in names) + f' FROM "{table}" WITH NO DATA')
            cur.execute(f"TRUNCATE {stage}")
            with cur.copy(f"COPY {stage} ({', '.join(chr(34) + c + chr(34) for c in names)}) "
                          "FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
            cur.execute(f'UPDATE "{table}" AS t SET {sets} FROM {stage} AS s WHERE {where}')
            cur.execute(f"TRUNCATE {stage}")

    def replace(self, table: str, column: str, keys: typing.Iterable,
                rows: typing.Sequence[typing.Mapping], extra_where: str = "",
                extra_params: typing.Sequence = ()) -> None:
        """Deletes the rows whose ``column`` is one of ``keys`` (and
        ``extra_where``), then upserts ``rows``: one transaction."""
        keys = list(keys)
        with self.transaction():
            for part in chunks(keys):
                marks = ", ".join(["%s"] * len(part))
                self.execute(f'DELETE FROM "{table}" WHERE "{column}" IN ({marks}){extra_where}',
                             list(part) + list(extra_params))
            self.upsert(table, rows)


class _DuckTransaction:
    def __init__(self, cursor):
        self._cursor = cursor

    def __enter__(self):
        self._cursor.execute("BEGIN TRANSACTION")
        return self

    def __exit__(self, exc_type, exc, tb):
        self._cursor.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
