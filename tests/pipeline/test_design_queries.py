"""Every query of the design document, verbatim, on a sample dated now.

The bundled frontend sample is the generator's seed 7; ``end_ms`` moves its
timestamps so the last event is a minute before now (only the timestamps
change), which is what ``python -m beam_pipelines.generate --ending_now``
writes. The frontend job runs on it with Snowflake configured (fakesnow, see
test_snowflake_fakesnow.py) and the embedded DuckDB default; the Marketo job
runs on its bundled sample into the same DuckDB file. Then:

    query (file)                        runs on            must
    segment_engagement_24h (operational) DuckDB            rows; every funnel stage a conversion_stage
    all_leads_count, qualified_leads_count DuckDB          count > 0, qualified <= all
    user_journey (snowflake)             fakesnow          rows
    conversion_funnel (snowflake)        fakesnow          stages 1-5 each with sessions

The same operational queries run on PostgreSQL in
tests/integration/test_frontend_services.py and test_marketo_services.py.
The stored files are checked against the document's SQL blocks below.
"""
import json
import re
import time

import duckdb
import pytest

from beam_pipelines import frontend, generate, marketo
from iheard_io.embedded import close_embedded
from schemas.tables import OPERATIONAL_QUERIES, operational_query
from schemas.warehouse import SNOWFLAKE_QUERIES, snowflake_query
from tests.pipeline.test_snowflake_fakesnow import SF_ARGS, _cursor, _seed_readme
from transforms.frontend_enrich import STAGES

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

fakesnow = pytest.importorskip("fakesnow")

SAMPLE_EVENTS = 2000  # the bundled sample's size and seed
SAMPLE_SEED = 7


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("design_queries")
    events = tmp / "recent.jsonl.gz"
    lines = list(generate.frontend_events(SAMPLE_EVENTS, seed=SAMPLE_SEED,
                                          end_ms=int(time.time() * 1000) - 60_000))
    generate.write_lines(lines, str(events))
    out = tmp / "out"
    common = [f"--output_dir={out}", "--pii_secret=test-secret-0123456789", "--runner=DirectRunner"]
    with fakesnow.patch():
        frontend.run([f"--input={events}", *common, *SF_ARGS])
        close_embedded(str(out / "iheardai.duckdb"))
        marketo.run(list(common))  # no --input: the bundled sample
        close_embedded(str(out / "iheardai.duckdb"))
        cur = _cursor()
        snowflake = {name: cur.execute(snowflake_query(name)).fetchall()
                     for name in SNOWFLAKE_QUERIES}
    con = duckdb.connect(str(out / "iheardai.duckdb"), read_only=True)
    try:
        duck = {name: con.execute(operational_query(name)).fetchall()
                for name in OPERATIONAL_QUERIES}
    finally:
        con.close()
    return {"lines": lines, "snowflake": snowflake, "duckdb": duck}


def test_sample_carries_every_event_type_the_document_names(answers):
    types = set()
    for line in answers["lines"]:
        try:
            types.add(json.loads(line).get("event_type"))
        except ValueError:
            pass
    # trackEvent examples (widget_open, message_sent), the product cards'
    # product_click, and the funnel query's five types
    assert {"widget_open", "message_sent", "product_click", *STAGES} <= types


def test_no_document_query_comes_back_empty(answers):
    for engine in ("duckdb", "snowflake"):
        for name, rows in answers[engine].items():
            assert rows, f"{name} on {engine} returned no rows"
    (all_leads,), = answers["duckdb"]["all_leads_count"]
    (qualified,), = answers["duckdb"]["qualified_leads_count"]
    assert 0 < qualified <= all_leads


def test_segment_query_sees_every_funnel_stage_within_24_hours(answers):
    rows = answers["duckdb"]["segment_engagement_24h"]
    assert {stage for _, _, stage, _ in rows} == set(STAGES)
    valid = sum(1 for line in answers["lines"] if _is_event(line))
    # duplicates are dropped, so at most one row per distinct valid line
    assert 0 < sum(users for *_, users in rows) <= valid


def test_funnel_query_fills_every_stage(answers):
    funnel = {stage: sessions for stage, sessions, _, _ in answers["snowflake"]["conversion_funnel"]}
    assert [stage for stage in funnel if stage is not None] == [1, 2, 3, 4, 5]
    assert all(funnel[stage] > 0 for stage in range(1, 6))
    # every session starts with a page view; fewer reach each later stage
    assert funnel[1] >= max(funnel[s] for s in range(2, 6))


def test_journey_query_counts_every_session_of_the_sample(answers):
    rows = answers["snowflake"]["user_journey"]
    sessions = {json.loads(line)["session_id"] for line in answers["lines"] if _is_event(line)}
    assert sum(freq for _, freq, _, _ in rows) == len(sessions)


def _is_event(line):
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return (isinstance(event.get("session_id"), str) and isinstance(event.get("event_type"), str)
            and isinstance(event.get("timestamp"), int) and event["timestamp"] > 0)


def _normalised(sql):
    code = " ".join(re.sub(r"--.*", "", line) for line in sql.splitlines())
    return " ".join(code.split())


def test_stored_operational_queries_are_the_design_documents():
    seed = _seed_readme()
    if seed is None:
        pytest.skip("the design document (shared/seed) is not beside this checkout")
    blocks = [_normalised(b) for b in re.findall(r"```sql\n(.*?)```", seed.read_text(), re.S)]
    for name in OPERATIONAL_QUERIES:
        assert any(_normalised(operational_query(name)) in block for block in blocks), name
