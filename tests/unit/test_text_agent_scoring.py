"""Hand-computed cases for the three turn scores (formulas in
transforms/text_agent_scoring.py; the arithmetic is in each comment)."""
import pytest

from transforms.text_agent_scoring import (
    business_value_score,
    efficiency_score,
    quality_score,
    round_half_up,
    word_count,
)


def _value(topic):
    return {"pricing": "high", "demo": "high", "contact": "high",
            "integration": "medium", "support": "low"}.get(topic, "low")


# -- efficiency -------------------------------------------------------------
def test_efficiency_fast_lean_turn_is_full_marks():
    # tps = 100 / 0.8 s = 125 -> speed 50 * min(125/50, 1) = 50
    # latency 800 ms <= 1000 -> 30 * clamp01((8000-800)/7000 = 1.03) = 30
    # total 600 <= 1000 -> 20 * clamp01((4000-600)/3000 = 1.13) = 20  -> 100
    score, f = efficiency_score(tokens_out=100, total_tokens=600, latency_ms=800)
    assert score == 100
    assert f["tokens_per_second"] == 125.0


def test_efficiency_middle_case():
    # tps = 100 / 2 s = 50 -> speed 50
    # latency 30 * (8000-2000)/7000 = 30 * 0.857142 = 25.714
    # economy 20 * (4000-1100)/3000 = 20 * 0.966667 = 19.333
    # sum 95.048 -> 95
    score, f = efficiency_score(tokens_out=100, total_tokens=1100, latency_ms=2000)
    assert score == 95
    assert f["latency_points"] == pytest.approx(25.714, abs=1e-3)
    assert f["token_economy_points"] == pytest.approx(19.333, abs=1e-3)


def test_efficiency_slow_heavy_turn():
    # tps = 200 / 10 s = 20 -> speed 50 * 20/50 = 20
    # latency 10000 >= 8000 -> 0 ; economy total 5000 >= 4000 -> 0 ; -> 20
    score, f = efficiency_score(tokens_out=200, total_tokens=5000, latency_ms=10_000)
    assert score == 20
    assert f["speed_points"] == 20.0


def test_efficiency_missing_latency_gets_no_speed_or_latency_points():
    # latency 0 = not measured: speed 0, latency 0, economy 20 * (4000-2500)/3000 = 10
    score, f = efficiency_score(tokens_out=500, total_tokens=2500, latency_ms=0)
    assert score == 10
    assert f["latency_missing"] is True
    assert f["tokens_per_second"] == 0.0


# -- quality ----------------------------------------------------------------
def test_quality_perfect_answer():
    # tools: 1/1 success -> 30; phrasing clean -> 30
    # question "What does the Pro plan cost?" = 6 words, answer 12 words,
    # ratio 2 -> 25; languages en/en -> 15 ; total 100
    score, f = quality_score(
        {"pricing_calculator": {"success": True}},
        "The Pro plan costs 49 dollars per seat per month billed annually.",
        "What does the Pro plan cost?", "en", "en")
    assert f["question_words"] == 6 and f["response_words"] == 12
    assert score == 100


def test_quality_failed_tool_and_error_phrase():
    # tools 1 of 2 succeeded -> 30 * 0.5 = 15
    # "something went wrong" -> error phrase, no refusal -> 10
    # question 4 words, answer 8 words: ratio 2 -> 25 ; en/en -> 15 ; total 65
    score, f = quality_score(
        {"a": {"success": True}, "b": {"success": False}},
        "Sorry, something went wrong. Please try again later.",
        "What is the price?", "en", "en")
    assert f["error_phrases"] == ["something went wrong", "try again later"]
    assert f["tool_points"] == 15.0
    assert score == 65


