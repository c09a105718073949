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
5. the TaskManager SIGKILLed three times, a new one started each time,
   while the job drains a backlog of ``KILL_BACKLOG_EVENTS`` the producer
   publishes at full speed when the phase starts;
6. last, the streaming text-agent job (the frontend job stopped first) with
   one TaskManager kill: agent_turns, conversations, hourly billing and
   the archive exact (``test_text_agent_job_survives_a_taskmanager_kill``).

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

Marked ``faults`` (and ``flink``, ``integration``, ``slow``); about 13
minutes on the 2-core machine, most of it the instance's and the jobs'
start and the outages themselves.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from iheard_io import settings
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
# Events published at full speed at the start of the kill phase (~5,000
# events/s), which the job drains while the kills come (kill k once k/4 of
# them are stored); 0: the steady rate only. Issue 20's 200,000: the kill
# phase took 154 s in benchmarks/fault_bench.py --faults=taskmanager
# --kill-events=200000, and its ~52,000 sessions all had their rows 32 s
# after the last event (the session stage's timer step; before it they
# closed at ~36 rows/s, README, Faults on Flink).
KILL_BACKLOG_EVENTS = 200_000
# The last check waits this long for every session row after the last event.
SESSIONS_SETTLE_S = 420


class FaultRun:
    """The instance, the job and the producer the tests share."""

    def __init__(self, instance: PrivateInstance, log_dir):
        self.instance = instance
        self.env = instance.env
        self.cluster = instance_cluster(instance)
        self.rest = self.cluster.rest
        self.pipelines = BackgroundPipelines(self.cluster, log_dir)
        self.run_id = fw.new_run_id()
        self.topic = _create_topic(self.env["KAFKA_BOOTSTRAP"])
        self.dlq = _create_topic(self.env["KAFKA_BOOTSTRAP"])
        self.prefix = f"faults/{self.run_id}"
        self.producer = fw.SteadyProducer(self.env["KAFKA_BOOTSTRAP"], self.topic, self.run_id, VISITS_PER_S)
        self.proc = self.jid = self.job_name = None
        self.results = {}  # fault -> figures, for the benchmark and failure messages
        self.closed = False

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


    def kill_taskmanagers(self, kills: int, events: int = 0) -> float:
        """SIGKILLs the TaskManager ``kills`` times, a new one started each
        time; returns when the last one was started.

        With ``events``: the producer first publishes about that many events
        at full speed (a backlog the job drains while the steady traffic goes
        on), and kill k comes once k/(kills + 1) of them are stored, so every
        kill and restore happens under load, with a stretch of the backlog
        in flight between source and sinks."""
        start = fw.stored_count(self.env, self.producer)
        if events:
            self.producer.surge(events)
        back_at = time.monotonic()
        for kill in range(kills):
            if events:
                target = start + events * (kill + 1) // (kills + 1)
                wait_for(lambda: fw.stored_count(self.env, self.producer) >= target, CATCH_UP_TIMEOUT_S,
                         f"{target - start} events of the backlog stored before kill {kill + 1}", interval_s=2)
            else:
                time.sleep(10)
            restored = self.rest.checkpoint_counts(self.jid)["restored"]
            pids = self.instance.taskmanager_pids()
            assert pids, "no TaskManager to kill"
            for pid in pids:
                os.kill(pid, 9)
            self.instance.cluster_sh("up")
            back_at = time.monotonic()
            wait_for(lambda: self.rest.checkpoint_counts(self.jid)["restored"] > restored, 180,
                     f"the job restored after kill {kill + 1}")
            self.wait_running()
        return back_at

    def close(self) -> None:
        """Stops the producer and the frontend job (idempotent)."""
        if not self.closed:
            self.closed = True
            self.producer.stop()
            self.pipelines.stop_all()


