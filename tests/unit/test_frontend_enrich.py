"""Enrichment: hand-computed scores, UA parsing, categories, attribution, the DoFn."""
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.events import FrontendEvent
from schemas.tables import FRONTEND_ANALYTICS, row_values
from transforms.frontend_enrich import (
    EnrichFrontendEvents,
    EnrichmentConfig,
    _EnrichFn,
    enrich_frontend_event,
    parse_user_agent,
)
from transforms.parse import parse_record
from tests.unit.conftest import IPHONE_UA, WIDGET_OPEN, fn_api_runner

CONFIG = EnrichmentConfig()


def event(**changes):
    return parse_record(dict(WIDGET_OPEN, **changes), FrontendEvent)


def enrich(**changes):
    return enrich_frontend_event(event(**changes), CONFIG)


def test_all_frontend_analytics_columns_present_and_insertable():
    out = enrich()
    assert set(FRONTEND_ANALYTICS.columns) <= set(out)
    values = row_values(FRONTEND_ANALYTICS, out)
    assert values[FRONTEND_ANALYTICS.columns.index("timestamp")].isoformat() == "2024-01-15T10:30:00+00:00"
    json.dumps(out["transformation_metadata"])


def test_guide_widget_open_on_pricing_page_hand_computed():
    out = enrich()
    # widget_open on /pricing: the page is high intent, so the stage is product_interest.
    assert out["conversion_stage"] == "product_interest"
    assert out["event_stage"] == "widget_open"
    # engagement = 45 (product_interest) + 20*42/300 = 2.8 + 0 (no message)
    #            + 5 (element_id) + 5 (high-intent page) = 57.8 -> 58
    assert out["engagement_score"] == 58
    assert out["quality_score"] == 100  # every field present and valid
    assert out["transformation_metadata"]["warnings"] == []
    assert out["user_segment"] == "high_intent"
    assert (out["page_category"], out["device_type"], out["browser"], out["os"]) == (
        "pricing", "desktop", "Chrome", "Windows")
    assert (out["utm_source"], out["utm_medium"], out["utm_campaign"]) == ("google", "cpc", "spring_sale")
    assert out["referrer_source"] == "paid"  # utm_medium=cpc beats the google.com referrer
    assert out["country"] == "US"
    assert out["timestamp"] == "2024-01-15T10:30:00.000+00:00"


def test_plain_page_view_scores():
    out = enrich(event_type="page_view", page_url="https://acme.com/blog/post-1", element_id=None,
                 click_coordinates=None, time_on_page=150)
    # engagement = 10 (page_view) + 20*150/300 = 10 -> 20; no element, blog is not high intent
    assert out["engagement_score"] == 20
    assert out["conversion_stage"] == "page_view"
    assert out["user_segment"] == "engaged"  # time_on_page 150 >= 60
    assert out["page_category"] == "blog"


def test_message_sent_hand_computed():
    out = enrich(event_type="message_sent", page_url="https://acme.com/docs/setup", element_id=None,
                 click_coordinates=None, time_on_page=600, message_length=45)
    # 40 (user_message) + 20 (600 s capped at 300 -> full) + 10*45/200 = 2.25 -> 62.25 -> 62
    assert out["engagement_score"] == 62
    assert out["conversion_stage"] == "user_message" and out["user_segment"] == "engaged"
    assert out["page_category"] == "docs"


def test_conversion_maximum_score_is_100():
    out = enrich(event_type="demo_request", time_on_page=10_000, message_length=10_000)
    # 60 + 20 + 10 + 5 + 5 = 100 (clamp never needed but holds)
    assert out["engagement_score"] == 100
    assert out["conversion_stage"] == "conversion" and out["user_segment"] == "converted"


