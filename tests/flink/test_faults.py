"""Faults on a private instance: the streaming frontend job loses nothing and doubles nothing.

Everything here runs on a named instance of services.sh and flink/cluster.sh
(``PrivateInstance``, its own ports and folders), started for this module
and always torn down, so stopping its broker or database breaks no other
test. One streaming frontend job (``--profile=flink-local``: the default
hot path and state backend, checkpoints every 3 s) runs through the whole
module while a ``SteadyProducer`` (tests/flink/fault_workload.py) publishes
visits at a steady rate; the tests inject one fault each, in order:

1. the Kafka broker stopped for ``OUTAGE_S`` then started again; a real
   Prometheus server (Debian's) scraping the exporter and the instance's
   Flink reporters must fire ``ServiceDown{service="kafka"}`` of a test copy
   of monitoring/prometheus/alerts.yml (``for:`` cut to 10 s) and resolve
   it after;
2. PostgreSQL stopped (a fast shutdown, what ``pg_ctl stop -m fast`` does)
   for ``OUTAGE_S``;
3. the S3 server stopped for ``OUTAGE_S`` (moto keeps objects in memory
   only: the test puts back the objects it held, as a durable store would
   have them);
4. Redis stopped for ``OUTAGE_S`` (``SHUTDOWN SAVE``, so its keys survive
   as with a persistent Redis); its sinks retry for 60 s
   (``--redis_retry_budget_seconds``);
5. the TaskManager SIGKILLed three times, a new one started each time.

Between 1 and 2 the dead-letter writer itself is checked: records written
while the broker is down reach the topic once it is back.

After each: every event the producer saw acknowledged is in
``frontend_analytics`` (none unknown), in its Redis KPI set, and every
acknowledged dead letter is in ``failed_events`` and on the dead-letter
topic. The last test stops the producer and checks session rows, Redis
session hashes and the archive (each event exactly once) over the whole
run. Figures (events, lost, doubled, recovery time) are the benchmark's:
benchmarks/fault_bench.py; the README's fault table says what each fault
costs and where the design's limits are.

Marked ``faults`` (and ``flink``, ``integration``, ``slow``); about 10
minutes on the 2-core machine, most of it the instance's start and the
outages themselves.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from tests.flink import fault_workload as fw
from tests.flink.conftest import BackgroundPipelines, FlinkCluster
from tests.flink.flink_rest import FlinkRest, wait_for
from tests.flink.test_frontend_streaming import _create_topic, _frontend_args
from tests.support import PrivateInstance

pytestmark = [pytest.mark.faults, pytest.mark.flink, pytest.mark.integration, pytest.mark.slow,
              pytest.mark.timeout(1800)]

OUTAGE_S = 30
VISITS_PER_S = 15  # x4 events (+ duplicates, dead letters): ~60 events/s
CATCH_UP_TIMEOUT_S = 300
TASKMANAGER_KILLS = 3


class FaultRun:
    """The instance, the job and the producer the tests share."""

    def __init__(self, instance: PrivateInstance, log_dir):
        self.instance = instance
        self.env = instance.env
        self.cluster = FlinkCluster(
            rest=FlinkRest("http://127.0.0.1:" + instance.flink_env["FLINK_MASTER"].rsplit(":", 1)[1]),
            env=instance.flink_env, instance=instance.name)
        self.rest = self.cluster.rest
        self.pipelines = BackgroundPipelines(self.cluster, log_dir)
        self.run_id = fw.new_run_id()
        self.topic = _create_topic(self.env["KAFKA_BOOTSTRAP"])
        self.dlq = _create_topic(self.env["KAFKA_BOOTSTRAP"])
        self.prefix = f"faults/{self.run_id}"
        self.producer = fw.SteadyProducer(self.env["KAFKA_BOOTSTRAP"], self.topic, self.run_id, VISITS_PER_S)
        self.proc = self.jid = self.job_name = None
        self.results = {}  # fault -> figures, for the benchmark and failure messages

    def start(self) -> None:
        env = self.env

        def args(name):
            return [*_frontend_args(env, self.topic, self.prefix, name),
                    f"--session_gap_seconds={fw.SESSION_GAP_S}", f"--dead_letter_topic={self.dlq}"]

        self.proc, self.jid, self.job_name = self.pipelines.start_streaming(
            "beam_pipelines.frontend", args, "iheard-faults")
        self.producer.start()

    def describe(self) -> str:
        return (f"{self.rest.describe(self.jid)}\nproducer: {len(self.producer.acked)} acked, "
                f"{self.producer.send_errors} send errors (last: {self.producer.last_error})\n"
                f"{self.pipelines.log_tail(self.job_name, 30)}")

    def outage(self, service: str, seconds: float = OUTAGE_S, while_down=None, stop=None) -> float:
        """Stops ``service`` (with ``stop()`` if given) for ``seconds`` (``while_down()`` runs
        meanwhile), starts it again; returns when it was back."""
        time.sleep(5)  # some traffic before
        down_at = time.monotonic()
        if stop is not None:
            stop()
        else:
            self.instance.stop(service)
        if while_down is not None:
            while_down()
        remaining = seconds - (time.monotonic() - down_at)
        if remaining > 0:
            time.sleep(remaining)
        self.instance.start(service)
        return time.monotonic()

    def wait_running(self, timeout_s: float = 240) -> None:
        wait_for(lambda: self.rest.state(self.jid) == "RUNNING"
                 and all(v["status"] == "RUNNING" for v in self.rest.job(self.jid)["vertices"]),
                 timeout_s, "the job RUNNING again")

    def check_caught_up(self, fault: str, back_at: float) -> dict:
        """Waits until the producer has events acknowledged after the fault, then until every
        event acknowledged up to then is stored; asserts nothing lost or doubled."""
        before = len(self.producer.snapshot()[0])
        wait_for(lambda: len(self.producer.snapshot()[0]) >= before + 100, 120,
                 f"100 more events acknowledged after the {fault} ({self.producer.last_error})")
        acked, broken = self.producer.snapshot()
        try:
            wait_for(lambda: not fw.check_events(self.env, self.producer, acked)["lost"],
                     CATCH_UP_TIMEOUT_S, f"every acknowledged event stored after the {fault}", interval_s=3)
        except TimeoutError:
            pass  # reported below with the figures
        recovery_s = time.monotonic() - back_at
        events = fw.check_events(self.env, self.producer, acked)
        self.results[fault] = {"events": events["acked"], "lost": len(events["lost"]),
                               "doubled": len(events["doubled"]), "recovery_s": round(recovery_s, 1)}
        assert not events["lost"], f"{fault}: {len(events['lost'])} acknowledged events lost, e.g. " \
                                   f"{events['lost'][:5]}\n{self.describe()}"
        assert not events["doubled"] and not events["unknown"], events
        try:
            wait_for(lambda: not fw.check_dead_letters(self.env, self.producer, self.topic, self.dlq, broken)
                     ["lost_in_table"], 120, f"dead letters stored after the {fault}", interval_s=3)
            wait_for(lambda: not fw.check_dead_letters(self.env, self.producer, self.topic, self.dlq, broken)
                     ["lost_on_topic"], 120, f"dead letters on the topic after the {fault}", interval_s=3)
        except TimeoutError:
            pass
        dead = fw.check_dead_letters(self.env, self.producer, self.topic, self.dlq, broken)
        assert not dead["lost_in_table"] and not dead["doubled_in_table"] and not dead["unknown"], dead
        assert not dead["lost_on_topic"], f"{fault}: dead letters missing on the topic: {dead}"
        missing = fw.check_kpis(self.env, self.producer, acked)
        assert not missing, f"{fault}: {len(missing)} events missing from their KPI set, e.g. {missing[:5]}"
        return events


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, request):
    name = f"faults-{uuid.uuid4().hex[:6]}"
    with PrivateInstance(name, flink=True) as instance:
        run = FaultRun(instance, tmp_path_factory.mktemp("fault-logs"))
        try:
            run.start()
            yield run
        finally:
            run.producer.stop()
            run.pipelines.stop_all()
            # The figures (not asserted: they depend on the machine's load).
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line("")
                for fault, figures in run.results.items():
                    reporter.write_line(f"fault figures: {fault}: {figures}")
                reporter.write_line(f"fault figures: producer {len(run.producer.acked)} events acknowledged, "
                                    f"{run.producer.send_errors} sends refused, producer replaced "
                                    f"{run.producer.recreated} times")


def test_broker_outage_fires_the_alert_and_loses_nothing(fault_run, tmp_path):
    from tests.prometheus_server import AlertingStack, ops_tool

    run = fault_run
    stack = AlertingStack(tmp_path / "prometheus", int(run.env["IHEARD_INSTANCE_SLOT"]), run.env,
                          run.instance.flink_env)
    stack.write_config()
    checked = subprocess.run([ops_tool("promtool"), "check", "rules", str(stack.rules_path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stack.start()
    try:
        def scraping():
            up = {(r["metric"]["job"], r["value"][1]) for r in stack.query("up")}
            health = {r["metric"]["service"]: r["value"][1] for r in stack.query("service_health_status")}
            return up == {("flink", "1"), ("iheard-exporter", "1")} and health.get("kafka") == "1"

        wait_for(scraping, 120, "Prometheus scraping the exporter and both Flink reporters")
        fired = []

        def until_fired():
            try:
                wait_for(lambda: stack.alerts("ServiceDown", "firing", service="kafka"), 120,
                         "ServiceDown{service=kafka} firing", interval_s=2)
                fired.append(time.monotonic())
            except TimeoutError:
                pass

        back_at = run.outage("kafka", while_down=until_fired)
        assert fired, f"ServiceDown did not fire while the broker was down\n{stack.log_tail()}"
        wait_for(lambda: not stack.alerts("ServiceDown", service="kafka"), 120, "ServiceDown resolved")
    finally:
        stack.stop()
    run.wait_running()
    run.check_caught_up("broker outage", back_at)


def test_dead_letter_writer_rides_out_a_broker_outage(fault_run):
    """Dead letters made while the broker is down reach the topic once it is back.

    (In the job above the broker outage also stops the input, so few dead
    letters are made meanwhile; this sends them during the outage.) A
    DirectRunner pipeline writes ``FailedRecord``s with the dead-letter
    writer (``WriteToKafka``) while the instance's broker is stopped; the
    broker comes back 20 s later; every record must be on the topic.
    """
    import threading

    import apache_beam as beam

    from iheard_io.kafka import WriteToKafka
    from schemas.records import FailedRecord

    run = fault_run
    topic = _create_topic(run.env["KAFKA_BOOTSTRAP"])
    raws = [f"dead-{run.run_id}-{i}" for i in range(50)]
    errors = []

    def write():
        try:
            with beam.Pipeline(runner="DirectRunner") as p:
                _ = (p | beam.Create(raws)
                     | beam.Map(lambda raw: FailedRecord(
                         raw=raw, error_class="X", error_message="m", stage="parse", pipeline="frontend",
                         source_topic="t", received_at="2026-01-01T00:00:00Z")._asdict())
                     | WriteToKafka(run.env["KAFKA_BOOTSTRAP"], topic))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    time.sleep(5)
    run.instance.stop("kafka")
    writer = threading.Thread(target=write)
    try:
        writer.start()
        time.sleep(20)
    finally:
        run.instance.start("kafka")
    writer.join(timeout=400)
    assert not writer.is_alive() and not errors, errors
    on_topic = fw.dead_letter_topic_raws(run.env, topic, "t")
    assert set(on_topic) == set(raws), sorted(set(raws) - set(on_topic))[:5]
    run.wait_running()


def test_postgres_outage_loses_nothing(fault_run):
    back_at = fault_run.outage("postgres")
    fault_run.wait_running()
    fault_run.check_caught_up("PostgreSQL outage", back_at)


def test_s3_outage_loses_nothing(fault_run):
    run = fault_run
    held = {}

    def keep_objects():
        pass

    time.sleep(5)
    held.update(fw.snapshot_archive(run.env))
    back_at = run.outage("s3", while_down=keep_objects)
    fw.restore_archive(run.env, held)
    run.wait_running()
    run.check_caught_up("S3 outage", back_at)


def redis_shutdown_save(env) -> None:
    """Stops the instance's Redis the way a Redis with persistence stops:
    ``SHUTDOWN SAVE`` writes its data to dump.rdb in its data folder, which
    the restarted server loads (services.sh runs Redis without persistence,
    so a plain stop would lose every key, which a production Redis would not)."""
    subprocess.run(["redis-cli", "-h", env["REDIS_HOST"], "-p", env["REDIS_PORT"], "shutdown", "save"],
                   capture_output=True, text=True, timeout=60)
    wait_for(lambda: subprocess.run(["redis-cli", "-h", env["REDIS_HOST"], "-p", env["REDIS_PORT"], "ping"],
                                    capture_output=True, text=True).stdout.strip() != "PONG", 30, "Redis down")


def test_redis_outage_loses_nothing(fault_run):
    run = fault_run
    back_at = run.outage("redis", stop=lambda: redis_shutdown_save(run.env))
    run.wait_running()
    run.check_caught_up("Redis outage", back_at)


def test_taskmanager_killed_three_times_loses_nothing(fault_run):
    run = fault_run
    back_at = None
    for kill in range(TASKMANAGER_KILLS):
        time.sleep(10)
        restored = run.rest.checkpoint_counts(run.jid)["restored"]
        pids = run.instance.taskmanager_pids()
        assert pids, "no TaskManager to kill"
        for pid in pids:
            os.kill(pid, 9)
        run.instance.cluster_sh("up")
        back_at = time.monotonic()
        wait_for(lambda: run.rest.checkpoint_counts(run.jid)["restored"] > restored, 180,
                 f"the job restored after kill {kill + 1}")
        run.wait_running()
    run.check_caught_up(f"{TASKMANAGER_KILLS} TaskManager kills", back_at)


def test_after_all_faults_sessions_redis_and_archive_are_exact(fault_run):
    run = fault_run
    flush_id = run.producer.finish()
    acked, _ = run.producer.snapshot()
    try:
        wait_for(lambda: flush_id in fw.stored_events(run.env, run.producer), CATCH_UP_TIMEOUT_S,
                 "the last event stored", interval_s=3)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{run.describe()}") from e
    events = fw.check_events(run.env, run.producer, acked)
    assert not events["lost"] and not events["doubled"] and not events["unknown"], events

    def sessions_settled():
        s = fw.check_sessions(run.env, run.producer)
        return not (s["missing_rows"] or s["short"] or s["redis_mismatch"]) and s

    try:
        wait_for(sessions_settled, 180, "every session row and Redis hash", interval_s=5)
    except TimeoutError:
        pass
    sessions = fw.check_sessions(run.env, run.producer)
    run.split_sessions = sessions["split_rows"]  # test_no_session_is_split_across_rows
    problems = {k: v[:5] for k, v in sessions.items() if isinstance(v, list) and v and k != "split_rows"}
    examples = sorted({s for v in problems.values() for s in v[:2]})
    assert not problems, (f"{sessions['sessions']} sessions: {problems}\n"
                          f"{fw.describe_sessions(run.env, run.producer, examples)}\n{run.describe()}")

    def archived():
        a = fw.check_archive(run.env, run.producer, run.prefix)
        return not a["lost"] and a

    try:
        wait_for(archived, 240, "every stored event in the archive", interval_s=5)
    except TimeoutError:
        pass
    archive = fw.check_archive(run.env, run.producer, run.prefix)
    assert not archive["lost"] and not archive["doubled"], {
        "stored": archive["stored"], "archived": archive["archived"], "lost": archive["lost"][:5],
        "doubled": archive["doubled"][:5]}
    assert run.rest.state(run.jid) == "RUNNING"


@pytest.mark.xfail(strict=False, reason="a finding (README, Faults on Flink): a session whose events reach "
                   "the session stage out of order around a fault can leave a superseded partial row")
def test_no_session_is_split_across_rows(fault_run):
    """Each session should have exactly one frontend_sessions row.

    Seen around broker outages: the later events of a visit reached the
    session stage first (the producer's retried batch landed after the next
    one, and the source's idle watermark had moved on meanwhile), their
    window fired, and the earlier events then made a merged window with an
    earlier ``window_start``: a second row. The full row is right (checked
    above); the partial one stays, because rows are upserted on
    ``(session_id, window_start)`` and nothing retracts a fired window.
    """
    split = getattr(fault_run, "split_sessions", None)
    assert split is not None, "the session check did not run"
    assert not split, (f"{len(split)} sessions with more than one row, e.g.\n"
                       f"{fw.describe_sessions(fault_run.env, fault_run.producer, split[:3])}")
