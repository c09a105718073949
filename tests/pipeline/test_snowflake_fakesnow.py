"""The frontend, text-agent and Marketo pipelines with Snowflake configured, on fakesnow.

fakesnow (an emulator on PyPI) patches ``snowflake.connector.connect`` in this
process; the pipelines run on the DirectRunner's in-process FnApiRunner with
the embedded defaults plus the Snowflake sink, so the sink's connections reach
the emulator. Afterwards the design document's two Snowflake queries run
unmodified (schemas/sql/snowflake/) and their results are checked against the
values worked out below.

Frontend input: 23 lines, times at noon UTC ``d`` days before today (the
queries filter on ``CURRENT_DATE()``, so the input moves with the clock;
whole days keep it clear of the 7- and 30-day boundaries)::

    session user  d   events (seconds after noon)                          journey  funnel
    S1      u1    1   page_view 0, widget_open 30, user_message 90,         [pv,wo,um,cv] 4 ev, 200 s
                      conversion 200
    S2      u2    1   page_view 0, widget_open 60  (+ a duplicate line)     [pv,wo]  2 ev, 60 s
    S3      u3    2   page_view 0, widget_open 20                           [pv,wo]  2 ev, 20 s
    S4      u4    2   page_view 0, scroll 25                                [pv,sc]  2 ev, 25 s
    S5      u5    3   page_view 0, widget_open 10, user_message 50,         [pv,wo,um,pi] 4 ev, 100 s
                      product_interest 100
    S6      u6    12  page_view 0, widget_open 40     (journey only)        [pv,wo]  2 ev, 40 s
    S7      u7    12  page_view 0, scroll 15          (journey only)        [pv,sc]  2 ev, 15 s
    S8      u8    45  page_view 0, conversion 30      (neither: > 30 days)
    -       -     -   broken JSON; a "yesterday" timestamp -> dead letters, never loaded

User journey (last 30 days, S1-S7), most frequent first:
    [pv,wo]        3 sessions (S2,S3,S6)  avg events 2  avg duration (60+20+40)/3 = 40
    [pv,sc]        2 sessions (S4,S7)     avg events 2  avg duration (25+15)/2   = 20
    [pv,wo,um,cv]  1                      4             200
    [pv,wo,um,pi]  1                      4             100

Conversion funnel (last 7 days, S1-S5), sessions per stage:
    stage 1 page_view         S1..S5   5   previous -   rate -
    stage 2 widget_open       S1,S2,S3,S5  4   5    4/5 = 0.8
    stage 3 user_message      S1,S5    2   4    2/4 = 0.5
    stage 4 product_interest  S5       1   2    1/2 = 0.5
    stage 5 conversion        S1       1   1    1/1 = 1.0
    NULL (scroll)             S4       1   1    1/1 = 1.0   (NULLs sort last)
"""
import datetime as dt
import json
import pathlib
import re

import pytest

from beam_pipelines import frontend, text_agent
from iheard_io.embedded import close_embedded
from iheard_io.snowflake import SnowflakeSettings
from schemas.warehouse import snowflake_query

# fakesnow notes each Arrow result copy; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

fakesnow = pytest.importorskip("fakesnow")

SF_ARGS = [
    "--snowflake_account=fake_acct", "--snowflake_user=loader",
    "--snowflake_password=pw", "--snowflake_database=IHEARDAI_ANALYTICS",
    "--snowflake_schema=EVENTS", "--snowflake_warehouse=ANALYTICS_WH",
]
SETTINGS = SnowflakeSettings(account="fake_acct", user="loader", password="pw",
                             database="IHEARDAI_ANALYTICS", schema="EVENTS")
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
      "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")


def _noon_ms(days_ago: int) -> int:
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - dt.timedelta(days=days_ago, hours=-12)).timestamp() * 1000)


def _event(session, user, days_ago, seconds, event_type):
    return json.dumps({
        "event_type": event_type, "session_id": session, "user_id": user,
        "page_url": "https://shop.example.com/pricing", "page_title": "Shop",
        "referrer": "", "user_agent": UA, "widget_id": "sales-assistant",
        "timestamp": _noon_ms(days_ago) + seconds * 1000, "country": "US",
    })


JOURNEYS = {  # session: (user, days ago, [(seconds, event type), ...])
    "S1": ("u1", 1, [(0, "page_view"), (30, "widget_open"), (90, "user_message"), (200, "conversion")]),
    "S2": ("u2", 1, [(0, "page_view"), (60, "widget_open")]),
    "S3": ("u3", 2, [(0, "page_view"), (20, "widget_open")]),
    "S4": ("u4", 2, [(0, "page_view"), (25, "scroll")]),
    "S5": ("u5", 3, [(0, "page_view"), (10, "widget_open"), (50, "user_message"),
                     (100, "product_interest")]),
    "S6": ("u6", 12, [(0, "page_view"), (40, "widget_open")]),
    "S7": ("u7", 12, [(0, "page_view"), (15, "scroll")]),
    "S8": ("u8", 45, [(0, "page_view"), (30, "conversion")]),
}