def instance_cluster(instance: PrivateInstance) -> FlinkCluster:
    return FlinkCluster(
        rest=FlinkRest("http://127.0.0.1:" + instance.flink_env["FLINK_MASTER"].rsplit(":", 1)[1]),
        env=instance.flink_env, instance=instance.name)


@pytest.fixture(scope="module")
def fault_instance(request):
    """The module's private instance; ``figures`` collects each fault's figures,
    printed at the end (not asserted: they depend on the machine's load)."""
    name = f"faults-{uuid.uuid4().hex[:6]}"
    with PrivateInstance(name, flink=True) as instance:
        instance.figures = {}
        instance.fault_run = None
        try:
            yield instance
        finally:
            if instance.fault_run is not None:
                instance.fault_run.close()
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line("")
                for fault, figures in instance.figures.items():
                    reporter.write_line(f"fault figures: {fault}: {figures}")


@pytest.fixture(scope="module")
def fault_run(fault_instance, tmp_path_factory):
    run = FaultRun(fault_instance, tmp_path_factory.mktemp("fault-logs"))
    run.results = fault_instance.figures
    fault_instance.fault_run = run
    try:
        run.start()
        yield run
    finally:
        run.close()
        fault_instance.figures["frontend producer"] = (
            f"{len(run.producer.acked)} events acknowledged, {run.producer.send_errors} sends refused, "
            f"producer replaced {run.producer.recreated} times")


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
    back_at = run.kill_taskmanagers(TASKMANAGER_KILLS, KILL_BACKLOG_EVENTS)
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
        wait_for(sessions_settled, SESSIONS_SETTLE_S, "every session row and Redis hash", interval_s=5)
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


TURN_CONVERSATIONS_PER_S = 5  # x3 turns (+ a duplicate every 10th): ~15 turns/s


def _text_agent_args(env, topic: str, prefix: str, name: str) -> list:
    return ["--profile=flink-local", "--streaming", "--checkpointing_interval=3000",
            f"--session_gap_seconds={fw.SESSION_GAP_S}",
            f"--kafka_bootstrap={env['KAFKA_BOOTSTRAP']}", f"--kafka_topic={topic}", f"--kafka_group_id={name}",
            f"--postgres_dsn={settings.postgres_dsn(env)}", f"--redis_url={settings.redis_url(env)}",
            f"--archive_path=s3://{env['ARCHIVE_BUCKET']}/{prefix}",
            f"--s3_endpoint_url={env['SPACES_ENDPOINT']}", f"--s3_access_key_id={env['SPACES_ACCESS_KEY']}",
            f"--s3_secret_access_key={env['SPACES_SECRET_KEY']}",
            f"--s3_region_name={env.get('SPACES_REGION', 'us-east-1')}"]