def test_new_visitor_minimal_event_quality_penalties():
    out = enrich_frontend_event(
        parse_record({"event_type": "page_view", "session_id": "s", "timestamp": 1705314600000},
                     FrontendEvent), CONFIG)
    # engagement = 10; quality = 100 - 20 (page_url) - 15 (user_agent) - 5 (user_id)
    #   - 5 - 5 (screen, viewport) - 5 (country) - 5 - 5 - 5 (timezone, widget, interaction) = 30
    assert out["engagement_score"] == 10
    assert out["quality_score"] == 30
    assert out["user_segment"] == "new_visitor"
    assert out["device_type"] == "unknown" and out["browser"] is None and out["page_category"] is None
    assert out["referrer_source"] == "direct"
    assert len(out["transformation_metadata"]["warnings"]) == 9


def test_quality_invalid_values():
    out = enrich(event_type="hover_wiggle", page_url="ftp://acme.com/x", screen_resolution="big",
                 country="Atlantis", user_agent="garbage/agent")
    # 100 - 10 (not http) - 10 (unknown type) - 5 (screen not WxH) - 5 (country)
    #     - 5 (UA unrecognised) = 65
    assert out["quality_score"] == 65
    warnings = out["transformation_metadata"]["warnings"]
    assert "unknown event_type 'hover_wiggle'" in warnings
    assert out["country"] is None


@pytest.mark.parametrize(
    "url, category",
    [
        ("https://acme.com/", "home"),
        ("https://acme.com", "home"),
        ("https://acme.com/index.html", "home"),
        ("https://acme.com/pricing", "pricing"),
        ("https://acme.com/Pricing/?x=1", "pricing"),
        ("https://acme.com/plans/team", "pricing"),
        ("https://acme.com/products/widget-9", "product"),
        ("https://acme.com/product/", "product"),
        ("https://acme.com/blog/2024/01/15/hello", "blog"),
        ("https://acme.com/docs/install", "docs"),
        ("https://docs.acme.com/install", "docs"),
        ("https://acme.com/checkout/step-2", "checkout"),
        ("https://acme.com/cart", "checkout"),
        ("https://acme.com/contact-us", "contact"),
        ("https://acme.com/request-demo", "demo"),
        ("https://acme.com/privacy", "legal"),
        ("https://acme.com/pricingplans", "other"),  # prefix of a word is not /pricing
        ("https://acme.com/random/page", "other"),
    ],
)
def test_page_categories(url, category):
    assert enrich(page_url=url)["page_category"] == category


@pytest.mark.parametrize(
    "url, referrer, source",
    [
        ("https://acme.com/", "", "direct"),
        ("https://acme.com/", None, "direct"),
        ("https://acme.com/", "https://www.google.com/", "organic_search"),
        ("https://acme.com/", "https://www.google.co.uk/search?q=x", "organic_search"),
        ("https://acme.com/", "https://duckduckgo.com/", "organic_search"),
        ("https://acme.com/", "https://t.co/abc", "social"),
        ("https://acme.com/", "https://www.linkedin.com/feed/", "social"),
        ("https://acme.com/", "https://mail.google.com/mail/u/0", "email"),
        ("https://acme.com/", "https://partner.io/review", "referral"),
        ("https://acme.com/pricing", "https://acme.com/", "internal"),
        ("https://www.acme.com/pricing", "https://blog.acme.com/post", "internal"),
        ("https://acme.com/pricing", "/home", "internal"),
        ("https://acme.com/?utm_medium=email&utm_source=nl", "", "email"),
        ("https://acme.com/?utm_medium=social", "https://google.com", "social"),
        ("https://acme.com/?utm_medium=CPC", "", "paid"),
        ("https://acme.com/?gclid=abc123", "https://www.google.com/", "paid"),
        ("https://acme.com/?fbclid=abc", "https://l.facebook.com/", "social"),
    ],
)
def test_referrer_attribution(url, referrer, source):
    assert enrich(page_url=url, referrer=referrer)["referrer_source"] == source


