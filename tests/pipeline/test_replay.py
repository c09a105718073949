"""Dead-letter replay on the embedded DuckDB default (python -m beam_pipelines.replay).

Scenario (tests/pipeline/replay_scenario.py): input with a buggy producer's
lines and hostile lines -> the job -> dead letters; a dry run (writes
nothing; its counts match the run's); the replay with a fix; the tables
then equal a clean run over the corrected input (per-event rows and
aggregates); a second replay finds nothing and changes nothing.
"""
import pytest

from beam_pipelines import replay
from iheard_io.embedded import close_embedded
from iheard_io.sql_tables import SqlTables
from tests.pipeline import replay_scenario as sc

class EmbeddedStore:
    """Each named run's own DuckDB file and archive under ``tmp_path``."""

    def __init__(self, tmp_path):
        self._tmp = tmp_path

    def args(self, name):
        return [f"--output_dir={self._tmp / name}"]

    def state(self, name, pipeline):
        path = str(self._tmp / name / "iheardai.duckdb")
        close_embedded(path)
        with SqlTables.open(embedded_db=path) as db:
            state = sc.snapshot(db, pipeline), sc.failed_events(db)
        close_embedded(path)
        return state


@pytest.mark.parametrize("pipeline", ["frontend", "text_agent"])
def test_replay_with_fix_equals_clean_run_of_corrected_input(pipeline, tmp_path):
    sc.check_replay(pipeline, tmp_path, EmbeddedStore(tmp_path))


def test_replay_of_a_stage_that_holds_no_source_payload_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be replayed"):
        replay.run(["--pipeline=frontend", f"--output_dir={tmp_path}", "--stage=enrich",
                    "--dry_run"])