def test_text_agent_job_survives_a_taskmanager_kill(fault_instance, tmp_path):
    """The streaming text-agent job, one TaskManager SIGKILL mid-stream.

    Runs last, on the module's instance, after the frontend job is stopped
    (the two would share the 2 cores). A ``TurnProducer`` publishes
    conversations of 3 turns (every 10th with a duplicate); after ~20 s of
    traffic and a completed checkpoint the TaskManager is killed and a new
    one started; traffic goes on through the restore; then the producer's
    last turn (15 minutes ahead) closes every session and archive window.
    Afterwards: every acknowledged turn in agent_turns (its key holds it
    once), none unknown; per session one agent_conversations row whose
    turn_count, tokens and cost are its stored turns'; per tenant, model and
    hour an agent_billing_hourly row with its stored turns' count, tokens
    and cost (a double or a lost turn in either shows as a difference); the
    archive holding every turn exactly once.
    """
    instance = fault_instance
    if instance.fault_run is not None:
        instance.fault_run.close()  # the frontend tests are done
    env = instance.env
    cluster = instance_cluster(instance)
    rest = cluster.rest
    pipelines = BackgroundPipelines(cluster, tmp_path)
    run_id = fw.new_run_id()
    topic = _create_topic(env["KAFKA_BOOTSTRAP"])
    prefix = f"faults-text-agent/{run_id}"
    producer = fw.TurnProducer(env["KAFKA_BOOTSTRAP"], topic, run_id, TURN_CONVERSATIONS_PER_S)
    figures = instance.figures.setdefault("text-agent TaskManager kill", {})
    try:
        _, jid, job_name = pipelines.start_streaming(
            "beam_pipelines.text_agent", lambda name: _text_agent_args(env, topic, prefix, name),
            "iheard-faults-text-agent")

        def describe():
            return (f"{rest.describe(jid)}\nproducer: {len(producer.acked)} acked, {producer.send_errors} send "
                    f"errors (last: {producer.last_error})\n{pipelines.log_tail(job_name, 30)}")

        try:
            producer.start()
            wait_for(lambda: len(fw.stored_turns(env, producer)) >= 200
                     and rest.checkpoint_counts(jid)["completed"] > 0, 180,
                     "200 turns stored and a checkpoint completed", interval_s=3)
            restored = rest.checkpoint_counts(jid)["restored"]
            pids = instance.taskmanager_pids()
            assert pids, "no TaskManager to kill"
            for pid in pids:
                os.kill(pid, 9)
            instance.cluster_sh("up")
            back_at = time.monotonic()
            wait_for(lambda: rest.checkpoint_counts(jid)["restored"] > restored, 180, "the job restored")
            wait_for(lambda: rest.state(jid) == "RUNNING"
                     and all(v["status"] == "RUNNING" for v in rest.job(jid)["vertices"]), 240, "RUNNING again")
            before = len(producer.snapshot()[0])
            wait_for(lambda: len(producer.snapshot()[0]) >= before + 200, 120, "200 more turns acknowledged")
            flush_id = producer.finish()
            acked, _ = producer.snapshot()
            wait_for(lambda: not fw.check_turns(env, producer, acked)["lost"], CATCH_UP_TIMEOUT_S,
                     "every acknowledged turn stored", interval_s=3)
            figures["recovery_s"] = round(time.monotonic() - back_at, 1)
            with fw._pg(env) as conn:
                wait_for(lambda: conn.execute("SELECT 1 FROM agent_turns WHERE session_id = %s",
                                              (flush_id.split("/")[0],)).fetchone(), CATCH_UP_TIMEOUT_S,
                         "the last turn stored", interval_s=3)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{describe()}") from e
        turns = fw.check_turns(env, producer, acked)
        figures.update(turns=turns["acked"], lost=len(turns["lost"]))
        assert not turns["lost"] and not turns["unknown"], {k: v[:5] if isinstance(v, list) else v
                                                            for k, v in turns.items()}

        # Early panes fire every 30 s of processing time, the on-time ones
        # once the last turn moves the watermark: wait for the rows to settle.
        def settled(check, keys):
            result = check()
            return result if not any(result[k] for k in keys) else None

        for what, check, keys in (
                ("conversations", lambda: fw.check_conversations(env, producer), ("missing", "split", "wrong", "unknown")),
                ("billing", lambda: fw.check_billing(env, producer), ("wrong", "unknown")),
                ("archive", lambda: fw.check_turn_archive(env, producer, prefix), ("lost", "doubled", "unknown"))):
            try:
                wait_for(lambda: settled(check, keys), 180, f"{what} exact", interval_s=5)
            except TimeoutError:
                pass
            result = check()
            bad = {k: (v[:5] if isinstance(v, list) else dict(list(v.items())[:5])) for k, v in result.items()
                   if k in keys and v}
            figures[what] = {k: len(v) for k, v in result.items() if k in keys}
            assert not bad, f"text agent {what} after a TaskManager kill: {bad}\n{result.get('examples', '')}\n" \
                            f"{describe()}"
        assert rest.state(jid) == "RUNNING"
    finally:
        producer.stop()
        pipelines.stop_all()
