"""WriteSessionState / WriteLiveKpis against the project's Redis.

Each test writes under its own key prefix, so tests don't share keys with
each other or with the pipeline tests.
"""
import datetime as dt
import uuid

import apache_beam as beam
import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from iheard_io.redis_io import WriteLiveKpis
from iheard_io.redis_io import WriteSessionState
from iheard_io.redis_io import read_live_kpis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture()
def prefix(client):
    p = f"it:redis:{uuid.uuid4().hex[:8]}:"
    yield p
    for key in client.scan_iter(match=p + "*", count=1000):
        client.delete(key)


def run(elements, transform):
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create(elements) | transform
        assert_that(failed, equal_to([]), label="NoFailures")


def now_minute_ms():
    """Start of the current UTC minute + 5 s, so events stay in one minute
    bucket and in the 'active' window."""
    now = dt.datetime.now(dt.timezone.utc).replace(second=5, microsecond=0)
    return int(now.timestamp() * 1000)


def test_session_state_is_a_hash_with_ttl_and_replay_safe(redis_url, client, prefix):
    base = now_minute_ms()
    v1 = {"session_id": "s1", "event_count": 3, "furthest_stage": "engaged",
          "last_event_at": base, "avg_engagement_score": 41.5, "pages": ["/a", "/b"],
          "user_id": None}
    v2 = dict(v1, event_count=5, furthest_stage="intent", last_event_at=base + 60_000)
    other = {"session_id": "s2", "event_count": 1, "last_event_at": base}
    transform = WriteSessionState(redis_url, key_prefix=prefix, ttl_seconds=600)

    run([v1, v2, other], transform)
    state = client.hgetall(prefix + "s1")
    assert state == {
        "session_id": "s1", "event_count": "5", "furthest_stage": "intent",
        "last_event_at": str(base + 60_000), "avg_engagement_score": "41.5",
        "pages": '["/a", "/b"]', "_version": str(base + 60_000)}
    assert 590 <= client.ttl(prefix + "s1") <= 600
    assert client.hget(prefix + "s2", "event_count") == "1"

    # Replay of everything, and the old version alone: the newest state stays.
    run([v1, v2, other], WriteSessionState(redis_url, key_prefix=prefix, ttl_seconds=600))
    run([v1], WriteSessionState(redis_url, key_prefix=prefix, ttl_seconds=600))
    assert client.hgetall(prefix + "s1") == state


def test_live_kpis_are_not_double_counted_on_replay(redis_url, client, prefix):
    base = now_minute_ms()
    events = []
    # 3 sessions; 12 page views, 4 widget opens, 2 conversions (one of them
    # also sent twice by the producer: same event_id).
    for i in range(12):
        events.append({"event_id": f"pv{i}", "session_id": f"s{i % 3}",
                       "event_type": "page_view", "timestamp_ms": base + i * 100})
    for i in range(4):
        events.append({"event_id": f"wo{i}", "session_id": f"s{i % 3}",
                       "event_type": "widget_open", "timestamp_ms": base + 2000 + i})
    conversions = [{"event_id": "cv1", "session_id": "s0", "event_type": "conversion",
                    "timestamp_ms": base + 3000},
                   {"event_id": "cv2", "session_id": "s1", "event_type": "conversion",
                    "timestamp_ms": base + 3001}]
    events += conversions + [dict(conversions[0])]

    def kpis():
        return read_live_kpis(client, key_prefix=prefix, now_ms=base + 10_000,
                              event_types=("page_view", "widget_open", "conversion"))

    minute = dt.datetime.fromtimestamp(base / 1000, tz=dt.timezone.utc).strftime("%Y%m%d%H%M")
    expected = {
        "active_sessions": 3,
        "conversions_today": 2,
        "events_per_minute": {"page_view": {minute: 12}, "widget_open": {minute: 4},
                              "conversion": {minute: 2}},
    }
    run(events, WriteLiveKpis(redis_url, key_prefix=prefix, batch_size=7))
    assert kpis() == expected
    # A replay (Flink restore from an older checkpoint) changes nothing.
    run(events, WriteLiveKpis(redis_url, key_prefix=prefix, batch_size=5))
    assert kpis() == expected
    # A session seen long ago drops out of "active"; an old replayed event
    # never moves a session's last-seen back (ZADD GT).
    run([{"event_id": "old", "session_id": "s9", "event_type": "page_view",
          "timestamp_ms": base - 3_600_000},
         {"event_id": "older-s0", "session_id": "s0", "event_type": "page_view",
          "timestamp_ms": base - 7_200_000}],
        WriteLiveKpis(redis_url, key_prefix=prefix))
    assert kpis()["active_sessions"] == 3
    assert float(client.zscore(prefix + "active_sessions", "s0")) == base + 3000
    assert 0 < client.ttl(f"{prefix}events:page_view:{minute}") <= 2 * 3600


