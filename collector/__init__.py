"""The ingestion API: the HTTP collector the widget posts ``trackEvent`` bodies
to, and the Kafka producer client the text-agent server calls.

``collector.events`` validates and routes (pure); ``collector.publisher``
publishes to Kafka and reports each batch's acknowledgement to asyncio;
``collector.app`` is the ASGI application; ``python -m collector`` serves it
with uvicorn; ``collector.client`` is the producer client; ``python -m
collector.loadtest`` drives the collector or Kafka at a given rate.
"""
