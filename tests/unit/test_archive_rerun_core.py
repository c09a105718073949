"""Archive re-runs, the pure parts: archive paths and ranges, listing with
partition pruning, archived records back into payloads, and redaction that
counts the tokens a first run left."""
import datetime as dt
import json

import fastavro
import pytest

from beam_pipelines import reprocess
from beam_pipelines.options import IheardOptions, resolve_connections
from iheard_io.archive_read import ArchiveInput, list_archive, parse_archive_input
from schemas.avro import load_schema
from schemas.events import FrontendEvent
from schemas.text_agent import TextAgentTurn
from tests.unit.conftest import SECRET, WIDGET_OPEN
from transforms.archived import (
    ArchiveDecoder,
    archived_source_record,
    frontend_payload,
    turn_payload,
)
from transforms.frontend_enrich import EnrichmentConfig, enrich_frontend_event
from transforms.parse import parse_record
from transforms.pii import PiiRedactor

UTC = dt.timezone.utc


@pytest.mark.parametrize("path, expected", [
    ("output/archive/source=frontend", ArchiveInput("output/archive", "frontend")),
    ("s3://b/a/source=text_agent/date=2026-01-02/",
     ArchiveInput("s3://b/a", "text_agent", "2026-01-02")),
    ("/x/source=frontend/date=2026-01-02/hour=07",
     ArchiveInput("/x", "frontend", "2026-01-02", "07")),
    ("events.jsonl.gz", None),
    ("data/*.jsonl", None),
])
def test_parse_archive_input(path, expected):
    assert parse_archive_input(path) == expected


@pytest.mark.parametrize("path", ["/x/source=frontend/date=2026-13-01",
                                  "/x/source=frontend/hour=24",
                                  "/x/date=2026-01-01/source=frontend",
                                  "/x/source=frontend/part-0.avro"])
def test_parse_archive_input_refuses_malformed_partitions(path):
    with pytest.raises(ValueError):
        parse_archive_input(path)


def test_range_of_the_partitions_narrowed_by_from_and_to(tmp_path):
    def rng(*argv):
        opts = IheardOptions(list(argv))
        return reprocess.rerun_range(resolve_connections(opts, env={}), opts)

    day = f"--input={tmp_path}/source=frontend/date=2026-01-02"
    assert rng(day) == (dt.datetime(2026, 1, 2, tzinfo=UTC), dt.datetime(2026, 1, 3, tzinfo=UTC))
    assert rng(day, "--from=2026-01-02T06:00:00Z") == (
        dt.datetime(2026, 1, 2, 6, tzinfo=UTC), dt.datetime(2026, 1, 3, tzinfo=UTC))
    assert rng(f"--input={tmp_path}/source=frontend", "--to=2026-01-05") == (
        None, dt.datetime(2026, 1, 6, tzinfo=UTC))
    assert rng(f"--input={tmp_path}/source=frontend") == (None, None)
    with pytest.raises(ValueError, match="empty re-run range"):
        rng(day, "--from=2026-01-04")


def test_a_rerun_writes_no_archive_and_no_live_state_unless_told(tmp_path):
    opts = IheardOptions([f"--input={tmp_path}/a/source=frontend", "--redis_url=redis://x:1/0"])
    conns = resolve_connections(opts, env={"REDIS_HOST": "h"})
    assert conns.archive_input == ArchiveInput(f"{tmp_path}/a", "frontend")
    assert conns.archive_path is None and conns.redis_url is None
    other = resolve_connections(IheardOptions([f"--input={tmp_path}/a/source=frontend",
                                               f"--archive_path={tmp_path}/b"]), env={})
    assert other.archive_path == f"{tmp_path}/b"
    with pytest.raises(ValueError, match="archive --input reads"):
        resolve_connections(IheardOptions([f"--input={tmp_path}/a/source=frontend",
                                           f"--archive_path={tmp_path}/a/"]), env={})
    # a JSON-lines input is no re-run
    plain = resolve_connections(IheardOptions([f"--input={tmp_path}/x.jsonl"]), env={})
    assert plain.archive_input is None and plain.archive_path.endswith("archive")


