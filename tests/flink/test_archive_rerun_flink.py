"""An archive re-run on the local Flink cluster (bounded, LOOPBACK workers):
day 2 of an archive, over a PostgreSQL database whose day-2 rows were spoilt,
gives the original run's tables back (the checks of
tests/pipeline/test_archive_rerun.py), and the submitting process prints the
progress summary with every archived record of the day."""
import subprocess
import sys

import fastavro
import pytest

from tests.flink.conftest import REPO_ROOT, unique_job_name
from tests.integration.conftest import services  # noqa: F401  pylint: disable=unused-import
from tests.integration.test_archive_rerun_postgres import databases  # noqa: F401
from tests.pipeline.test_archive_rerun import (
    DAY2,
    GAP_S,
    SECRET,
    Store,
    assert_same_tables,
    crossing_sessions,
    input_lines,
    run_job,
    snapshot,
    spoil_day2,
)

pytestmark = [pytest.mark.flink, pytest.mark.integration, pytest.mark.slow]


def test_archive_rerun_of_one_day_on_flink(flink_cluster, databases, tmp_path, monkeypatch):  # noqa: F811
    for name in ("REDIS_HOST", "POSTGRES_HOST"):
        monkeypatch.delenv(name, raising=False)
    lines = input_lines("frontend")
    source = tmp_path / "input.jsonl"
    source.write_text("\n".join(lines) + "\n")
    archive = tmp_path / "archive"
    store = Store(tmp_path / "first", databases[0])
    run_job("frontend", store, source, f"--archive_path={archive}")
    want = snapshot("frontend", store)
    spoil_day2("frontend", store, crossing_sessions(lines))
    day2 = archive / "source=frontend" / f"date={DAY2}"
    archived = 0
    for path in day2.rglob("*.avro"):
        with open(path, "rb") as fh:
            archived += sum(1 for _ in fastavro.reader(fh))
    assert archived > 0

    job_name = unique_job_name("iheard-test-rerun")
    env = flink_cluster.process_env()
    for name in ("REDIS_HOST", "POSTGRES_HOST"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.frontend", "--profile=flink-local",
         f"--input={day2}", f"--postgres_dsn={store.dsn}", f"--pii_secret={SECRET}",
         f"--session_gap_seconds={GAP_S}", "--progress=log", f"--job_name={job_name}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rest = flink_cluster.rest
    jid = rest.job_id_by_name(job_name)
    assert jid and rest.state(jid) == "FINISHED"

    assert f"[frontend] read {archived:,} records" in done.stdout
    assert "[frontend] aggregates recomputed from all their events" in done.stdout
    assert_same_tables(snapshot("frontend", store), want)
