"""No planted PII value reaches any sink: PostgreSQL, Redis, the S3 archive, dead letters.

Marketo leads carrying the same personas' data (address, phone, PII inside
company and title, a malformed line) run through ``beam_pipelines.marketo``
too: their archive objects and dead letters are scanned with the rest. Its
table output goes to a DuckDB file, not scanned: ``marketo_leads`` keeps the
address and name in clear by design (transforms/marketo.py, PII policy).

Generated frontend events and text-agent turns are filled with personal data
of visitors from ten regions: internationalised e-mail addresses, phone
numbers in their region's national format (no ``+``), phone numbers next to
a cue word that the numbering plan calls unassigned, cards, IBANs, US SSNs,
IPv4 addresses. Every value is unique to the test run. The values sit in
every free-text place the pipelines redact (page URL query, referrer, page
title, element text, unknown ``extra`` fields, user message, agent answer,
tool results, conversation context) and in malformed lines that end up as
dead letters. Both jobs run bounded over Kafka against the real services
(DirectRunner / FnApiRunner, options as in production), then every table of
the PostgreSQL schema, every Redis key and value, every object of the archive
bucket and the dead-letter topic are searched for each value (as written,
JSON-escaped, digits only, E.164 for phones).
"""
import json
import random
import string
import uuid

import phonenumbers
import pytest
import redis
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipelines import frontend, generate, marketo, text_agent
from tests.integration.test_kafka_io import make_topic, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "integration-test-secret-0123456789"
N_EVENTS = 240
N_SESSIONS = 12

# region, timezone, browser language, e-mail domain, local-part stem, a message
# template in the region's language ({phone} without cue word; the number's
# region comes from the event's hints).
REGIONS = [
    ("DE", "Europe/Berlin", "de-DE", "beispiel.de", "jürgen.müller", "Sie erreichen mich unter {phone}"),
    ("FR", "Europe/Paris", "fr-FR", "société.fr", "élodie.lefèvre", "je suis au {phone} demain"),
    ("GB", "Europe/London", "en-GB", "example.co.uk", "o.brien", "I'm on {phone} all week"),
    ("IN", "Asia/Kolkata", "hi-IN", "डाटामेल.भारत", "संपर्क", "आप {phone} पर बात करें"),
    ("BR", "America/Sao_Paulo", "pt-BR", "empresa.com.br", "joão.silva", "fala comigo no {phone}"),
    ("JP", "Asia/Tokyo", "ja-JP", "例え.jp", "たろう", "折り返しは{phone}へ"),
    ("CN", "Asia/Shanghai", "zh-CN", "例子.广告", "用户", "请打{phone}找我"),
    ("KR", "Asia/Seoul", "ko-KR", "도메인.한국", "사용자", "{phone}로 연락 주세요"),
    ("ES", "Europe/Madrid", "es-ES", "correo.es", "josé.garcía", "estoy en el {phone}"),
    ("RU", "Europe/Moscow", "ru-RU", "пример.рф", "иван.петров", "я на связи {phone}"),
]
# Cue words whose numbers the plan rejects: redacted only through the cue.
CUED = ["phone 555-{n4}", "Telefon 0000 {n6}", "tél : 01 00 {n2} {n2b} 00", "телефон 8 (000) {n3}-{n2}-{n2b}"]


def _luhn_digit(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return str((10 - total % 10) % 10)


def _iban_de(rng):
    bban = "".join(rng.choice(string.digits) for _ in range(18))
    numeric = int(bban + "131400")  # D=13 E=14, check digits 00
    check = 98 - numeric % 97
    compact = f"DE{check:02d}{bban}"
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))


def _national_mobile(rng, region):
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = str(example.national_number)
    for _ in range(200):
        digits = national[:-4] + "".join(rng.choice(string.digits) for _ in range(4))
        number = phonenumbers.parse(digits, region)
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    raise AssertionError(f"no valid {region} number near the example")


