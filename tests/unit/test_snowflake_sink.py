"""The Snowflake sink's pure parts (warehouse rows, CSV lines, MERGE text,
settings from flags and variables) and the sink itself on
``fakesnow``, which patches ``snowflake.connector.connect`` in this process:
the pipelines here run on the in-process DirectRunner, so the DoFns' own
connections reach the emulator (a worker in another process would not)."""
import datetime as dt
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.options import IheardOptions, resolve_connections
from iheard_io.snowflake import (
    SnowflakeSettings,
    WriteToSnowflake,
    csv_line,
    merge_sql,
)
from schemas.warehouse import (
    AGENT_TURNS,
    FRONTEND_EVENTS,
    WAREHOUSE_TABLES,
    load_fields,
    snowflake_ddl,
    warehouse_table_for,
)

# fakesnow notes each Arrow result copy; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SETTINGS = SnowflakeSettings(account="fake_acct", user="loader", password="pw",
                             database="IHEARDAI_ANALYTICS", schema="EVENTS",
                             warehouse="ANALYTICS_WH")


def _event_row(event_id, event_type="page_view", ms=T0_MS, **extra):
    row = {"event_id": event_id, "session_id": "s1", "user_id": "u1",
           "event_type": event_type, "timestamp": ms,
           "transformation_metadata": {"pipeline": "frontend", "v": 1},
           "_source": {"topic": "t", "partition": 0, "offset": 7}}
    row.update(extra)
    return row


# -- pure: rows, lines, SQL --------------------------------------------------

def test_seed_columns_exist_and_every_column_has_a_source():
    names = FRONTEND_EVENTS.column_names
    for column in ("USER_ID", "SESSION_ID", "EVENT_TYPE", "TIMESTAMP"):
        assert column in names
    assert warehouse_table_for("frontend_analytics") is FRONTEND_EVENTS
    assert warehouse_table_for("agent_turns") is AGENT_TURNS
    assert warehouse_table_for("failed_events") is None
    ddl = "\n".join(snowflake_ddl())
    assert 'CREATE TABLE IF NOT EXISTS "FRONTEND_EVENTS"' in ddl
    assert '"TIMESTAMP" TIMESTAMP_NTZ NOT NULL' in ddl
    assert '"TRANSFORMATION_METADATA" VARIANT' in ddl


def test_load_fields_converts_each_kind():
    fields = load_fields(FRONTEND_EVENTS, _event_row("e1", engagement_score=42.0))
    by_name = dict(zip(FRONTEND_EVENTS.column_names, fields))
    assert by_name["EVENT_ID"] == "e1"
    assert by_name["TIMESTAMP"] == "2026-01-01 00:00:00.000000"  # UTC wall clock
    assert by_name["ENGAGEMENT_SCORE"] == "42"
    assert json.loads(by_name["TRANSFORMATION_METADATA"]) == {"pipeline": "frontend", "v": 1}
    assert by_name["PAGE_URL"] is None
    turn = {"session_id": "s", "turn_id": "t", "timestamp": "2026-01-01T01:00:00+01:00",
            "estimated_cost_usd": 0.0123456789, "lead_captured": False, "latency_ms": 12,
            "topics": ["pricing"]}
    by_name = dict(zip(AGENT_TURNS.column_names, load_fields(AGENT_TURNS, turn)))
    assert by_name["TIMESTAMP"] == "2026-01-01 00:00:00.000000"
    assert by_name["ESTIMATED_COST_USD"] == "0.012346"  # NUMBER(10,6), half up
    assert by_name["LEAD_CAPTURED"] == "FALSE"
    assert by_name["LATENCY_MS"] == "12.0"
    assert by_name["TOPICS"] == '["pricing"]'


