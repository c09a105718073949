"""Table specifications shared by every SQL sink (PostgreSQL and embedded DuckDB).

A ``TableSpec`` names a table's columns in insert order, the key that makes a
write idempotent (``ON CONFLICT (key) DO UPDATE``) and which columns hold
JSON. Rows travel through the pipeline as plain dicts; ``row_values`` turns a
dict into the tuple a sink inserts, so the mapping lives in one place.

The DDL itself is in ``schemas/sql/*.sql`` (applied in file-name order by the
sinks on start-up); ``ddl_statements`` returns it for a dialect.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import pathlib
import re
import typing

__all__ = [
    "TableSpec",
    "TABLES",
    "row_values",
    "ddl_statements",
    "OPERATIONAL_QUERIES",
    "operational_query",
    "failure_row",
    "replay_topic",
    "replay_lineage",
    "REPLAY_TOPIC_PREFIX",
    "to_utc_datetime",
    "json_default",
]

SQL_DIR = pathlib.Path(__file__).parent / "sql"
# The design document's queries on these tables (PostgreSQL, also valid on
# DuckDB), one file each; ddl_statements reads only SQL_DIR/*.sql.
OPERATIONAL_QUERIES_DIR = SQL_DIR / "operational"
OPERATIONAL_QUERIES = ("segment_engagement_24h", "all_leads_count", "qualified_leads_count")


ON_CONFLICT_ACTIONS = ("update", "nothing")


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    columns: typing.Tuple[str, ...]
    key: typing.Tuple[str, ...]
    json_columns: typing.FrozenSet[str] = frozenset()
    timestamp_columns: typing.FrozenSet[str] = frozenset()
    # SQL condition on ``excluded`` (the incoming row) and the stored row
    # (named by the table) under which an upsert may replace a stored row;
    # None: always. Lets a stale restatement arriving late lose to a newer one.
    update_condition: typing.Optional[str] = None
    # What a row whose key is already stored does: "update" replaces the
    # stored row (under update_condition), "nothing" keeps the first row
    # written (ON CONFLICT DO NOTHING). One word per table, read by the
    # PostgreSQL and DuckDB sinks.
    on_conflict: str = "update"

    def __post_init__(self):
        if self.on_conflict not in ON_CONFLICT_ACTIONS:
            raise ValueError(f"{self.name}: on_conflict must be one of {ON_CONFLICT_ACTIONS}")
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"{self.name}: key columns {missing} not in columns")


TABLES: typing.Dict[str, TableSpec] = {}


def _register(spec: TableSpec) -> TableSpec:
    TABLES[spec.name] = spec
    return spec


FRONTEND_ANALYTICS = _register(
    TableSpec(
        name="frontend_analytics",
        columns=(
            "event_id", "session_id", "event_type", "page_category",
            "device_type", "browser", "user_segment", "engagement_score",
            "conversion_stage", "quality_score", "transformation_metadata",
            "timestamp", "user_id", "os", "page_url", "referrer_source",
            "utm_source", "utm_medium", "utm_campaign", "country",
        ),
        key=("event_id",),
        json_columns=frozenset({"transformation_metadata"}),
        timestamp_columns=frozenset({"timestamp"}),
    )
)

FRONTEND_SESSIONS = _register(
    TableSpec(
        name="frontend_sessions",
        columns=(
            "session_id", "window_start", "window_end", "user_id",
            "event_count", "first_event_at", "last_event_at",
            "duration_seconds", "page_count", "widget_opens", "messages",
            "conversions", "furthest_stage", "avg_engagement_score",
            "max_engagement_score", "pane_index", "updated_at",
        ),
        key=("session_id", "window_start"),
        # Session panes accumulate: a pane never has fewer events than an
        # earlier pane of the same window, so a pane replayed or delivered
        # out of order must not overwrite a fuller one.
        update_condition="excluded.event_count >= frontend_sessions.event_count",
        timestamp_columns=frozenset(
            {"window_start", "window_end", "first_event_at", "last_event_at",
             "updated_at"}
        ),
    )
)

FAILED_EVENTS = _register(
    TableSpec(
        name="failed_events",
        columns=(
            "failure_id", "pipeline", "stage", "error_class", "error_message",
            "raw_payload", "source_topic", "source_partition", "source_offset",
            "pipeline_version", "received_at",
            # schemas/sql/030_replay.sql; the replay's marks (replayed_by,
            # replayed_at, replay_outcome) are deliberately not columns here,
            # so no upsert of a dead letter ever overwrites them.
            "replay_run_id", "replay_of",
        ),
        key=("failure_id",),
        timestamp_columns=frozenset({"received_at"}),
    )
)

MARKETO_LEADS = _register(
    TableSpec(
        name="marketo_leads",
        columns=(
            "lead_id", "email", "full_name", "company", "lead_source",
            "email_domain", "lead_quality_score", "geographic_info",
            "transformation_metadata", "created_at", "updated_at",
            # schemas/sql/020_marketo.sql
            "email_domain_class", "email_token", "score_factors",
            "engagement_level", "conversion_probability", "recommended_action",
            "engagement",
        ),
        key=("lead_id",),
        # The latest updatedAt wins: an older delta arriving late (a replay,
        # a backfill) never overwrites a newer row; an equal one refreshes it.
        update_condition="marketo_leads.updated_at IS NULL "
        "OR excluded.updated_at >= marketo_leads.updated_at",
        json_columns=frozenset({"geographic_info", "transformation_metadata",
                                "score_factors", "engagement"}),
        timestamp_columns=frozenset({"created_at", "updated_at"}),
    )
)

# Text-agent tables (schemas/sql/010_text_agent.sql).
AGENT_TURNS = _register(
    TableSpec(
        name="agent_turns",
        columns=(
            "session_id", "turn_id", "model", "model_family", "tokens_in",
            "tokens_out", "total_tokens", "tokens_per_second", "efficiency_score",
            "quality_score", "business_value_score", "sentiment", "topics",
            "estimated_cost_usd", "transformation_metadata", "timestamp",
            "event_id", "user_id", "tenant_id", "channel", "model_provider",
            "latency_ms", "cached_tokens_in", "price_book_version", "price_key",
            "user_sentiment_compound", "response_sentiment",
            "response_sentiment_compound", "language", "response_language",
            "keywords", "tools_used", "tool_success_rate", "lead_captured",
            "user_intent", "previous_turns", "efficiency_factors",
            "quality_factors", "business_value_factors", "pii_redactions",
            # added later (ALTER TABLE in 010_text_agent.sql)
            "conversion_probability", "cost_per_interaction", "user_satisfaction",
        ),
        key=("session_id", "turn_id"),
        json_columns=frozenset({
            "business_value_factors",
            "efficiency_factors",
            "keywords",
            "pii_redactions",
            "quality_factors",
            "tools_used",
            "topics",
            "transformation_metadata",
        }),
        timestamp_columns=frozenset({"timestamp"}),
    )
)

AGENT_CONVERSATIONS = _register(
    TableSpec(
        name="agent_conversations",
        columns=(
            "session_id", "window_start", "window_end", "tenant_id", "user_id",
            "channel", "turn_count", "first_turn_at", "last_turn_at",
            "duration_seconds", "tokens_in", "tokens_out", "total_tokens",
            "estimated_cost_usd", "unpriced_turns", "mean_latency_ms",
            "max_latency_ms", "sentiment_first", "sentiment_last",
            "sentiment_mean", "sentiment_trend", "sentiment_slope", "topics",
            "topic_counts", "tools_used", "tool_calls", "tool_successes",
            "tool_success_rate", "models", "avg_quality_score",
            "avg_business_value_score", "max_business_value_score",
            "lead_captured", "pane_index", "is_final", "updated_at",
            # added later (ALTER TABLE in 010_text_agent.sql)
            "conversion_probability", "cost_per_interaction", "user_satisfaction",
        ),
        key=("session_id", "window_start"),
        json_columns=frozenset({
            "models",
            "tools_used",
            "topic_counts",
            "topics",
        }),
        timestamp_columns=frozenset({
            "first_turn_at",
            "last_turn_at",
            "updated_at",
            "window_end",
            "window_start",
        }),
    )
)

AGENT_BILLING_HOURLY = _register(
    TableSpec(
        name="agent_billing_hourly",
        columns=(
            "tenant_id", "model", "hour", "model_family", "model_provider",
            "turns", "tokens_in", "tokens_out", "cached_tokens_in", "total_tokens",
            "estimated_cost_usd", "unpriced_turns", "price_book_versions",
            "pane_index", "updated_at",
        ),
        key=("tenant_id", "model", "hour"),
        json_columns=frozenset({"price_book_versions"}),
        timestamp_columns=frozenset({"hour", "updated_at"}),
    )
)

AGENT_COST_RESTATEMENTS = _register(
    TableSpec(
        name="agent_cost_restatements",
        columns=(
            "session_id", "turn_id", "price_book_version", "event_id", "tenant_id",
            "model", "timestamp", "tokens_in", "tokens_out", "cached_tokens_in",
            "original_price_book_version", "original_cost_usd",
            "restated_cost_usd", "difference_usd", "price_key", "restated_at",
        ),
        key=("session_id", "turn_id", "price_book_version"),
        json_columns=frozenset(),
        timestamp_columns=frozenset({"restated_at", "timestamp"}),
    )
)


def to_utc_datetime(value) -> typing.Optional[dt.datetime]:
    """Epoch ms (int/float), ISO-8601 text or datetime -> aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000.0, tz=dt.timezone.utc)
    text = str(value).replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def json_default(value):
    """``json.dumps``'s ``default`` for the project's JSON columns and payloads:
    datetimes and dates as ISO text, ``Decimal`` as a number, a set as a
    *sorted* list (the same set always gives the same text, so a replayed row
    compares and hashes equal; mixed types sort by their repr), bytes as UTF-8
    text, a named-tuple-like object by its fields, anything else as ``str``.
    (Tuples never reach it: ``json`` writes them as lists itself.)"""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=repr)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "_asdict"):
        return value._asdict()
    return str(value)


