"""The Marketo pipeline: lead deltas -> scored ``marketo_leads`` rows, priority leads in Redis.

Run it locally on the bundled sample, writing to embedded defaults (the DuckDB
file under ``./output``)::

    python -m beam_pipelines.marketo
    duckdb output/iheardai.duckdb "SELECT COUNT(*) FROM marketo_leads WHERE lead_quality_score > 80;"

Run the frontend and text-agent samples first and the leads whose
``iheardUserId`` appears there also get their cross-source engagement::

    python -m beam_pipelines.frontend && python -m beam_pipelines.text_agent \\
        && python -m beam_pipelines.marketo

Read the extractor's topic (bounded backfill or streaming) or a file it wrote::

    python -m beam_pipelines.marketo --input=deltas.jsonl
    python -m beam_pipelines.marketo --kafka_bootstrap=127.0.0.1:19092 \\
        --postgres_dsn="host=127.0.0.1 port=15433 dbname=analytics user=iheard password=iheard" \\
        --redis_url=redis://127.0.0.1:16380/0
    python -m beam_pipelines.marketo --profile=flink-local --streaming --kafka_bootstrap=...

Write a sample file (JSON lines as the extractor publishes them)::

    python -m beam_pipelines.marketo --generate=500 --output=leads.jsonl.gz

The chain (every step labelled as it appears in the Flink dashboard)::

    ReadJsonLines | ReadFromKafka -> ParseLeads -> KeepLatestPerLead
        -> LookupEngagement (frontend_sessions, agent_conversations by identity)
        -> ScoreLeads (normalise, classify domain, geo, score, action)
        |-> WriteToPostgres[marketo_leads] (or WriteToEmbeddedDb), upsert where
        |   the latest updatedAt wins
        '-> WritePriorityLeads (Redis, when configured)
    every failed output -> FlattenFailures -> failed_events (+ dead-letter topic)

The sink is fed without a Reshuffle: it would reorder a lead's versions
between ``KeepLatestPerLead`` and the sink's per-batch "last row per key".
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import typing

import apache_beam as beam

from beam_pipelines import cli, common
from beam_pipelines.generate import write_lines
from beam_pipelines.marketo_options import MARKETO_TOPIC, MarketoOptions
from beam_pipelines.options import Connections, IheardOptions

__all__ = ["build_pipeline", "run", "sample_leads", "SAMPLE_INPUT", "MARKETO_TOPIC"]

_LOG = logging.getLogger(__name__)

PIPELINE = "marketo"
SAMPLE_INPUT = os.path.join(os.path.dirname(__file__), "sample_data", "marketo_leads.jsonl.gz")


def build_pipeline(
    pipeline: beam.Pipeline,
    records: beam.PCollection,
    conns: Connections,
    opts: IheardOptions,
    streaming: bool = False,
) -> typing.Dict[str, beam.PCollection]:
    """Applies the Marketo chain to ``records`` (``PCollection[SourceRecord]``).

    Returns the main intermediate collections (for tests and benchmarks).
    """
    from iheard_io.engagement import LookupEngagement
    from schemas.events import MarketoLead
    from transforms.marketo import ENGAGEMENT_FIELD, KeepLatestPerLead, ScoreLeads
    from transforms.marketo_scoring import ActionThresholds, ScoringConfig
    from transforms.parse import ParseEvents

    mopts = opts.view_as(MarketoOptions)
    # The extractor publishes JSON (Marketo's own record format).
    parsed = records | "ParseLeads" >> ParseEvents(MarketoLead, PIPELINE)
    latest = parsed[ParseEvents.VALID] | "KeepLatestPerLead" >> KeepLatestPerLead(
        PIPELINE, streaming=streaming)
    if mopts.no_engagement_lookup:
        with_engagement = latest | "NoEngagement" >> beam.Map(
            lambda lead: dict(lead, **{ENGAGEMENT_FIELD: None}))
    else:
        with_engagement = latest | "LookupEngagement" >> LookupEngagement(
            conns.pii_secret, postgres_dsn=conns.postgres_dsn,
            duckdb_path=None if conns.postgres_dsn else conns.embedded_db,
            user_id_field=mopts.marketo_user_id_field, namespace=PIPELINE,
            retry_budget_seconds=conns.postgres_retry_budget_s)
    config = ScoringConfig(thresholds=ActionThresholds(
        priority_score=mopts.priority_score_threshold,
        nurture_probability=mopts.nurture_probability_threshold))
    scored = with_engagement | "ScoreLeads" >> ScoreLeads(conns.pii_secret, config, PIPELINE)
    rows = scored[ScoreLeads.VALID]

    failures = [
        parsed[ParseEvents.FAILED],
        scored[ScoreLeads.FAILED],
        # streaming=True: no Reshuffle before the sink (module docstring).
        common.write_rows(rows, "marketo_leads", conns, PIPELINE, streaming=True),
    ]
    if conns.redis_url:
        from iheard_io.redis_leads import WritePriorityLeads

        failures.append(rows | "WritePriorityLeads" >> WritePriorityLeads(
            conns.redis_url, pipeline=PIPELINE, retry_budget_seconds=conns.redis_retry_budget_s))
    common.write_dead_letters(failures, conns, PIPELINE)
    return {"leads": latest, "rows": rows}


# --------------------------------------------------------------------------
# Sample leads (demo, tests, benchmarks)
# --------------------------------------------------------------------------
_FIRST = ["jane", "JOHN", "Maria", "wei", "Olga", "ahmed", "Sofia", "liam", "Chloé", "Raj"]
_LAST = ["doe", "SMITH", "García", "zhang", "Ivanova", "khan", "rossi", "o'brien", "Martin", "Patel"]
_COMPANIES = [("Acme Corp", "acme-corp.com"), ("globex inc.", "globex.com"),
              ("Initech LLC", "initech.io"), ("Umbrella GmbH", "umbrella.de"),
              ("Hooli", "hooli.com"), ("Stark Industries", "starkindustries.com"),
              (None, "gmail.com"), (None, "yahoo.com"), (None, "mailinator.com"),
              ("Wayne Enterprises", "wayne-enterprises.com")]
_TITLES = ["CEO", "VP of Sales", "Director of IT", "Marketing Manager", "Software Engineer",
           "Student", "Head of Growth", "Founder", None, "Analyst"]
_SOURCES = ["Referral", "Organic Search", "Paid Search", "Website", "Event", "Partner",
            "List Import", None]
_PLACES = [("USA", "CA", "san francisco"), ("United States", "New York", "NEW YORK"),
           ("US", "tx", "Austin"), ("Germany", None, "berlin"), ("UK", None, "London"),
           ("France", None, "Paris"), ("Canada", "ON", "Toronto"), ("India", "KA", "bengaluru"),
           (None, "WA", "Seattle"), ("Brazil", None, "São Paulo")]


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text_agent_sample_users() -> typing.List[str]:
    """User ids of the text-agent pipeline's default sample, so a demo run of
    both pipelines has leads with agent conversations."""
    from beam_pipelines.generate import sample_turns

    users = set()
    for line in sample_turns():
        try:
            user = json.loads(line).get("user_id")
        except (ValueError, AttributeError):
            continue
        if user:
            users.add(user)
    return sorted(users)


def sample_leads(n: int = 120, seed: int = 11, start_ms: int = 1_741_000_000_000,
                 malformed_share: float = 0.03, late_share: float = 0.05) -> typing.List[str]:
    """JSON lines of leads as ``leads.json`` returns them (and the extractor
    publishes them). A share of lines is malformed, and a share of leads is
    followed by an *older* version of itself (a late delta). Some leads carry
    an ``iheardUserId`` of the frontend or text-agent samples' users.
    Deterministic."""
    rng = random.Random(seed)
    agent_users = _text_agent_sample_users()
    lines: typing.List[str] = []
    for i in range(n):
        lead_id = 1000 + i
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        company, domain = rng.choice(_COMPANIES)
        country, state, city = rng.choice(_PLACES)
        updated = start_ms + rng.randrange(0, 30 * 86_400_000)
        hot = i % 6 == 0  # a steady share of ideal-profile leads
        lead = {
            "id": lead_id,
            "email": f"{first.lower()}.{last.lower().replace(chr(39), '')}{i}@{domain}",
            "firstName": first, "lastName": last,
            "company": company,
            "title": "Chief Revenue Officer" if hot else rng.choice(_TITLES),
            "phone": f"+1 415 555 {1000 + i}" if hot or rng.random() < 0.5 else None,
            "leadSource": "Referral" if hot else rng.choice(_SOURCES),
            "leadStatus": rng.choice(["New", "Open", "Working", "Nurture"]),
            "leadScore": rng.randint(85, 100) if hot else rng.randint(0, 100),
            "industry": rng.choice(["Software", "Retail", "Finance", None]),
            "country": country, "state": state, "city": city,
            "postalCode": f"{rng.randint(10000, 99999)}",
            "createdAt": _iso(updated - rng.randrange(1, 400) * 86_400_000),
            "updatedAt": _iso(updated),
        }
        if hot:
            lead["company"], lead["email"] = "Stark Industries", f"{first.lower()}{i}@starkindustries.com"
        roll_user = rng.random()
        if roll_user < 0.4:
            lead["iheardUserId"] = f"user_{rng.randrange(0, 80):07d}"  # frontend sample's ids
        elif roll_user < 0.55 and agent_users:
            lead["iheardUserId"] = rng.choice(agent_users)
        line = json.dumps(lead, sort_keys=True, ensure_ascii=False)
        roll = rng.random()
        if roll < malformed_share:
            line = rng.choice([
                line[: len(line) // 2],
                json.dumps({k: v for k, v in lead.items() if k != "id"}),
                json.dumps(dict(lead, email="not-an-email")),
                json.dumps(dict(lead, email=None)),
                json.dumps(dict(lead, updatedAt="yesterday-ish")),
            ])
        lines.append(line)
        if roll > 1 - late_share:
            older = dict(lead, updatedAt=_iso(updated - 3_600_000), leadScore=1, title="Student")
            lines.append(json.dumps(older, sort_keys=True, ensure_ascii=False))
    return lines


def run(argv: typing.Optional[typing.List[str]] = None, runner=None):
    """Parses ``argv``, builds and runs the pipeline; returns the PipelineResult."""

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--generate", type=int, help="Write this many sample leads and exit.")
    pre.add_argument("--output", default="marketo_leads.jsonl.gz")
    pre.add_argument("--seed", type=int, default=11)
    known, rest = pre.parse_known_args(argv)
    if known.generate:
        n = write_lines(sample_leads(known.generate, seed=known.seed), known.output)
        print(f"wrote {n} lines to {known.output}", flush=True)
        return None

    options = cli.parse_options(rest, "python -m beam_pipelines.marketo",
                                __doc__.splitlines()[0], MarketoOptions)
    opts = options.view_as(IheardOptions)
    if not opts.input and not opts.kafka_bootstrap:
        _LOG.info("no --input or --kafka_bootstrap: using the bundled sample %s", SAMPLE_INPUT)
        opts.input = SAMPLE_INPUT
    return cli.run_job(options, PIPELINE, common.event_source(MARKETO_TOPIC), build_pipeline,
                       runner=runner)


if __name__ == "__main__":
    cli.configure_cli_logging()
    run()