def test_quality_refusal_short_answer_language_mismatch():
    # no tools -> 30 ; refusal "i can't help" -> 0
    # question 10 words, answer "I can't help with that." = 5 words: ratio 0.5
    # -> 25 * 0.5 = 12.5 ; languages de vs en -> 0 ; total 42.5 -> 43 (half up)
    score, f = quality_score(
        {}, "I can't help with that.",
        "Können Sie mir bitte sagen wie viel das heute kostet", "de", "en")
    assert f["question_words"] == 10 and f["response_words"] == 5
    assert f["refusal_phrases"] == ["i can't help"]
    assert f["language_match"] is False
    assert score == 43


def test_quality_overlong_answer_fades_and_undetermined_language_is_neutral():
    # question "Price?" = 1 word ; answer 40 words: ratio 40 ->
    # 25 * (1 - (40-20)/40) = 12.5 ; no tools 30 ; phrasing 30 ;
    # language und -> 15 ; total 87.5 -> 88
    answer = " ".join(["word"] * 40)
    score, f = quality_score({}, answer, "Price?", "und", "en")
    assert f["length_ratio"] == 40.0
    assert f["language_match"] is None
    assert score == 88


def test_quality_empty_response_and_no_question():
    # empty response -> length 0 ; no tools 30 ; phrasing 30 ; language 15 -> 75
    assert quality_score({}, "", "hello there", "en", "und")[0] == 75
    # no user message, 2-word response -> length 25 * 0.4 = 10 -> 30+30+10+15 = 85
    assert quality_score({}, "Hi there", None, "und", "und")[0] == 85


def test_quality_phrase_match_is_on_word_boundaries():
    # "has an aim" must not match the refusal phrase "as an ai"
    _, f = quality_score({}, "Our team has an aim to help.", "What is your aim?", "en", "en")
    assert f["refusal_phrases"] == []


# -- business value ---------------------------------------------------------
def test_business_value_hot_lead():
    # buying phrases: "buy", "how much" -> 2 (+1 intent "purchase") = 3 -> min(3,2)/2 -> 35
    # topics pricing (high) -> 25 ; email seen -> lead 30
    # previous_turns 3 -> 10 * 3/5 = 6 ; total 96
    score, f = business_value_score(
        "How much would it be to buy 20 seats? Mail me at [EMAIL:abc]", "purchase",
        ["pricing"], _value, {"email": 1}, {}, 3)
    assert f["buying_phrases"] == ["buy", "how much", "seats"]
    assert f["intent_hits"] == 4
    assert f["lead_contact_kinds"] == ["email"]
    assert score == 96


def test_business_value_lead_tool_and_medium_topic():
    # no buying phrase, intent "integration_question" is not a buying intent -> 0
    # topics integration (medium) -> 12 ; capture_lead tool succeeded -> 30
    # previous_turns 10 -> capped at 5 -> 10 ; total 52
    score, f = business_value_score(
        "Does it work with Slack?", "integration_question", ["integration"], _value,
        {}, {"capture_lead": {"success": True}, "search_docs": {"success": True}}, 10)
    assert f["lead_tools"] == ["capture_lead"]
    assert score == 52


def test_business_value_failed_lead_tool_does_not_count():
    # one buying phrase "demo" -> 35 * 1/2 = 17.5 ; topic demo (high) -> 25 ;
    # book_demo failed -> no lead ; 0 previous turns -> 0 ; 42.5 -> 43
    score, f = business_value_score(
        "Show me a demo", None, ["demo"], _value, {"phone": 0},
        {"book_demo": {"success": False}}, 0)
    assert f["lead_captured"] is False
    assert score == 43


def test_business_value_support_chat_is_low():
    # nothing commercial: intent 0, topic support (low) 0, no lead, 1 turn -> 2
    score, _ = business_value_score("My password reset link is broken", "support",
                                    ["support"], _value, {}, {}, 1)
    assert score == 2


def test_rounding_and_word_count_helpers():
    assert round_half_up(62.5) == 63 and round_half_up(62.49) == 62
    assert word_count("Don't stop — it's 3 o'clock!") == 5