def _frontend_lines():
    lines = [_event(s, user, d, sec, et)
             for s, (user, d, events) in JOURNEYS.items() for sec, et in events]
    lines.insert(6, lines[5])  # S2's widget_open again (a producer retry)
    lines.append('{"event_type": "page_view", "session_id": ')
    lines.append(json.dumps(dict(json.loads(lines[0]), timestamp="yesterday")))
    return lines


def _cursor():
    import snowflake.connector

    return snowflake.connector.connect(**SETTINGS.connect_kwargs()).cursor()


def _run_frontend(tmp_path, lines):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    frontend.run([f"--input={path}", f"--output_dir={out}", "--pii_secret=test-secret-0123456789",
                  "--runner=DirectRunner", *SF_ARGS])
    close_embedded(str(out / "iheardai.duckdb"))
    return out


@pytest.fixture(scope="module")
def frontend_runs(tmp_path_factory):
    """Runs the frontend job twice over the same input (a replay)."""
    tmp = tmp_path_factory.mktemp("sf_frontend")
    lines = _frontend_lines()
    with fakesnow.patch():
        _run_frontend(tmp, lines)
        cur = _cursor()
        table = 'SELECT * FROM FRONTEND_EVENTS ORDER BY EVENT_ID'
        first = {"rows": cur.execute(table).fetchall(),
                 "journey": cur.execute(snowflake_query("user_journey")).fetchall(),
                 "funnel": cur.execute(snowflake_query("conversion_funnel")).fetchall()}
        out = _run_frontend(tmp, lines)
        second = {"rows": cur.execute(table).fetchall(),
                  "journey": cur.execute(snowflake_query("user_journey")).fetchall(),
                  "funnel": cur.execute(snowflake_query("conversion_funnel")).fetchall()}
    yield {"first": first, "second": second, "out": out}


def test_every_valid_event_is_loaded_once(frontend_runs):
    rows = frontend_runs["first"]["rows"]
    expected = sorted((s, et) for s, (_, _, events) in JOURNEYS.items() for _, et in events)
    # columns: EVENT_ID, USER_ID, SESSION_ID, EVENT_TYPE, TIMESTAMP, ...
    assert sorted((r[2], r[3]) for r in rows) == expected  # 20 events, the duplicate dropped
    assert len({r[0] for r in rows}) == 20


def test_user_journey_query_unmodified(frontend_runs):
    rows = frontend_runs["first"]["journey"]
    got = [(json.loads(seq), freq, float(avg_events), float(avg_seconds))
           for seq, freq, avg_events, avg_seconds in rows]
    assert got[0] == (["page_view", "widget_open"], 3, 2.0, 40.0)  # most frequent first
    assert got[1] == (["page_view", "scroll"], 2, 2.0, 20.0)
    assert sorted(got[2:]) == [
        (["page_view", "widget_open", "user_message", "conversion"], 1, 4.0, 200.0),
        (["page_view", "widget_open", "user_message", "product_interest"], 1, 4.0, 100.0),
    ]


def test_conversion_funnel_query_unmodified(frontend_runs):
    rows = [(stage, sessions, previous, None if rate is None else float(rate))
            for stage, sessions, previous, rate in frontend_runs["first"]["funnel"]]
    assert rows == [
        (1, 5, None, None),
        (2, 4, 5, pytest.approx(0.8)),
        (3, 2, 4, pytest.approx(0.5)),
        (4, 1, 2, pytest.approx(0.5)),
        (5, 1, 1, pytest.approx(1.0)),
        (None, 1, 1, pytest.approx(1.0)),
    ]


def test_replay_leaves_the_same_rows_and_answers(frontend_runs):
    first, second = frontend_runs["first"], frontend_runs["second"]
    assert second["rows"] == first["rows"]
    # (the query orders by frequency only: ties may come in any order)
    assert sorted(second["journey"]) == sorted(first["journey"])
    assert second["funnel"] == first["funnel"]


def test_bad_lines_are_dead_letters_not_warehouse_rows(frontend_runs):
    import duckdb

    con = duckdb.connect(str(frontend_runs["out"] / "iheardai.duckdb"), read_only=True)
    try:
        stages = sorted(r[0] for r in con.execute("select stage from failed_events").fetchall())
    finally:
        con.close()
    assert stages == ["decode", "validate"]


def _turn(session, turn, seconds, **extra):
    payload = {
        "event_type": "text_agent.turn_completed", "session_id": session,
        "turn_id": turn, "user_id": "user_7", "channel": "web_chat",
        "model_name": "claude-3-sonnet", "tokens_in": 800, "tokens_out": 150,
        "latency_ms": 2000.0, "response_text": "The Pro plan is $49 per seat.",
        "user_message": "How much is the Pro plan?", "tools_used": ["pricing_calculator"],
        "tool_results": {"pricing_calculator": {"success": True}},
        "conversation_context": {"previous_turns": 0, "topic_history": [],
                                 "user_intent": "pricing_inquiry"},
        "timestamp": _noon_ms(1) + seconds * 1000,
    }
    payload.update(extra)
    return json.dumps(payload)


