"""Shared fixtures for the unit suite: realistic payloads as the widget sends them."""
import copy
import json

import pytest

from schemas.records import SourceRecord

# A trackEvent body exactly as the integration guide builds it (Date.now()).
WIDGET_OPEN = {
    "event_type": "widget_open",
    "session_id": "sess_9f1c2a",
    "user_id": "user_42",
    "page_url": "https://www.acme.com/pricing?utm_source=google&utm_medium=cpc&utm_campaign=spring_sale",
    "page_title": "Pricing - Acme",
    "referrer": "https://www.google.com/",
    "user_agent": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                   "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
    "screen_resolution": "1920x1080",
    "viewport_size": "1280x720",
    "widget_id": "sales-assistant",
    "interaction_type": "click",
    "timestamp": 1705314600000,  # 2024-01-15T10:30:00Z
    "time_on_page": 42,
    "element_id": "chat-button",
    "element_class": "widget-trigger",
    "element_text": None,
    "click_coordinates": {"x": 1180, "y": 640},
    "country": "US",
    "timezone": "America/New_York",
}

IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
             "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1")

SECRET = b"unit-test-secret-0123456789"


@pytest.fixture
def widget_open():
    return copy.deepcopy(WIDGET_OPEN)


def source(payload, offset=0, topic="frontend_user_interaction", partition=0, timestamp_ms=None):
    value = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    return SourceRecord(value=value, topic=topic, partition=partition, offset=offset,
                        timestamp_ms=timestamp_ms)


def fn_api_runner():
    """An in-process FnApiRunner (named explicitly: never the Prism fallback)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()
