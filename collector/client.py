"""Producer client for the text-agent server (and any Python service that
publishes events straight to Kafka rather than over HTTP).

Each event is validated against the project's schemas before it leaves the
process (``collector.events.prepare_event``: the pipeline's own models), keyed
by ``session_id``, and handed to one shared kafka-python producer that
batches (``linger_ms``) and waits for ``acks=all``.

* ``publish_event(event, on_delivery=None)`` returns at once; the optional
  callback is called with ``(delivery, None)`` or ``(None, error)`` on the
  producer's I/O thread when Kafka answered. Invalid events raise
  ``ValueError`` immediately, naming the field.
* ``await track_event(event)`` returns the ``Delivery`` (topic, partition,
  offset) once Kafka acknowledged, or raises ``PublishUnavailable``.

The seed's turn handler, with this client as ``self.analytics``::

    from collector.client import AnalyticsClient

    class Agent:
        def __init__(self):
            self.analytics = AnalyticsClient(bootstrap_servers="127.0.0.1:19092")

        async def on_turn_completed(self, turn_data, response_data, tools_data):
            latency_ms = (time.time() - turn_data["start_time"]) * 1000
            await self.analytics.track_event({
                "event_type": "text_agent.turn_completed",
                "session_id": turn_data["session_id"],
                "turn_id": turn_data["turn_id"],
                "user_id": turn_data.get("user_id"),
                "channel": turn_data.get("channel", "web_chat"),
                "model_name": turn_data["model"],
                "tokens_in": turn_data["tokens_in"],
                "tokens_out": turn_data["tokens_out"],
                "latency_ms": latency_ms,
                "response_text": response_data["text"],
                "user_message": turn_data.get("user_message"),
                "tools_used": [tool["name"] for tool in tools_data],
                "tool_results": {tool["name"]: {"success": tool["success"]} for tool in tools_data},
                "conversation_context": {
                    "previous_turns": turn_data.get("previous_turns", 0),
                    "topic_history": turn_data.get("topic_history", []),
                    "user_intent": turn_data.get("user_intent"),
                },
                "timestamp": int(time.time() * 1000),
            })

        async def shutdown(self):
            self.analytics.close()   # delivers what is still pending

Delivery guarantee: at least once (see ``collector.publisher``); the
pipelines de-duplicate on ``event_id`` or the payload's hash.
"""
from __future__ import annotations

import asyncio
import typing

from collector.events import DEFAULT_TOPICS, prepare_event
from collector.publisher import Delivery, KafkaPublisher, PublishUnavailable

__all__ = ["AnalyticsClient", "Delivery", "PublishUnavailable"]

DeliveryCallback = typing.Callable[[typing.Optional[Delivery], typing.Optional[BaseException]], None]


class AnalyticsClient:
    """``bootstrap_servers`` plus any kafka-python client settings
    (``security_protocol``, ``sasl_*``, ``ssl_*``) in ``client_config``;
    ``topics`` maps a source (``frontend``, ``text_agent``) to its topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        client_config: typing.Optional[typing.Mapping[str, typing.Any]] = None,
        producer_config: typing.Optional[typing.Mapping[str, typing.Any]] = None,
        topics: typing.Optional[typing.Mapping[str, str]] = None,
    ):
        self._topics = {**DEFAULT_TOPICS, **(topics or {})}
        self._publisher = KafkaPublisher({**(client_config or {}), "bootstrap_servers": bootstrap_servers},
                                         producer_config, send_threads=1)

    def publish_event(self, event: dict, on_delivery: typing.Optional[DeliveryCallback] = None,
                      source: typing.Optional[str] = None) -> None:
        """Validates and sends ``event`` without waiting for Kafka.

        Raises ``ValueError`` for an invalid event and ``PublishUnavailable``
        when the producer cannot take it (no broker, buffer full for
        ``max_block_ms``). ``on_delivery(delivery, error)`` runs on the
        producer's thread; keep it short."""
        record = prepare_event(event, self._topics, source)

        def callbacks(_index):
            def ok(metadata):
                if on_delivery is not None:
                    on_delivery(Delivery(metadata.topic, metadata.partition, metadata.offset), None)

            def failed(exc):
                if on_delivery is not None:
                    on_delivery(None, exc)

            return ok, failed

        self._publisher.send_batch([(record.topic, record.key, record.value, None)], callbacks)

    async def track_event(self, event: dict, source: typing.Optional[str] = None) -> Delivery:
        """Validates and sends ``event``; returns once Kafka acknowledged it."""
        record = prepare_event(event, self._topics, source)
        deliveries = await self._publisher.publish([(record.topic, record.key, record.value, None)])
        return deliveries[0]

    async def track_events(self, events: typing.Sequence[dict]) -> typing.List[Delivery]:
        """Several events in one batch; all validated before any is sent."""
        records = [prepare_event(event, self._topics) for event in events]
        return await self._publisher.publish([(r.topic, r.key, r.value, None) for r in records])

    def flush(self, timeout_s: typing.Optional[float] = None) -> None:
        self._publisher.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._publisher.close(timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
