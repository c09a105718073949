"""The whole frontend pipeline on the DirectRunner with embedded outputs.

A hand-written input of 9 lines, whose expected rows are worked out below, is
run through ``python -m beam_pipelines.frontend`` semantics (``run()``), then
the DuckDB file and the Avro archive are checked row by row.

Input (times are seconds after 2026-01-01T00:00:00Z):

    line  session  t     event          notes
    1     A        0     page_view      /pricing, email in element_text
    2     A        30    widget_open
    3     A        90    message_sent   phone number in element_text
    4     A        90    message_sent   exact duplicate of line 3 (producer retry)
    5     A        200   conversion     /cart
    6     B        10    page_view      /blog/x
    7     -        -     (broken JSON)  -> dead letter, stage decode, offset 7
    8     B        -     page_view      timestamp "yesterday" -> dead letter, stage validate
                                        (its element_text holds an email: stored as a token)
    9     B        2500  page_view      /docs/y, 2490 s after line 6 > 1800 s gap: new session window

Expected with a 30-minute gap:
- frontend_analytics: 6 rows (lines 1, 2, 3, 5, 6, 9; line 4 repeats line 3).
- frontend_sessions: A [0, 200+1800) with 4 events, duration 200 s, widget_opens 1,
  messages 1, conversions 1, furthest stage "conversion"; B has two windows
  [10, 1810) and [2500, 4300), one event each.
- failed_events: 2 rows (lines 7 and 8) with their offsets.
"""
import glob
import json
import os

import duckdb
import fastavro
import pytest

from beam_pipelines import frontend
from iheard_io.embedded import close_embedded

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
      "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")


def _event(session, seconds, event_type, path, **extra):
    body = {
        "event_type": event_type, "session_id": session, "user_id": "user_1",
        "page_url": f"https://shop.example.com{path}", "page_title": "Shop",
        "referrer": "", "user_agent": UA, "screen_resolution": "1920x1080",
        "viewport_size": "1903x969", "widget_id": "sales-assistant",
        "interaction_type": "click", "timestamp": T0 + seconds * 1000,
        "time_on_page": 5, "element_id": None, "element_class": None,
        "element_text": None, "click_coordinates": None, "country": "US",
        "timezone": "America/New_York",
    }
    body.update(extra)
    return json.dumps(body)


LINES = [
    _event("A", 0, "page_view", "/pricing", element_text="write to jane.doe@acme-corp.com"),
    _event("A", 30, "widget_open", "/pricing", click_coordinates={"x": 1800, "y": 900}),
    _event("A", 90, "message_sent", "/pricing", element_text="call +1 415 555 0132", message_length=20),
    None,  # duplicate of the line above, filled in below
    _event("A", 200, "conversion", "/cart"),
    _event("B", 10, "page_view", "/blog/x"),
    '{"event_type": "page_view", "session_id": ',
    _event("B", 20, "page_view", "/blog/z", timestamp="yesterday",
           element_text="mail bob.smith@example.org"),
    _event("B", 2500, "page_view", "/docs/y"),
]
LINES[3] = LINES[2]


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend")
    events = root / "events.jsonl"
    events.write_text("\n".join(LINES) + "\n")
    out = root / "out"
    result = frontend.run([
        f"--input={events}", f"--output_dir={out}", "--pii_secret=test-secret-0123456789",
        "--session_gap_seconds=1800", "--runner=DirectRunner",
    ])
    db_path = str(out / "iheardai.duckdb")
    close_embedded(db_path)  # the test process ran the pipeline in-process
    con = duckdb.connect(db_path, read_only=True)
    yield {"con": con, "out": out, "result": result, "events": str(events)}
    con.close()


def test_every_valid_event_lands_once(run_output):
    con = run_output["con"]
    rows = con.execute(
        "select session_id, event_type, page_category, conversion_stage, "
        "epoch_ms(timestamp) from frontend_analytics order by timestamp"
    ).fetchall()
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("A", "page_view", T0),
        ("B", "page_view", T0 + 10_000),
        ("A", "widget_open", T0 + 30_000),
        ("A", "message_sent", T0 + 90_000),
        ("A", "conversion", T0 + 200_000),
        ("B", "page_view", T0 + 2_500_000),
    ]
    # Stage rule (transforms/frontend_enrich.py): the event type's stage, raised
    # to product_interest on a high-intent page (/pricing is one, /blog and
    # /docs are not).
    assert [r[3] for r in rows] == [
        "product_interest", "page_view", "product_interest", "product_interest",
        "conversion", "page_view",
    ]
    categories = [r[2] for r in rows]
    assert categories[0] == "pricing" and categories[1] == "blog" and categories[5] == "docs"


def test_scores_and_metadata_are_in_range(run_output):
    con = run_output["con"]
    for eng, quality, device, browser, meta in con.execute(
        "select engagement_score, quality_score, device_type, browser, transformation_metadata "
        "from frontend_analytics"
    ).fetchall():
        assert 0 <= eng <= 100 and 0 <= quality <= 100
        assert device == "desktop"
        assert browser == "Chrome"
        assert "steps_applied" in json.loads(meta)


def test_sessions_follow_the_worked_timeline(run_output):
    con = run_output["con"]
    rows = con.execute(
        "select session_id, epoch_ms(window_start), epoch_ms(window_end), event_count, "
        "duration_seconds, widget_opens, messages, conversions, furthest_stage "
        "from frontend_sessions order by session_id, window_start"
    ).fetchall()
    assert rows == [
        ("A", T0, T0 + 2_000_000, 4, 200.0, 1, 1, 1, "conversion"),
        ("B", T0 + 10_000, T0 + 1_810_000, 1, 0.0, 0, 0, 0, "page_view"),
        ("B", T0 + 2_500_000, T0 + 4_300_000, 1, 0.0, 0, 0, 0, "page_view"),
    ]


def test_bad_lines_are_dead_letters_with_their_origin(run_output):
    con = run_output["con"]
    rows = con.execute(
        "select stage, source_topic, source_offset, error_message, pipeline "
        "from failed_events order by source_offset"
    ).fetchall()
    assert [(r[0], r[2], r[4]) for r in rows] == [("decode", 7, "frontend"), ("validate", 8, "frontend")]
    assert all(r[1] == run_output["events"] for r in rows)
    assert "timestamp" in rows[1][3]


def test_no_raw_pii_reaches_any_output(run_output):
    con = run_output["con"]
    dead = json.dumps(con.execute("select raw_payload, error_message from failed_events").fetchall())
    assert "bob.smith@example.org" not in dead
    assert "[EMAIL:" in dead and "yesterday" in dead  # redacted, still diagnosable
    dump = json.dumps(con.execute("select * from frontend_analytics").fetchall(), default=str)
    archived = []
    for path in glob.glob(os.path.join(run_output["out"], "archive", "**", "*.avro"), recursive=True):
        with open(path, "rb") as handle:
            archived.extend(fastavro.reader(handle))
    assert len(archived) == 6
    dump += json.dumps(archived, default=str)
    assert "jane.doe@acme-corp.com" not in dump
    assert "555 0132" not in dump


def test_run_reports_counters(run_output):
    from beam_pipelines.cli import counter_values

    c = counter_values(run_output["result"], "frontend")
    assert c["received"] == 9
    assert c["valid"] == 7
    assert c["dead_letters"] == 2
    assert c["duplicates_dropped"] == 1
