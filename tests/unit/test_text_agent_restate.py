"""Cost restatement: pure pieces, then the batch job over an archive the
text-agent pipeline wrote (embedded DuckDB + local Avro folder)."""
import datetime as dt
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from beam_pipelines import restate_costs, text_agent
from schemas.records import SourceRecord
from tests.unit.conftest import SECRET, fn_api_runner
from transforms.text_agent_pricing import load_price_book
from transforms.text_agent_restate import restate_turn

UTC = dt.timezone.utc


def test_parse_bound_and_day_patterns():
    from iheard_io.archive_read import archive_patterns, parse_bound

    assert parse_bound("2025-03-01", False) == dt.datetime(2025, 3, 1, tzinfo=UTC)
    # a bare end date includes that whole day
    assert parse_bound("2025-03-02", True) == dt.datetime(2025, 3, 3, tzinfo=UTC)
    assert parse_bound("2025-03-01T10:00:00Z", True) == dt.datetime(
        2025, 3, 1, 10, tzinfo=UTC)
    patterns = archive_patterns(
        "s3://b/archive/", dt.datetime(2025, 3, 1, 23, tzinfo=UTC), dt.datetime(2025, 3, 3, tzinfo=UTC),
        "text_agent")
    assert patterns == [
        "s3://b/archive/source=text_agent/date=2025-03-01/hour=*/*.avro",
        "s3://b/archive/source=text_agent/date=2025-03-02/hour=*/*.avro",
    ]


def test_restate_turn_prices_under_the_named_version():
    record = {"session_id": "s", "turn_id": "t", "event_id": "e", "tenant_id": "acme",
              "model": "o1-mini", "tokens_in": 1_000_000, "tokens_out": 100_000,
              "cached_tokens_in": 0, "estimated_cost_usd": 4.2,
              "price_book_version": "2024.10", "timestamp_ms": 1_730_000_000_000}
    row = restate_turn(record, load_price_book(), "2025.02", "now")
    # 2025.02 o1-mini: 1e6 * 1.10 / 1e6 + 1e5 * 4.40 / 1e6 = 1.10 + 0.44 = 1.54
    assert row["restated_cost_usd"] == 1.54
    assert row["difference_usd"] == pytest.approx(1.54 - 4.2)
    assert row["original_price_book_version"] == "2024.10"
    unknown = restate_turn(dict(record, model="acme-llm"), load_price_book(),
                                         "2025.02", "now")
    assert unknown["restated_cost_usd"] is None and unknown["difference_usd"] is None


