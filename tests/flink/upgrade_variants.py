"""The "next builds" of the frontend job for the upgrade tests: the current code with one refactor.

``run_frontend_with_extra_step`` (restored from the current build's
savepoint by tests/flink/test_upgrade.py): a stateless step applied after
everything else, on the session rows. It is fused into the sessions' stage:
that stage's display name changes, not its uid (named after its input); no
transform applied before it is renumbered, so every stateful step keeps its
uid, state and timer ids (runners/state_ids.py) and the savepoint restores.

``build_with_step_before_parse`` (tests/unit/test_state_ids.py only): the same
step between the source and the parser. No uid changes, but every transform
applied after it gets the next number, so the stateful DoFns' timers, stored
under the old transform ids, find no receiver after a restore: the job fails
when the first restored timer fires (seen on this cluster). A refactor of
this kind needs the procedure for a change that cannot restore.

Submitted as ``--pipeline=tests.flink.upgrade_variants:run_frontend_with_extra_step``.
"""
from __future__ import annotations

import apache_beam as beam

from beam_pipelines import cli, common, frontend

__all__ = ["run_frontend_with_extra_step", "build_with_extra_step", "build_with_step_before_parse"]


def _same(value):
    return value


def build_with_extra_step(pipeline, records, conns, opts, streaming=False, batched=False):
    outputs = frontend.build_pipeline(pipeline, records, conns, opts, streaming, batched)
    _ = outputs["sessions"] | "InspectSessionRows" >> beam.Map(_same)
    return outputs


def build_with_step_before_parse(pipeline, records, conns, opts, streaming=False, batched=False):
    checked = records | "CheckSourceRecords" >> beam.Map(_same)
    return frontend.build_pipeline(pipeline, checked, conns, opts, streaming, batched)


def run_frontend_with_extra_step(argv):
    options = cli.parse_options(list(argv), "upgrade_variants", "frontend with an extra stateless step")
    return cli.run_job(options, frontend.PIPELINE, common.event_source(frontend.FRONTEND_TOPIC),
                       build_with_extra_step, batches=True, sample=frontend.SAMPLE_INPUT)
