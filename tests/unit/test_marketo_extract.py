"""The Marketo client and the extractor against the local Marketo stub
(tests/marketo_server.py): paging, token expiry, 606/615/500 in the middle of
a run, 607 quota, malformed records, bulk export; the high-water mark in the
embedded DuckDB file; deltas to a JSON-lines file (Kafka: tests/integration)."""
import datetime as dt
import json

import pytest

from beam_pipelines import marketo_extract
from beam_pipelines.marketo_extract import EXIT_OK, EXIT_QUOTA, backfill, extract_once
from iheard_io.delta_publish import JsonLinesDeltaPublisher
from iheard_io.marketo_client import (
    MAX_LEADS_PER_CALL,
    MarketoAuthError,
    MarketoClient,
    MarketoQuotaExceeded,
    MarketoUnavailable,
)
from iheard_io.watermark import SqlHighWaterMark
from transforms.pii import PiiRedactor
from tests.marketo_server import CLIENT_ID, CLIENT_SECRET, MarketoStub, sample_lead

START_MS = 1_735_000_000_000  # 2024-12-24T00:26:40Z
SINCE = dt.datetime(2024, 12, 1, tzinfo=dt.timezone.utc)


def _client(stub, **kw):
    kw.setdefault("backoff_s", 0.001)
    kw.setdefault("rate_limit_wait_s", 0.001)
    kw.setdefault("max_calls_per_window", None)
    return MarketoClient(stub.base_url, CLIENT_ID, CLIENT_SECRET, **kw)


def _ids(path):
    with open(path) as handle:
        return [json.loads(line)["id"] for line in handle]


@pytest.fixture
def store(tmp_path):
    return SqlHighWaterMark("test", duckdb_path=str(tmp_path / "state.duckdb"))


def _extract(stub, store, path, **client_kw):
    publisher = JsonLinesDeltaPublisher(str(path))
    redactor = PiiRedactor(b"unit-test-secret-0123456789")
    with _client(stub, **client_kw) as client:
        return extract_once(client, publisher, store, since_default=SINCE,
                            lead_fields=("id", "email", "updatedAt"),
                            redact=lambda text: redactor.redact_text(text)[0])


# --- client ----------------------------------------------------------------------
def test_leads_by_ids_uses_batches_of_at_most_300():
    with MarketoStub() as stub:
        stub.add_leads(650, START_MS)
        with _client(stub) as client:
            leads = client.leads_by_ids(range(1, 651))
        assert sorted(lead["id"] for lead in leads) == list(range(1, 651))
        assert stub.calls["leads"] == 3  # 300 + 300 + 50
        assert client.stats["calls:leads"] == 3 and MAX_LEADS_PER_CALL == 300


def test_token_refreshed_once_then_auth_error():
    with MarketoStub(expire_token_after_calls=2) as stub:
        stub.add_leads(3, START_MS)
        with _client(stub) as client:
            for _ in range(5):
                client.leads_by_ids([1])
            assert client.stats["error:602"] == 2 and client.stats["token_requests"] == 3
    with MarketoStub() as stub:
        with pytest.raises(MarketoAuthError):
            MarketoClient(stub.base_url, CLIENT_ID, "wrong", backoff_s=0).leads_by_ids([1])


def test_quota_raises_at_once_and_transients_are_bounded():
    with MarketoStub(daily_quota=1) as stub:
        with _client(stub) as client:
            client.leads_by_ids([1])
            with pytest.raises(MarketoQuotaExceeded):
                client.leads_by_ids([1])
            assert client.stats["error:607"] == 1 and client.stats["retries"] == 0
    with MarketoStub(http_500_every=1) as stub:
        with _client(stub, max_retries=3) as client:
            with pytest.raises(MarketoUnavailable):
                client.leads_by_ids([1])
            assert client.stats["http:500"] == 4 and client.stats["retries"] == 3


def test_client_side_pacing_avoids_606():
    # The stub allows 5 calls per 0.5 s; the client paces itself to the same.
    with MarketoStub(max_calls_per_window=5, window_s=0.5) as stub:
        with _client(stub, max_calls_per_window=5, window_s=0.55) as client:
            for _ in range(12):
                client.leads_by_ids([1])
            assert client.stats["error:606"] == 0 and client.stats["throttle_waits"] >= 1


def test_bulk_export_round_trip(tmp_path, store):
    with MarketoStub() as stub:
        stub.add_leads(40, START_MS, step_ms=86_400_000)  # one per day
        path = tmp_path / "bulk.jsonl"
        with _client(stub) as client:
            rows = client.export_leads(["id", "email", "updatedAt"],
                                       dt.datetime(2024, 12, 24, tzinfo=dt.timezone.utc),
                                       dt.datetime(2024, 12, 31, tzinfo=dt.timezone.utc), poll_s=0)
            assert len(rows) == 7 and {r["id"] for r in rows} == {str(i) for i in range(1, 8)}
            result = backfill(client, JsonLinesDeltaPublisher(str(path)), store,
                              updated_from=dt.datetime(2024, 12, 1, tzinfo=dt.timezone.utc),
                              updated_to=dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc),
                              lead_fields=["id", "email", "updatedAt"], poll_s=0)
        assert result.exit_code == EXIT_OK and result.pages == 3  # 31 + 31 + 28 days
        assert sorted(int(i) for i in _ids(path)) == list(range(1, 41))
        assert store.load().high_water_mark == dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


