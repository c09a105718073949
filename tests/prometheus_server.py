"""A real Prometheus server (Debian's, via scripts/ops_tools.sh) and the project's exporter for one test.

``AlertingStack`` starts ``python -m monitoring.exporter`` and ``prometheus``
on a named instance's ports (services/instance.sh offsets 61 and 60),
scraping the exporter and the instance's Flink reporters every 5 s and
evaluating a *test copy* of monitoring/prometheus/alerts.yml whose ``for:``
durations are cut to ``for_s`` seconds (the shipped rules wait 1 to 5
minutes; the expressions are unchanged). ``stop`` ends both processes.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import typing
import urllib.parse
import urllib.request

from iheard_io import settings
from tests.support import REPO_ROOT, end_process, instance_port

ALERTS = pathlib.Path(REPO_ROOT) / "monitoring" / "prometheus" / "alerts.yml"
OPS_TOOLS = pathlib.Path(REPO_ROOT) / "scripts" / "ops_tools.sh"


def ops_tool(name: str) -> str:
    done = subprocess.run(["bash", str(OPS_TOOLS), name], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"ops_tools.sh {name} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def rules_with_short_for(text: str, for_s: int) -> str:
    """alerts.yml with every ``for: <duration>`` replaced by ``for: <for_s>s``."""
    return re.sub(r"(?m)^(\s+for:\s*)\S+\s*$", lambda m: f"{m.group(1)}{for_s}s", text)


class AlertingStack:
    def __init__(self, workdir: pathlib.Path, slot: int, services_env: typing.Mapping[str, str],
                 flink_env: typing.Mapping[str, str], for_s: int = 10, groups: typing.Sequence[str] = ()):
        self.workdir = pathlib.Path(workdir)
        self.port = instance_port(slot, "prometheus")
        self.exporter_port = instance_port(slot, "exporter")
        self.services_env = dict(services_env)
        self.flink_env = dict(flink_env)
        self.for_s = for_s
        self.groups = list(groups)
        self.rules_path = self.workdir / "alerts.test.yml"
        self._procs: typing.List[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> pathlib.Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rules_path.write_text(rules_with_short_for(ALERTS.read_text(), self.for_s))
        flink_targets = [u.split("//", 1)[1].split("/", 1)[0] for u in
                         (self.flink_env["FLINK_PROMETHEUS_URL"], self.flink_env["FLINK_JOBMANAGER_PROMETHEUS_URL"])]
        config = {
            # The exporter probes on scrape; with the broker down its Kafka probe
            # waits ~3 s for a bootstrap, so scrapes get 5 s (a timed-out scrape
            # would make the series stale and reset a pending alert).
            "global": {"scrape_interval": "5s", "evaluation_interval": "1s", "scrape_timeout": "5s"},
            "rule_files": [str(self.rules_path)],
            "scrape_configs": [
                {"job_name": "iheard-exporter",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}]},
                {"job_name": "flink", "static_configs": [{"targets": flink_targets}]},
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start(self) -> "AlertingStack":
        config = self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        flink_rest = "http://127.0.0.1:" + self.flink_env["FLINK_MASTER"].rsplit(":", 1)[1]
        exporter_args = [
            sys.executable, "-m", "monitoring.exporter", "--port", str(self.exporter_port),
            "--kafka_bootstrap", self.services_env["KAFKA_BOOTSTRAP"], "--flink_rest_url", flink_rest,
            "--postgres_dsn", settings.postgres_dsn(self.services_env),
            "--redis_url", settings.redis_url(self.services_env),
            "--min_interval_s", "1", "--log_format", "text",
        ]
        if self.groups:
            exporter_args += ["--groups", ",".join(self.groups)]
        self._procs.append(subprocess.Popen(
            exporter_args, cwd=REPO_ROOT, env=env, stdout=(self.workdir / "exporter.log").open("w"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        self._procs.append(subprocess.Popen(
            [ops_tool("prometheus"), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}", "--storage.tsdb.retention.time=1h"],
            cwd=self.workdir, stdout=(self.workdir / "prometheus.log").open("w"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True))
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            end_process(proc, timeout_s=15)
        self._procs = []

    def api(self, path: str) -> typing.Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise ValueError(body)
        return body["data"]

    def query(self, expr: str) -> typing.List[dict]:
        return self.api("/api/v1/query?query=" + urllib.parse.quote(expr))["result"]

    def alerts(self, name: str, state: typing.Optional[str] = None, **labels: str) -> typing.List[dict]:
        out = []
        for alert in self.api("/api/v1/alerts")["alerts"]:
            if alert["labels"].get("alertname") != name:
                continue
            if state and alert["state"] != state:
                continue
            if all(alert["labels"].get(k) == v for k, v in labels.items()):
                out.append(alert)
        return out

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for name in ("exporter.log", "prometheus.log"):
            path = self.workdir / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

