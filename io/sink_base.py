"""The one buffered-batch sink every store connector is built on.

A sink DoFn subclasses ``BatchSinkFn`` and keeps only what is its own: how to
open and close its client, how to turn an element into what it writes
(``prepare``), the key rows are deduplicated on (``key_of``), and the write
of one batch (``write``). The base does the rest, the same way for all::

    element --process--> buffer (per bundle, with its timestamp and window)
                           | batch_size elements, and in finish_bundle
                           v
                 prepare each element   -- raises --> dead letter
                 last element per key   (key_of; one upsert/MERGE per key)
                 write(client, batch)   under iheard_io.retry:
                     transient  -> retried on a fresh client, capped backoff,
                                   within the retry budget; then on_exhausted
                     rejected   -> batch bisected down to the refused rows
                                   (isolate_bad_rows), which become dead letters
                     fatal      -> the bundle fails at once
                           |
                           => ``failed`` output: FailedRecord per dead letter
                              (stage ``sink:<store>``, the element as JSON, the
                              element's ``_source`` origin, the reason)

The client lives from ``setup()`` (opened once; a store that is down then is
retried at the first write instead) to ``teardown()``; after a transient
error it is closed and reopened, so a restarted server is reached on fresh
connections.

Policy per store. Every store is retried the same way while it is down:
0.2 s, doubling, at most 5 s between tries, for 60 s (the defaults: each
sink takes ``retry_budget_seconds``, ``retry_backoff_seconds`` and, for Redis
and Snowflake, ``on_exhausted``; the pipelines take
``--postgres_retry_budget_seconds``, ``--redis_retry_budget_seconds`` and
``--snowflake_retry_budget_seconds``); then:

| store (sinks)                      | role             | after the budget                | delivery guarantee           |
|------------------------------------|------------------|---------------------------------|------------------------------|
| PostgreSQL (WriteToPostgres)       | system of record | fail the bundle: Flink restores | at-least-once, idempotent    |
|                                    |                  | the checkpoint and replays      | upserts (nothing lost)       |
| Redis (WriteSessionState,          | derived          | dead letter every row of the    | at-least-once while Redis is |
| WriteLiveKpis, WritePriorityLeads) |                  | batch (StoreUnavailable, the    | up; an outage past the       |
|                                    |                  | row as JSON: replayable); the   | budget: dead letters until   |
|                                    |                  | job and PostgreSQL go on        | replayed                     |
| Snowflake (WriteToSnowflake)       | optional copy    | as Redis                        | as Redis; MERGE on the key   |
| PostgreSQL/DuckDB read             | lookup           | fail the bundle: a lead is      | -                            |
| (LookupEngagement)                 |                  | never scored on made-up data    |                              |

What each choice costs: a PostgreSQL outage longer than its budget restarts
the job (Flink's restart strategy, 30 attempts 5 s apart, then bounds how long
an outage the job survives, and every restart re-reads from the checkpoint);
a Redis or Snowflake outage longer than its budget never stops the job, but
the rows written during it reach those stores only by replaying their dead
letters, and each dead letter is a ``failed_events`` row. ``on_exhausted=
"fail"`` on the Redis or Snowflake sinks trades that for PostgreSQL's
behaviour (Redis/Snowflake down long enough then stops every sink of the job).
While any store is retried its bundle waits, so checkpoints wait too: a
budget must stay well under the checkpoint timeout.

A row the store rejects for its content is a dead letter with the store's
reason whatever the store; the other rows of its batch are written.

Counters (namespace = the sink's name, e.g. ``WriteToPostgres``):
``received`` (elements in), ``written``, ``failed`` (dead letters),
``superseded`` (replaced by a later element with the same key in the same
batch, so received = written + failed + superseded), ``retries``, and the
write latency of every batch the store accepted (one round trip: one
COPY + upsert transaction, one Redis pipeline, one PUT + COPY + MERGE; the
waits between retries are not in it):

* ``write_ms_le_<N>`` for N in ``LATENCY_BUCKETS_MS`` (1, 2, 5, 10, 25, 50,
  100, 250, 500, 1000, 2500, 5000, 10000) and ``write_ms_le_inf``:
  **cumulative** counts (a batch of 7 ms counts in ``le_10``, ``le_25``, ...,
  ``le_inf``), so ``le_inf`` is the number of batches and
  ``le_100 / le_inf`` the share of batches within 100 ms, as in a Prometheus
  histogram. On Flink they are the metrics
  ``flink_taskmanager_job_task_operator_<sink>_write_ms_le_<N>``;
  ``percentiles_from_buckets`` turns them back into p50/p95 (resolution: the
  bucket bounds);
* ``write_ms`` (a distribution: sum, count, min, max).
"""
from __future__ import annotations

