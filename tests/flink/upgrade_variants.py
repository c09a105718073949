"""A "next build" of the frontend job for tests/flink/test_upgrade.py: the current
code with one harmless refactor, a stateless step added between the source and
the parser (it tags nothing and passes every record through).

That step is fused into the source's stage: the stage's display name changes
(``[19]{ReadFromKafka, CheckSourceRecords, ...}``) but not its uid, which
the job server takes from the stage's input (the Impulse); no stateful step's
uid changes either (runners/state_ids.py), so the savepoint of the current
build restores into it.

Submitted as ``--pipeline=tests.flink.upgrade_variants:run_frontend_with_extra_step``.
"""
from __future__ import annotations

import apache_beam as beam

from beam_pipelines import cli, common, frontend

__all__ = ["run_frontend_with_extra_step"]


def _build_with_extra_step(pipeline, records, conns, opts, streaming=False, batched=False):
    checked = records | "CheckSourceRecords" >> beam.Map(lambda record: record)
    return frontend.build_pipeline(pipeline, checked, conns, opts, streaming, batched)


def run_frontend_with_extra_step(argv):
    options = cli.parse_options(list(argv), "upgrade_variants", "frontend with an extra stateless step")
    return cli.run_job(options, frontend.PIPELINE, common.event_source(frontend.FRONTEND_TOPIC),
                       _build_with_extra_step, batches=True, sample=frontend.SAMPLE_INPUT)