def row_values(spec: TableSpec, row: typing.Mapping) -> tuple:
    """The tuple to insert for ``row`` (missing columns become NULL)."""
    out = []
    for column in spec.columns:
        value = row.get(column)
        if value is not None and column in spec.json_columns:
            value = json.dumps(value, sort_keys=True, default=json_default)
        elif column in spec.timestamp_columns:
            value = to_utc_datetime(value)
        out.append(value)
    return tuple(out)


# The origin a dead-letter replay gives the records it re-runs
# (``replay:<run id>:<original failure_id>``): a failure of one of them is a
# new dead letter (its id hashes the origin, so it never collides with the
# original's), and ``failure_row`` fills its lineage columns from it.
REPLAY_TOPIC_PREFIX = "replay:"


def replay_topic(run_id: str, original_failure_id: str) -> str:
    """The source topic of a record a replay re-runs (see REPLAY_TOPIC_PREFIX)."""
    if ":" in run_id:
        raise ValueError("a replay run id may not contain ':'")
    return f"{REPLAY_TOPIC_PREFIX}{run_id}:{original_failure_id}"


def replay_lineage(source_topic) -> typing.Tuple[typing.Optional[str], typing.Optional[str]]:
    """(replay run id, original failure_id) of a replay's origin, else (None, None)."""
    if not isinstance(source_topic, str) or not source_topic.startswith(REPLAY_TOPIC_PREFIX):
        return None, None
    run_id, _, original = source_topic[len(REPLAY_TOPIC_PREFIX):].partition(":")
    return (run_id or None), (original or None)


