"""Where the Marketo extractor sends lead deltas: Kafka, or a JSON-lines file.

Both publishers have one contract, which the extractor's high-water mark
relies on: ``publish(records)`` returns only when every record is durably
acknowledged (Kafka: ``acks=all`` and every send's future resolved; file:
written, flushed and ``fsync``-ed), and raises ``PublishError`` otherwise. The
extractor advances its mark only after ``publish`` returned.

Delivery guarantee: at-least-once. A failure after some sends succeeded
re-sends them next run; the consumer upserts by lead id (latest
``updatedAt`` wins), so duplicates are harmless.

Records are ``(key, value)`` pairs of text/bytes: the lead id and the lead's
JSON. ``publish_failures`` sends ``FailedRecord``s (records that cannot be
keyed, e.g. without a lead id) to the dead-letter topic / file.
"""
from __future__ import annotations

import json
import os
import typing

from iheard_io.security import resolve_secret_files

__all__ = ["PublishError", "KafkaDeltaPublisher", "JsonLinesDeltaPublisher"]

Record = typing.Tuple[typing.Union[str, bytes], typing.Union[str, bytes]]


class PublishError(RuntimeError):
    """Not every record was acknowledged."""


def _bytes(value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _failed_json(failed) -> bytes:
    d = failed._asdict() if hasattr(failed, "_asdict") else dict(failed)
    return json.dumps(d, sort_keys=True, default=str).encode("utf-8")


class KafkaDeltaPublisher:
    """Sends to ``topic`` (and failures to ``dead_letter_topic``) with one
    kafka-python producer; ``client_config`` from
    ``iheard_io.kafka.kafka_client_config``."""

    def __init__(self, client_config: typing.Mapping, topic: str,
                 dead_letter_topic: typing.Optional[str] = None,
                 ack_timeout_s: float = 60.0):
        if not topic:
            raise ValueError("topic is required")
        from kafka import KafkaProducer

        self.topic = topic
        self._dead_letter_topic = dead_letter_topic
        self._timeout_s = ack_timeout_s
        self._producer = KafkaProducer(**resolve_secret_files({
            "acks": "all", "retries": 5, "linger_ms": 5, **dict(client_config)}))

    def _send_all(self, topic: str, records: typing.Sequence[Record]) -> None:
        from kafka.errors import KafkaError

        futures = []
        try:
            for key, value in records:
                futures.append(self._producer.send(
                    topic, key=None if key is None else _bytes(key), value=_bytes(value)))
            self._producer.flush(timeout=self._timeout_s)
            for future in futures:
                future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise PublishError(f"Kafka did not acknowledge every record on {topic}: {exc}") from exc

    def publish(self, records: typing.Sequence[Record]) -> None:
        self._send_all(self.topic, records)

    def publish_failures(self, failed: typing.Sequence) -> None:
        if not failed:
            return
        if not self._dead_letter_topic:
            raise PublishError("records failed and no dead-letter topic is configured")
        self._send_all(self._dead_letter_topic, [(None, _failed_json(f)) for f in failed])

    def close(self) -> None:
        self._producer.close(timeout=10)


class JsonLinesDeltaPublisher:
    """Appends each record's value as one line to ``path`` (failures to
    ``path + '.failed.jsonl'``): the file the Marketo pipeline reads with
    ``--input``."""

    def __init__(self, path: str):
        if not path:
            raise ValueError("path is required")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.failed_path = path + ".failed.jsonl"

    @staticmethod
    def _append(path: str, lines: typing.Sequence[bytes]) -> None:
        try:
            with open(path, "ab") as handle:
                for line in lines:
                    handle.write(line.rstrip(b"\n") + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise PublishError(f"could not append to {path}: {exc}") from exc

    def publish(self, records: typing.Sequence[Record]) -> None:
        self._append(self.path, [_bytes(value) for _, value in records])

    def publish_failures(self, failed: typing.Sequence) -> None:
        if failed:
            self._append(self.failed_path, [_failed_json(f) for f in failed])

    def close(self) -> None:
        pass
