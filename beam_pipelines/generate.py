"""Generates realistic sample data (JSON lines), for demos, tests and benchmarks.

``frontend_events``: frontend widget events (the command line below writes
them). ``sample_turns``: text-agent ``turn_completed`` payloads (written by
``python -m beam_pipelines.text_agent --generate=N``).

Each simulated visit walks part of the funnel (page views, widget open,
messages, product interest, conversion) with the payload shape the frontend's
``trackEvent`` sends. A configurable share of lines is malformed (broken JSON,
missing fields, wrong types, impossible timestamps) and a share is sent twice
(as a producer retry would), so the dead-letter and dedupe paths get exercised.

    python -m beam_pipelines.generate --events=10000 --output=events.jsonl.gz
    python -m beam_pipelines.generate --events=100000 --kafka_bootstrap=127.0.0.1:19092

Output is deterministic for a given ``--seed`` and ``--start_ms``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import random
import sys
import typing

__all__ = ["frontend_events", "sample_turns", "sample_leads", "write_lines", "main"]

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
]
SCREENS = [("1920x1080", "1903x969"), ("2560x1440", "2543x1297"), ("390x844", "390x664"),
           ("412x915", "412x777"), ("1366x768", "1349x657"), ("820x1180", "820x1050")]
SITE = "https://shop.example.com"
PAGES = [
    ("/", "Home"), ("/pricing", "Pricing"), ("/products/widget-pro", "Widget Pro"),
    ("/products/widget-lite?ref=nav", "Widget Lite"), ("/blog/ai-sales-assistants", "Blog"),
    ("/docs/getting-started", "Docs"), ("/contact", "Contact us"), ("/cart", "Cart"),
]
REFERRERS = [
    "", "https://www.google.com/", "https://www.linkedin.com/feed/", "https://news.ycombinator.com/",
    "https://partner.example.org/review", "https://www.bing.com/search?q=ai+chat+widget",
]
CAMPAIGNS = [None, "utm_source=newsletter&utm_medium=email&utm_campaign=spring_launch",
             "utm_source=google&utm_medium=cpc&utm_campaign=brand", None, None]
COUNTRIES = [("US", "America/New_York"), ("DE", "Europe/Berlin"), ("GB", "Europe/London"),
             ("IN", "Asia/Kolkata"), ("BR", "America/Sao_Paulo"), (None, "UTC")]
MESSAGES = [
    "Hi, how much is the pro plan?",
    "Can I book a demo for next week?",
    "Does it integrate with Salesforce?",
    "Please email me at jane.doe@acme-corp.com with pricing",
    "Call me on +1 415 555 0132 about the enterprise tier",
    "Is version 2.4.1 compatible with Shopify?",
]


def _visit(rng: random.Random, visit_no: int, start_ms: int) -> typing.List[dict]:
    ua = rng.choice(USER_AGENTS)
    screen, viewport = rng.choice(SCREENS)
    country, tz = rng.choice(COUNTRIES)
    session_id = f"sess_{visit_no:08d}_{rng.randrange(16**6):06x}"
    user_id = f"user_{rng.randrange(max(1, visit_no // 3 + 1)):07d}" if rng.random() < 0.7 else None
    referrer = rng.choice(REFERRERS)
    campaign = rng.choice(CAMPAIGNS)
    t = start_ms
    page_loaded = t
    events = []

    def event(event_type, page, **extra):
        nonlocal t
        t += rng.randint(2_000, 90_000)
        path, title = page
        url = SITE + path
        if campaign:
            url += ("&" if "?" in url else "?") + campaign
        body = {
            "event_type": event_type,
            "session_id": session_id,
            "user_id": user_id,
            "page_url": url,
            "page_title": f"{title} | Example Shop",
            "referrer": referrer,
            "user_agent": ua,
            "screen_resolution": screen,
            "viewport_size": viewport,
            "widget_id": "sales-assistant",
            "interaction_type": extra.pop("interaction_type", None),
            "timestamp": t,
            "time_on_page": (t - page_loaded) // 1000,
            "element_id": extra.pop("element_id", None),
            "element_class": extra.pop("element_class", None),
            "element_text": extra.pop("element_text", None),
            "click_coordinates": extra.pop("click_coordinates", None),
            "country": country,
            "timezone": tz,
        }
        body.update(extra)
        events.append(body)

    pages = [rng.choice(PAGES[:5]) for _ in range(rng.randint(1, 4))]
    for page in pages:
        page_loaded = t
        event("page_view", page, interaction_type="navigation")
    page = pages[-1]
    if rng.random() < 0.55:
        event("widget_open", page, interaction_type="click", element_id="chat-button",
              element_class="widget-trigger",
              click_coordinates={"x": rng.randint(1200, 1900), "y": rng.randint(700, 1000)})
        for _ in range(rng.randint(0, 3)):
            msg = rng.choice(MESSAGES)
            event("message_sent", page, interaction_type="text_input",
                  message_length=len(msg), element_text=msg)
        if rng.random() < 0.4:
            product = PAGES[2] if rng.random() < 0.6 else PAGES[3]
            event("product_click", product, interaction_type="click", element_id="product-card",
                  element_text="Widget Pro - $1,299.00")
            if rng.random() < 0.35:
                event("conversion", PAGES[7], interaction_type="form_submit",
                      element_id="checkout", element_text="Order ORD-2024-118734 confirmed")
    return events


def _malform(rng: random.Random, event: dict) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return json.dumps(event)[: rng.randint(10, 60)]  # truncated JSON
    bad = dict(event)
    if kind == 1:
        bad.pop("session_id", None)
    elif kind == 2:
        bad["timestamp"] = "not-a-time"
    elif kind == 3:
        bad["event_type"] = None
    else:
        bad["timestamp"] = -5
    return json.dumps(bad)


def frontend_events(
    count: int,
    seed: int = 7,
    malformed_ratio: float = 0.02,
    duplicate_ratio: float = 0.01,
    start_ms: int = 1_767_225_600_000,  # 2026-01-01T00:00:00Z
) -> typing.Iterator[str]:
    """Yields ``count`` JSON lines (malformed and duplicated ones included)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if not (0 <= malformed_ratio <= 1 and 0 <= duplicate_ratio <= 1):
        raise ValueError("ratios must be between 0 and 1")
    rng = random.Random(seed)
    emitted = 0
    visit_no = 0
    clock = start_ms
    while emitted < count:
        visit_no += 1
        clock += rng.randint(1_000, 20_000)  # visits start a few seconds apart
        for event in _visit(rng, visit_no, clock):
            if emitted >= count:
                break
            if rng.random() < malformed_ratio:
                yield _malform(rng, event)
                emitted += 1
                continue
            line = json.dumps(event, separators=(",", ":"))
            yield line
            emitted += 1
            if emitted < count and rng.random() < duplicate_ratio:
                yield line
                emitted += 1


