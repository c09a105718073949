"""Dead letters are stored without readable PII.

A payload that failed to parse still carries the user's text, and a
validation message may quote the offending value. ``RedactDeadLetters`` runs
the same keyed-token redaction as the main path over ``raw`` and
``error_message`` of every ``FailedRecord`` before it reaches the dead-letter
table or topic; the rest of the payload stays readable so the failure can be
diagnosed. If redaction itself fails, the text is withheld (never stored raw)
and the record is still stored.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.pii import PiiRedactor
from transforms.pii_regions import text_region_hints

__all__ = ["RedactDeadLetters", "REDACTION_WITHHELD"]

REDACTION_WITHHELD = "<withheld: PII redaction failed>"


class _RedactDeadLetterFn(beam.DoFn):
    def __init__(self, pii_secret: bytes, namespace: str):
        self._secret = pii_secret
        self._redactor = None
        self._withheld = Metrics.counter(namespace, "dead_letter_redaction_withheld")

    def setup(self):
        self._redactor = PiiRedactor(self._secret)

    def _redact(self, text):
        if not text:
            return text
        try:
            # A raw payload that did not parse still names its country /
            # timezone / locale: the phone regions to try.
            return self._redactor.redact_text(text, text_region_hints(text))[0]
        except Exception:  # noqa: BLE001 - a dead letter must still be stored
            self._withheld.inc()
            return REDACTION_WITHHELD

    def process(self, failed):
        yield failed._replace(raw=self._redact(failed.raw),
                              error_message=self._redact(failed.error_message))


class RedactDeadLetters(beam.PTransform):
    """``PCollection[FailedRecord]`` -> the same with PII in ``raw`` and
    ``error_message`` replaced by keyed tokens."""

    def __init__(self, pii_secret: bytes, namespace: str = "iheard"):
        super().__init__()
        PiiRedactor(pii_secret)  # a bad secret fails at construction, not on a worker
        self._secret = pii_secret
        self._namespace = namespace

    def expand(self, failed):
        return failed | "RedactRawPayloads" >> beam.ParDo(
            _RedactDeadLetterFn(self._secret, self._namespace))
