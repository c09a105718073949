"""The collector's pure parts: body parsing and routing, rate limiting, status
caching, the load tool's percentile, the settings' checks."""
import json

import pytest

from collector.events import BodyError, parse_body, prepare_event, source_of
from collector.loadtest import LoadStats, percentile
from collector.ratelimit import TokenBuckets
from collector.settings import CollectorSettings, parse_args
from monitoring.probes import StatusCache

TOPICS = {"frontend": "fe-topic", "text_agent": "ta-topic"}

WIDGET_OPEN = {
    "event_type": "widget_open", "session_id": "sess-1", "user_id": "u1",
    "page_url": "https://shop.example.com/pricing", "widget_id": "sales-assistant",
    "interaction_type": "click", "timestamp": 1767225600000,
    "click_coordinates": {"x": 10, "y": 20}, "custom_field": "kept",
}
TURN = {
    "event_type": "text_agent.turn_completed", "session_id": "sess-2", "turn_id": "turn_1",
    "model_name": "claude-3-sonnet", "tokens_in": 812, "tokens_out": 164, "latency_ms": 2310.4,
    "response_text": "Our plans start at $49.", "tools_used": [], "tool_results": {},
    "timestamp": 1767225600123,
}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_single_event_routes_to_frontend_keyed_by_session_and_keeps_the_payload():
    [record] = parse_body(json.dumps(WIDGET_OPEN).encode(), TOPICS)
    assert (record.source, record.topic, record.key) == ("frontend", "fe-topic", b"sess-1")
    assert json.loads(record.value) == WIDGET_OPEN  # unknown fields kept, nothing added
    assert record.timestamp_ms == 1767225600000


def test_batch_routes_each_event_by_its_type():
    records = parse_body(json.dumps([WIDGET_OPEN, TURN]).encode(), TOPICS)
    assert [(r.topic, r.key) for r in records] == [("fe-topic", b"sess-1"), ("ta-topic", b"sess-2")]
    assert source_of({"event_type": "text_agent_turn_completed"}) == "text_agent"
    assert source_of({"eventType": "page_view"}) == "frontend"


@pytest.mark.parametrize("body,kind,fragment", [
    (b"", "invalid_json", "empty"),
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"42", "not_an_object", "got int"),
    (b"[]", "empty_batch", "empty array"),
])
def test_unusable_bodies_are_refused_with_their_kind(body, kind, fragment):
    with pytest.raises(BodyError) as err:
        parse_body(body, TOPICS)
    assert err.value.kind == kind and fragment in str(err.value)


def test_a_batch_with_invalid_events_is_refused_whole_with_every_reason():
    bad_type = dict(WIDGET_OPEN, session_id="  ")
    bad_turn = dict(TURN, tokens_in=-1)
    with pytest.raises(BodyError) as err:
        parse_body(json.dumps([WIDGET_OPEN, bad_type, "x", bad_turn]).encode(), TOPICS)
    assert err.value.kind == "invalid_event"
    reasons = {r.index: r.reason for r in err.value.rejected}
    assert sorted(reasons) == [1, 2, 3]
    assert reasons[1].startswith("session_id:")
    assert "JSON object" in reasons[2]
    assert reasons[3].startswith("tokens_in:")
    assert "3 of 4 events invalid" in str(err.value)


def test_too_many_events_is_its_own_refusal():
    with pytest.raises(BodyError) as err:
        parse_body(json.dumps([WIDGET_OPEN] * 4).encode(), TOPICS, max_events=3)
    assert err.value.kind == "too_many_events" and "4 events, at most 3" in str(err.value)


def test_prepare_event_can_force_the_source_model():
    with pytest.raises(ValueError, match="turn_id: field required"):
        prepare_event(dict(WIDGET_OPEN), TOPICS, source="text_agent")
    with pytest.raises(ValueError, match="unknown source"):
        prepare_event(dict(WIDGET_OPEN), TOPICS, source="marketo")


def test_token_bucket_allows_the_burst_then_the_rate_per_client():
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=1.0, burst=3, clock=clock)
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("b")  # another client has its own bucket
    assert buckets.retry_after_s("a") == pytest.approx(1.0)
    clock.now = 1.0
    assert [buckets.allow("a") for _ in range(2)] == [True, False]
    clock.now = 100.0  # refills to the burst, not beyond
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]


def test_token_buckets_forget_the_least_recent_client_past_the_cap():
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_clients=2, clock=clock)
    assert buckets.allow("a") and buckets.allow("b")
    assert not buckets.allow("a")
    assert buckets.allow("c")  # evicts b, the least recently seen
    assert len(buckets) == 2
    assert buckets.allow("b")  # b starts again with a full bucket
    with pytest.raises(ValueError):
        TokenBuckets(rate_per_s=0, burst=1)


def test_status_cache_computes_once_per_ttl():
    clock = FakeClock()
    calls = []
    cache = StatusCache(lambda: calls.append(1) or {"n": len(calls)}, ttl_s=5, clock=clock)
    assert cache.get() == {"n": 1}
    clock.now = 4.9
    assert cache.get() == {"n": 1}
    clock.now = 5.0
    assert cache.get() == {"n": 2}


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    stats = LoadStats()
    stats.sent(3)
    stats.ok(2, 0.010)
    stats.error("http_503", 1)
    summary = stats.summary(elapsed_s=2.0)
    assert summary["achieved_events_per_s"] == 1.0 and summary["errors"] == {"http_503": 1}
    assert summary["latency_ms"]["p50"] == 10.0


def test_settings_refuse_bad_values_and_parse_the_command_line():
    with pytest.raises(ValueError, match="kafka_bootstrap"):
        CollectorSettings(kafka_bootstrap="")
    with pytest.raises(ValueError, match="http"):
        CollectorSettings(kafka_bootstrap="k:1", allowed_origins=("shop.example.com",))
    settings, args = parse_args(["--kafka_bootstrap=k:1", "--allowed_origins=https://a.example, https://b.example",
                                 "--frontend_topic=fe", "--rate_limit_per_s=0", "--port=9"])
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.topics == {"frontend": "fe", "text_agent": "text_agent_turn_completed"}
    assert settings.rate_limit_per_s == 0 and args.port == 9