# --------------------------------------------------------------------------
# Text-agent turns (``text_agent.turn_completed`` payloads)
# --------------------------------------------------------------------------
_MODELS = ["claude-3-sonnet", "claude-3-5-sonnet-20241022", "gpt-4o", "gpt-4o-mini",
           "gemini-1.5-flash", "llama-3.1-70b-instruct", "mistral-large-latest",
           "o3-mini", "command-r", "acme-internal-v2"]
_EXCHANGES = [
    ("How much does the Pro plan cost per seat?",
     "The Pro plan is $49 per seat per month, billed annually. Volume discounts start at 50 seats.",
     ["pricing"], "pricing_inquiry"),
    ("Can I book a demo for my team next week?",
     "Absolutely! I can schedule a demo. What day works best for your team?",
     ["demo"], "demo_request"),
    ("Does it integrate with Salesforce and HubSpot?",
     "Yes, we have native integrations with Salesforce and HubSpot, plus a REST API and webhooks.",
     ["integration"], "integration_question"),
    ("The widget is not working on my checkout page, I get an error.",
     "Sorry about that. Could you share the browser and the exact error message so I can help fix it?",
     ["support"], "support"),
    ("Are you SOC 2 compliant and GDPR ready?",
     "Yes. We are SOC 2 Type II certified and GDPR compliant; data is encrypted at rest and in transit.",
     ["security"], "security_review"),
    ("I want to buy the enterprise plan, please contact me at {email}",
     "Thank you! Our sales team will reach out to you within one business day.",
     ["pricing", "contact"], "purchase"),
    ("How do I get started with the setup?",
     "Getting started takes five minutes: install the snippet, configure your widget and go live.",
     ["onboarding"], "onboarding"),
    ("This is terrible, nothing works and support never answers!",
     "I'm sorry for the frustration. I can't help with account refunds here, but I've escalated this.",
     ["support"], "complaint"),
    ("How are you different from Intercom?",
     "Unlike Intercom, our assistant is trained on your catalogue and qualifies leads automatically.",
     ["competitor"], "comparison"),
    ("Call me at {phone} about pricing for 200 seats",
     "Happy to! A sales rep will call you today about volume pricing.",
     ["pricing", "contact"], "purchase"),
    ("¿Cuánto cuesta el plan profesional?",
     "El plan profesional cuesta 49 dólares por usuario al mes.",
     [], "pricing_inquiry"),
    ("Can I see my last invoice?",
     "Something went wrong while loading your invoices. Please try again later.",
     ["billing"], "billing"),
]
_TOOLS = ["search_docs", "capture_lead", "book_demo", "crm_lookup", "pricing_calculator"]
_TENANTS = ["acme", "globex", "initech", None]