def test_restatement_job_over_the_archive(tmp_path):
    import duckdb

    from beam_pipelines.options import IheardOptions, resolve_connections
    from iheard_io.embedded import close_embedded, ensure_embedded_schema

    # Three o1-mini turns on 2025-01-20 (priced by 2024.10 at 3.00 / 12.00)
    # and one on 2025-01-22 (outside the range below).
    t0 = int(dt.datetime(2025, 1, 20, 9, tzinfo=UTC).timestamp() * 1000)
    stamps = [t0, t0 + 60_000, t0 + 120_000, t0 + 2 * 86_400_000]
    lines = [json.dumps({
        "session_id": "s1", "turn_id": f"t{i}", "model_name": "o1-mini",
        "tokens_in": 1000, "tokens_out": 1000, "latency_ms": 1000, "response_text": "ok",
        "user_message": "What does it cost?", "timestamp": ts}) for i, ts in enumerate(stamps)]
    opts = IheardOptions([f"--output_dir={tmp_path}", f"--pii_secret={SECRET.decode()}"])
    conns = resolve_connections(opts, env={})
    ensure_embedded_schema(conns.embedded_db)
    with BeamTestPipeline(runner=fn_api_runner(), options=opts) as p:
        records = p | beam.Create([SourceRecord(l.encode(), "t", 0, i) for i, l in enumerate(lines)])
        text_agent.build_pipeline(p, records, conns, opts)
    close_embedded(conns.embedded_db)

    output = tmp_path / "restated.jsonl"
    restate_costs.run([
        f"--output_dir={tmp_path}", f"--archive_path={conns.archive_path}",
        "--from=2025-01-20", "--to=2025-01-21", "--price_book_version=2025.02",
        f"--output_file={output}", f"--pii_secret={SECRET.decode()}",
    ], runner=fn_api_runner())
    close_embedded(conns.embedded_db)
    lines = [json.loads(l) for l in output.read_text().splitlines()]
    # 2024.10: (1000 * 3.00 + 1000 * 12.00) / 1e6 = 0.015
    # 2025.02: (1000 * 1.10 + 1000 * 4.40) / 1e6 = 0.0055 ; difference -0.0095
    assert sorted(l["turn_id"] for l in lines) == ["t0", "t1", "t2"]
    assert {(l["original_cost_usd"], l["restated_cost_usd"], l["difference_usd"])
            for l in lines} == {(0.015, 0.0055, -0.0095)}

    db = duckdb.connect(conns.embedded_db, read_only=True)
    try:
        restated = db.execute(
            "select count(*), sum(difference_usd) from agent_cost_restatements "
            "where price_book_version = '2025.02'").fetchone()
        originals = db.execute(
            "select count(*), sum(estimated_cost_usd), min(price_book_version) from agent_turns").fetchone()
    finally:
        db.close()
    assert restated[0] == 3 and float(restated[1]) == pytest.approx(-0.0285)
    # the original rows are untouched
    assert originals[0] == 4 and float(originals[1]) == pytest.approx(0.06)
    assert originals[2] == "2024.10"


RANGE = ["--from=2025-01-20", "--to=2025-01-21", "--price_book_version=2025.02"]


def test_restatement_runs_like_every_pipeline(monkeypatch):
    """One wiring: cli.run_job with --profile expanded, the archive as the
    source; run_job's runner check refuses a streaming DirectRunner run."""
    from apache_beam.options.pipeline_options import StandardOptions

    calls = {}

    def fake_run_job(options, pipeline_name, source, build, runner=None):
        calls.update(options=options, name=pipeline_name, source=source, build=build)

    with monkeypatch.context() as m:
        m.setattr(restate_costs.cli, "run_job", fake_run_job)
        restate_costs.run(["--profile=direct", *RANGE])
    assert calls["name"] == restate_costs.PIPELINE
    assert calls["source"] is restate_costs.read_archived_turns
    assert calls["build"] is restate_costs.build_pipeline
    assert calls["options"].view_as(StandardOptions).runner.endswith("FnApiRunner")
    with pytest.raises(ValueError, match="profile=flink-local"):
        restate_costs.run(["--streaming", *RANGE])
    with pytest.raises(SystemExit, match="--price_book_version"):
        restate_costs.run(["--from=2025-01-20", "--to=2025-01-21"])


def test_restatement_gets_the_spaces_credentials(monkeypatch, tmp_path):
    """An s3:// archive needs credentials; run_job hands the Spaces keys to
    boto3 through the workers' environment (never as pipeline options, which
    the Flink dashboard shows), as for the streaming pipelines."""
    import os

    from apache_beam.options.pipeline_options import S3Options

    seen = {}

    def source(pipeline, conns, opts, streaming):
        seen["option"] = opts.view_as(S3Options).s3_access_key_id
        seen["boto3"] = os.environ.get("AWS_ACCESS_KEY_ID")
        return pipeline | beam.Create([])

    monkeypatch.setenv("SPACES_ACCESS_KEY", "spaces-key")
    # Recorded by monkeypatch, so the variable run_job sets is undone after.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "before")
    monkeypatch.setattr(restate_costs, "read_archived_turns", source)
    restate_costs.run([f"--output_dir={tmp_path}", f"--pii_secret={SECRET.decode()}", *RANGE],
                      runner=fn_api_runner())
    assert seen == {"option": None, "boto3": "spaces-key"}
