"""Recall per PII kind and look-alikes kept, over the labelled corpus
(tests/unit/pii_corpus.py); ``python benchmarks/pii_recall.py`` prints the
same figures."""
import pytest

from tests.unit import pii_corpus
from tests.unit.conftest import SECRET
from transforms.pii import PiiRedactor

RECALL_TARGET = 0.99  # per kind
KEPT_TARGET = 0.97  # share of look-alike snippets left byte-identical
KINDS = ("email", "phone", "ipv4", "ipv6", "card", "ssn", "iban")  # redacted in text


@pytest.fixture(scope="module")
def report():
    return pii_corpus.evaluate(PiiRedactor(SECRET))


def test_corpus_is_big_balanced_and_multilingual():
    total = len(pii_corpus.PII) + len(pii_corpus.LOOKALIKES)
    assert total >= 300
    assert 0.4 <= len(pii_corpus.PII) / total <= 0.6
    assert len({e.lang for e in pii_corpus.PII}) >= 10
    assert {e.form for e in pii_corpus.PII + pii_corpus.LOOKALIKES} == {"chat", "url", "title", "json"}
    planted_kinds = {kind for e in pii_corpus.PII for kind, _ in e.pii}
    assert planted_kinds == set(KINDS)
    for entry in pii_corpus.PII:  # the labels point at text that is really there
        for _, value in entry.pii:
            assert value in entry.text, entry
        for part in entry.keep:
            assert part in entry.text, entry


@pytest.mark.parametrize("kind", KINDS)
def test_recall_per_kind(report, kind):
    assert report.recall(kind) >= RECALL_TARGET, (
        "\n".join(report.lines()), [m for m in report.misses if m[0] == kind])


def test_lookalikes_kept(report):
    assert report.kept_share >= KEPT_TARGET, ("\n".join(report.lines()), report.damaged)
    assert report.kept_parts_ok == report.kept_parts, report.damaged