def test_approximate_counts_use_hyperloglog(redis_url, client, prefix):
    base = now_minute_ms()
    events = [{"event_id": f"e{i}", "session_id": "s", "event_type": "message",
               "timestamp_ms": base + i} for i in range(50)]
    for _ in range(2):
        run(events, WriteLiveKpis(redis_url, key_prefix=prefix, approximate_counts=True))
    minute = dt.datetime.fromtimestamp(base / 1000, tz=dt.timezone.utc).strftime("%Y%m%d%H%M")
    counted = read_live_kpis(client, key_prefix=prefix, now_ms=base + 1000,
                             event_types=("message",), approximate_counts=True)
    # HyperLogLog is approximate in general, but for 50 ids its sparse
    # encoding is within 1 of the true count.
    assert abs(counted["events_per_minute"]["message"][minute] - 50) <= 1


def test_unwritable_elements_come_out_as_failed_records(redis_url, prefix):
    """Elements that cannot become commands, and batches for a server that
    stays unreachable after the retries, go to the failed output."""
    good = {"event_id": "ok", "session_id": "s", "event_type": "page_view",
            "timestamp_ms": now_minute_ms(), "_source": {"topic": "t", "partition": 1, "offset": 7}}
    bad = {"event_id": "no-type", "session_id": "s", "timestamp_ms": 1,
           "_source": {"topic": "t", "partition": 1, "offset": 8}}

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create([good, bad]) | WriteLiveKpis(redis_url, key_prefix=prefix, pipeline="frontend")
        assert_that(failed | beam.Map(lambda f: (f.source_offset, f.error_class, f.stage, f.pipeline)),
                    equal_to([(8, "ValueError", "sink:redis", "frontend")]))

    # Nothing listens on port 1: past the retry budget, a dead letter.
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create([good]) | WriteLiveKpis(
            "redis://127.0.0.1:1/0", key_prefix=prefix, retry_budget_seconds=0.3,
            retry_backoff_seconds=0.05, pipeline="frontend")
        assert_that(failed | beam.Map(lambda f: (f.source_offset, f.error_class)),
                    equal_to([(7, "StoreUnavailable")]))


def test_a_command_redis_refuses_fails_only_its_element(redis_url, client, prefix):
    """WRONGTYPE on one session's key (someone wrote a string there): that
    element is a dead letter, the rest of the batch is written."""
    base = now_minute_ms()
    client.set(prefix + "s-taken", "not a hash")
    sessions = [{"session_id": f"s{i}", "event_count": i, "last_event_at": base,
                 "_source": {"topic": "t", "partition": 0, "offset": i}} for i in range(5)]
    sessions.insert(2, {"session_id": "s-taken", "event_count": 1, "last_event_at": base,
                        "_source": {"topic": "t", "partition": 0, "offset": 99}})
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        failed = p | beam.Create(sessions) | WriteSessionState(redis_url, key_prefix=prefix)
        assert_that(failed | beam.Map(lambda f: (f.source_offset, f.error_class, f.stage)),
                    equal_to([(99, "ResponseError", "sink:redis")]))
    assert [client.hget(f"{prefix}s{i}", "event_count") for i in range(5)] == [str(i) for i in range(5)]
    assert client.get(prefix + "s-taken") == "not a hash"
