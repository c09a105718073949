"""Dead-letter replay on PostgreSQL (the shared server of services/services.sh).

The scenario of tests/pipeline/replay_scenario.py, each run in its own
database created for the test (a replay selects every dead letter of its
pipeline, so it must not see other tests' rows) and dropped afterwards.
"""
import uuid

import psycopg
import pytest

from iheard_io.sql_tables import SqlTables
from tests.pipeline import replay_scenario as sc


class PostgresStore:
    def __init__(self, base_dsn):
        self._base = base_dsn
        self._dbs = {}

    def dsn(self, name):
        if name not in self._dbs:
            db = f"replay_test_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(self._base, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{db}"')
            self._dbs[name] = db
        return f"{self._base} dbname={self._dbs[name]}"

    def args(self, name):
        return [f"--postgres_dsn={self.dsn(name)}"]

    def state(self, name, pipeline):
        with SqlTables.open(dsn=self.dsn(name)) as db:
            return sc.snapshot(db, pipeline), sc.failed_events(db)

    def drop_all(self):
        with psycopg.connect(self._base, autocommit=True) as conn:
            for db in self._dbs.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture
def store(services):
    # A later dbname= in a libpq string wins over the earlier one.
    made = PostgresStore(services.pg_dsn)
    yield made
    made.drop_all()


@pytest.mark.parametrize("pipeline", ["frontend", "text_agent"])
def test_replay_with_fix_equals_clean_run_on_postgres(pipeline, tmp_path, store):
    sc.check_replay(pipeline, tmp_path, store)