class Persona:
    """One visitor's personal data, unique to the run."""

    def __init__(self, rng, run_id, i):
        region, tz, lang, domain, stem, template = REGIONS[i % len(REGIONS)]
        self.region, self.timezone, self.language = region, tz, lang
        self.email = f"{stem}.{run_id}{i}@{domain}"
        self.ascii_email = f"lead.{run_id}.{i}@northwind.io"
        self.phone = _national_mobile(rng, region)
        self.message = template.format(phone=self.phone)
        fill = {"n4": f"{rng.randrange(10**4):04d}", "n6": f"{rng.randrange(10**6):06d}",
                "n2": f"{rng.randrange(10, 100)}", "n2b": f"{rng.randrange(10, 100)}",
                "n3": f"{rng.randrange(100, 1000)}"}
        self.cued = CUED[i % len(CUED)].format(**fill)
        self.cued_number = self.cued.split(" ", 1)[1].split(": ")[-1]
        body = "4" + "".join(rng.choice(string.digits) for _ in range(14))
        self.card = " ".join((body + _luhn_digit(body))[k:k + 4] for k in range(0, 16, 4))
        self.iban = _iban_de(rng)
        self.ssn = f"{rng.randrange(100, 665):03d}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"
        self.ipv4 = ".".join(str(rng.randrange(11, 223)) for _ in range(4))

    def planted(self):
        """(kind, value as written) for every value of this persona."""
        return [("email", self.email), ("email", self.ascii_email), ("phone", self.phone),
                ("phone", self.cued_number), ("card", self.card), ("iban", self.iban),
                ("ssn", self.ssn), ("ipv4", self.ipv4)]


