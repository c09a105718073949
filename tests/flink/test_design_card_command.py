"""The design card's literal command, ``python -m beam_pipelines.<name>
--runner=FlinkRunner``, with no --profile and no FLINK_* variable set.

runners/profiles.py fills in what Beam alone gets wrong offline: the
project's job-server launcher (Beam would download a jar) and a master:
the local cluster when its REST API answers (it does here: ``flink_cluster``
started it), else Beam's embedded Flink (``[auto]``, through the same
launcher). Each run is on the pipeline's bundled sample, from a temporary
working directory, so its tables land in ``./output/iheardai.duckdb`` there.

    pipeline    master                          checked
    frontend    local cluster (found by probe)  a new finished job on the cluster
    text_agent  local cluster                   (Beam's default name) with the
    marketo     local cluster                   pipeline's steps and the profile's
                                                parallelism (2); rows in the
                                                pipeline's table
    frontend    [auto] (named on the command    rows in frontend_analytics
                line: the probe would find the
                cluster this test suite runs)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import duckdb
import pytest

from runners import profiles
from tests.flink.conftest import REPO_ROOT

pytestmark = [pytest.mark.flink, pytest.mark.slow]

RUNS = {  # pipeline: (table it fills, a step name of its job graph)
    "frontend": ("frontend_analytics", "DedupeEvents"),
    "text_agent": ("agent_turns", "EnrichTurns"),
    "marketo": ("marketo_leads", "ScoreLeads"),
}


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLINK_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _run(pipeline, cwd, *extra):
    return subprocess.run(
        [sys.executable, "-m", f"beam_pipelines.{pipeline}", "--runner=FlinkRunner", *extra],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def _rows(cwd, table):
    con = duckdb.connect(str(cwd / "output" / "iheardai.duckdb"), read_only=True)
    try:
        return con.execute(f"select count(*) from {table}").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("pipeline", sorted(RUNS))
def test_literal_command_runs_on_the_local_cluster(pipeline, flink_cluster, tmp_path):
    rest = flink_cluster.rest
    assert profiles.local_cluster_answers()  # so the probe picks it
    before = {j["jid"] for j in rest.get("/jobs/overview")["jobs"]}
    started_ms = time.time() * 1000
    done = _run(pipeline, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "state=DONE" in done.stdout

    table, step = RUNS[pipeline]
    assert _rows(tmp_path, table) > 0
    finished_ms = time.time() * 1000
    # Ours: new since the start, named by Beam's default (the literal command
    # sets no --job_name; other tests on this shared cluster name theirs),
    # finished by the time the command returned, with the pipeline's step.
    ours = []
    for job in rest.get("/jobs/overview")["jobs"]:
        if (job["jid"] in before or not job["name"].startswith("BeamApp-")
                or job["start-time"] < started_ms - 5_000 or job["state"] != "FINISHED"
                or job["end-time"] > finished_ms + 5_000):
            continue
        vertices = rest.job(job["jid"])["vertices"]
        if any(step in v["name"] for v in vertices):
            ours.append(vertices)
    assert ours, f"no new finished job with a {step} step on the local cluster"
    # the flink-local profile's parallelism came along with the master
    assert any(max(v["parallelism"] for v in vertices) == profiles.LOCAL_PARALLELISM
               for vertices in ours)


def test_literal_command_runs_on_embedded_flink(flink_cluster, tmp_path):
    done = _run("frontend", tmp_path, f"--flink_master={profiles.EMBEDDED_FLINK_MASTER}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "state=DONE" in done.stdout
    assert _rows(tmp_path, "frontend_analytics") > 0
