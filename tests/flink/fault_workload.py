"""The fault tests' workload and checks (tests/flink/test_faults.py, benchmarks/fault_bench.py).

A ``SteadyProducer`` publishes visits to a topic of the run's own at a steady
rate from a thread: each visit is one session of ``EVENTS_PER_VISIT`` events
sent together (payload ``event_id`` ``<run>-<visit>-<i>``, event time = the
wall clock when the visit is made), every ``DUPLICATE_EVERY``-th visit sends
its first event twice (a producer retry the job must de-duplicate) and every
``BROKEN_EVERY``-th visit is followed by one record that is not JSON (a dead
letter). It remembers what it attempted and what the broker acknowledged
(acks=all); the checks compare the sinks against that:

* ``frontend_analytics``: every acknowledged valid event (lost), nothing
  that was never attempted;
* ``frontend_sessions``: per session one row whose ``event_count`` is the
  number of distinct events of the session in ``frontend_analytics``
  (doubled: more; lost: fewer or no row);
* Redis: each session hash's ``event_count`` as in PostgreSQL, each event id
  in its per-minute KPI set;
* the S3 archive: each stored event exactly once (doubled: in two files);
* dead letters: every acknowledged broken record in ``failed_events`` and on
  the dead-letter topic.

Why wall-clock event times and whole visits: records reach the source in
event-time order, so none is late, except visits the producer retried
across a broker outage; those arrive whole and open sessions of their own,
so every session row is deterministic whatever the faults (see
tests/flink/test_frontend_streaming.py on late events restating sessions).
Sessions close after ``SESSION_GAP_S`` of event time; ``finish`` sends one
last event 15 minutes ahead, which moves the watermark past every 5-minute
archive window so the archive can be checked (that event is left out of the
session and archive checks).
"""
from __future__ import annotations

import collections
import io
import json
import threading
import time
import typing
import uuid

from iheard_io import settings

EVENTS_PER_VISIT = 4
DUPLICATE_EVERY = 10
BROKEN_EVERY = 25
SESSION_GAP_S = 5
STUCK_AFTER_S = 10.0
SURGE_IN_FLIGHT = 5_000
SESSION_PREFIX = "iheard:frontend:session:"
KPI_PREFIX = "iheard:kpi:"
EVENT_TYPES = ("page_view", "widget_open", "message_sent", "conversion")
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def _payload(run_id: str, visit: int, i: int, ts_ms: int) -> dict:
    return {
        "event_id": f"{run_id}-{visit}-{i}", "event_type": EVENT_TYPES[i % len(EVENT_TYPES)],
        "session_id": f"flt-{run_id}-{visit}", "user_id": f"user-{run_id}-{visit % 97}",
        "page_url": f"https://shop.example.com/p/{visit % 13}", "page_title": "Shop", "referrer": "",
        "user_agent": UA, "screen_resolution": "1920x1080", "viewport_size": "1903x969",
        "widget_id": "sales-assistant", "interaction_type": "click", "timestamp": ts_ms,
        "time_on_page": 5, "element_id": None, "element_class": None, "element_text": None,
        "click_coordinates": None, "country": "US", "timezone": "America/New_York",
    }


