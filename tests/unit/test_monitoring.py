"""Operations artefacts: the logging setup, the exporter's metric families,
the alert rules (promtool), the Grafana dashboards' metric names.

promtool comes from Debian's prometheus package, unpacked by
scripts/ops_tools.sh (idempotent, cached under $IHEARD_HOME).
"""
import ast
import io
import json
import logging
import pathlib
import re
import shutil
import subprocess

import pytest

from collector.metrics import CollectorMetrics
from monitoring import exporter
from monitoring.logs import configure_logging, get_logger, bind_context, resolve_log_format

REPO = pathlib.Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "monitoring" / "prometheus"
DASHBOARDS = sorted((REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"))
PIPELINE_NAMESPACES = ("frontend", "text_agent")


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_fields(restore_logging):
    out = io.StringIO()
    assert configure_logging("json", stream=out) == "json"
    bind_context(pipeline="frontend")
    get_logger("beam_pipelines.frontend").info("rows written", step="sink:postgres", written=12)
    logging.getLogger("plain.stdlib").warning("from %s", "stdlib")
    logging.getLogger("apache_beam.runners").info("chatter that is filtered")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "rows written" and lines[0]["step"] == "sink:postgres"
    assert lines[0]["written"] == 12 and lines[0]["pipeline"] == "frontend"
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "beam_pipelines.frontend"
    assert lines[1]["event"] == "from stdlib" and lines[1]["level"] == "warning"
    import structlog
    structlog.contextvars.clear_contextvars()


def test_text_logs_and_format_choice(restore_logging, monkeypatch):
    out = io.StringIO()
    configure_logging("text", stream=out)
    get_logger("x").info("hello", written=3)
    line = out.getvalue().strip()
    assert "hello" in line and "written=3" in line and not line.startswith("{")
    monkeypatch.setenv("IHEARD_LOG_FORMAT", "text")
    assert resolve_log_format(None, io.StringIO()) == "text"
    monkeypatch.delenv("IHEARD_LOG_FORMAT")
    assert resolve_log_format(None, io.StringIO()) == "json"  # not a terminal
    with pytest.raises(ValueError):
        resolve_log_format("xml")


def test_pipelines_cli_logging_goes_through_the_shared_setup(restore_logging, monkeypatch, capsys):
    from beam_pipelines.cli import configure_cli_logging

    monkeypatch.setenv("IHEARD_LOG_FORMAT", "json")
    configure_cli_logging()
    logging.getLogger("beam_pipelines.frontend").info("pipeline finished")
    err = capsys.readouterr().err.strip().splitlines()
    assert json.loads(err[-1])["event"] == "pipeline finished"


def _samples(families):
    return {(f.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_exporter_turns_probe_results_into_gauges():
    result = {
        "offsets": {"reachable": True, "topics": {
            "fe": {"partitions": {0: {"begin": 0, "end": 10, "last_timestamp_ms": 5000},
                                  1: {"begin": 2, "end": 7, "last_timestamp_ms": 9000}},
                   "last_timestamp_ms": 9000}}},
        "lag": {"groups": {"g1": {"fe": {0: {"committed": 4, "end": 10, "lag": 6},
                                         1: {"committed": 7, "end": 7, "lag": 0}}}}},
        "flink": {"reachable": True, "jobs": [
            {"name": "frontend", "state": "CANCELED", "start_time_ms": 1, "checkpoints": None},
            {"name": "frontend", "state": "RUNNING", "start_time_ms": 2,
             "checkpoints": {"completed": 5, "failed": 2, "in_progress": 0}}]},
        "postgres": {"reachable": False, "duration_s": None},
        "redis": {"reachable": None, "duration_s": None},
        "duration_s": 0.5,
    }
    s = _samples(exporter.metric_families(result))
    assert s[("kafka_consumer_lag", (("group", "g1"), ("partition", "0"), ("topic", "fe")))] == 6
    assert s[("kafka_topic_end_offset", (("partition", "1"), ("topic", "fe")))] == 7
    assert s[("kafka_last_record_timestamp_seconds", (("topic", "fe"),))] == 9.0
    # The latest start of a job name decides its state.
    assert s[("flink_job_running", (("job_name", "frontend"),))] == 1.0
    assert s[("flink_job_checkpoints_failed", (("job_name", "frontend"),))] == 2
    assert s[("service_health_status", (("service", "postgres"),))] == 0.0
    assert ("service_health_status", (("service", "redis"),)) not in s  # not configured
    assert {name for name, _ in s} <= set(exporter.METRIC_NAMES)


def _promtool():
    found = subprocess.run(["bash", str(REPO / "scripts" / "ops_tools.sh"), "promtool"],
                           capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert found.returncode == 0, found.stderr
    return found.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def promtool():
    return _promtool()


def test_alert_rules_and_scrape_config_are_valid(promtool):
    rules = subprocess.run([promtool, "check", "rules", str(PROM_DIR / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 9 rules found" in rules.stdout
    config = subprocess.run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    run = subprocess.run([promtool, "test", "rules", str(PROM_DIR / "alerts_test.yml")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_rule_unit_tests_catch_a_changed_threshold(promtool, tmp_path):
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM_DIR / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("(kafka_consumer_lag) > 1000", "(kafka_consumer_lag) > 2000"))
    run = subprocess.run([promtool, "test", "rules", str(tmp_path / "alerts_test.yml")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "HighConsumerLag" in run.stdout + run.stderr


# --- dashboards -------------------------------------------------------------

_PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "by", "without", "histogram_quantile", "time", "avg", "max",
    "min", "count", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
    "bool", "le", "topk", "bottomk", "abs", "delta", "deriv", "clamp_min", "clamp_max", "vector",
}


def promql_metric_names(expr: str) -> set:
    """Metric names in a PromQL expression: identifiers outside label
    matchers, grouping clauses and range brackets that are not functions."""
    text = re.sub(r"\{[^}]*\}", "", expr)           # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)           # ranges
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()[:1]
        if word in _PROMQL_WORDS or following == "(":
            continue
        names.add(word)
    return names


def beam_counter_metrics() -> set:
    """Flink's Prometheus names of the Beam counters the code declares:
    ``Metrics.counter(namespace, name)`` (or the pipelines' ``count(pcoll,
    namespace, name, label)``) -> ``flink_taskmanager_job_task_operator_<ns>_<name>``.
    A namespace given as a variable is one of the pipelines' names."""
    names = set()
    for folder in ("transforms", "io", "beam_pipelines"):
        for path in (REPO / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                args = node.args
                if func == "counter" and len(args) >= 2:
                    ns_node, name_node = args[0], args[1]
                elif func == "count" and len(args) >= 3:
                    ns_node, name_node = args[1], args[2]
                else:
                    continue
                if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
                    continue
                if isinstance(ns_node, ast.Constant) and isinstance(ns_node.value, str):
                    namespaces = (ns_node.value,)
                else:
                    namespaces = PIPELINE_NAMESPACES
                for ns in namespaces:
                    names.add(f"flink_taskmanager_job_task_operator_{ns}_{name_node.value}")
    return names | sink_counter_metrics()


def sink_counter_metrics() -> set:
    """The counters of iheard_io.sink_base, under the ``counter_namespace``
    each sink class declares."""
    from iheard_io.sink_base import SINK_COUNTERS, latency_counter_names

    names = set()
    for path in (REPO / "io").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "counter_namespace" for t in node.targets) \
                    and isinstance(node.value, ast.Constant):
                for counter in (*SINK_COUNTERS, *latency_counter_names()):
                    names.add(f"flink_taskmanager_job_task_operator_{node.value.value}_{counter}")
    return names


def relabelled_metrics() -> set:
    """Names prometheus.yml's metric_relabel_configs give scraped series."""
    import yaml

    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    return {rule["replacement"] for job in config["scrape_configs"]
            for rule in job.get("metric_relabel_configs", ())
            if rule.get("target_label") == "__name__"}


def project_metrics() -> set:
    collector = {m.name for m in CollectorMetrics().registry.collect()}
    # prometheus_client reports counters without _total and histograms without _bucket.
    exposed = set()
    for fam in CollectorMetrics().registry.collect():
        exposed.update(s.name for s in fam.samples)
    return (collector | exposed | set(exporter.METRIC_NAMES) | beam_counter_metrics()
            | relabelled_metrics() | {"up"})


def dashboard_targets(kind):
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if kind in target:
                    yield path.name, panel["title"], target[kind]


def test_dashboards_exist_and_have_panels_with_queries():
    assert {p.name for p in DASHBOARDS} >= {"pipeline_overview.json", "business_kpis.json"}
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        assert doc["uid"] and doc["panels"]
        for panel in doc["panels"]:
            assert panel.get("targets"), f"{path.name}: {panel['title']} has no query"


def test_promql_name_extraction():
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(collector_x_bucket{a="b"}[5m])))') == {"collector_x_bucket"}
    assert promql_metric_names("time() - kafka_last_record_timestamp_seconds") == {"kafka_last_record_timestamp_seconds"}
    assert promql_metric_names("a / b") == {"a", "b"}


def test_every_prometheus_panel_names_a_metric_the_project_or_flink_exports():
    known = project_metrics()
    beam = beam_counter_metrics()
    assert "flink_taskmanager_job_task_operator_frontend_received" in beam
    assert "flink_taskmanager_job_task_operator_WriteToPostgres_written" in beam
    assert "flink_taskmanager_job_task_operator_WriteLiveKpis_write_ms_le_10" in beam
    assert relabelled_metrics() == {"iheard_sink_write_ms_bucket"}
    unknown = []
    flink_cluster_metrics = set()
    for dashboard, title, expr in dashboard_targets("expr"):
        for name in promql_metric_names(expr):
            if name in known:
                continue
            if name.startswith(("flink_taskmanager_Status_", "flink_jobmanager_")) and \
                    not name.startswith("flink_jobmanager_job_"):
                flink_cluster_metrics.add(name)  # checked against the live reporters
                continue
            unknown.append((dashboard, title, name))
    assert not unknown, f"panels name metrics nothing exports: {unknown}"
    assert flink_cluster_metrics  # the overview shows the cluster too (next test)


def test_flink_cluster_metrics_on_dashboards_exist_on_the_running_cluster():
    """The Flink cluster metrics the overview uses, against the reporters of
    the local cluster (flink/cluster.sh, started by make test)."""
    import urllib.request

    wanted = set()
    for _, _, expr in dashboard_targets("expr"):
        wanted |= {n for n in promql_metric_names(expr)
                   if n.startswith(("flink_taskmanager_Status_", "flink_jobmanager_num"))}
    assert wanted
    exposed = set()
    for port in (19249, 19259):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            pytest.skip("the local Flink cluster's reporters are not up (flink/cluster.sh up)")
        exposed |= {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert wanted <= exposed, f"not on the Flink reporters: {sorted(wanted - exposed)}"


def sql_tables(sql: str) -> set:
    return set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_][a-z0-9_]*)", sql, flags=re.IGNORECASE))


def test_every_sql_panel_reads_a_table_of_the_schema():
    from schemas.tables import ddl_statements

    ddl = " ".join(ddl_statements("postgres"))
    tables = set(re.findall(r"CREATE TABLE IF NOT EXISTS\s+([a-z_]+)", ddl))
    queries = list(dashboard_targets("rawSql"))
    assert len(queries) >= 5
    for dashboard, title, sql in queries:
        used = sql_tables(sql)
        assert used and used <= tables, f"{dashboard}: {title} reads {used - tables}"
