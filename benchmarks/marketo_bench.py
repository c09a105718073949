"""Throughput of the Marketo extractor and of the Marketo transformation.

    python benchmarks/marketo_bench.py                  # 6,000 leads
    python benchmarks/marketo_bench.py --leads=20000 --repeat=3

Prints (best of ``--repeat`` runs each):

1. extraction, records/min and seconds per page of 300 leads: the extractor
   (``extract_once``) against the local Marketo stub (tests/marketo_server.py,
   loopback HTTP), deltas to a JSON-lines file, the high-water mark in a
   DuckDB file; client-side pacing off (the stub has no rate limit) - the
   figure is the extractor's own cost. Against real Marketo the pacing caps a
   run at 100 calls per 20 s, i.e. 2 calls per page -> at most 50 pages (15,000
   leads) per 20 s, and Marketo's latency adds to every call. The design
   document's headline is 1,000 records/min at ~2 s per batch;
2. pure core, leads/s: ``parse_record`` + ``lead_row`` (normalise, classify,
   geo, score) in a plain loop, no Beam;
3. pipeline, leads/s: ``beam_pipelines.marketo.build_pipeline`` on the
   FnApiRunner from an in-memory source to the embedded DuckDB file
   (engagement lookup, upserts, dead letters).

Wall-clock figures on this machine; nothing is asserted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

from beam_pipelines import common  # noqa: E402
from beam_pipelines.generate import sample_leads  # noqa: E402
from beam_pipelines.marketo import build_pipeline  # noqa: E402
from beam_pipelines.marketo_extract import extract_once  # noqa: E402
from beam_pipelines.options import IheardOptions, resolve_connections  # noqa: E402
from iheard_io.delta_publish import JsonLinesDeltaPublisher  # noqa: E402
from iheard_io.embedded import close_embedded  # noqa: E402
from iheard_io.marketo_client import DEFAULT_LEAD_FIELDS, MarketoClient  # noqa: E402
from iheard_io.watermark import SqlHighWaterMark  # noqa: E402
from schemas.events import MarketoLead  # noqa: E402
from schemas.records import SourceRecord  # noqa: E402
from tests.marketo_server import CLIENT_ID, CLIENT_SECRET, MarketoStub  # noqa: E402
from transforms.marketo import lead_row  # noqa: E402
from transforms.marketo_scoring import Engagement  # noqa: E402
from transforms.parse import parse_record  # noqa: E402
from transforms.pii import PiiRedactor  # noqa: E402

SECRET = b"benchmark-secret-0123456789"
START_MS = 1_735_000_000_000


def _best(fn, repeat):
    best, result = None, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        best = wall if best is None or wall < best else best
    return best, result


def bench_extraction(n: int, repeat: int) -> None:
    with MarketoStub(page_size=300) as stub:
        stub.add_leads(n, START_MS)

        def once():
            with tempfile.TemporaryDirectory() as tmp:
                store = SqlHighWaterMark("bench", duckdb_path=os.path.join(tmp, "s.duckdb"))
                with MarketoClient(stub.base_url, CLIENT_ID, CLIENT_SECRET,
                                   max_calls_per_window=None) as client:
                    return extract_once(
                        client, JsonLinesDeltaPublisher(os.path.join(tmp, "d.jsonl")), store,
                        since_default=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                        lead_fields=DEFAULT_LEAD_FIELDS)

        seconds, result = _best(once, repeat)
    assert result.records_published == n, result.summary()
    print(f"extraction: {n} leads, {result.pages} pages, {result.stats.get('calls', 0)} calls "
          f"in {seconds:.2f} s -> {n / seconds * 60:,.0f} records/min, "
          f"{seconds / result.pages:.3f} s per page of 300")


def bench_core(lines, repeat: int) -> None:
    redactor = PiiRedactor(SECRET)

    def once():
        ok = 0
        for line in lines:
            try:
                lead_row(parse_record(line, MarketoLead), Engagement(), redactor)
                ok += 1
            except ValueError:
                pass
        return ok

    seconds, ok = _best(once, repeat)
    print(f"pure core: {len(lines)} leads ({ok} valid) in {seconds:.2f} s "
          f"-> {len(lines) / seconds:,.0f} leads/s")


def bench_pipeline(lines, repeat: int) -> None:
    records = [SourceRecord(value=line.encode(), topic="bench", offset=i)
               for i, line in enumerate(lines)]

    def once():
        with tempfile.TemporaryDirectory() as tmp:
            options = PipelineOptions([f"--output_dir={tmp}", f"--pii_secret={SECRET.decode()}"])
            opts = options.view_as(IheardOptions)
            conns = resolve_connections(opts, env={})
            common.prepare_sinks(conns)
            p = beam.Pipeline(runner=FnApiRunner(), options=options)
            build_pipeline(p, p | beam.Create(records), conns, opts)
            p.run().wait_until_finish()
            close_embedded(conns.embedded_db)

    seconds, _ = _best(once, repeat)
    print(f"pipeline (FnApiRunner, embedded DuckDB): {len(lines)} leads in {seconds:.2f} s "
          f"-> {len(lines) / seconds:,.0f} leads/s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    lines = sample_leads(args.leads, seed=5)
    bench_extraction(args.leads, args.repeat)
    bench_core(lines, args.repeat)
    bench_pipeline(lines, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
