"""Dead-letter replay on the embedded DuckDB default (python -m beam_pipelines.replay).

Scenario (tests/pipeline/replay_scenario.py): input with a buggy producer's
lines and hostile lines -> the job -> dead letters; a dry run (writes
nothing; its counts match the run's); the replay with a fix; the tables
then equal a clean run over the corrected input (per-event rows and
aggregates); a second replay finds nothing and changes nothing.
"""
import pytest

from beam_pipelines import frontend, replay, text_agent
from iheard_io.embedded import close_embedded
from iheard_io.sql_tables import SqlTables
from tests.pipeline import replay_scenario as sc

MODULES = {"frontend": frontend, "text_agent": text_agent}


def _run_job(pipeline, lines, out, tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    MODULES[pipeline].run([f"--input={path}", f"--output_dir={out}", f"--pii_secret={sc.SECRET}",
                           f"--session_gap_seconds={sc.GAP_S}", "--runner=DirectRunner"])
    close_embedded(str(out / "iheardai.duckdb"))


def _state(out, pipeline):
    path = str(out / "iheardai.duckdb")
    with SqlTables.open(embedded_db=path) as db:
        state = sc.snapshot(db, pipeline), sc.failed_events(db)
    close_embedded(path)
    return state


def _replay(pipeline, out, fix_args, *extra):
    result = replay.run([f"--pipeline={pipeline}", f"--output_dir={out}",
                         f"--pii_secret={sc.SECRET}", f"--session_gap_seconds={sc.GAP_S}",
                         "--runner=DirectRunner", *fix_args, *extra])
    close_embedded(str(out / "iheardai.duckdb"))
    return result


def _fix_args(pipeline, tmp_path):
    if pipeline == "frontend":
        return ["--fix=tests.pipeline.replay_scenario:repair_frontend"]
    spec = tmp_path / "fix.yaml"
    spec.write_text(sc.TEXT_AGENT_SPEC)
    return [f"--fix_spec={spec}"]


@pytest.mark.parametrize("pipeline", ["frontend", "text_agent"])
def test_replay_with_fix_equals_clean_run_of_corrected_input(pipeline, tmp_path):
    received, corrected, broken = (sc.frontend_lines() if pipeline == "frontend"
                                   else sc.text_agent_lines())
    assert broken >= 5
    out, clean_out = tmp_path / "replayed", tmp_path / "clean"
    _run_job(pipeline, received, out, tmp_path, "received")
    _run_job(pipeline, corrected, clean_out, tmp_path, "corrected")
    clean_tables, _ = _state(clean_out, pipeline)
    tables0, failed0 = _state(out, pipeline)
    assert tables0 != clean_tables  # the buggy lines are missing

    fix = _fix_args(pipeline, tmp_path)
    report = _replay(pipeline, out, fix, "--dry_run")
    assert _state(out, pipeline) == (tables0, failed0)  # a dry run writes nothing
    would_pass = sum(entry["pass"] for entry in report.values())
    assert would_pass >= broken

    summary = _replay(pipeline, out, fix, "--run_id=replay1")
    tables1, failed1 = _state(out, pipeline)
    assert summary["passed"] == would_pass
    assert summary["selected"] == summary["passed"] + summary["failed_again"] + \
        summary["pending"] + summary["not_replayable"]
    assert tables1 == clean_tables

    # Originals are kept and marked; what failed again is a new dead letter
    # pointing at its original, with the replay's run id.
    originals = {k: v for k, v in failed1.items() if v["replay_of"] is None}
    assert originals.keys() == failed0.keys()
    marked = {k: v for k, v in originals.items() if v["replayed_by"] == "replay1"}
    assert len(marked) == summary["selected"] - summary["pending"]
    outcomes = [v["replay_outcome"] for v in marked.values()]
    assert outcomes.count("passed") == summary["passed"]
    assert outcomes.count("not_replayable") == summary["not_replayable"]
    refailures = {k: v for k, v in failed1.items() if v["replay_of"] is not None}
    assert len(refailures) == summary["failed_again"]
    for row in refailures.values():
        assert row["replay_run_id"] == "replay1"
        assert originals[row["replay_of"]]["replay_outcome"] == "failed"
        assert row["replayed_by"] is None

    # Twice: nothing left to do, nothing changes.
    # (Only what the fix raised on stays pending, for a better fix.)
    again = _replay(pipeline, out, fix, "--run_id=replay2")
    assert again["selected"] == again["pending"] == summary["pending"]
    assert again["passed"] == again["failed_again"] == 0
    assert _state(out, pipeline) == (tables1, failed1)


def test_replay_of_a_stage_that_holds_no_source_payload_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be replayed"):
        _replay("frontend", tmp_path / "out", [], "--stage=enrich", "--dry_run")
