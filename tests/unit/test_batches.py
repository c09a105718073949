"""Per-event steps over lists of events (transforms/batches.py): the same
events and the same failures as one element per event."""
import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.events import FrontendEvent
from schemas.records import SourceRecord
from transforms.batches import ExplodeBatches
from transforms.frontend_enrich import EnrichFrontendEvents, EnrichmentConfig, enrich_frontend_event
from transforms.parse import ParseEvents, parse_record
from transforms.pii import FRONTEND_TEXT_FIELDS, PiiRedactor, RedactPii
from tests.unit.conftest import SECRET, WIDGET_OPEN, fn_api_runner


def _records():
    good = [dict(WIDGET_OPEN, session_id=f"s{i}", timestamp=WIDGET_OPEN["timestamp"] + i,
                 element_text=f"mail me at user{i}@example.com") for i in range(5)]
    values = [json.dumps(g).encode() for g in good]
    values.insert(2, b"{not json")
    values.insert(4, json.dumps(dict(WIDGET_OPEN, timestamp="yesterday")).encode())
    return [SourceRecord(v, "t", 0, n, None, None) for n, v in enumerate(values)]


def _project(e):
    return (e["session_id"], e["element_text"], e["engagement_score"], e["timestamp_ms"])


def _expected(records):
    """The pure core, event by event."""
    redactor, config, out = PiiRedactor(SECRET), EnrichmentConfig(), []
    for record in records:
        try:
            event = parse_record(record.value, FrontendEvent, source=record)
        except ValueError:
            continue
        redacted, counts = redactor.redact_record(event, FRONTEND_TEXT_FIELDS)
        redacted["_pii"] = dict(counts)
        out.append(_project(enrich_frontend_event(redacted, config)))
    return out


def _chain(pcoll, batched, label):
    parsed = pcoll | f"Parse{label}" >> ParseEvents(FrontendEvent, "frontend", batched=batched)
    redacted = parsed.valid | f"Redact{label}" >> RedactPii(
        SECRET, FRONTEND_TEXT_FIELDS, (), "frontend", batched=batched)
    enriched = redacted.valid | f"Enrich{label}" >> EnrichFrontendEvents(pipeline="frontend", batched=batched)
    events = enriched.valid | f"Explode{label}" >> ExplodeBatches() if batched else enriched.valid
    return events, parsed.failed


def test_batched_chain_gives_the_per_event_chain_events_and_failures():
    records = _records()
    expected = _expected(records)
    assert len(expected) == 5 and all("user" not in (e[1] or "") for e in expected)
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        per_event, per_event_failed = _chain(p | "One" >> beam.Create(records), False, "One")
        batched, batched_failed = _chain(p | "Lists" >> beam.Create([records[:3], records[3:]]), True, "Lists")
        for label, events, failed in (("PerEvent", per_event, per_event_failed),
                                      ("Batched", batched, batched_failed)):
            assert_that(events | f"Project{label}" >> beam.Map(_project), equal_to(expected),
                        label=f"Events{label}")
            assert_that(failed | f"Failures{label}" >> beam.Map(lambda f: (f.stage, f.source_offset)),
                        equal_to([("decode", 2), ("validate", 4)]), label=f"Failed{label}")
