"""Lookup of a person's frontend sessions and agent conversations (PostgreSQL or DuckDB).

``LookupEngagement`` reads, for each element (a dict), the user ids listed
under ``keys_field`` and attaches under ``output_field`` what the other two
pipelines stored for them: ``{user_id: (frontend aggregate, agent
aggregate)}`` for the ids found in ``frontend_sessions`` or
``agent_conversations``. It knows nothing of leads: the Marketo job lists a
lead's identity keys before it (``transforms.marketo.IdentifyLeads``) and
folds the aggregates into a score input after it
(``transforms.marketo_scoring.engagement_from_rows``), so this connector and
the transforms never import each other::

    elements --_LookupEngagementFn--> elements + {output_field: {user_id: aggregates}}
            buffers ``batch_size`` elements, then one grouped query per table
            (``WHERE user_id IN (...)``) for the whole batch

Why a lookup and not a join of streams: the sessions and conversations are
already aggregated and stored by their pipelines; reading them when a lead
changes gives the lead's whole history (all time, every session window)
without keeping either stream in this job's state. The engagement is as of
the moment the lead is scored; a lead is rescored when it changes in Marketo.

Buffering, the connection's life and the retry policy are those of
``iheard_io.sink_base`` (``BufferedBatchFn``): a database that is down is
retried on a fresh connection with capped exponential backoff for
``retry_budget_seconds`` (default 60 s), then the bundle fails (the runner
retries it); any other error fails it at once. A lead is never scored with
made-up engagement. The lookup only reads. Counters: namespace
``LookupEngagement`` (``received``, ``retries``, and the latency buckets of
each batch query, ``write_ms_le_<N>`` as the sinks'), and ``namespace``'s
``engagement_looked_up`` / ``engagement_matched``.
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from iheard_io.embedded import ensure_embedded_schema
from iheard_io.retry import DEFAULT_FIRST_BACKOFF_S
from iheard_io.retry import DEFAULT_RETRY_BUDGET_S
from iheard_io.retry import OnExhausted
from iheard_io.retry import PostgresErrors
from iheard_io.retry import StoreErrors
from iheard_io.sink_base import BufferedBatchFn
from iheard_io.sink_base import retry_policy

__all__ = ["LookupEngagement", "query_engagement"]

DEFAULT_BATCH_SIZE = 500

_FRONTEND_SQL = (
    "SELECT user_id, COUNT(*), COALESCE(SUM(event_count), 0), COALESCE(SUM(messages), 0), "
    "COALESCE(SUM(conversions), 0), COALESCE(MAX(max_engagement_score), 0) "
    "FROM frontend_sessions WHERE user_id IN ({}) GROUP BY user_id")
_AGENT_SQL = (
    "SELECT user_id, COUNT(*), COALESCE(SUM(turn_count), 0), "
    "MAX(CASE WHEN lead_captured THEN 1 ELSE 0 END), "
    "COALESCE(MAX(max_business_value_score), 0) "
    "FROM agent_conversations WHERE user_id IN ({}) GROUP BY user_id")


def query_engagement(cursor, keys: typing.Sequence[str], placeholder: str = "?"
                     ) -> typing.Dict[str, typing.Tuple[tuple, tuple]]:
    """{user_id: (frontend aggregate, agent aggregate)} for ``keys``."""
    out: typing.Dict[str, typing.List[tuple]] = {}
    if not keys:
        return {}
    marks = ", ".join([placeholder] * len(keys))
    cursor.execute(_FRONTEND_SQL.format(marks), list(keys))
    frontend = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    cursor.execute(_AGENT_SQL.format(marks), list(keys))
    agent = {row[0]: tuple(row[1:]) for row in cursor.fetchall()}
    for key in set(frontend) | set(agent):
        out[key] = (frontend.get(key, (0, 0, 0, 0, 0)), agent.get(key, (0, 0, 0, 0)))
    return out


class _DuckDbErrors(StoreErrors):
    name = "DuckDB"

    def is_transient(self, exc):
        import duckdb

        # another process holds the file's lock for a moment
        return isinstance(exc, duckdb.IOException)


class _LookupEngagementFn(BufferedBatchFn):
    counter_namespace = "LookupEngagement"

    def __init__(self, postgres_dsn, duckdb_path, keys_field, output_field, batch_size,
                 retry_budget_s, backoff_s, namespace):
        super().__init__(errors=PostgresErrors() if postgres_dsn else _DuckDbErrors(),
                         retry=retry_policy(retry_budget_s, backoff_s, OnExhausted.FAIL),
                         batch_size=batch_size)
        self._dsn = postgres_dsn
        self._duckdb_path = duckdb_path
        self._keys_field = keys_field
        self._output_field = output_field
        self._matched = Metrics.counter(namespace, "engagement_matched")
        self._looked_up = Metrics.counter(namespace, "engagement_looked_up")

    def setup(self):
        # The connection opens at the first query (retrying): a DuckDB file
        # is locked per process, so hold it only while elements are looked up.
        pass

    def open_client(self):
        if self._dsn:
            import psycopg

            return psycopg.connect(self._dsn, autocommit=True)
        import duckdb

        ensure_embedded_schema(self._duckdb_path)  # the process's shared instance
        return duckdb.connect(self._duckdb_path)

    def _query(self, conn, keys):
        cursor = conn.cursor()
        try:
            return query_engagement(cursor, keys, "%s" if self._dsn else "?")
        finally:
            cursor.close()

    def flush_batch(self, items):
        identities = [tuple(element.get(self._keys_field) or ()) for element, _, _ in items]
        keys = sorted({k for ids in identities for k in ids})
        found = (self.retrying(lambda conn: self.timed(self._query, conn, keys))
                 if keys else {})
        for (element, ts, win), ids in zip(items, identities):
            hits = {k: found[k] for k in ids if k in found}
            self._looked_up.inc()
            if hits:
                self._matched.inc()
            out = dict(element)
            out[self._output_field] = hits
            yield WindowedValue(out, ts, [win if win is not None else GlobalWindow()])


class LookupEngagement(beam.PTransform):
    """Dicts listing user ids under ``keys_field`` -> the same dicts with
    ``output_field`` = ``{user_id: (frontend aggregate, agent aggregate)}``
    (see the module docstring). Give exactly one of ``postgres_dsn`` and
    ``duckdb_path``. ``retry_budget_seconds``: how long a database that is
    down is retried before the bundle fails (default 60 s)."""

    def __init__(self, keys_field: str, output_field: str,
                 postgres_dsn: typing.Optional[str] = None,
                 duckdb_path: typing.Optional[str] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 retry_budget_seconds: float = DEFAULT_RETRY_BUDGET_S,
                 retry_backoff_seconds: float = DEFAULT_FIRST_BACKOFF_S,
                 namespace: str = "marketo"):
        super().__init__()
        if bool(postgres_dsn) == bool(duckdb_path):
            raise ValueError("give exactly one of postgres_dsn and duckdb_path")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if retry_budget_seconds < 0:
            raise ValueError("retry_budget_seconds must be >= 0")
        self._args = (postgres_dsn, duckdb_path, keys_field, output_field, batch_size,
                      retry_budget_seconds, retry_backoff_seconds, namespace)

    def expand(self, elements):
        return elements | "QueryEngagementBatches" >> beam.ParDo(_LookupEngagementFn(*self._args))
