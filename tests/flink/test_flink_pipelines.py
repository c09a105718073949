"""Beam Python pipelines on the real local Flink cluster (FlinkRunner, LOOPBACK).

Both pipelines (tests/flink/probe_pipelines.py) are submitted the way a user
would, ``python -m ... --profile=flink-local``, so the job server starts from
the launcher jar that ``flink/cluster.sh install`` assembles.

Run: ``python -m pytest tests/flink/test_flink_pipelines.py`` (starts the
cluster if it is not up).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.flink import probe_pipelines
from tests.flink.conftest import REPO_ROOT, unique_job_name
from tests.flink.flink_rest import prometheus_samples, wait_for

pytestmark = [pytest.mark.flink, pytest.mark.slow]

NS = probe_pipelines.METRICS_NAMESPACE


def _lines(path):
    return [line for line in path.read_text().splitlines() if line] if path.exists() else []


def test_batch_job_finishes_with_results_and_counters(flink_cluster, tmp_path):
    output = tmp_path / "counts.txt"
    job_name = unique_job_name("iheard-test-batch")
    done = subprocess.run(
        [
            sys.executable, "-m", "tests.flink.probe_pipelines", "batch",
            f"--output={output}", "--profile=flink-local", f"--job_name={job_name}",
        ],
        cwd=REPO_ROOT, env=flink_cluster.process_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    expected = probe_pipelines.expected_word_counts()
    lines = _lines(output)
    assert sorted(lines) == sorted(f"{w} {n}" for w, n in expected.items())

    rest = flink_cluster.rest
    jid = rest.job_id_by_name(job_name)
    assert jid, f"no Flink job named {job_name}"
    assert rest.state(jid) == "FINISHED"
    # The GroupByKey ran on Flink: its operator is a vertex of the job graph.
    assert any("GroupByWord" in v["name"] for v in rest.job(jid)["vertices"])
    counters = rest.accumulator_user_counters(jid)
    assert counters[(NS, "words_seen")] == sum(expected.values())
    assert counters[(NS, "lines_written")] == len(expected)


def test_streaming_sdf_job_checkpoints_and_exposes_counters(flink_cluster, background_pipelines, tmp_path):
    spec = probe_pipelines.StreamSpec()
    rest = flink_cluster.rest
    # A checkpoint every 300 ms lands inside the first bundles: without the
    # profile's --finish_bundle_before_checkpointing this start had every
    # watermark at +inf and read nothing (3 of 3 runs here; 0 of 4 with it),
    # which start_streaming fails on.
    proc, jid, job_name = background_pipelines.start_streaming(
        "tests.flink.probe_pipelines",
        lambda name: ["streaming", f"--output={tmp_path / name}.txt", "--profile=flink-local", "--streaming",
                      "--checkpointing_interval=300"],
        "iheard-test-stream",
    )
    output = tmp_path / f"{job_name}.txt"

    expected = probe_pipelines.expected_windows(spec)
    try:
        wait_for(lambda: len(_lines(output)) >= len(expected), 180, f"{len(expected)} windows in {output}")
    except TimeoutError as e:
        emitted = rest.user_metric(jid, NS, "events_emitted")
        raise AssertionError(
            f"{e}; {len(_lines(output))} written, events_emitted={emitted}\n{rest.describe(jid)}\n"
            f"{background_pipelines.log_tail(job_name, 30)}"
        ) from e
    lines = _lines(output)
    assert len(lines) == len(set(lines)), "a window was written twice"
    assert set(lines) == expected

    # Checkpoints complete while the splittable DoFn has residual work.
    wait_for(lambda: rest.checkpoint_counts(jid)["completed"] >= 1, 60, "a completed checkpoint")
    assert rest.state(jid) == "RUNNING"

    # Beam counters as Flink operator metrics (REST) and in the Prometheus scrape.
    wait_for(lambda: rest.user_metric(jid, NS, "events_emitted") == spec.events, 60, "events_emitted via REST")
    wait_for(lambda: rest.user_metric(jid, NS, "lines_written") == len(expected), 60, "lines_written via REST")

    def scraped(name):
        samples = prometheus_samples(flink_cluster.prometheus_url, f"_{NS}_{name}", job_id=jid)
        return sum(v for _, v in samples) if samples else None

    wait_for(lambda: scraped("events_emitted") == spec.events, 60, "events_emitted in the Prometheus scrape")
    assert scraped("lines_written") == len(expected)

    rest.cancel(jid)
    assert rest.wait_state(jid, {"CANCELED"}, 60) == "CANCELED"
    # The submitting process notices the cancellation and exits.
    proc.wait(timeout=60)