import logging
import time
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from iheard_io.retry import OnExhausted, RetryPolicy, StoreErrors, run_with_retries
from schemas.records import failed_from_event

__all__ = [
    "BufferedBatchFn",
    "BatchSinkFn",
    "StoreUnavailable",
    "isolate_bad_rows",
    "LATENCY_BUCKETS_MS",
    "latency_counter_names",
    "latency_bucket",
    "percentiles_from_buckets",
    "latency_by_sink",
    "SINK_COUNTERS",
    "retry_policy",
]

_LOG = logging.getLogger(__name__)

# Upper bounds (ms) of the write-latency buckets: fine around the design
# document's targets (Redis p95 < 10 ms, PostgreSQL p95 < 100 ms), coarse in
# the tail where a batch waits on a busy store.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


# The counters every BatchSinkFn keeps in its counter_namespace (with the
# latency buckets); a BufferedBatchFn (a lookup) keeps the first two.
SINK_COUNTERS = ("received", "retries", "written", "failed", "superseded")


def latency_counter_names() -> typing.List[str]:
    """``write_ms_le_<N>`` for every bucket, then ``write_ms_le_inf``."""
    return [f"write_ms_le_{b}" for b in LATENCY_BUCKETS_MS] + ["write_ms_le_inf"]


def latency_bucket(ms: float) -> typing.List[str]:
    """The cumulative counters a batch of ``ms`` milliseconds increments."""
    return [f"write_ms_le_{b}" for b in LATENCY_BUCKETS_MS if ms <= b] + ["write_ms_le_inf"]


def percentiles_from_buckets(
    counts: typing.Mapping[str, float], quantiles: typing.Sequence[float] = (0.5, 0.95),
) -> typing.Dict[float, typing.Optional[float]]:
    """p-quantiles in ms from cumulative bucket counters (``{name: count}``
    with the names of ``latency_counter_names``; missing names count 0), the
    way Prometheus' ``histogram_quantile`` reads a histogram: linear within
    the bucket the quantile falls in (the first bucket starts at 0); a
    quantile beyond the last finite bound is that bound. None when no batch
    was counted."""
    total = float(counts.get("write_ms_le_inf") or 0)
    out: typing.Dict[float, typing.Optional[float]] = {}
    for q in quantiles:
        if total <= 0:
            out[q] = None
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        value = float(LATENCY_BUCKETS_MS[-1])
        for bound in LATENCY_BUCKETS_MS:
            cum = float(counts.get(f"write_ms_le_{bound}") or 0)
            if cum >= rank and cum > lower_count:
                value = lower_bound + (bound - lower_bound) * (rank - lower_count) / (cum - lower_count)
                break
            lower_bound, lower_count = float(bound), cum
        out[q] = value
    return out


def latency_by_sink(
    counters: typing.Mapping[typing.Tuple[str, str], float],
    quantiles: typing.Sequence[float] = (0.5, 0.95),
) -> typing.Dict[str, typing.Tuple[int, typing.Dict[float, typing.Optional[float]]]]:
    """``{sink: (batches, {q: ms})}`` from a job's Beam counters keyed
    ``(namespace, name)`` (e.g. Flink REST's accumulators), for every
    namespace that counted a batch; several steps of one sink (one per
    table) add up."""
    names = set(latency_counter_names())
    per_sink: typing.Dict[str, typing.Dict[str, float]] = {}
    for (namespace, name), value in counters.items():
        if name in names:
            bucket = per_sink.setdefault(namespace, {})
            bucket[name] = bucket.get(name, 0) + value
    return {sink: (int(c.get("write_ms_le_inf", 0)), percentiles_from_buckets(c, quantiles))
            for sink, c in sorted(per_sink.items()) if c.get("write_ms_le_inf")}


