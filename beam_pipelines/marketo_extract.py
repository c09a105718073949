"""Marketo extractor: incremental lead changes -> ``marketo_leads_delta`` (Kafka).

One run (for a cron or CI job) reads every lead changed since the stored
high-water mark and publishes the current lead records, keyed by lead id::

    python -m beam_pipelines.marketo_extract --kafka_bootstrap=127.0.0.1:19092 \\
        --postgres_dsn="host=127.0.0.1 port=15433 dbname=analytics user=iheard password=iheard"

Keep running, one extraction every five minutes::

    python -m beam_pipelines.marketo_extract --continuous --period_seconds=300 ...

Backfill with Marketo's bulk lead export (jobs of at most 31 days)::

    python -m beam_pipelines.marketo_extract --bulk_from=2024-01-01T00:00:00Z ...

Without ``--kafka_bootstrap`` the deltas go to ``--output_jsonl`` (a file the
Marketo pipeline reads with ``--input``). The mark lives in PostgreSQL when it
is configured, else in the embedded DuckDB file (``marketo_extract_state``).
The API settings come from ``--marketo_base_url`` / ``--marketo_client_id`` /
``--marketo_client_secret`` or the seed's ``MARKETO_*`` variables.

One extraction, page by page::

    mark = stored high-water mark (else --marketo_since, else 24 h ago)
    token = pagingtoken.json(sinceDatetime=mark)
    repeat:
        page  = leadchanges.json(token)              <= 300 activities
        leads = leads.json(filterType=id, ids of the page)   <= 300 ids a call
        publish(leads keyed by id)  -> every record acknowledged by Kafka
        mark  = max(activityDate on the page)        only now, after the acks
    until moreResult is false

Why this never skips a lead: the mark moves only after the acknowledgement,
and Marketo's ``sinceDatetime`` is inclusive, so a crash (or a 607) re-reads
from the last acknowledged activity time; the re-read leads are duplicates,
which the Marketo pipeline's upsert (latest ``updatedAt`` wins) absorbs.

Is this a Beam pipeline? No: the extraction is one sequential conversation
with a rate-limited API whose position (the mark) must be committed after a
Kafka acknowledgement; a Beam source would add a runner between the two
without adding parallelism (Marketo allows 10 concurrent calls per instance
and 100 per 20 s). The transformation (``beam_pipelines.marketo``) is the
Beam pipeline.

Exit status: 0 done; 3 daily quota reached (607: stopped, mark kept, reason
printed and stored); 4 Marketo unavailable after retries; 5 credentials
refused; 6 Kafka (or the file) did not acknowledge; 2 bad arguments.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import signal
import sys
import time
import typing

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import cli
from beam_pipelines.marketo_options import MARKETO_TOPIC, MarketoOptions, resolve_marketo_api
from beam_pipelines.options import IheardOptions, resolve_connections
from iheard_io.delta_publish import JsonLinesDeltaPublisher, KafkaDeltaPublisher, PublishError
from iheard_io.kafka import kafka_client_config
from iheard_io.marketo_client import (
    DEFAULT_LEAD_FIELDS,
    MarketoAuthError,
    MarketoClient,
    MarketoError,
    MarketoQuotaExceeded,
)
from iheard_io.watermark import SqlHighWaterMark
from schemas.records import FailedRecord, utc_now_iso
from transforms.pii import PiiRedactor

__all__ = ["extract_once", "backfill", "ExtractResult", "run", "main", "LEAD_CHANGE_FIELDS",
           "EXIT_OK", "EXIT_QUOTA", "EXIT_UNAVAILABLE", "EXIT_AUTH", "EXIT_PUBLISH"]

_LOG = logging.getLogger(__name__)

PIPELINE = "marketo"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_QUOTA = 3
EXIT_UNAVAILABLE = 4
EXIT_AUTH = 5
EXIT_PUBLISH = 6

# Fields whose changes make a lead "changed" (leadchanges.json needs a list).
LEAD_CHANGE_FIELDS = ("email", "firstName", "lastName", "company", "title", "phone",
                      "leadSource", "leadStatus", "leadScore", "country", "state", "city")
# Marketo refuses bulk export windows longer than 31 days.
BULK_WINDOW = dt.timedelta(days=31)
DEFAULT_LOOKBACK = dt.timedelta(hours=24)


@dataclasses.dataclass
class ExtractResult:
    status: str  # "ok" | "quota_exhausted" | "unavailable" | "auth_failed" | "publish_failed"
    exit_code: int
    reason: typing.Optional[str]
    pages: int = 0
    activities: int = 0
    records_published: int = 0
    failed_records: int = 0
    high_water_mark: typing.Optional[dt.datetime] = None
    stats: typing.Dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        mark = self.high_water_mark.isoformat() if self.high_water_mark else "none"
        lines = [f"[marketo_extract] status={self.status} pages={self.pages} "
                 f"activities={self.activities} published={self.records_published} "
                 f"failed={self.failed_records} high_water_mark={mark}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        lines.append("  api: " + json.dumps(self.stats, sort_keys=True))
        return "\n".join(lines)


def _parse_time(text) -> dt.datetime:
    value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _lead_id(value) -> typing.Optional[int]:
    if isinstance(value, bool):
        return None
    try:
        lead_id = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return lead_id if lead_id > 0 else None


def _failed(raw, reason: str, redact, stage: str = "extract"):
    text = json.dumps(raw, sort_keys=True, default=str) if not isinstance(raw, str) else raw
    return FailedRecord(
        raw=redact(text),
        error_class="MalformedMarketoRecord", error_message=reason, stage=stage,
        pipeline=PIPELINE, source_topic="marketo:rest", received_at=utc_now_iso())


def _split_leads(leads: typing.Iterable[dict], redact):
    """(key, JSON) records for leads with a usable id; FailedRecords (payload
    redacted: dead letters never carry readable PII) for the rest."""
    records, failed = [], []
    for lead in leads:
        lead_id = _lead_id(lead.get("id")) if isinstance(lead, dict) else None
        if lead_id is None:
            failed.append(_failed(lead, "lead record without a positive integer id", redact))
            continue
        records.append((str(lead_id), json.dumps(lead, sort_keys=True, default=str)))
    return records, failed


# Why a run stopped, most specific first: exception class, status, exit code.
_STOPS = (
    (MarketoQuotaExceeded, "quota_exhausted", EXIT_QUOTA),
    (MarketoAuthError, "auth_failed", EXIT_AUTH),
    (MarketoError, "unavailable", EXIT_UNAVAILABLE),  # MarketoUnavailable and the rest
    (PublishError, "publish_failed", EXIT_PUBLISH),
)


def _stopped(result: ExtractResult, exc: Exception) -> None:
    for cls, status, exit_code in _STOPS:
        if isinstance(exc, cls):
            result.status, result.exit_code, result.reason = status, exit_code, str(exc)
            break
    if isinstance(exc, MarketoQuotaExceeded):
        result.reason = f"Marketo daily API quota reached (607); stopped, mark kept: {exc}"


def _finished(result: ExtractResult, client, watermark) -> ExtractResult:
    result.stats = dict(sorted(client.stats.items()))
    watermark.record_run(result.status, result.reason, result.stats)
    return result


def extract_once(client, publisher, watermark, *, since_default: dt.datetime,
                 lead_fields: typing.Sequence[str],
                 change_fields: typing.Sequence[str] = LEAD_CHANGE_FIELDS,
                 should_stop: typing.Callable[[], bool] = lambda: False,
                 redact: typing.Callable[[str], str] = lambda text: text) -> ExtractResult:
    """One incremental extraction (see the module docstring); never raises
    for API, quota or publish failures: the result says what stopped it."""
    state = watermark.load()
    mark = state.high_water_mark or since_default
    result = ExtractResult("ok", EXIT_OK, None, high_water_mark=state.high_water_mark)
    try:
        token = client.paging_token(mark)
        while True:
            page = client.lead_changes(token, change_fields)
            result.pages += 1
            result.activities += len(page.activities)
            ids, failed, page_mark = [], [], None
            for activity in page.activities:
                lead_id = _lead_id(activity.get("leadId")) if isinstance(activity, dict) else None
                try:
                    when = _parse_time(activity["activityDate"])
                except (KeyError, TypeError, ValueError):
                    when = None
                if lead_id is None or when is None:
                    failed.append(_failed(activity, "activity without a lead id or activityDate",
                                          redact))
                    continue
                ids.append(lead_id)
                page_mark = when if page_mark is None else max(page_mark, when)
            leads = client.leads_by_ids(ids, lead_fields) if ids else []
            records, bad_leads = _split_leads(leads, redact)
            failed.extend(bad_leads)
            publisher.publish(records)
            publisher.publish_failures(failed)
            result.records_published += len(records)
            result.failed_records += len(failed)
            if page_mark is not None:
                watermark.advance(page_mark, page.next_page_token, len(records))
                result.high_water_mark = max(filter(None, (result.high_water_mark, page_mark)))
            token = page.next_page_token
            if not page.more_result or should_stop():
                break
    except (MarketoError, PublishError) as exc:
        _stopped(result, exc)
    return _finished(result, client, watermark)


def backfill(client, publisher, watermark, *, updated_from: dt.datetime,
             updated_to: dt.datetime, lead_fields: typing.Sequence[str],
             poll_s: float = 30.0,
             redact: typing.Callable[[str], str] = lambda text: text) -> ExtractResult:
    """Bulk lead export of [from, to] in windows of at most 31 days; after
    each window is acknowledged the mark moves to its end (if later)."""
    result = ExtractResult("ok", EXIT_OK, None)
    start = updated_from
    try:
        while start < updated_to:
            end = min(start + BULK_WINDOW, updated_to)
            rows = client.export_leads(lead_fields, start, end, poll_s=poll_s)
            result.pages += 1
            records, failed = _split_leads(rows, redact)
            publisher.publish(records)
            publisher.publish_failures(failed)
            result.records_published += len(records)
            result.failed_records += len(failed)
            watermark.advance(end, None, len(records))
            result.high_water_mark = end
            start = end
    except (MarketoError, PublishError) as exc:
        _stopped(result, exc)
    return _finished(result, client, watermark)


def _make_publisher(conns, opts, mopts):
    if conns.kafka_bootstrap:
        config = kafka_client_config(conns.kafka_bootstrap, **conns.kafka_security)
        return KafkaDeltaPublisher(config, opts.kafka_topic or MARKETO_TOPIC,
                                   conns.dead_letter_topic or "pipeline_dead_letter")
    if mopts.output_jsonl:
        return JsonLinesDeltaPublisher(mopts.output_jsonl)
    raise ValueError("no destination: pass --kafka_bootstrap=HOST:PORT or --output_jsonl=FILE")


def run(argv: typing.Optional[typing.Sequence[str]] = None, env=None) -> int:
    """Parses ``argv``, runs one extraction (or keeps running); returns the
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cli.exit_with_help_if_asked(argv, "python -m beam_pipelines.marketo_extract",
                                   __doc__.splitlines()[0], MarketoOptions)
    options = PipelineOptions(argv)
    opts = options.view_as(IheardOptions)
    mopts = options.view_as(MarketoOptions)
    try:
        api = resolve_marketo_api(mopts, env)
        conns = resolve_connections(opts, env)
        publisher = _make_publisher(conns, opts, mopts)
    except ValueError as exc:
        print(f"marketo_extract: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    watermark = SqlHighWaterMark(mopts.marketo_extract_name, postgres_dsn=conns.postgres_dsn,
                                 duckdb_path=conns.embedded_db)
    user_field = mopts.marketo_user_id_field
    redactor = PiiRedactor(conns.pii_secret)

    def redact(text: str) -> str:
        return redactor.redact_text(text)[0]

    fields = tuple(DEFAULT_LEAD_FIELDS) + ((user_field,) if user_field else ())
    stop = {"requested": False}

    def _request_stop(signum, frame):  # finish the current page, then stop
        stop["requested"] = True

    signal.signal(signal.SIGTERM, _request_stop)
    client = MarketoClient(
        api.base_url, api.client_id, api.client_secret,
        max_retries=mopts.marketo_max_retries,
        rate_limit_wait_s=mopts.marketo_rate_limit_wait_seconds,
        max_calls_per_window=mopts.marketo_calls_per_20s or None)
    try:
        with client:
            if mopts.bulk_from:
                to = _parse_time(mopts.bulk_to) if mopts.bulk_to else dt.datetime.now(dt.timezone.utc)
                result = backfill(client, publisher, watermark,
                                  updated_from=_parse_time(mopts.bulk_from), updated_to=to,
                                  lead_fields=fields, redact=redact)
                print(result.summary(), flush=True)
                return result.exit_code
            since = (_parse_time(mopts.marketo_since) if mopts.marketo_since
                     else dt.datetime.now(dt.timezone.utc) - DEFAULT_LOOKBACK)
            while True:
                result = extract_once(client, publisher, watermark, since_default=since,
                                      lead_fields=fields, should_stop=lambda: stop["requested"],
                                      redact=redact)
                print(result.summary(), flush=True)
                if result.exit_code != EXIT_OK or not mopts.continuous or stop["requested"]:
                    if result.exit_code != EXIT_OK:
                        print(f"marketo_extract: stopped: {result.reason}", file=sys.stderr,
                              flush=True)
                    return result.exit_code
                deadline = time.monotonic() + mopts.period_seconds
                while time.monotonic() < deadline and not stop["requested"]:
                    time.sleep(min(1.0, deadline - time.monotonic()))
                if stop["requested"]:
                    return EXIT_OK
    finally:
        publisher.close()


def main() -> None:
    cli.configure_cli_logging()
    raise SystemExit(run())


if __name__ == "__main__":
    main()
