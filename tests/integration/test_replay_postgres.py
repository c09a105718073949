"""Dead-letter replay on PostgreSQL (the shared server of services/services.sh).

The scenario of tests/pipeline/replay_scenario.py, each run in its own
database created for the test (a replay selects every dead letter of its
pipeline, so it must not see other tests' rows) and dropped afterwards.
"""
import pytest

from tests.pipeline import replay_scenario as sc


@pytest.fixture
def replay_store(services):
    made = sc.PostgresStore(services.pg_dsn)
    yield made
    made.drop_all()


@pytest.mark.parametrize("pipeline", ["frontend", "text_agent"])
def test_replay_with_fix_equals_clean_run_on_postgres(pipeline, tmp_path, replay_store):
    sc.check_replay(pipeline, tmp_path, replay_store)