def retry_policy(budget_s: float, first_backoff_s: typing.Optional[float] = None,
                 on_exhausted: typing.Union[str, OnExhausted] = OnExhausted.FAIL) -> RetryPolicy:
    """A ``RetryPolicy`` from a sink's constructor arguments."""
    kwargs = {"budget_s": float(budget_s), "on_exhausted": OnExhausted(on_exhausted)}
    if first_backoff_s is not None:
        kwargs["first_backoff_s"] = float(first_backoff_s)
        kwargs["max_backoff_s"] = max(RetryPolicy.max_backoff_s, float(first_backoff_s))
    return RetryPolicy(**kwargs)


class StoreUnavailable(ConnectionError):
    """The reason of a dead letter written because the store stayed down
    longer than the sink's retry budget (``on_exhausted="dead_letter"``)."""


_Item = typing.TypeVar("_Item")


def isolate_bad_rows(
    batch: typing.Sequence[_Item],
    write: typing.Callable[[typing.Sequence[_Item]], typing.Optional[typing.Sequence[typing.Optional[BaseException]]]],
    is_rejection: typing.Callable[[BaseException], bool],
) -> typing.Iterator[typing.Tuple[_Item, BaseException]]:
    """Writes ``batch``; yields ``(item, error)`` for every item the store refused.

    ``write`` either raises for the whole batch or returns one entry per item
    (None: written; an exception: that item refused). When it raises an error
    ``is_rejection`` accepts, each half is written again, down to single
    items: a refused write changed nothing, so items that were fine are
    written once. Other errors propagate."""
    if not batch:
        return
    try:
        per_item = write(batch)
    except Exception as exc:  # pylint: disable=broad-except
        if not is_rejection(exc):
            raise
        if len(batch) == 1:
            yield batch[0], exc
            return
        middle = len(batch) // 2
        yield from isolate_bad_rows(batch[:middle], write, is_rejection)
        yield from isolate_bad_rows(batch[middle:], write, is_rejection)
        return
    for item, error in zip(batch, per_item or ()):
        if error is not None:
            yield item, error


class BufferedBatchFn(beam.DoFn):
    """Client from ``setup()`` to ``teardown()``, elements buffered per bundle
    and handed to ``flush_batch`` every ``batch_size`` elements and at the end
    of the bundle, and ``retrying`` to run a call on the client under the
    store's retry policy. ``batched``: each element is a list of items
    (transforms/batches.py)."""

    counter_namespace = "Sink"

    def __init__(self, *, errors: StoreErrors, retry: RetryPolicy, batch_size: int,
                 batched: bool = False):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self._errors = errors
        self._retry = retry
        self._batch_size = batch_size
        self._batched = batched
        self._client = None
        self._buffer: list = []
        ns = self.counter_namespace
        self._received = Metrics.counter(ns, "received")
        self._retries = Metrics.counter(ns, "retries")
        self._latency = {name: Metrics.counter(ns, name) for name in latency_counter_names()}
        self._latency_ms = Metrics.distribution(ns, "write_ms")

    # -- what a store provides --------------------------------------------

    def open_client(self):
        raise NotImplementedError

    def close_client(self, client) -> None:
        client.close()

    def flush_batch(self, items):
        """Handles ``[(element, timestamp, window), ...]``; yields outputs."""
        raise NotImplementedError

    # -- client -----------------------------------------------------------

    def setup(self):
        try:
            self._client = self.open_client()
        except Exception as exc:  # pylint: disable=broad-except
            if not self._errors.is_transient(exc):
                raise
            # Down now: the first write retries under the policy.
            _LOG.warning("%s unavailable at setup (%s); the first write retries",
                         self._errors.name, exc)
            self._client = None

    def teardown(self):
        self._drop_client()

    def _drop_client(self):
        client, self._client = self._client, None
        if client is not None:
            try:
                self.close_client(client)
            except Exception:  # pylint: disable=broad-except
                pass

    def retrying(self, call: typing.Callable[[typing.Any], typing.Any]):
        """``call(client)`` under the retry policy, on a fresh client after
        every transient error; the last error propagates."""
        def attempt():
            if self._client is None:
                self._client = self.open_client()
            return call(self._client)

        def on_retry(exc, attempt_number, delay_s):
            self._retries.inc()
            self._drop_client()

        return run_with_retries(attempt, self._retry, self._errors, on_retry)

    def timed(self, call, *args):
        """``call(*args)``, its duration counted in the latency buckets when
        it returns."""
        start = time.perf_counter()
        result = call(*args)
        ms = (time.perf_counter() - start) * 1000.0
        for name in latency_bucket(ms):
            self._latency[name].inc()
        self._latency_ms.update(int(round(ms)))
        return result

    # -- bundle -----------------------------------------------------------

    def start_bundle(self):
        self._buffer = []

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        if self._batched:
            self._buffer.extend((item, timestamp, window) for item in element)
            self._received.inc(len(element))
        else:
            self._buffer.append((element, timestamp, window))
            self._received.inc()
        if len(self._buffer) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        items, self._buffer = self._buffer, []
        if items:
            yield from self.flush_batch(items)