def _needles(kind, value):
    """The forms a leaked value could take in a sink."""
    forms = {value, value.lower(), json.dumps(value)[1:-1]}
    digits = "".join(ch for ch in value if ch.isdigit())
    # digits only, long enough not to turn up by chance inside timestamps and ids
    if kind in ("phone", "card", "ssn") and len(digits) >= 10:
        forms.add(digits)
    if kind == "iban":
        forms.add(value.replace(" ", ""))
    if kind == "phone":
        for region in ("DE", "FR", "GB", "IN", "BR", "JP", "CN", "KR", "ES", "RU", "US"):
            try:
                number = phonenumbers.parse(value, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                if len(e164) >= 11:
                    forms.add(e164)
    return {f for f in forms if len(f) >= 7}


def _frontend_lines(rng, run_id, personas, start_ms):
    lines = []
    base = generate.frontend_events(N_EVENTS, seed=rng.randrange(10_000), malformed_ratio=0.0,
                                    duplicate_ratio=0.0, start_ms=start_ms)
    for i, line in enumerate(base):
        event = json.loads(line)
        p = personas[i % len(personas)]
        event["session_id"] = event["session_id"].replace("sess_", f"sess_pii{run_id}_")
        event["country"], event["timezone"] = p.region, p.timezone
        event["language"] = p.language  # navigator.language, an unknown field
        slot = i % 6
        if slot == 0:
            event["element_text"] = f"{p.message}, {p.email}"
        elif slot == 1:
            event["page_url"] += ("&" if "?" in event["page_url"] else "?") + (
                "email=" + _quote(p.email) + "&tel=" + _quote(p.phone))
        elif slot == 2:
            event["referrer"] = f"https://mail.example.com/compose?to={_quote(p.ascii_email)}&ip={p.ipv4}"
        elif slot == 3:
            event["page_title"] = f"Danke {p.email} | {p.cued}"
        elif slot == 4:
            event["form_note"] = f"card {p.card}, IBAN {p.iban}"
            event["contact"] = {"ssn": f"SSN {p.ssn}", "cell": p.cued}
        else:
            event["element_text"] = f"{p.cued}; from {p.ipv4}; {p.ascii_email}"
        lines.append(json.dumps(event, ensure_ascii=False))
    # Dead letters: a line that fails validation and one that does not parse.
    for p in personas[:6]:
        bad = {"country": p.region, "timezone": p.timezone, "session_id": f"sess_pii{run_id}_bad",
               "event_type": "message_sent", "element_text": f"{p.message} / {p.email} / {p.cued}",
               "timestamp": "not-a-time"}
        lines.append(json.dumps(bad, ensure_ascii=False))
        lines.append(json.dumps(dict(bad, timestamp=start_ms), ensure_ascii=False)[:-25])
    return lines


def _quote(value):
    import urllib.parse

    return urllib.parse.quote(value, safe="")


def _turn_lines(rng, run_id, personas, tenant):
    lines = []
    sample = text_agent.sample_turns(n_sessions=N_SESSIONS, seed=rng.randrange(100_000),
                                     malformed_share=0.0, duplicate_share=0.0)
    for i, line in enumerate(sample):
        turn = json.loads(line)
        p = personas[(i * 7) % len(personas)]
        turn["tenant_id"] = tenant
        turn["session_id"] = f"pii{run_id}_{turn['session_id']}"
        turn["user_message"] = f"{p.message}. Mail: {p.email}. {p.cued}"
        turn["response_text"] = f"Thanks! I'll email {p.ascii_email} and call {p.phone}."
        turn["tool_results"] = {"crm_lookup": {"success": True, "contact": p.ascii_email,
                                               "iban": p.iban, "card": p.card}}
        turn["tools_used"] = ["crm_lookup"]
        turn["conversation_context"]["locale"] = p.language
        turn["client_ip"] = p.ipv4
        turn["notes"] = f"SSN {p.ssn}"
        lines.append(json.dumps(turn, ensure_ascii=False))
    p = personas[0]
    lines.append(json.dumps({"session_id": f"pii{run_id}-bad", "turn_id": "x", "tokens_in": -1,
                             "user_message": f"{p.message} {p.email}",
                             "conversation_context": {"locale": p.language}}, ensure_ascii=False))
    return lines


def _lead_lines(run_id, personas, start_ms):
    lines = []
    for i, p in enumerate(personas[:12]):
        lead = {"id": 800_000_000 + int(run_id, 16) % 100_000 * 100 + i,
                "email": p.ascii_email if i % 3 else p.email, "firstName": "Ada",
                "lastName": f"Lovelace{run_id}", "phone": p.phone,
                "company": f"Northwind ({p.iban})", "title": f"CTO, {p.cued}",
                "leadSource": "Referral", "leadScore": 70, "country": p.region,
                "updatedAt": start_ms + i * 1000}
        lines.append(json.dumps(lead, ensure_ascii=False))
    p = personas[0]
    lines.append(json.dumps({"email": p.ascii_email, "phone": p.phone, "title": p.cued}))  # no id
    return lines


@pytest.fixture(scope="module")
def planted_run(services, kafka_bootstrap, s3_bucket, tmp_path_factory):
    import time

    run_id = uuid.uuid4().hex[:8]
    rng = random.Random(run_id)
    personas = [Persona(rng, run_id, i) for i in range(30)]
    start_ms = int(time.time() * 1000) - 3_600_000
    s3_args = [f"--s3_endpoint_url={services.s3_endpoint}",
               f"--s3_access_key_id={services.s3_access_key}",
               f"--s3_secret_access_key={services.s3_secret_key}",
               f"--s3_region_name={services.s3_region}"]
    dead_letter_topics = []

    fe_lines = _frontend_lines(rng, run_id, personas, start_ms)
    fe_topic = make_topic(kafka_bootstrap, 4, prefix="it-pii-frontend")
    produce(kafka_bootstrap, fe_topic, [(None, None, l.encode(), None) for l in fe_lines])
    fe_dlq = make_topic(kafka_bootstrap, 1, prefix="it-pii-frontend-dlq")
    dead_letter_topics.append(fe_dlq)
    frontend.run([
        f"--kafka_bootstrap={kafka_bootstrap}", f"--kafka_topic={fe_topic}",
        "--kafka_mode=bounded", "--kafka_start_from=earliest",
        f"--dead_letter_topic={fe_dlq}",
        f"--postgres_dsn={services.pg_dsn}", f"--redis_url={services.redis_url}",
        f"--archive_path=s3://{s3_bucket}/it-pii-{run_id}/frontend", *s3_args,
        f"--pii_secret={SECRET}", "--runner=DirectRunner",
    ])

    tenant = f"it-pii-{run_id}"
    ta_lines = _turn_lines(rng, run_id, personas, tenant)
    ta_topic = make_topic(kafka_bootstrap, 2, prefix="it-pii-text-agent")
    produce(kafka_bootstrap, ta_topic, [(i % 2, None, l.encode(), None) for i, l in enumerate(ta_lines)])
    ta_dlq = make_topic(kafka_bootstrap, 1, prefix="it-pii-text-agent-dlq")
    dead_letter_topics.append(ta_dlq)
    text_agent.run([
        f"--kafka_bootstrap={kafka_bootstrap}", f"--kafka_topic={ta_topic}",
        "--kafka_mode=bounded", "--kafka_start_from=earliest",
        f"--dead_letter_topic={ta_dlq}",
        f"--postgres_dsn={services.pg_dsn}", f"--redis_url={services.redis_url}",
        f"--archive_path=s3://{s3_bucket}/it-pii-{run_id}/text_agent", *s3_args,
        f"--pii_secret={SECRET}",
    ], runner=FnApiRunner())

    mk_lines = _lead_lines(run_id, personas, start_ms)
    mk_topic = make_topic(kafka_bootstrap, 1, prefix="it-pii-marketo")
    produce(kafka_bootstrap, mk_topic, [(None, None, l.encode(), None) for l in mk_lines])
    mk_dlq = make_topic(kafka_bootstrap, 1, prefix="it-pii-marketo-dlq")
    dead_letter_topics.append(mk_dlq)
    marketo.run([
        f"--kafka_bootstrap={kafka_bootstrap}", f"--kafka_topic={mk_topic}",
        "--kafka_mode=bounded", "--kafka_start_from=earliest",
        f"--dead_letter_topic={mk_dlq}",
        f"--output_dir={tmp_path_factory.mktemp('pii-marketo')}",  # tables: DuckDB, not scanned
        f"--archive_path=s3://{s3_bucket}/it-pii-{run_id}/marketo", *s3_args,
        f"--pii_secret={SECRET}",
    ], runner=FnApiRunner())

    needles = {}
    for p in personas:
        for kind, value in p.planted():
            for form in _needles(kind, value):
                needles[form] = (kind, value)
    return {"run_id": run_id, "tenant": tenant, "needles": needles,
            "dead_letter_topics": dead_letter_topics, "fe_lines": fe_lines, "ta_lines": ta_lines,
            "mk_lines": mk_lines}


def _hits(blob, needles):
    low = blob.lower()
    return sorted({f"{kind} {value!r} as {form!r}" for form, (kind, value) in needles.items()
                   if form.lower() in low})


def test_the_pipelines_wrote_the_run(planted_run, services):
    """The scan below is meaningful only if the runs wrote rows and letters."""
    import psycopg

    with psycopg.connect(services.pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from frontend_analytics where session_id like %s",
                    (f"sess_pii{planted_run['run_id']}_%",))
        assert cur.fetchone()[0] >= N_EVENTS * 0.9
        cur.execute("select count(*) from agent_turns where session_id like %s",
                    (f"pii{planted_run['run_id']}_%",))
        assert cur.fetchone()[0] >= N_SESSIONS
        cur.execute("select count(*) from failed_events where raw_payload like %s",
                    (f"%pii{planted_run['run_id']}%",))
        assert cur.fetchone()[0] >= 6
    # ... and the planted values really are in the input the jobs read.
    inputs = "\n".join(planted_run["fe_lines"] + planted_run["ta_lines"] + planted_run["mk_lines"])
    assert len(_hits(inputs, planted_run["needles"])) >= 200


def test_no_planted_value_in_any_postgres_table(planted_run, services):
    import psycopg

    patterns = ["%" + form.lower().replace("%", r"\%").replace("_", r"\_") + "%"
                for form in planted_run["needles"]]
    leaks = {}
    with psycopg.connect(services.pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("select table_name from information_schema.tables "
                    "where table_schema = 'public' and table_type = 'BASE TABLE'")
        tables = [r[0] for r in cur.fetchall()]
        assert "failed_events" in tables and "agent_turns" in tables
        for table in tables:
            cur.execute(f'select t::text from "{table}" t where lower(t::text) like any(%s)',
                        (patterns,))
            rows = [r[0] for r in cur.fetchall()]
            if rows:
                leaks[table] = _hits("\n".join(rows), planted_run["needles"])[:10]
    assert not leaks, leaks


def test_no_planted_value_in_any_redis_key_or_value(planted_run, services):
    client = redis.Redis.from_url(services.redis_url)
    try:
        keys = list(client.scan_iter(count=2000))
        assert keys
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        types = pipe.execute()
        readers = {b"string": lambda p, k: p.get(k), b"hash": lambda p, k: p.hgetall(k),
                   b"list": lambda p, k: p.lrange(k, 0, -1), b"set": lambda p, k: p.smembers(k),
                   b"zset": lambda p, k: p.zrange(k, 0, -1), b"stream": lambda p, k: p.xrange(k)}
        for key, kind in zip(keys, types):
            if kind in readers:
                readers[kind](pipe, key)
        values = pipe.execute()
    finally:
        client.close()
    blob = "\n".join(k.decode("utf-8", "replace") for k in keys)
    blob += "\n" + "\n".join(_decode_nested(v) for v in values)
    leaks = _hits(blob, planted_run["needles"])
    assert not leaks, leaks[:20]


def _decode_nested(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(_decode_nested(k) + " " + _decode_nested(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return " ".join(_decode_nested(v) for v in value)
    return str(value)


def _object_text(key, body):
    """An archive object's records as text: Avro blocks may be compressed,
    so they are decoded, not searched as bytes."""
    if key.endswith(".avro"):
        import io

        import fastavro

        records = list(fastavro.reader(io.BytesIO(body)))
        return json.dumps(records, ensure_ascii=False, default=str)
    return body.decode("utf-8", "replace")


def test_no_planted_value_in_any_archive_object(planted_run, services, s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=services.s3_endpoint,
                      aws_access_key_id=services.s3_access_key,
                      aws_secret_access_key=services.s3_secret_key, region_name=services.s3_region)
    ours, marketo_objects, leaks = 0, 0, {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read()
            ours += obj["Key"].startswith(f"it-pii-{planted_run['run_id']}/")
            marketo_objects += obj["Key"].startswith(
                f"it-pii-{planted_run['run_id']}/marketo/source=marketo/")
            hits = _hits(_object_text(obj["Key"], body), planted_run["needles"])
            if hits:
                leaks[obj["Key"]] = hits[:10]
    assert ours >= 3 and marketo_objects >= 1  # every job archived
    assert not leaks, leaks


def test_no_planted_value_in_any_dead_letter(planted_run, kafka_bootstrap):
    from kafka import KafkaConsumer

    letters = []
    for topic in planted_run["dead_letter_topics"]:
        consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5000)
        try:
            letters.extend(m.value.decode("utf-8", "replace") for m in consumer)
        finally:
            consumer.close()
    assert len(letters) >= 7  # 12 frontend lines and one turn failed
    # the letters as published, and their payload fields with JSON escapes undone
    decoded = [json.loads(l) for l in letters if l.startswith("{")]
    texts = letters + [str(d.get("raw") or "") + str(d.get("raw_payload") or "") for d in decoded]
    leaks = _hits("\n".join(texts), planted_run["needles"])
    assert not leaks, leaks[:20]
