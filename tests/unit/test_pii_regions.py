"""Phone region hints, cue words, internationalised e-mail, and their wiring
into the text-agent and dead-letter redaction."""
import collections

import pytest

from tests.unit.conftest import SECRET
from tests.unit.test_pii import expected_token
from transforms.pii import PiiRedactor
from transforms.pii_regions import (
    cue_regions, record_region_hints, region_hints, text_region_hints)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(country="DE"), ("DE",)),
    (dict(country="uk"), ("GB",)),
    (dict(country="Germany"), ("DE",)),
    (dict(timezone="Asia/Kolkata"), ("IN",)),
    (dict(timezone="UTC"), ()),
    (dict(languages=("pt-BR",)), ("BR", "PT")),
    (dict(languages=("de",)), ("DE", "AT", "CH")),
    (dict(languages=("zh-Hant-TW",)), ("TW", "CN", "HK")),
    (dict(country="FR", timezone="Europe/Paris", languages=("fr-FR",)), ("FR", "BE", "CA")),
    (dict(country="XX", languages=("und",)), ()),
])
def test_region_hints(kwargs, expected):
    assert region_hints(**kwargs) == expected


def test_record_hints_from_top_level_then_nested_fields():
    assert record_region_hints({"country": "DE", "timezone": "Europe/Berlin"}) == ("DE",)
    assert record_region_hints({"extra": {"locale": "ja-JP"}}) == ("JP",)
    assert record_region_hints({"conversation_context": {"country": "KR"}}) == ("KR",)
    assert record_region_hints({"extra": {"language": 7}}) == ()
    assert record_region_hints({}, detected_language="es") == ("ES", "MX", "AR")


def test_text_hints_from_a_payload_that_does_not_parse():
    raw = '{"session_id": "s1", "country": "FR", "timezone": "Europe/Paris", "element_text": "06 12'
    assert text_region_hints(raw)[0] == "FR"
    assert text_region_hints("not json at all 030 901820") == ()


def test_cue_regions_follow_the_cue_language():
    assert cue_regions("Handy")[0] == "DE"
    assert cue_regions("携帯") == ("JP",)
    assert cue_regions("unknown") == ()


R = PiiRedactor(SECRET)


def test_national_number_needs_its_region_hint():
    assert R.redact_text("unter 030 901820")[1] == {}
    redacted, counts = R.redact_text("unter 030 901820", ("DE",))
    assert counts == {"phone": 1} and expected_token("phone", "+4930901820") in redacted


def test_record_hints_reach_the_phone_detector_and_the_cache_keeps_them_apart():
    text = "unter 030 901820"
    de, counts_de = R.redact_record({"element_text": text, "country": "DE"}, ("element_text",))
    us, counts_us = R.redact_record({"element_text": text, "country": "US"}, ("element_text",))
    again, _ = R.redact_record({"element_text": text, "country": "DE"}, ("element_text",))
    assert counts_de == {"phone": 1} and counts_us == {}
    assert us["element_text"] == text
    assert again["element_text"] == de["element_text"] != text


def test_cued_invalid_number_is_a_phone_and_uncued_stays():
    assert R.redact_text("phone 555 0100")[1] == {"phone": 1}
    assert R.redact_text("room 555 0100")[1] == {}
    # a digit or a sentence end between cue and number breaks the link
    assert R.redact_text("Phone: +49 30 1234567, order 2024-000123")[1] == {"phone": 1}
    assert R.redact_text("call 3 pm, ticket 48213577")[1] == {}


def test_bare_eleven_digits_are_an_id_unless_cued():
    assert R.redact_text("customer 13800138000")[1] == {}
    redacted, counts = R.redact_text("手机13800138000")
    assert counts == {"phone": 1} and expected_token("phone", "+8613800138000") in redacted


@pytest.mark.parametrize("a, b", [
    ("info@xn--bcher-kva.de", "info@bücher.de"),
    ("Jürgen@Beispiel.DE", "jürgen@beispiel.de"),
    ("yamada＠example.jp", "yamada@example.jp"),
])
def test_email_forms_share_one_token(a, b):
    ta, ca = R.redact_text(a)
    tb, cb = R.redact_text(b)
    assert ca == cb == {"email": 1} and ta == tb


def test_email_glued_to_japanese_text_keeps_the_text():
    redacted, _ = R.redact_text("メールはtaro@example.jpです")
    assert redacted == "メールは" + expected_token("email", "taro@example.jp") + "です"


def test_language_of_is_asked_only_for_unresolved_candidates():
    calls = []

    def language_of(text):
        calls.append(text)
        return "de"

    redactor = PiiRedactor(SECRET, language_of=language_of)
    assert redactor.redact_text("call +1 650-253-0000")[1] == {"phone": 1}
    assert redactor.redact_text("no digits here")[1] == {}
    assert calls == []
    assert redactor.redact_text("Rufen Sie bitte 089 2190 7654 an")[1] == {"phone": 1}
    assert calls == ["Rufen Sie bitte 089 2190 7654 an"]


def test_real_language_detector_as_region_hint():
    from transforms.text_agent_content import ContentAnalyzer

    redactor = PiiRedactor(SECRET, language_of=ContentAnalyzer().language)
    text = "Guten Tag, bitte melden Sie sich morgen früh unter 089 2190 7654 bei uns"
    redacted, counts = redactor.redact_text(text)
    assert counts == {"phone": 1} and expected_token("phone", "+498921907654") in redacted
    assert PiiRedactor(SECRET).redact_text(text)[1] == {}


def test_text_agent_turn_uses_its_locale_field():
    from transforms.text_agent import redact_turn

    turn = {"user_message": "mi número 612 345 678", "response_text": "gracias",
            "extra": {"locale": "es-ES"}}
    redacted, user_counts, _ = redact_turn(turn, R)
    assert user_counts == {"phone": 1}
    assert expected_token("phone", "+34612345678") in redacted["user_message"]
    plain = {"user_message": "el 612 345 678", "response_text": "ok", "extra": {"locale": "es-ES"}}
    assert redact_turn(plain, R)[1] == {"phone": 1}  # the hint alone, no cue word


def test_dead_letter_raw_payload_uses_its_country():
    from transforms.deadletter import _RedactDeadLetterFn
    from schemas.records import FailedRecord

    fn = _RedactDeadLetterFn(SECRET, "test")
    fn.setup()
    raw = '{"country": "DE", "element_text": "unter 030 901820", "timestamp": "x'
    failed = FailedRecord(raw=raw, error_class="ValueError", error_message="bad",
                          stage="decode", pipeline="frontend", source_topic="t",
                          source_partition=0, source_offset=1, received_at="now")
    (out,) = list(fn.process(failed))
    assert "901820" not in out.raw and expected_token("phone", "+4930901820") in out.raw
    assert collections.Counter(out.raw)["["] == 1
