"""End to end in a real browser: the demo page's trackEvent snippet in
headless Chromium posts cross-origin to a running collector (``python -m
collector``), and the events land in PostgreSQL through the frontend pipeline
(bounded Kafka read on the DirectRunner, real services).

Chromium is Debian's package, installed by scripts/ops_tools.sh. The page
is served from another port than the collector, so the browser really does
CORS. The Grafana business dashboard's SQL runs against the same database
(EXPLAIN), which checks every table and column it names.
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import psycopg
import pytest

from beam_pipelines import frontend
from tests.integration.test_kafka_io import make_topic
from tests.support import end_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "collector" / "demo"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="module")
def chromium():
    found = subprocess.run(["bash", str(REPO / "scripts" / "ops_tools.sh"), "chromium"],
                           capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert found.returncode == 0, found.stderr
    return found.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def running(services, kafka_bootstrap, tmp_path_factory):
    """A collector on its own topic and a static server for the demo page."""
    topic = make_topic(kafka_bootstrap, 8, prefix="it-browser-fe")
    page_port, collector_port = free_port(), free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    logs = tmp_path_factory.mktemp("browser-e2e")
    env = dict(os.environ, IHEARD_LOG_FORMAT="json")
    collector = subprocess.Popen(
        [sys.executable, "-m", "collector", f"--port={collector_port}", f"--kafka_bootstrap={kafka_bootstrap}",
         f"--frontend_topic={topic}", f"--allowed_origins={page_origin}"],
        stdout=open(logs / "collector.out", "w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    page = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(page_port), "--bind", "127.0.0.1", "--directory", str(DEMO_DIR)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{collector_port}/health")
        wait_http(f"{page_origin}/index.html")
        yield {"topic": topic, "page": page_origin, "collector": f"http://127.0.0.1:{collector_port}",
               "logs": logs}
    finally:
        end_process(collector)
        end_process(page)


def test_widget_events_from_a_browser_land_in_postgres(running, chromium, services, tmp_path):
    session = f"sess_browser_{uuid.uuid4().hex[:10]}"
    url = f"{running['page']}/index.html?collector={running['collector']}&session={session}"
    browser = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    log = re.search(r'<pre id="log">(.*?)</pre>', browser.stdout, flags=re.S)
    assert log, f"no page log in the DOM:\n{browser.stdout[-2000:]}\n{browser.stderr[-2000:]}"
    lines = log.group(1).strip().splitlines()
    assert lines[-1] == "done", lines
    assert [line.split(" ", 2)[:2] for line in lines[:-1]] == [
        ["page_view", "202"], ["widget_open", "202"], ["message_sent", "202"]]

    frontend.run([
        f"--kafka_bootstrap={services.kafka_bootstrap}", f"--kafka_topic={running['topic']}",
        "--kafka_mode=bounded", "--kafka_start_from=earliest", f"--postgres_dsn={services.pg_dsn}",
        f"--output_dir={tmp_path / 'out'}", "--pii_secret=browser-e2e-secret-0123456789",
        "--runner=DirectRunner",
    ])
    with psycopg.connect(services.pg_dsn) as conn:
        rows = conn.execute(
            "SELECT event_type, device_type, browser, page_url FROM frontend_analytics "
            "WHERE session_id = %s ORDER BY timestamp, event_type", (session,)).fetchall()
        sessions = conn.execute(
            "SELECT event_count, widget_opens, messages FROM frontend_sessions WHERE session_id = %s",
            (session,)).fetchall()
        failed = conn.execute("SELECT count(*) FROM failed_events WHERE source_topic = %s",
                              (running["topic"],)).fetchone()[0]
    assert sorted(r[0] for r in rows) == ["message_sent", "page_view", "widget_open"]
    # The browser's own page URL, its loopback address redacted as PII (IPv4).
    assert all("/index.html?collector=" in r[3] and "127.0.0.1" not in r[3] for r in rows)
    assert rows[0][2] and "chrom" in rows[0][2].lower()  # user agent parsed: headless Chromium
    assert sessions == [(3, 1, 1)]
    assert failed == 0


def test_business_dashboard_sql_runs_on_the_schema(services):
    """Every SQL panel of the Grafana dashboards, with Grafana's macros
    expanded, is planned by PostgreSQL: its tables and columns exist."""
    from schemas.tables import ddl_statements

    queries = []
    for path in (REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    queries.append((panel["title"], target["rawSql"]))
    assert queries
    with psycopg.connect(services.pg_dsn, autocommit=True) as conn:
        for statement in ddl_statements("postgres"):
            conn.execute(statement)
        for title, sql in queries:
            expanded = re.sub(r"\$__timeGroup\((\w+),\s*'1h'\)", r"date_trunc('hour', \1)", sql)
            expanded = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 BETWEEN now() - interval '6 hours' AND now()", expanded)
            assert "$__" not in expanded, f"{title}: a Grafana macro this test does not expand"
            conn.execute("EXPLAIN " + expanded)