def _write_avro(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fastavro.writer(fh, load_schema("agent_turn_v1"), records)


def test_list_archive_lists_only_the_hours_of_the_range(tmp_path):
    for date, hour in [("2026-01-01", "23"), ("2026-01-02", "00"), ("2026-01-02", "13"),
                       ("2026-01-03", "00")]:
        (tmp_path / "source=frontend" / f"date={date}" / f"hour={hour}").mkdir(parents=True)
        (tmp_path / "source=frontend" / f"date={date}" / f"hour={hour}" / "p-0.avro").write_bytes(
            b"x" * int(hour) + b"x")
    files = list_archive(str(tmp_path), "frontend", dt.datetime(2026, 1, 2, tzinfo=UTC),
                         dt.datetime(2026, 1, 2, 13, 30, tzinfo=UTC))
    assert [f.path.split("source=frontend/")[1] for f in files] == [
        "date=2026-01-02/hour=00/p-0.avro", "date=2026-01-02/hour=13/p-0.avro"]
    assert [f.size_in_bytes for f in files] == [1, 14]
    assert len(list_archive(str(tmp_path), "frontend")) == 4
    assert list_archive(str(tmp_path), "text_agent") == []


def _archived_frontend(widget_open):
    """A widget event as the frontend job archives it: parsed, redacted,
    enriched, through the archive schema and back (fastavro)."""
    import io

    payload = dict(widget_open, element_text="mail me at jane@example.com",
                   experiment={"arm": "B"})
    event = parse_record(json.dumps(payload).encode(), FrontendEvent)
    redacted, counts = PiiRedactor(SECRET).redact_record(
        event, ("element_text", "page_url", "page_title", "referrer"))
    redacted["_pii"] = dict(counts)
    enriched = enrich_frontend_event(redacted, EnrichmentConfig())
    buf = io.BytesIO()
    fastavro.writer(buf, load_schema("frontend_enriched_v1"), [enriched])
    buf.seek(0)
    record = next(fastavro.reader(buf))
    record["_archive"] = ("s3://b/a/source=frontend/date=2024-01-15/hour=10/p.avro", 7)
    return event, enriched, record


def test_an_archived_frontend_event_parses_back_to_the_same_event():
    event, enriched, record = _archived_frontend(WIDGET_OPEN)
    source = archived_source_record(record)
    assert (source.topic, source.offset) == (record["_archive"][0], 7)
    again = parse_record(source.value, FrontendEvent, ArchiveDecoder(frontend_payload),
                         source=source)
    assert again["event_id"] == event["event_id"]  # the payload had none: its hash
    assert again["timestamp_ms"] == event["timestamp_ms"]
    assert again["extra"] == {"experiment": {"arm": "B"}}  # extra_json, kept
    assert again["element_text"] == enriched["element_text"]  # redacted, as archived
    assert again["element_text"].startswith("mail me at [EMAIL:")
    # redacting again changes nothing and, counting the tokens, gives the counts
    redactor = PiiRedactor(SECRET, count_existing_tokens=True)
    redacted, counts = redactor.redact_record(again, ("element_text", "page_url"))
    assert redacted["element_text"] == enriched["element_text"] and counts == {"email": 1}
    redacted["_pii"] = dict(counts)
    rerun = enrich_frontend_event(redacted, EnrichmentConfig())
    for column in ("engagement_score", "quality_score", "conversion_stage", "user_segment",
                   "transformation_metadata", "timestamp", "referrer_source", "utm_campaign"):
        assert rerun[column] == enriched[column], column


def test_an_archived_turn_becomes_its_payload_again():
    record = {
        "event_id": "e1", "session_id": "s1", "turn_id": "t1", "user_id": "[EMAIL:0123456789]",
        "tenant_id": "acme", "channel": "sms", "model": "gpt-4o", "tokens_in": 10,
        "tokens_out": 5, "latency_ms": 12.5, "response_text": "ok", "user_message": "hi",
        "tools_used": ["search"], "tool_results_json": '{"search": {"success": true}}',
        "conversation_context_json": '{"previous_turns": 2, "user_intent": "demo"}',
        "extra_json": '{"tenant_id": "acme", "cached_tokens_in": 3}',
        "timestamp_ms": 1_741_000_000_000, "quality_score": 80,
    }
    payload = turn_payload(record)
    assert payload["model_name"] == "gpt-4o" and "model" not in payload
    assert payload["tool_results"] == {"search": {"success": True}}
    assert payload["timestamp"] == 1_741_000_000_000
    assert "quality_score" not in payload  # enrichment output is computed again
    turn = parse_record(json.dumps(payload), TextAgentTurn)
    assert turn["event_id"] == "e1"
    # event_id is declared: not among the unknown fields
    assert turn["extra"] == {"tenant_id": "acme", "cached_tokens_in": 3}
    with pytest.raises(KeyError):
        turn_payload({k: v for k, v in record.items() if k != "model"})


def test_counting_existing_tokens_is_off_by_default():
    once, counts = PiiRedactor(SECRET).redact_text("call +1 650-253-0000 or a@b.io")
    assert counts == {"phone": 1, "email": 1}
    assert PiiRedactor(SECRET).redact_text(once)[1] == {}
    again, found = PiiRedactor(SECRET, count_existing_tokens=True).redact_text(once)
    assert again == once and found == counts