def test_text_agent_turns_are_merged_into_agent_turns(tmp_path):
    # 4 distinct turns in 2 sessions; one line repeated; one without a session.
    lines = [_turn("ta1", "t1", 0), _turn("ta1", "t2", 60, tokens_in=1000),
             _turn("ta2", "t1", 5), _turn("ta2", "t2", 90)]
    lines.append(lines[1])
    lines.append(json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "session_id"}))
    path = tmp_path / "turns.jsonl"
    path.write_text("\n".join(lines) + "\n")
    args = [f"--input={path}", f"--output_dir={tmp_path / 'out'}",
            "--pii_secret=test-secret-0123456789", *SF_ARGS]
    from apache_beam.runners.direct.direct_runner import DirectRunner

    with fakesnow.patch():
        for _ in range(2):  # the second run is a replay
            text_agent.run(args, runner=DirectRunner())
            close_embedded(str(tmp_path / "out" / "iheardai.duckdb"))
        rows = _cursor().execute(
            "SELECT SESSION_ID, TURN_ID, TOKENS_IN, TOKENS_OUT, TOTAL_TOKENS, TOOLS_USED, "
            "DATEDIFF(second, MIN(TIMESTAMP) OVER (), TIMESTAMP) "
            "FROM AGENT_TURNS ORDER BY SESSION_ID, TURN_ID").fetchall()
    assert [(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows] == [
        ("ta1", "t1", 800, 150, 950, ["pricing_calculator"], 0),
        ("ta1", "t2", 1000, 150, 1150, ["pricing_calculator"], 60),
        ("ta2", "t1", 800, 150, 950, ["pricing_calculator"], 5),
        ("ta2", "t2", 800, 150, 950, ["pricing_calculator"], 90),
    ]


def _lead(lead_id, updated, **over):
    lead = {"id": lead_id, "email": f"ada.{lead_id}@acme-corp.com", "firstName": "Ada",
            "lastName": "Lovelace", "company": "Acme Corp", "title": "CTO",
            "leadSource": "Referral", "leadScore": 90, "country": "US", "state": "CA",
            "updatedAt": updated}
    lead.update(over)
    return json.dumps(lead)


def test_marketo_leads_are_merged_into_marketo_leads_newest_wins(tmp_path):
    from beam_pipelines import marketo

    first = [_lead(1, "2024-05-01T10:00:00Z"), _lead(2, "2024-05-01T08:00:00Z"),
             '{"id": 3, "email": ']  # a dead letter, never a warehouse row
    # A later run: an older version of lead 1 (must not overwrite), a newer lead 2.
    second = [_lead(1, "2024-04-30T00:00:00Z", title="Intern"),
              _lead(2, "2024-05-02T00:00:00Z", title="VP of Sales", company="Globex Inc.")]
    out = tmp_path / "out"
    from apache_beam.runners.direct.direct_runner import DirectRunner

    with fakesnow.patch():
        for i, lines in enumerate((first, second)):
            path = tmp_path / f"leads{i}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            marketo.run([f"--input={path}", f"--output_dir={out}",
                         "--pii_secret=test-secret-0123456789", *SF_ARGS], runner=DirectRunner())
            close_embedded(str(out / "iheardai.duckdb"))
        cur = _cursor()
        columns = [r[0] for r in cur.execute(
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME = 'MARKETO_LEADS'"
        ).fetchall()]
        rows = cur.execute(
            "SELECT LEAD_ID, COMPANY, TRANSFORMATION_METADATA, EMAIL_TOKEN, EMAIL_DOMAIN, "
            "UPDATED_AT FROM MARKETO_LEADS ORDER BY LEAD_ID").fetchall()
    assert "EMAIL" not in columns and "FULL_NAME" not in columns
    assert [(r[0], r[1], json.loads(r[2])["title"], r[4]) for r in rows] == [
        (1, "Acme Corp", "CTO", "acme-corp.com"),
        (2, "Globex Inc.", "VP of Sales", "acme-corp.com"),
    ]
    assert all(r[3].startswith("[EMAIL:") for r in rows)
    assert str(rows[1][5]).startswith("2024-05-02")


def _seed_readme():
    here = pathlib.Path(__file__).resolve()
    for root in [*here.parents, pathlib.Path("/work")]:
        candidate = root / "shared" / "seed" / "iheardai-data-pipeline-README.md"
        if candidate.is_file():
            return candidate
    return None


def _statement_lines(sql):
    return [line for line in sql.splitlines() if not line.strip().startswith("--")]


def test_stored_queries_are_the_design_documents_verbatim():
    seed = _seed_readme()
    if seed is None:
        pytest.skip("the design document (shared/seed) is not beside this checkout")
    blocks = [_statement_lines(b) for b in re.findall(r"```sql\n(.*?)```", seed.read_text(), re.S)]
    for name in ("user_journey", "conversion_funnel"):
        assert _statement_lines(snowflake_query(name)) in blocks, name
