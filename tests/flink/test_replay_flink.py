"""A dead-letter replay on the local Flink cluster (bounded, LOOPBACK workers).

The text-agent scenario of tests/pipeline/replay_scenario.py on PostgreSQL
(databases of their own): the job and the clean run on the DirectRunner,
the replays as a user runs them, ``python -m beam_pipelines.replay
--profile=flink-local``; the tables then equal the clean run's (turns,
conversations, billing hours), the second replay changes nothing, and the
submitting process printed the replay's progress summary.
"""
import subprocess
import sys

import pytest

from tests.flink.conftest import REPO_ROOT, unique_job_name
from tests.integration.conftest import services  # noqa: F401  pylint: disable=unused-import
from tests.pipeline import replay_scenario as sc

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def replay_store(services):  # noqa: F811
    made = sc.PostgresStore(services.pg_dsn)
    yield made
    made.drop_all()


def test_replay_on_flink_equals_clean_run(flink_cluster, replay_store, tmp_path, monkeypatch):
    for name in ("REDIS_HOST", "POSTGRES_HOST"):
        monkeypatch.delenv(name, raising=False)
    env = flink_cluster.process_env()
    for name in ("REDIS_HOST", "POSTGRES_HOST"):
        env.pop(name, None)
    rest = flink_cluster.rest

    def on_flink(argv):
        job_name = unique_job_name("iheard-test-replay")
        done = subprocess.run(
            [sys.executable, "-m", "beam_pipelines.replay", "--profile=flink-local",
             f"--job_name={job_name}", "--progress=log", *argv],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        counts = sc.parse_summary(done.stdout)
        if counts["selected"] > counts["pending"]:  # something ran: a Flink job did it
            jid = rest.job_id_by_name(job_name)
            assert jid and rest.state(jid) == "FINISHED"
            assert "[replay text_agent] read " in done.stdout
        return counts

    sc.check_replay("text_agent", tmp_path, replay_store, replay_fn=on_flink)