class SteadyProducer:
    """Publishes visits at ``visits_per_s`` from a thread until ``stop``."""

    def __init__(self, bootstrap: str, topic: str, run_id: str, visits_per_s: float = 20.0):
        self.bootstrap = bootstrap
        self.topic = topic
        self.run_id = run_id
        self.interval_s = 1.0 / visits_per_s
        self.attempted: typing.Dict[str, dict] = {}  # event_id -> payload
        self.acked: typing.Set[str] = set()
        self.broken_attempted: typing.Set[str] = set()
        self.broken_acked: typing.Set[str] = set()
        self.send_errors = 0
        self.recreated = 0
        self.last_error: typing.Optional[str] = None
        self._last_ack = self._created_at = time.monotonic()
        self._visit = 0
        self._surge_until = 0  # len(attempted) to reach at full speed (``surge``)
        self._in_flight = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: typing.Optional[threading.Thread] = None
        self._producer = None

    # -------------------------------------------------------------- sending

    def _new_producer(self):
        from kafka import KafkaProducer

        # Short timeouts: while the broker is down a send fails within
        # seconds (not acknowledged) instead of piling up for minutes.
        return KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, retries=2,
                             request_timeout_ms=5000, max_block_ms=5000, delivery_timeout_ms=10000,
                             reconnect_backoff_max_ms=1000)

    def _visit_records(self, visit: int, now_ms: int) -> typing.List[typing.Tuple[str, str, typing.Optional[dict], str]]:
        """(kind, key, payload, text) of one visit: ``kind`` "event" (``key``
        its event id) or "broken" (``key`` the raw text)."""
        records = []
        for i in range(EVENTS_PER_VISIT):
            payload = _payload(self.run_id, visit, i, now_ms + i)
            records.append(("event", payload["event_id"], payload, json.dumps(payload)))
        if visit % DUPLICATE_EVERY == 0:
            records.insert(1, records[0])  # the same bytes twice
        if visit % BROKEN_EVERY == 0:
            raw = f"{{not json {self.run_id}-b{visit}"
            records.append(("broken", raw, None, raw))
        return records

    def _send_visit(self) -> None:
        visit = self._visit
        self._visit += 1
        now_ms = int(time.time() * 1000)
        records = self._visit_records(visit, now_ms)
        with self._lock:
            for kind, key, payload, _ in records:
                if kind == "event":
                    self.attempted[key] = payload
                else:
                    self.broken_attempted.add(key)
        self._recreate_if_stuck()
        if self._producer is None:
            self._producer = self._new_producer()
            self._created_at = time.monotonic()
        # Asynchronous: the broker's acknowledgement marks the record acked
        # (callbacks run on the producer's I/O thread); the loop never waits
        # on a send, so a slow or absent broker does not slow the rate.
        for kind, key, _, text in records:
            future = self._producer.send(self.topic, value=text.encode(), timestamp_ms=now_ms)
            with self._lock:
                self._in_flight += 1
            future.add_callback(self._on_ack, kind, key)
            future.add_errback(self._on_error)

    def _on_ack(self, kind, key, _metadata) -> None:
        with self._lock:
            (self.acked if kind == "event" else self.broken_acked).add(key)
            self._last_ack = time.monotonic()
            self._in_flight -= 1

    def _on_error(self, exc) -> None:
        with self._lock:
            self._in_flight -= 1
        self.send_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def surge(self, events: int) -> None:
        """Publishes about ``events`` more events as fast as the client sends
        them (a backlog for the job), then goes back to the steady rate."""
        with self._lock:
            self._surge_until = len(self.attempted) + events

    @property
    def surging(self) -> bool:
        with self._lock:
            return len(self.attempted) < self._surge_until

    def _recreate_if_stuck(self) -> None:
        """kafka-python's producer does not always reconnect after a broker
        restart (seen here: records wait in its buffer, neither acknowledged
        nor failed, for minutes). Without an acknowledgement for
        ``STUCK_AFTER_S`` the producer is replaced (its buffered records stay
        unacknowledged, so they are not expected)."""
        now = time.monotonic()
        if self._producer is None or now - max(self._last_ack, self._created_at) < STUCK_AFTER_S:
            return
        old, self._producer = self._producer, None
        self.recreated += 1
        threading.Thread(target=lambda: _close_quietly(old), daemon=True).start()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._send_visit()
            except Exception as exc:  # noqa: BLE001 - e.g. no metadata while the broker is down
                self.send_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
            if self.surging:
                # Full speed, but no more than SURGE_IN_FLIGHT unacknowledged
                # records (the client's buffer would block, then fail, sends).
                give_up_at = time.monotonic() + STUCK_AFTER_S  # a stuck client: replaced on the next send
                while self._in_flight > SURGE_IN_FLIGHT and time.monotonic() < give_up_at:
                    if self._stop.wait(0.01):
                        break
                next_at = time.monotonic()
                continue
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind (an outage): carry on at the rate, no burst

    def start(self) -> "SteadyProducer":
        self._thread = threading.Thread(target=self._loop, name=f"producer-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=30)  # the last acknowledgements
                self._producer.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
            self._producer = None

    def finish(self) -> str:
        """Stops the thread and sends the watermark-moving last event; returns its event id."""
        self.stop()
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        # 15 minutes ahead: past every open 5-minute archive window, inside
        # the hour Kafka accepts ahead of its clock (message.timestamp.after.max.ms).
        key, payload = self._flush_payload(int(time.time() * 1000) + 15 * 60_000)
        producer.send(self.topic, value=json.dumps(payload).encode(), timestamp_ms=payload["timestamp"]).get(30)
        producer.close()
        with self._lock:
            self.attempted[key] = payload
            self.acked.add(key)
        return key

    def _flush_payload(self, ts_ms: int) -> typing.Tuple[str, dict]:
        payload = _payload(self.run_id, -1, 0, ts_ms)
        payload["session_id"] = f"flt-{self.run_id}-flush"
        payload["event_id"] = self.flush_id
        return self.flush_id, payload

    def snapshot(self) -> typing.Tuple[typing.Set[str], typing.Set[str]]:
        """(acknowledged event ids, acknowledged broken records) so far."""
        with self._lock:
            return set(self.acked), set(self.broken_acked)

    @property
    def flush_id(self) -> str:
        return f"{self.run_id}-flush"

    @property
    def session_like(self) -> str:
        return f"flt-{self.run_id}-%"


def _close_quietly(producer) -> None:
    try:
        producer.close(timeout=5)
    except Exception:  # noqa: BLE001
        pass


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


# ------------------------------------------------------------------ readers


def _pg(env):
    import psycopg

    return psycopg.connect(settings.postgres_dsn(env), autocommit=True, connect_timeout=5)


def stored_events(env, producer: SteadyProducer) -> typing.Dict[str, typing.Tuple[str, str, int, int]]:
    """event_id -> (session_id, event_type, epoch ms, rows) in frontend_analytics."""
    with _pg(env) as conn:
        rows = conn.execute(
            "SELECT event_id, min(session_id), min(event_type), "
            "min((extract(epoch FROM timestamp) * 1000)::bigint), count(*) "
            "FROM frontend_analytics WHERE session_id LIKE %s GROUP BY event_id",
            (producer.session_like,)).fetchall()
    return {e: (s, t, int(ts), int(n)) for e, s, t, ts, n in rows}


def stored_count(env, producer: SteadyProducer) -> int:
    """Rows of the run in frontend_analytics."""
    with _pg(env) as conn:
        return int(conn.execute("SELECT count(*) FROM frontend_analytics WHERE session_id LIKE %s",
                                (producer.session_like,)).fetchone()[0])


def session_rows(env, producer: SteadyProducer) -> typing.Dict[str, typing.List[int]]:
    """session_id -> event_count of each of its rows in frontend_sessions."""
    out: typing.Dict[str, typing.List[int]] = collections.defaultdict(list)
    with _pg(env) as conn:
        for sid, n in conn.execute(
                "SELECT session_id, event_count FROM frontend_sessions WHERE session_id LIKE %s",
                (producer.session_like,)).fetchall():
            out[sid].append(int(n))
    return dict(out)


def failed_raws(env, topic: str) -> typing.Dict[str, int]:
    """raw_payload -> rows in failed_events for ``topic``."""
    with _pg(env) as conn:
        rows = conn.execute("SELECT raw_payload, count(*) FROM failed_events WHERE source_topic = %s "
                            "GROUP BY raw_payload", (topic,)).fetchall()
    return {r: int(n) for r, n in rows}


def dead_letter_topic_raws(env, dlq_topic: str, source_topic: str) -> typing.Counter:
    """raw -> records on the dead-letter topic that came from ``source_topic``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP"], enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(dlq_topic, p) for p in sorted(consumer.partitions_for_topic(dlq_topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: typing.Counter = collections.Counter()
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in parts) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for rec in records:
                    failed = json.loads(rec.value)
                    if failed.get("source_topic") == source_topic:
                        out[failed.get("raw")] += 1
        return out
    finally:
        consumer.close()


def redis_client(env):
    import redis

    return redis.Redis.from_url(settings.redis_url(env), decode_responses=True, socket_timeout=10)


def archived_records(env, prefix: str, key_of: typing.Callable[[dict], str]) -> typing.Counter:
    """``key_of(record)`` -> times it is in the Avro files under ``prefix``."""
    import boto3
    import fastavro

    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], aws_access_key_id=env["SPACES_ACCESS_KEY"],
                      aws_secret_access_key=env["SPACES_SECRET_KEY"], region_name=env.get("SPACES_REGION", "us-east-1"))
    out: typing.Counter = collections.Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["ARCHIVE_BUCKET"], Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".avro"):
                body = s3.get_object(Bucket=env["ARCHIVE_BUCKET"], Key=obj["Key"])["Body"].read()
                for rec in fastavro.reader(io.BytesIO(body)):
                    out[key_of(rec)] += 1
    return out


def archived_ids(env, prefix: str) -> typing.Counter:
    """event_id -> times it is in the Avro files under ``prefix``."""
    return archived_records(env, prefix, lambda rec: rec["event_id"])


def snapshot_archive(env) -> typing.Dict[str, bytes]:
    """Every object of the archive bucket (moto keeps them in memory only)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], aws_access_key_id=env["SPACES_ACCESS_KEY"],
                      aws_secret_access_key=env["SPACES_SECRET_KEY"], region_name=env.get("SPACES_REGION", "us-east-1"))
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["ARCHIVE_BUCKET"]):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=env["ARCHIVE_BUCKET"], Key=obj["Key"])["Body"].read()
    return out