# --- extractor -------------------------------------------------------------------
def test_extraction_survives_token_expiry_and_rate_limits_mid_run(tmp_path, store):
    with MarketoStub(page_size=40, expire_token_after_calls=5, rate_limit_every=7,
                     concurrency_every=11, http_500_every=13) as stub:
        stub.add_leads(500, START_MS)
        result = _extract(stub, store, tmp_path / "d.jsonl")
        ids = _ids(tmp_path / "d.jsonl")
    assert result.exit_code == EXIT_OK and result.status == "ok"
    assert sorted(ids) == list(range(1, 501))  # none lost, none twice
    assert stub.errors_sent["602"] >= 2 and stub.errors_sent["606"] >= 2
    assert stub.errors_sent["615"] >= 1 and stub.errors_sent["http:500"] >= 1
    for code in ("602", "606", "615"):
        assert result.stats[f"error:{code}"] == stub.errors_sent[code]
    assert result.stats["http:500"] == stub.errors_sent["http:500"]
    assert result.pages == 13  # 500 activities / 40 per page
    mark = store.load()
    assert mark.high_water_mark == dt.datetime.fromtimestamp((START_MS + 499_000) // 1000,
                                                             tz=dt.timezone.utc)
    assert mark.records_published == 500 and mark.last_status == "ok"


def test_quota_stops_cleanly_and_the_next_run_resumes(tmp_path, store):
    path = tmp_path / "d.jsonl"
    with MarketoStub(page_size=50, daily_quota=7) as stub:
        stub.add_leads(300, START_MS)
        first = _extract(stub, store, path)
        assert first.exit_code == EXIT_QUOTA and first.status == "quota_exhausted"
        assert "607" in first.reason
        published = _ids(path)
        state = store.load()
        assert state.last_status == "quota_exhausted" and "607" in state.last_reason
        # 7 calls: pagingtoken + 3 x (leadchanges + leads) -> 150 leads, mark at lead 150
        assert sorted(published) == list(range(1, 151))
        assert state.high_water_mark == dt.datetime.fromtimestamp((START_MS + 149_000) // 1000,
                                                                  tz=dt.timezone.utc)
        stub.daily_quota = 0  # a new day
        second = _extract(stub, store, path)
    assert second.exit_code == EXIT_OK
    ids = _ids(path)
    assert set(ids) == set(range(1, 301))  # nothing skipped
    # at-least-once: only the activities at the mark's second are read again
    assert len(ids) - 300 <= 1


def test_malformed_records_become_failures_not_crashes(tmp_path, store):
    with MarketoStub(page_size=10) as stub:
        stub.add_leads(20, START_MS)
        stub.add_raw_lead(501, {"email": "no-id@example.com", "updatedAt": "2024-12-24T01:00:00Z"},
                          START_MS + 30_000)
        stub.add_raw_lead(502, {"id": "not-a-number", "email": "x@example.com"}, START_MS + 31_000)
        stub.activities.append({"id": 999, "leadId": None, "activityDate": "garbage", "_ms": 10 ** 13})
        result = _extract(stub, store, tmp_path / "d.jsonl")
    assert result.exit_code == EXIT_OK
    assert sorted(_ids(tmp_path / "d.jsonl")) == list(range(1, 21))
    with open(str(tmp_path / "d.jsonl") + ".failed.jsonl") as handle:
        failures = [json.loads(line) for line in handle]
    assert len(failures) == 3 and result.failed_records == 3
    assert {f["stage"] for f in failures} == {"extract"}
    # dead letters carry keyed tokens, not the addresses
    assert all("@example.com" not in f["raw"] for f in failures)
    assert any("[EMAIL:" in f["raw"] for f in failures)
    reasons = sorted(f["error_message"] for f in failures)
    assert reasons[0].startswith("activity without")


def test_cli_exit_status_and_reason_on_quota(tmp_path, capsys):
    with MarketoStub(daily_quota=2) as stub:
        stub.add_leads(400, START_MS)
        code = marketo_extract.run([
            f"--marketo_base_url={stub.base_url}", f"--marketo_client_id={CLIENT_ID}",
            f"--marketo_client_secret={CLIENT_SECRET}", f"--output_dir={tmp_path}",
            f"--output_jsonl={tmp_path / 'd.jsonl'}", "--marketo_since=2024-12-01T00:00:00Z",
            "--pii_secret=unit-test-secret-0123456789"], env={})
    assert code == EXIT_QUOTA
    captured = capsys.readouterr()
    assert "quota" in captured.err and "status=quota_exhausted" in captured.out


def test_cli_refuses_missing_settings(tmp_path, capsys):
    assert marketo_extract.run([f"--output_dir={tmp_path}", "--output_jsonl=x"], env={}) == 2
    assert "MARKETO_BASE_URL" in capsys.readouterr().err


def test_sample_lead_shape():
    lead = sample_lead(3, START_MS)
    assert lead["id"] == 3 and "@" in lead["email"]