@pytest.mark.parametrize("change, message", [
    ({"event_type": None}, "EVENT_TYPE: NULL in a NOT NULL column"),
    ({"timestamp": "yesterday"}, "TIMESTAMP: 'yesterday' is not a time"),
    ({"event_type": "x" * 51}, "EVENT_TYPE: 51 characters exceed VARCHAR(50)"),
    ({"user_id": {"nested": 1}}, "USER_ID: expected text, got dict"),
    ({"quality_score": "high"}, "QUALITY_SCORE: 'high' is not an integer"),
    ({"quality_score": 7.5}, "QUALITY_SCORE: 7.5 is not an integer"),
])
def test_load_fields_names_what_snowflake_would_refuse(change, message):
    with pytest.raises(ValueError) as info:
        load_fields(FRONTEND_EVENTS, _event_row("e1", **change))
    assert str(info.value) == message


def test_decimal_overflow_and_booleans_are_refused():
    base = {"session_id": "s", "turn_id": "t", "timestamp": T0_MS}
    with pytest.raises(ValueError, match="does not fit NUMBER"):
        load_fields(AGENT_TURNS, dict(base, estimated_cost_usd=12345.0))
    with pytest.raises(ValueError, match="expected a boolean"):
        load_fields(AGENT_TURNS, dict(base, lead_captured="yes"))


def test_csv_line_keeps_null_empty_quotes_commas_and_newlines_apart():
    assert csv_line(["a", None, "", 'say "hi", ok', "two\nlines"]) == (
        '"a",,"","say ""hi"", ok","two\nlines"\n')


def test_merge_sql_matches_on_the_key_and_parses_json_in_the_source():
    sql = merge_sql(AGENT_TURNS, "STG")
    assert sql.startswith('MERGE INTO "AGENT_TURNS" t USING (SELECT ')
    assert 'PARSE_JSON("TOPICS") AS "TOPICS"' in sql
    assert 'ON t."SESSION_ID" = s."SESSION_ID" AND t."TURN_ID" = s."TURN_ID"' in sql
    update = sql.split("WHEN MATCHED THEN UPDATE SET ")[1].split(" WHEN NOT MATCHED")[0]
    assert '"TURN_ID" =' not in update and '"MODEL" = s."MODEL"' in update


def test_marketo_leads_merge_keeps_the_newest_version():
    from schemas.warehouse import MARKETO_LEADS

    sql = merge_sql(MARKETO_LEADS, "STG")
    assert ('WHEN MATCHED AND (t."UPDATED_AT" IS NULL OR s."UPDATED_AT" >= t."UPDATED_AT") '
            "THEN UPDATE SET") in sql
    assert "WHEN MATCHED THEN" in merge_sql(AGENT_TURNS, "STG")  # no condition elsewhere
    assert 'CREATE TABLE IF NOT EXISTS "MARKETO_LEADS"' in "\n".join(snowflake_ddl())
    assert not {"EMAIL", "FULL_NAME"} & set(MARKETO_LEADS.column_names)


def test_settings_from_flags_win_over_the_seed_variables():
    env = {"SNOWFLAKE_ACCOUNT": "env_acct", "SNOWFLAKE_USER": "env_user",
           "SNOWFLAKE_PASSWORD": "env_pw", "SNOWFLAKE_DATABASE": "IHEARDAI_ANALYTICS",
           "SNOWFLAKE_WAREHOUSE": "ANALYTICS_WH"}
    opts = PipelineOptions(["--snowflake_user=flag_user"]).view_as(IheardOptions)
    sf = resolve_connections(opts, env).snowflake
    assert (sf.account, sf.user, sf.password, sf.database, sf.schema, sf.warehouse) == (
        "env_acct", "flag_user", "env_pw", "IHEARDAI_ANALYTICS", "PUBLIC", "ANALYTICS_WH")
    assert "env_pw" not in repr(sf)
    assert resolve_connections(PipelineOptions([]).view_as(IheardOptions), {}).snowflake is None
    with pytest.raises(ValueError, match="--snowflake_database"):
        resolve_connections(PipelineOptions([]).view_as(IheardOptions),
                            {"SNOWFLAKE_ACCOUNT": "a", "SNOWFLAKE_USER": "u"})