def restore_archive(env, objects: typing.Mapping[str, bytes]) -> None:
    """Puts back the objects of ``snapshot_archive`` that a restarted moto lost."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], aws_access_key_id=env["SPACES_ACCESS_KEY"],
                      aws_secret_access_key=env["SPACES_SECRET_KEY"], region_name=env.get("SPACES_REGION", "us-east-1"))
    present = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["ARCHIVE_BUCKET"]):
        present.update(obj["Key"] for obj in page.get("Contents", []))
    for key, body in objects.items():
        if key not in present:
            s3.put_object(Bucket=env["ARCHIVE_BUCKET"], Key=key, Body=body)


# ------------------------------------------------------------------- checks


def check_events(env, producer: SteadyProducer, acked: typing.Set[str]) -> dict:
    """frontend_analytics against the acknowledged events ``acked``."""
    stored = stored_events(env, producer)
    attempted = set(producer.attempted)
    return {
        "acked": len(acked),
        "stored": len(stored),
        "lost": sorted(acked - set(stored)),
        "doubled": sorted(e for e, row in stored.items() if row[3] > 1),
        "unknown": sorted(set(stored) - attempted),
    }


def check_dead_letters(env, producer: SteadyProducer, topic: str, dlq_topic: str,
                       broken_acked: typing.Set[str]) -> dict:
    table = failed_raws(env, topic)
    on_topic = dead_letter_topic_raws(env, dlq_topic, topic)
    return {
        "acked": len(broken_acked),
        "lost_in_table": sorted(broken_acked - set(table)),
        "doubled_in_table": sorted(r for r, n in table.items() if n > 1),
        "lost_on_topic": sorted(broken_acked - set(on_topic)),
        "unknown": sorted(set(table) - producer.broken_attempted),
    }


def check_kpis(env, producer: SteadyProducer, event_ids: typing.Iterable[str]) -> typing.List[str]:
    """Event ids missing from their per-minute KPI set in Redis."""
    r = redis_client(env)
    missing = []
    pipe = r.pipeline(transaction=False)
    ids = sorted(event_ids)
    for event_id in ids:
        payload = producer.attempted[event_id]
        minute = time.strftime("%Y%m%d%H%M", time.gmtime(payload["timestamp"] / 1000))
        pipe.sismember(f"{KPI_PREFIX}events:{payload['event_type']}:{minute}", event_id)
    for event_id, present in zip(ids, pipe.execute()):
        if not present:
            missing.append(event_id)
    return missing


def check_sessions(env, producer: SteadyProducer) -> dict:
    """frontend_sessions and Redis session hashes against frontend_analytics."""
    stored = stored_events(env, producer)
    per_session = collections.Counter(row[0] for e, row in stored.items() if e != producer.flush_id)
    rows = session_rows(env, producer)
    r = redis_client(env)
    pipe = r.pipeline(transaction=False)
    sessions = sorted(per_session)
    for sid in sessions:
        pipe.hget(SESSION_PREFIX + sid, "event_count")
    in_redis = dict(zip(sessions, pipe.execute()))
    return {
        "sessions": len(per_session),
        "missing_rows": sorted(s for s in per_session if s not in rows),
        "split_rows": sorted(s for s in per_session if len(rows.get(s, [])) > 1),
        "doubled": sorted(s for s in per_session if rows.get(s) and max(rows[s]) > per_session[s]),
        "short": sorted(s for s in per_session if rows.get(s) and max(rows[s]) < per_session[s]),
        "redis_mismatch": sorted(s for s in per_session
                                 if in_redis.get(s) is None or int(in_redis[s]) != per_session[s]),
    }


def describe_sessions(env, producer: SteadyProducer, sessions: typing.Iterable[str]) -> str:
    """Rows and stored events of ``sessions``: context for a failed session check."""
    lines = []
    with _pg(env) as conn:
        for sid in sessions:
            rows = conn.execute(
                "SELECT (extract(epoch FROM window_start) * 1000)::bigint, (extract(epoch FROM window_end) * 1000)::bigint, "
                "event_count, pane_index FROM frontend_sessions WHERE session_id = %s ORDER BY 1", (sid,)).fetchall()
            events = conn.execute(
                "SELECT event_id, (extract(epoch FROM timestamp) * 1000)::bigint FROM frontend_analytics "
                "WHERE session_id = %s ORDER BY 2", (sid,)).fetchall()
            lines.append(f"{sid}: rows (start, end, count, pane) {rows}; events {events}")
    return "\n".join(lines)


def check_archive(env, producer: SteadyProducer, prefix: str) -> dict:
    stored = set(stored_events(env, producer)) - {producer.flush_id}
    archived = archived_ids(env, prefix)
    return {
        "stored": len(stored),
        "archived": len(archived),
        "lost": sorted(stored - set(archived)),
        "doubled": sorted(e for e, n in archived.items() if n > 1),
    }


# ---------------------------------------------------------- text agent ---
# The text-agent fault test (test_faults.py::test_text_agent_job_survives_a_
# taskmanager_kill): a ``TurnProducer`` publishes conversations of
# ``TURNS_PER_CONVERSATION`` turns (sent together, event time = the wall
# clock), every ``DUPLICATE_EVERY``-th with its first turn twice; tenants
# rotate over ``TURN_TENANTS``. The checks read agent_turns and compare the
# aggregates with what those turns imply.

TURNS_PER_CONVERSATION = 3
TURN_TENANTS = 3
TURN_MODEL = "gpt-4o-mini"


def _turn_payload(run_id: str, conversation: int, i: int, ts_ms: int) -> dict:
    return {
        "event_type": "text_agent.turn_completed",
        "session_id": f"tafl-{run_id}-{conversation}", "turn_id": f"t{i}",
        "user_id": f"user-{run_id}-{conversation % 53}", "tenant_id": f"tenant-{run_id}-{conversation % TURN_TENANTS}",
        "channel": "web_chat", "model_name": TURN_MODEL,
        "tokens_in": 100 + conversation % 50, "tokens_out": 40 + 7 * i, "latency_ms": 850.0,
        "response_text": "The Pro plan is $49 per seat per month.", "user_message": "What does the Pro plan cost?",
        "tools_used": ["pricing"], "tool_results": {"pricing": {"success": True}},
        "conversation_context": {"previous_turns": i, "topic_history": [], "user_intent": "pricing_inquiry"},
        "timestamp": ts_ms,
    }


def turn_id_of(session_id: str, turn_id: str) -> str:
    """The key a ``TurnProducer`` remembers a turn by (agent_turns' primary key)."""
    return f"{session_id}/{turn_id}"


class TurnProducer(SteadyProducer):
    """``SteadyProducer`` of text-agent conversations (``visits_per_s`` = conversations per second)."""

    def _visit_records(self, visit, now_ms):
        records = []
        for i in range(TURNS_PER_CONVERSATION):
            payload = _turn_payload(self.run_id, visit, i, now_ms + i)
            key = turn_id_of(payload["session_id"], payload["turn_id"])
            records.append(("event", key, payload, json.dumps(payload)))
        if visit % DUPLICATE_EVERY == 0:
            records.insert(1, records[0])  # a producer retry: the same bytes twice
        return records

    def _flush_payload(self, ts_ms):
        payload = _turn_payload(self.run_id, -1, 0, ts_ms)
        payload["session_id"] = f"tafl-{self.run_id}-flush"
        payload["tenant_id"] = f"flush-{self.run_id}"
        return turn_id_of(payload["session_id"], "t0"), payload

    @property
    def flush_id(self) -> str:
        return turn_id_of(f"tafl-{self.run_id}-flush", "t0")

    @property
    def session_like(self) -> str:
        return f"tafl-{self.run_id}-%"


class StoredTurn(typing.NamedTuple):
    session_id: str
    tenant_id: str
    model: str
    timestamp_ms: int
    tokens_in: int
    tokens_out: int
    cost_usd: float


def stored_turns(env, producer: TurnProducer) -> typing.Dict[str, StoredTurn]:
    """turn key -> its agent_turns row (the flush turn left out)."""
    with _pg(env) as conn:
        rows = conn.execute(
            "SELECT session_id, turn_id, tenant_id, model, (extract(epoch FROM timestamp) * 1000)::bigint, "
            "tokens_in, tokens_out, coalesce(estimated_cost_usd, 0)::float8 FROM agent_turns "
            "WHERE session_id LIKE %s", (producer.session_like,)).fetchall()
    out = {turn_id_of(s, t): StoredTurn(s, tenant, model, int(ts), int(i), int(o), float(c))
           for s, t, tenant, model, ts, i, o, c in rows}
    out.pop(producer.flush_id, None)
    return out


def check_turns(env, producer: TurnProducer, acked: typing.Set[str]) -> dict:
    """agent_turns against the acknowledged turns (its primary key holds each turn once)."""
    stored = stored_turns(env, producer)
    acked = acked - {producer.flush_id}
    return {"acked": len(acked), "stored": len(stored), "lost": sorted(acked - set(stored)),
            "unknown": sorted(set(stored) - set(producer.attempted))}


def _same(a: typing.Tuple, b: typing.Tuple) -> bool:
    """Counts and token sums equal, costs within rounding (DECIMAL(10,6) per turn)."""
    return a[:-1] == b[:-1] and abs(a[-1] - b[-1]) < 1e-5 * max(1, a[0])


def check_conversations(env, producer: TurnProducer) -> dict:
    """agent_conversations against agent_turns: per session one row whose
    turn_count, tokens and cost are its stored turns'."""
    expected: typing.Dict[str, list] = collections.defaultdict(lambda: [0, 0, 0, 0.0])
    for turn in stored_turns(env, producer).values():
        e = expected[turn.session_id]
        e[0] += 1
        e[1] += turn.tokens_in
        e[2] += turn.tokens_out
        e[3] += turn.cost_usd
    rows: typing.Dict[str, list] = collections.defaultdict(list)
    with _pg(env) as conn:
        for sid, n, t_in, t_out, cost in conn.execute(
                "SELECT session_id, turn_count, tokens_in, tokens_out, coalesce(estimated_cost_usd, 0)::float8 "
                "FROM agent_conversations WHERE session_id LIKE %s", (producer.session_like,)).fetchall():
            rows[sid].append((int(n), int(t_in), int(t_out), float(cost)))
    return {
        "conversations": len(expected),
        "missing": sorted(s for s in expected if s not in rows),
        "split": sorted(s for s in expected if len(rows.get(s, ())) > 1),
        "wrong": sorted(s for s in expected if len(rows.get(s, ())) == 1 and not _same(rows[s][0], tuple(expected[s]))),
        "unknown": sorted(s for s in rows if s not in expected and s != producer.flush_id.split("/")[0]),
        "examples": {s: {"expected": tuple(expected[s]), "rows": rows.get(s)} for s in sorted(expected)
                     if len(rows.get(s, ())) != 1 or not _same(rows[s][0], tuple(expected[s]))},
    }


def check_billing(env, producer: TurnProducer) -> dict:
    """agent_billing_hourly against agent_turns: per (tenant, model, UTC hour)
    the stored turns' count, tokens and cost."""
    expected: typing.Dict[tuple, list] = collections.defaultdict(lambda: [0, 0, 0, 0.0])
    for turn in stored_turns(env, producer).values():
        e = expected[(turn.tenant_id, turn.model, turn.timestamp_ms // 3_600_000 * 3_600_000)]
        e[0] += 1
        e[1] += turn.tokens_in
        e[2] += turn.tokens_out
        e[3] += turn.cost_usd
    with _pg(env) as conn:
        rows = {(tenant, model, int(hour)): (int(n), int(t_in), int(t_out), float(cost))
                for tenant, model, hour, n, t_in, t_out, cost in conn.execute(
                    "SELECT tenant_id, model, (extract(epoch FROM hour) * 1000)::bigint, turns, tokens_in, "
                    "tokens_out, estimated_cost_usd::float8 FROM agent_billing_hourly WHERE tenant_id LIKE %s",
                    (f"tenant-{producer.run_id}-%",)).fetchall()}
    return {
        "rows": len(expected),
        "turns": sum(e[0] for e in expected.values()),
        "wrong": {k: {"expected": tuple(v), "row": rows.get(k)} for k, v in sorted(expected.items())
                  if k not in rows or not _same(rows[k], tuple(v))},
        "unknown": sorted(k for k in rows if k not in expected),
    }


def archived_turns(env, prefix: str) -> typing.Counter:
    """turn key -> times it is in the Avro files under ``prefix``."""
    return archived_records(env, prefix, lambda rec: turn_id_of(rec["session_id"], rec["turn_id"]))


def check_turn_archive(env, producer: TurnProducer, prefix: str) -> dict:
    stored = set(stored_turns(env, producer))
    archived = archived_turns(env, prefix)
    archived.pop(producer.flush_id, None)
    return {"stored": len(stored), "archived": len(archived), "lost": sorted(stored - set(archived)),
            "doubled": sorted(k for k, n in archived.items() if n > 1),
            "unknown": sorted(set(archived) - stored)}