def _windowed(value, ts, win):
    return WindowedValue(value, ts, [win if win is not None else GlobalWindow()])


class BatchSinkFn(BufferedBatchFn):
    """A sink: ``prepare`` each element, dedupe on ``key_of``, ``write`` the
    batch; refused rows and (by policy) rows of an outage go to the
    ``failed`` output as ``FailedRecord``s. See the module docstring."""

    FAILED = "failed"
    stage = "sink:store"
    # Deduplicate on key_of within a batch: the last element per key is
    # written (or the first, with dedupe_keeps_first: first-writer-wins).
    dedupe = False
    dedupe_keeps_first = False

    def __init__(self, *, errors: StoreErrors, retry: RetryPolicy, batch_size: int,
                 pipeline: str = "", batched: bool = False):
        super().__init__(errors=errors, retry=retry, batch_size=batch_size, batched=batched)
        self._pipeline = pipeline
        ns = self.counter_namespace
        self._written = Metrics.counter(ns, "written")
        self._failed = Metrics.counter(ns, "failed")
        self._superseded = Metrics.counter(ns, "superseded")

    # -- what a store provides --------------------------------------------

    def prepare(self, element):
        """What ``write`` needs of one element; an exception here makes the
        element a dead letter at once."""
        return element

    def key_of(self, prepared) -> typing.Hashable:
        raise NotImplementedError

    def write(self, client, batch: typing.Sequence[typing.Any]
              ) -> typing.Optional[typing.Sequence[typing.Optional[BaseException]]]:
        """Writes the prepared values; raises for the batch, or returns one
        error-or-None per value (see ``isolate_bad_rows``)."""
        raise NotImplementedError

    # -- flushing ---------------------------------------------------------

    def flush_batch(self, items):
        batch = []  # (element, ts, win, prepared)
        by_key: typing.Dict[typing.Hashable, int] = {}
        for element, ts, win in items:
            try:
                prepared = self.prepare(element)
            except Exception as exc:  # pylint: disable=broad-except
                # the element's own content: no store would take it
                yield self._dead_letter(element, ts, win, exc)
                continue
            if self.dedupe:
                key = self.key_of(prepared)
                if key in by_key:
                    # one element per key (one upsert/MERGE may touch a row
                    # only once)
                    self._superseded.inc()
                    if self.dedupe_keeps_first:
                        continue
                    batch[by_key[key]] = None
                by_key[key] = len(batch)
            batch.append((element, ts, win, prepared))
        batch = [b for b in batch if b is not None]
        refused = 0
        for (element, ts, win, _), exc in isolate_bad_rows(
                batch, self._write_batch, self._errors.is_rejection):
            refused += 1
            yield self._dead_letter(element, ts, win, exc)
        self._written.inc(len(batch) - refused)

    def _write_batch(self, batch):
        values = [prepared for _, _, _, prepared in batch]
        try:
            return self.retrying(lambda client: self.timed(self.write, client, values))
        except Exception as exc:  # pylint: disable=broad-except
            if not self._errors.is_transient(exc):
                raise
            self._drop_client()
            if self._retry.on_exhausted is OnExhausted.DEAD_LETTER:
                _LOG.error("%s unavailable for %.0f s; %d rows to the dead letter",
                           self._errors.name, self._retry.budget_s, len(batch))
                reason = StoreUnavailable(
                    f"{self._errors.name} unavailable past the {self._retry.budget_s:g} s retry "
                    f"budget: {type(exc).__name__}: {exc}")
                return [reason] * len(batch)
            raise  # the bundle fails; the runner replays it

    def _dead_letter(self, element, ts, win, exc):
        self._failed.inc()
        failed = failed_from_event(element, exc, self.stage, self._pipeline)
        return beam.pvalue.TaggedOutput(self.FAILED, _windowed(failed, ts, win))