@pytest.mark.parametrize(
    "ua, device, browser, os_",
    [
        (WIDGET_OPEN["user_agent"], "desktop", "Chrome", "Windows"),
        (IPHONE_UA, "mobile", "Mobile Safari", "iOS"),
        ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
         "Version/16.6 Mobile/15E148 Safari/604.1", "tablet", "Mobile Safari", "iOS"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/120.0.0.0 Mobile Safari/537.36", "mobile", "Chrome Mobile", "Android"),
        ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/120.0.0.0 Safari/537.36", "tablet", "Chrome", "Android"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
         "Version/17.1 Safari/605.1.15", "desktop", "Safari", "Mac OS X"),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "desktop", "Firefox", "Linux"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot", "Googlebot", "Other"),
        ("curl/8.4.0", "bot", "curl", "Other"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
         "Safari/537.36", "bot", "HeadlessChrome", "Linux"),
        ("Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/120.0.0.0 Mobile Safari/537.36", "mobile", "Chrome Mobile", "Android"),  # brand, not a bot
    ],
)
def test_user_agents(ua, device, browser, os_):
    assert parse_user_agent(ua) == (device, browser, os_)
    out = enrich(user_agent=ua)
    assert (out["device_type"], out["browser"], out["os"]) == (device, browser, os_)


def test_ua_cache_is_bounded_and_hit():
    parse_user_agent.cache_clear()
    for _ in range(3):
        parse_user_agent(IPHONE_UA)
    info = parse_user_agent.cache_info()
    assert info.hits == 2 and info.misses == 1 and info.maxsize == 4096


@pytest.mark.parametrize("raw, code", [("us", "US"), ("GB", "GB"), ("United States", "US"),
                                       ("germany", "DE"), ("DEU", "DEU"), ("", None)])
def test_country_normalised_to_fit_column(raw, code):
    assert enrich(country=raw)["country"] == code


def test_pii_lineage_in_metadata_and_deterministic():
    e = dict(event(), _pii={"email": 1})
    a, b = enrich_frontend_event(e, CONFIG), enrich_frontend_event(e, CONFIG)
    assert a == b
    assert "pii_redaction" in a["transformation_metadata"]["steps_applied"]
    assert a["transformation_metadata"]["pii_redacted"] == {"email": 1}


def test_custom_rules():
    config = EnrichmentConfig(rules={
        "page_categories": [{"category": "careers", "path": "^/jobs"}],
        "default_page_category": "misc",
        "event_stages": {"conversion": ["applied"]},
    })
    out = enrich_frontend_event(event(event_type="applied", page_url="https://a.io/jobs/1"), config)
    assert out["page_category"] == "careers" and out["conversion_stage"] == "conversion"
    assert enrich_frontend_event(event(page_url="https://a.io/x"), config)["page_category"] == "misc"
    with pytest.raises(ValueError):
        EnrichmentConfig(rules={"event_stages": {"bogus": ["x"]}})


def test_malformed_url_scored_not_fatal():
    out = enrich(page_url="http://[::1/broken")
    assert out["page_category"] is None and out["quality_score"] < 100


def test_fn_routes_exceptions_to_failed():
    fn = _EnrichFn(CONFIG, "frontend")
    fn.setup()
    (out,) = list(fn.process({"event_id": "x", "_source": {"topic": "t", "partition": 1, "offset": 9}}))
    assert out.tag == EnrichFrontendEvents.FAILED
    assert (out.value.stage, out.value.error_class, out.value.source_offset) == ("enrich", "KeyError", 9)


def test_composite_on_fn_api_runner():
    good = event()
    with BeamTestPipeline(runner=fn_api_runner()) as p:
        result = p | beam.Create([good, {"broken": True}]) | EnrichFrontendEvents(CONFIG, "frontend")
        assert_that(result.valid | beam.Map(lambda e: (e["event_id"], e["engagement_score"])),
                    equal_to([(good["event_id"], 58)]), label="Valid")
        assert_that(result.failed | beam.Map(lambda f: f.stage), equal_to(["enrich"]), label="Failed")