def sample_turns(n_sessions: int = 200, seed: int = 7, start_ms: int = 1_741_000_000_000,
                 malformed_share: float = 0.02, duplicate_share: float = 0.03
                 ) -> typing.List[str]:
    """JSON lines of ``text_agent.turn_completed`` payloads as the seed's
    ``on_turn_completed`` sends them, for ``n_sessions`` conversations of 1-6
    turns. A share of lines is malformed and a share repeated (producer
    retries). Deterministic for a given ``seed`` and ``start_ms``."""
    rng = random.Random(seed)
    lines: typing.List[str] = []
    for s in range(n_sessions):
        session_id = f"sess_{seed}_{s:06d}"
        user_id = f"user_{rng.randrange(10_000):05d}" if rng.random() < 0.8 else None
        tenant = rng.choice(_TENANTS)
        model = rng.choice(_MODELS)
        ts = start_ms + rng.randrange(0, 6 * 3600 * 1000)
        topic_history: typing.List[str] = []
        for t in range(rng.randint(1, 6)):
            question, answer, topics, intent = rng.choice(_EXCHANGES)
            question = question.format(email=f"jane.doe{s}@example.com",
                                       phone=f"+1 415 555 {rng.randrange(1000, 9999)}")
            tools = rng.sample(_TOOLS, rng.choice([0, 0, 1, 1, 2]))
            tokens_in = rng.randint(200, 3000)
            tokens_out = rng.randint(20, 600)
            payload = {
                "event_type": "text_agent.turn_completed",
                "session_id": session_id,
                "turn_id": f"turn_{(ts // 1000) + t}",
                "user_id": user_id,
                "channel": rng.choice(["web_chat", "web_chat", "widget", "sms"]),
                "model_name": model,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "latency_ms": round(rng.uniform(300, 9000), 1),
                "response_text": answer,
                "user_message": question,
                "tools_used": tools,
                "tool_results": {name: {"success": rng.random() < 0.85} for name in tools},
                "conversation_context": {
                    "previous_turns": t,
                    "topic_history": list(topic_history),
                    "user_intent": intent,
                },
                "timestamp": ts,
            }
            if tenant:
                payload["tenant_id"] = tenant
            if rng.random() < 0.2:
                payload["cached_tokens_in"] = rng.randint(0, tokens_in)
            topic_history.extend(topics)
            line = json.dumps(payload, sort_keys=True)
            roll = rng.random()
            if roll < malformed_share:
                line = rng.choice([
                    line[: len(line) // 2],
                    json.dumps(dict(payload, tokens_in=-5)),
                    json.dumps({k: v for k, v in payload.items() if k != "session_id"}),
                    json.dumps(dict(payload, timestamp="not a time")),
                ])
            lines.append(line)
            if roll > 1 - duplicate_share:
                lines.append(line)
            ts += rng.randint(5_000, 240_000)
    return lines


# -- Marketo leads ---------------------------------------------------------------
_FIRST = ["jane", "JOHN", "Maria", "wei", "Olga", "ahmed", "Sofia", "liam", "Chloé", "Raj"]
_LAST = ["doe", "SMITH", "García", "zhang", "Ivanova", "khan", "rossi", "o'brien", "Martin", "Patel"]
_COMPANIES = [("Acme Corp", "acme-corp.com"), ("globex inc.", "globex.com"),
              ("Initech LLC", "initech.io"), ("Umbrella GmbH", "umbrella.de"),
              ("Hooli", "hooli.com"), ("Stark Industries", "starkindustries.com"),
              (None, "gmail.com"), (None, "yahoo.com"), (None, "mailinator.com"),
              ("Wayne Enterprises", "wayne-enterprises.com")]
_TITLES = ["CEO", "VP of Sales", "Director of IT", "Marketing Manager", "Software Engineer",
           "Student", "Head of Growth", "Founder", None, "Analyst"]
_SOURCES = ["Referral", "Organic Search", "Paid Search", "Website", "Event", "Partner",
            "List Import", None]
_PLACES = [("USA", "CA", "san francisco"), ("United States", "New York", "NEW YORK"),
           ("US", "tx", "Austin"), ("Germany", None, "berlin"), ("UK", None, "London"),
           ("France", None, "Paris"), ("Canada", "ON", "Toronto"), ("India", "KA", "bengaluru"),
           (None, "WA", "Seattle"), ("Brazil", None, "São Paulo")]


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text_agent_sample_users() -> typing.List[str]:
    """User ids of the text-agent pipeline's default sample, so a demo run of
    both pipelines has leads with agent conversations."""
    users = set()
    for line in sample_turns():
        try:
            user = json.loads(line).get("user_id")
        except (ValueError, AttributeError):
            continue
        if user:
            users.add(user)
    return sorted(users)


def sample_leads(n: int = 120, seed: int = 11, start_ms: int = 1_741_000_000_000,
                 malformed_share: float = 0.03, late_share: float = 0.05) -> typing.List[str]:
    """JSON lines of leads as ``leads.json`` returns them (and the extractor
    publishes them). A share of lines is malformed, and a share of leads is
    followed by an *older* version of itself (a late delta). Some leads carry
    an ``iheardUserId`` of the frontend or text-agent samples' users.
    Deterministic."""
    rng = random.Random(seed)
    agent_users = _text_agent_sample_users()
    lines: typing.List[str] = []
    for i in range(n):
        lead_id = 1000 + i
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        company, domain = rng.choice(_COMPANIES)
        country, state, city = rng.choice(_PLACES)
        updated = start_ms + rng.randrange(0, 30 * 86_400_000)
        hot = i % 6 == 0  # a steady share of ideal-profile leads
        lead = {
            "id": lead_id,
            "email": f"{first.lower()}.{last.lower().replace(chr(39), '')}{i}@{domain}",
            "firstName": first, "lastName": last,
            "company": company,
            "title": "Chief Revenue Officer" if hot else rng.choice(_TITLES),
            "phone": f"+1 415 555 {1000 + i}" if hot or rng.random() < 0.5 else None,
            "leadSource": "Referral" if hot else rng.choice(_SOURCES),
            "leadStatus": rng.choice(["New", "Open", "Working", "Nurture"]),
            "leadScore": rng.randint(85, 100) if hot else rng.randint(0, 100),
            "industry": rng.choice(["Software", "Retail", "Finance", None]),
            "country": country, "state": state, "city": city,
            "postalCode": f"{rng.randint(10000, 99999)}",
            "createdAt": _iso(updated - rng.randrange(1, 400) * 86_400_000),
            "updatedAt": _iso(updated),
        }
        if hot:
            lead["company"], lead["email"] = "Stark Industries", f"{first.lower()}{i}@starkindustries.com"
        roll_user = rng.random()
        if roll_user < 0.4:
            lead["iheardUserId"] = f"user_{rng.randrange(0, 80):07d}"  # frontend sample's ids
        elif roll_user < 0.55 and agent_users:
            lead["iheardUserId"] = rng.choice(agent_users)
        line = json.dumps(lead, sort_keys=True, ensure_ascii=False)
        roll = rng.random()
        if roll < malformed_share:
            line = rng.choice([
                line[: len(line) // 2],
                json.dumps({k: v for k, v in lead.items() if k != "id"}),
                json.dumps(dict(lead, email="not-an-email")),
                json.dumps(dict(lead, email=None)),
                json.dumps(dict(lead, updatedAt="yesterday-ish")),
            ])
        lines.append(line)
        if roll > 1 - late_share:
            older = dict(lead, updatedAt=_iso(updated - 3_600_000), leadScore=1, title="Student")
            lines.append(json.dumps(older, sort_keys=True, ensure_ascii=False))
    return lines


def write_lines(lines: typing.Iterable[str], output: str) -> int:
    """Writes ``lines`` to ``output`` (gzip when it ends in .gz); returns the count."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    opener = gzip.open if output.endswith(".gz") else open
    n = 0
    with opener(output, "wt", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
            n += 1
    return n


def _produce(lines: typing.Iterable[str], bootstrap: str, topic: str) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             compression_type=None, acks=1)
    n = 0
    for line in lines:
        try:
            key = json.loads(line).get("session_id")
        except (ValueError, AttributeError):
            key = None
        producer.send(topic, value=line.encode("utf-8"),
                      key=key.encode("utf-8") if isinstance(key, str) else None)
        n += 1
    producer.flush()
    producer.close()
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--malformed_ratio", type=float, default=0.02)
    parser.add_argument("--duplicate_ratio", type=float, default=0.01)
    parser.add_argument("--start_ms", type=int, default=1_767_225_600_000)
    parser.add_argument("--output", help="file to write (.jsonl or .jsonl.gz); '-' for stdout")
    parser.add_argument("--kafka_bootstrap", help="produce to Kafka instead of a file")
    parser.add_argument("--topic", default="frontend_user_interaction")
    args = parser.parse_args(argv)
    lines = frontend_events(args.events, args.seed, args.malformed_ratio,
                            args.duplicate_ratio, args.start_ms)
    if args.kafka_bootstrap:
        n = _produce(lines, args.kafka_bootstrap, args.topic)
        print(f"produced {n} events to {args.topic}", file=sys.stderr)
    elif args.output and args.output != "-":
        n = write_lines(lines, args.output)
        print(f"wrote {n} events to {args.output}", file=sys.stderr)
    else:
        for line in lines:
            sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