def test_transform_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown warehouse table"):
        WriteToSnowflake(SETTINGS, "frontend_analytics")
    with pytest.raises(ValueError, match="batch_size"):
        WriteToSnowflake(SETTINGS, "FRONTEND_EVENTS", batch_size=0)
    assert sorted(WAREHOUSE_TABLES) == ["AGENT_TURNS", "FRONTEND_EVENTS", "MARKETO_LEADS"]


# -- the sink on fakesnow ----------------------------------------------------

@pytest.fixture()
def fake_snowflake():
    fakesnow = pytest.importorskip("fakesnow")
    import snowflake.connector

    with fakesnow.patch():
        conn = snowflake.connector.connect(**SETTINGS.connect_kwargs())
        yield conn
        conn.close()


def _run_sink(rows, check_failures, **kwargs):
    """Runs the sink on the in-process DirectRunner; ``check_failures`` gets
    the dead letters as (stage, error class, source offset, event id, message)."""
    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        failed = (p | beam.Create(rows, reshuffle=False)
                  | WriteToSnowflake(SETTINGS, "FRONTEND_EVENTS", pipeline="frontend",
                                     retry_backoff_seconds=0.01, **kwargs))
        assert_that(
            failed | beam.Map(lambda f: (f.stage, f.error_class, f.source_offset,
                                         json.loads(f.raw)["event_id"], f.error_message)),
            check_failures)


def _table(conn):
    return conn.cursor().execute(
        'SELECT EVENT_ID, EVENT_TYPE, "TIMESTAMP", TRANSFORMATION_METADATA:v '
        "FROM FRONTEND_EVENTS ORDER BY EVENT_ID").fetchall()


def test_rows_merge_once_and_a_replay_changes_nothing(fake_snowflake):
    rows = [_event_row(f"e{i}", "widget_open" if i % 2 else "page_view", T0_MS + i * 1000)
            for i in range(7)]
    rows.append(dict(rows[3]))  # a duplicate inside the batch: one row, no MERGE error
    _run_sink(rows, equal_to([]), batch_size=3)
    first = _table(fake_snowflake)
    assert [r[0] for r in first] == [f"e{i}" for i in range(7)]
    assert first[1][1:3] == ("widget_open", dt.datetime(2026, 1, 1, 0, 0, 1))
    assert int(first[0][3]) == 1
    _run_sink(rows, equal_to([]))  # replay
    assert _table(fake_snowflake) == first


def test_batched_elements_are_lists_of_rows(fake_snowflake):
    batches = [[_event_row("b1"), _event_row("b2")], [_event_row("b3")], []]
    _run_sink(batches, equal_to([]), batched=True)
    assert [r[0] for r in _table(fake_snowflake)] == ["b1", "b2", "b3"]