def failure_row(failed) -> dict:
    """A ``failed_events`` row for a ``FailedRecord``; its id is deterministic
    (same failure replayed -> same id) so the dead-letter sink is idempotent.
    A record re-run by a dead-letter replay (origin ``replay_topic``) gets
    its lineage columns ``replay_run_id`` and ``replay_of``."""
    d = failed._asdict() if hasattr(failed, "_asdict") else dict(failed)
    run_id, original = replay_lineage(d.get("source_topic"))
    identity = "|".join(
        str(d.get(k, ""))
        for k in ("pipeline", "stage", "source_topic", "source_partition",
                  "source_offset", "raw")
    )
    return {
        "failure_id": hashlib.sha256(identity.encode("utf-8")).hexdigest()[:64],
        "pipeline": d.get("pipeline"),
        "stage": d.get("stage"),
        "error_class": d.get("error_class"),
        "error_message": d.get("error_message"),
        "raw_payload": d.get("raw"),
        "source_topic": d.get("source_topic"),
        "source_partition": d.get("source_partition"),
        "source_offset": d.get("source_offset"),
        "pipeline_version": d.get("pipeline_version"),
        "received_at": d.get("received_at") or None,
        "replay_run_id": run_id,
        "replay_of": original,
    }


_JSONB = re.compile(r"\bJSONB\b", re.IGNORECASE)


def ddl_statements(dialect: str = "postgres") -> typing.List[str]:
    """All DDL statements in ``schemas/sql`` for ``postgres`` or ``duckdb``."""
    if dialect not in ("postgres", "duckdb"):
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    statements = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        text = "\n".join(
            line for line in path.read_text().splitlines()
            if not line.strip().startswith("--")
        )
        if dialect == "duckdb":
            text = _JSONB.sub("JSON", text)
        statements.extend(s.strip() for s in text.split(";") if s.strip())
    return statements


def operational_query(name: str) -> str:
    """The text of one of the design document's queries on the operational
    tables (``OPERATIONAL_QUERIES``), as stored in ``schemas/sql/operational``."""
    if name not in OPERATIONAL_QUERIES:
        raise ValueError(f"unknown query {name!r}; known: {OPERATIONAL_QUERIES}")
    return (OPERATIONAL_QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8")