def test_bad_rows_become_dead_letters_and_the_rest_is_loaded(fake_snowflake):
    # The table exists already with a NOT NULL the sink's own checks do not
    # know about: only the database can refuse that row, so the batch is
    # bisected down to it.
    fake_snowflake.cursor().execute(
        'CREATE TABLE FRONTEND_EVENTS (EVENT_ID VARCHAR(100) NOT NULL, USER_ID VARCHAR(100) NOT NULL, '
        'SESSION_ID VARCHAR(100), EVENT_TYPE VARCHAR(50) NOT NULL, "TIMESTAMP" TIMESTAMP_NTZ NOT NULL, '
        'PAGE_CATEGORY VARCHAR(50), PAGE_URL VARCHAR, DEVICE_TYPE VARCHAR(20), BROWSER VARCHAR(50), '
        'OS VARCHAR(50), COUNTRY VARCHAR(8), USER_SEGMENT VARCHAR(50), ENGAGEMENT_SCORE INTEGER, '
        'CONVERSION_STAGE VARCHAR(50), QUALITY_SCORE INTEGER, REFERRER_SOURCE VARCHAR(50), '
        'UTM_SOURCE VARCHAR(100), UTM_MEDIUM VARCHAR(100), UTM_CAMPAIGN VARCHAR(200), '
        'TRANSFORMATION_METADATA VARIANT, PRIMARY KEY (EVENT_ID))')
    rows = [
        _event_row("ok1"),
        _event_row("late", timestamp="yesterday", _source={"offset": 11}),
        _event_row("long", event_type="e" * 60, _source={"offset": 12}),
        _event_row("ok2", T0_MS + 5),
        _event_row("anon", user_id=None, _source={"offset": 13}),
        _event_row("ok3", T0_MS + 9),
    ]

    def check(failures):
        assert sorted(f[:4] for f in failures) == [
            # the database's refusal (fakesnow passes its engine's
            # ConstraintException through; Snowflake: ProgrammingError 100072)
            ("sink:snowflake", "ConstraintException", 13, "anon"),
            # refused by the sink's own checks before loading
            ("sink:snowflake", "ValueError", 11, "late"),
            ("sink:snowflake", "ValueError", 12, "long"),
        ]
        messages = {f[3]: f[4] for f in failures}
        assert "NOT NULL" in messages["anon"]
        assert messages["late"] == "TIMESTAMP: 'yesterday' is not a time"
        assert messages["long"] == "EVENT_TYPE: 60 characters exceed VARCHAR(50)"

    _run_sink(rows, check)
    assert [r[0] for r in _table(fake_snowflake)] == ["ok1", "ok2", "ok3"]


# -- Snowflake unreachable (the policy of iheard_io.sink_base) ----------------
# No real Snowflake runs here; the outage is a connect that raises the
# connector's own OperationalError before fakesnow is reached.

def _unreachable_for(monkeypatch, attempts):
    import snowflake.connector.errors as sf_errors

    import iheard_io.snowflake as sink

    real = sink._connect
    calls = []

    def connect(settings):
        calls.append(1)
        if attempts is None or len(calls) <= attempts:
            raise sf_errors.OperationalError("250003: Failed to get the response. Hanging?")
        return real(settings)

    monkeypatch.setattr(sink, "_connect", connect)
    return calls


def test_unreachable_for_a_while_is_retried_and_loads_everything(fake_snowflake, monkeypatch):
    calls = _unreachable_for(monkeypatch, attempts=3)
    _run_sink([_event_row("r1"), _event_row("r2")], equal_to([]), retry_budget_seconds=30)
    assert [r[0] for r in _table(fake_snowflake)] == ["r1", "r2"]
    assert len(calls) == 4


def test_unreachable_past_the_budget_dead_letters_the_rows_and_does_not_fail(fake_snowflake,
                                                                              monkeypatch):
    """An optional copy must not stop the job: the rows are dead letters
    (replayable, the row as JSON) instead of a failed bundle."""
    _unreachable_for(monkeypatch, attempts=None)

    def check(failures):
        assert sorted(f[:4] for f in failures) == [
            ("sink:snowflake", "StoreUnavailable", 7, "u1"),
            ("sink:snowflake", "StoreUnavailable", 7, "u2")]
        assert all("Snowflake unavailable past the 0.3 s retry budget" in f[4] for f in failures)

    _run_sink([_event_row("u1"), _event_row("u2")], check, retry_budget_seconds=0.3)


def test_unreachable_past_the_budget_fails_the_bundle_when_asked(fake_snowflake, monkeypatch):
    _unreachable_for(monkeypatch, attempts=None)
    with pytest.raises(Exception, match="Failed to get the response"):
        _run_sink([_event_row("f1")], equal_to([]), retry_budget_seconds=0.3,
                  on_exhausted="fail")
