"""The buffered-batch sink base and the retry strategy, tested once for every sink.

The store here is an in-memory list behind a small client whose failures the
test scripts (down for N attempts, refusing rows by content, refusing single
commands): the base is store-agnostic, and each real store's sink is tested
against its real server in tests/integration. Waits are tiny (budgets of a
fraction of a second); nothing asserts a duration.
"""
import dataclasses
import json

import apache_beam as beam
import psycopg
import pytest
import redis
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from iheard_io.postgres import upsert_sql
from iheard_io.retry import (
    OnExhausted,
    PostgresErrors,
    RedisErrors,
    RetryPolicy,
    SnowflakeErrors,
    StoreErrors,
    run_with_retries,
)
from iheard_io.sink_base import (
    LATENCY_BUCKETS_MS,
    BatchSinkFn,
    isolate_bad_rows,
    latency_by_sink,
    latency_bucket,
    latency_counter_names,
    percentiles_from_buckets,
)
from schemas.tables import TABLES, TableSpec


class Refused(Exception):
    """The store refused a row's content."""


class Broken(Exception):
    """Neither transient nor a refusal: a bug or a configuration error."""


class ListErrors(StoreErrors):
    name = "ListStore"

    def is_rejection(self, exc):
        return isinstance(exc, Refused)


# The stores' contents live here (per test, by name), so the DoFn may be
# pickled by the runner and still reach them in this process.
STORES = {}


@dataclasses.dataclass
class ListStore:
    rows: list = dataclasses.field(default_factory=list)
    batches: list = dataclasses.field(default_factory=list)  # every write call's values
    opened: int = 0
    closed: int = 0
    down_for: int = 0  # the next N attempts (connects and writes) fail
    always_down: bool = False
    fatal: bool = False
    refuse: tuple = ()  # values refused for their content (the whole write fails)
    refuse_single: tuple = ()  # values refused one by one (the rest is written)


class ListClient:
    def __init__(self, store):
        self.store = store

    def close(self):
        self.store.closed += 1


class ListSinkFn(BatchSinkFn):
    counter_namespace = "ListSink"
    stage = "sink:list"
    dedupe = True

    def __init__(self, store_name, batch_size=3, budget_s=0.3, on_exhausted=OnExhausted.FAIL,
                 keeps_first=False, batched=False):
        super().__init__(errors=ListErrors(),
                         retry=RetryPolicy(budget_s=budget_s, first_backoff_s=0.01,
                                           max_backoff_s=0.05, on_exhausted=on_exhausted),
                         batch_size=batch_size, pipeline="test", batched=batched)
        self._name = store_name
        self.dedupe_keeps_first = keeps_first

    @property
    def store(self):
        return STORES[self._name]

    def _check_up(self):
        if self.store.always_down:
            raise ConnectionError("store down")
        if self.store.down_for > 0:
            self.store.down_for -= 1
            raise ConnectionError("store down")

    def open_client(self):
        self._check_up()
        self.store.opened += 1
        return ListClient(self.store)

    def prepare(self, element):
        if "id" not in element:
            raise ValueError("no id")
        return (element["id"], element.get("v"))

    def key_of(self, prepared):
        return prepared[0]

    def write(self, client, batch):
        self._check_up()
        if self.store.fatal:
            raise Broken("no such table")
        client.store.batches.append(list(batch))
        if any(v in self.store.refuse for v in batch):
            raise Refused("value refused")
        errors = [Refused(f"{v} refused alone") if v in self.store.refuse_single else None
                  for v in batch]
        client.store.rows.extend(v for v, e in zip(batch, errors) if e is None)
        return errors


@pytest.fixture()
def store(request):
    name = request.node.name
    STORES[name] = ListStore()
    yield name, STORES[name]
    del STORES[name]


def run_bundle(fn, elements, setup=True):
    """Drives the DoFn like a runner; returns (outputs after each element, final outputs)."""
    if setup:
        fn.setup()
    fn.start_bundle()
    during = []
    for element in elements:
        during.append(list(fn.process(element, Timestamp(0), GlobalWindow())))
    return during, list(fn.finish_bundle() or [])


def dead_letters(outputs):
    """(stage, error class, id) of every FailedRecord in the outputs."""
    out = []
    for tagged in outputs:
        assert tagged.tag == BatchSinkFn.FAILED
        failed = tagged.value.value
        out.append((failed.stage, failed.error_class, json.loads(failed.raw).get("id")))
    return out


def ids(values):
    return [v[0] for v in values]


# -- batching -------------------------------------------------------------

def test_batches_flush_at_batch_size_and_at_the_end_of_the_bundle(store):
    name, s = store
    fn = ListSinkFn(name, batch_size=3)
    elements = [{"id": i} for i in range(7)]
    fn.setup()
    fn.start_bundle()
    for i, element in enumerate(elements):
        assert list(fn.process(element, Timestamp(0), GlobalWindow())) == []
        # the 3rd and 6th elements each flush a full batch, at once
        assert len(s.batches) == (i + 1) // 3
    assert list(fn.finish_bundle() or []) == []
    assert [ids(b) for b in s.batches] == [[0, 1, 2], [3, 4, 5], [6]]
    fn.start_bundle()  # an empty bundle writes nothing
    assert list(fn.finish_bundle() or []) == []
    assert len(s.batches) == 3
    fn.teardown()
    assert (s.opened, s.closed) == (1, 1)  # one client from setup to teardown


def test_batched_elements_are_lists_of_rows(store):
    name, s = store
    fn = ListSinkFn(name, batch_size=4, batched=True)
    run_bundle(fn, [[{"id": 0}, {"id": 1}], [], [{"id": 2}, {"id": 3}, {"id": 4}]])
    assert [ids(b) for b in s.batches] == [[0, 1, 2, 3, 4]]


def test_same_key_in_a_batch_keeps_the_last_or_with_first_writer_wins_the_first(store):
    name, s = store
    rows = [{"id": 1, "v": "a"}, {"id": 2, "v": "x"}, {"id": 1, "v": "b"}, {"id": 1, "v": "c"}]
    run_bundle(ListSinkFn(name, batch_size=10), rows)
    assert s.batches == [[(2, "x"), (1, "c")]]
    s.batches.clear()
    run_bundle(ListSinkFn(name, batch_size=10, keeps_first=True), rows)
    assert s.batches == [[(1, "a"), (2, "x")]]


# -- rows the store refuses -----------------------------------------------

def test_an_element_that_cannot_be_prepared_is_a_dead_letter_at_once(store):
    name, s = store
    _, out = run_bundle(ListSinkFn(name, batch_size=10), [{"id": 1}, {"no_id": 2}, {"id": 3}])
    assert dead_letters(out) == [("sink:list", "ValueError", None)]
    assert ids(s.rows) == [1, 3]


def test_bisection_isolates_exactly_the_refused_rows_and_writes_the_rest_once(store):
    name, s = store
    s.refuse = ((5, None), (10, None))
    _, out = run_bundle(ListSinkFn(name, batch_size=100), [{"id": i} for i in range(1, 12)])
    assert sorted(d[2] for d in dead_letters(out)) == [5, 10]
    assert {d[1] for d in dead_letters(out)} == {"Refused"}
    assert sorted(ids(s.rows)) == [1, 2, 3, 4, 6, 7, 8, 9, 11]  # each good row once
    # a refused write changed nothing, and no refused row was written alone twice
    assert [b for b in s.batches if len(b) == 1 and b[0][0] in (5, 10)] == [[(5, None)], [(10, None)]]


def test_isolate_bad_rows_lets_other_errors_through():
    def broken(batch):
        raise Broken("not the data")

    with pytest.raises(Broken):
        list(isolate_bad_rows([1, 2], broken, lambda e: isinstance(e, Refused)))
    assert list(isolate_bad_rows([], broken, lambda e: True)) == []


def test_rows_refused_one_by_one_are_dead_letters_without_bisection(store):
    name, s = store
    s.refuse_single = ((2, None),)
    _, out = run_bundle(ListSinkFn(name, batch_size=10), [{"id": i} for i in range(4)])
    assert dead_letters(out) == [("sink:list", "Refused", 2)]
    assert len(s.batches) == 1 and ids(s.rows) == [0, 1, 3]


# -- a store that is down -------------------------------------------------

def test_a_store_down_for_a_while_is_retried_on_fresh_clients_and_nothing_is_lost(store):
    name, s = store
    fn = ListSinkFn(name, batch_size=10, budget_s=30)
    fn.setup()
    s.down_for = 4  # the write, then three reconnects fail
    _, out = run_bundle(fn, [{"id": i} for i in range(5)], setup=False)
    assert out == []
    assert ids(s.rows) == [0, 1, 2, 3, 4]
    assert s.opened == 2  # the setup client, then one that worked
    assert s.closed == 1  # the client of the failed write was dropped


def test_a_store_down_at_setup_is_reached_at_the_first_write(store):
    name, s = store
    s.down_for = 1
    _, out = run_bundle(ListSinkFn(name, batch_size=10, budget_s=30), [{"id": 1}])
    assert out == [] and ids(s.rows) == [1] and s.opened == 1


def test_a_fatal_error_fails_the_bundle_at_once_without_retries(store):
    name, s = store
    s.fatal = True
    fn = ListSinkFn(name, batch_size=10, budget_s=30, on_exhausted=OnExhausted.DEAD_LETTER)
    with pytest.raises(Broken):
        run_bundle(fn, [{"id": 1}])
    assert s.opened == 1  # no reconnect: nothing was retried


def test_past_the_budget_the_fail_policy_fails_the_bundle(store):
    """PostgreSQL's policy: the runner replays the bundle, nothing is lost."""
    name, s = store
    fn = ListSinkFn(name, batch_size=10, budget_s=0.2, on_exhausted=OnExhausted.FAIL)
    fn.setup()
    s.always_down = True
    with pytest.raises(ConnectionError, match="store down"):
        run_bundle(fn, [{"id": 1}, {"id": 2}], setup=False)
    assert s.rows == []
    # the store is back: the replayed bundle writes everything
    s.always_down = False
    _, out = run_bundle(fn, [{"id": 1}, {"id": 2}], setup=False)
    assert out == [] and ids(s.rows) == [1, 2]


def test_past_the_budget_the_dead_letter_policy_dead_letters_the_batch_and_goes_on(store):
    """Redis' and Snowflake's policy: the rows are dead letters (replayable),
    the bundle does not fail, and the next batch is written when the store
    is back."""
    name, s = store
    fn = ListSinkFn(name, batch_size=2, budget_s=0.2, on_exhausted=OnExhausted.DEAD_LETTER)
    fn.setup()
    s.always_down = True
    during, out = run_bundle(fn, [{"id": 1}, {"id": 2}, {"id": 3}], setup=False)
    letters = dead_letters(during[1] + out)
    assert letters == [("sink:list", "StoreUnavailable", 1), ("sink:list", "StoreUnavailable", 2),
                       ("sink:list", "StoreUnavailable", 3)]
    message = during[1][0].value.value.error_message
    assert "ListStore unavailable past the 0.2 s retry budget" in message
    assert json.loads(during[1][0].value.value.raw) == {"id": 1}  # the element, to replay
    s.always_down = False
    _, out = run_bundle(fn, [{"id": 4}], setup=False)
    assert out == [] and ids(s.rows) == [4]


def test_a_budget_spent_during_bisection_dead_letters_only_the_unwritten_rows(store):
    name, s = store
    s.refuse = ((1, None),)
    fn = ListSinkFn(name, batch_size=10, budget_s=0.2, on_exhausted=OnExhausted.DEAD_LETTER)
    fn.setup()
    original = fn.write

    def write_then_go_down(client, batch):
        result = original(client, batch)
        if len(s.rows) >= 1:  # the first good half landed; then the store goes away
            s.always_down = True
        return result

    fn.write = write_then_go_down
    _, out = run_bundle(fn, [{"id": i} for i in range(4)], setup=False)
    # [0,1,2,3] refused -> [0,1] refused -> [0] written, store down -> [1] and [2,3] unavailable
    assert ids(s.rows) == [0]
    assert sorted((d[1], d[2]) for d in dead_letters(out)) == [
        ("StoreUnavailable", 1), ("StoreUnavailable", 2), ("StoreUnavailable", 3)]


# -- the retry strategy ---------------------------------------------------

def test_backoff_doubles_and_is_capped():
    policy = RetryPolicy(budget_s=60, first_backoff_s=0.2, max_backoff_s=5)
    assert policy.delays(7) == [0.2, 0.4, 0.8, 1.6, 3.2, 5, 5]
    with pytest.raises(ValueError):
        RetryPolicy(budget_s=-1)
    with pytest.raises(ValueError):
        RetryPolicy(first_backoff_s=2, max_backoff_s=1)
    assert RetryPolicy(on_exhausted="dead_letter").on_exhausted is OnExhausted.DEAD_LETTER


def test_run_with_retries_waits_by_the_policy_and_stops_at_once_for_other_errors():
    waits, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 5:
            raise ConnectionError("down")
        return "done"

    policy = RetryPolicy(budget_s=3600, first_backoff_s=0.2, max_backoff_s=1)
    assert run_with_retries(flaky, policy, StoreErrors(), sleep=waits.append) == "done"
    assert waits == [0.2, 0.4, 0.8, 1.0]

    def broken():
        calls.append(1)
        raise Broken("bug")

    calls.clear()
    with pytest.raises(Broken):
        run_with_retries(broken, policy, StoreErrors(), sleep=waits.append)
    assert len(calls) == 1


@pytest.mark.parametrize("exc, transient, rejection", [
    (psycopg.OperationalError("server closed the connection unexpectedly"), True, False),
    (psycopg.errors.AdminShutdown("terminating connection"), True, False),
    (psycopg.errors.SerializationFailure("could not serialize"), True, False),
    (psycopg.OperationalError('FATAL:  password authentication failed for user "x"'), False, False),
    (psycopg.errors.NotNullViolation("null value in column"), False, True),
    (psycopg.errors.InvalidTextRepresentation("invalid input syntax"), False, True),
    (psycopg.ProgrammingError("cannot adapt type 'dict'"), False, True),
    (psycopg.errors.UndefinedColumn("column does not exist"), False, False),
])
def test_postgres_errors(exc, transient, rejection):
    errors = PostgresErrors()
    assert (errors.is_transient(exc), errors.is_rejection(exc)) == (transient, rejection)


@pytest.mark.parametrize("exc, transient", [
    (redis.ConnectionError("Connection refused"), True),
    (redis.TimeoutError("Timeout reading"), True),
    (redis.BusyLoadingError("loading"), True),
    (redis.AuthenticationError("invalid password"), False),
    (redis.ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED]"), False),
    (redis.ResponseError("WRONGTYPE"), False),
])
def test_redis_errors(exc, transient):
    assert RedisErrors().is_transient(exc) is transient
    assert RedisErrors().is_rejection(exc) is False


def test_snowflake_errors():
    from snowflake.connector import errors

    sf = SnowflakeErrors()
    assert sf.is_transient(errors.OperationalError("network"))
    assert sf.is_transient(errors.ServiceUnavailableError())
    assert not sf.is_transient(errors.ProgrammingError("no such table", sqlstate="42S02"))
    assert sf.is_rejection(errors.ProgrammingError("NULL result", sqlstate="22000"))
    assert sf.is_rejection(errors.IntegrityError("dup", sqlstate="23000"))
    assert not sf.is_rejection(errors.ProgrammingError("no such table", sqlstate="42S02"))


# -- latency buckets ------------------------------------------------------

def test_a_batch_counts_in_every_bucket_at_or_above_its_latency():
    assert latency_bucket(7) == [f"write_ms_le_{b}" for b in LATENCY_BUCKETS_MS if b >= 10] + [
        "write_ms_le_inf"]
    assert latency_bucket(10) == latency_bucket(7)  # bounds are inclusive
    assert latency_bucket(60_000) == ["write_ms_le_inf"]
    assert latency_counter_names()[-1] == "write_ms_le_inf"
    assert len(latency_counter_names()) == len(LATENCY_BUCKETS_MS) + 1


def cumulative(latencies_ms):
    counts = dict.fromkeys(latency_counter_names(), 0)
    for ms in latencies_ms:
        for name in latency_bucket(ms):
            counts[name] += 1
    return counts


def test_percentiles_read_back_from_the_buckets():
    # 50 batches of 3 ms, 45 of 20 ms, 5 of 300 ms (100 in all):
    # p50: rank 50 falls in (2, 5] which holds batches 1..50 -> 2 + 3 * 50/50 = 5
    # p95: rank 95 falls in (10, 25] which holds batches 51..95 -> 10 + 15 * 45/45 = 25
    # p99: rank 99 falls in (250, 500] holding 96..100 -> 250 + 250 * 4/5 = 450
    counts = cumulative([3] * 50 + [20] * 45 + [300] * 5)
    assert percentiles_from_buckets(counts, (0.5, 0.95, 0.99)) == {0.5: 5.0, 0.95: 25.0, 0.99: 450.0}
    # p50 of 4 batches of 0.5 ms: in (0, 1] -> 0 + 1 * 2/4
    assert percentiles_from_buckets(cumulative([0.5] * 4), (0.5,)) == {0.5: 0.5}
    # beyond the last finite bound: that bound
    assert percentiles_from_buckets(cumulative([20_000]), (0.5,)) == {0.5: 10_000.0}
    assert percentiles_from_buckets({}, (0.5, 0.95)) == {0.5: None, 0.95: None}


class _PipelineListSinkFn(ListSinkFn):
    counter_namespace = "PipelineListSink"


def test_counters_in_a_pipeline(store):
    """received = written + failed + superseded; one latency count per batch."""
    name, s = store
    s.refuse = ((4, None),)
    rows = [{"id": i} for i in range(10)] + [{"id": 2}, {"no_id": 1}]
    p = BeamTestPipeline(runner=FnApiRunner())
    failed = (p | beam.Create([rows]) | beam.FlatMap(lambda rs: rs)
              | beam.ParDo(_PipelineListSinkFn(name, batch_size=100))
              .with_outputs(BatchSinkFn.FAILED, main="written"))[BatchSinkFn.FAILED]
    assert_that(failed | beam.Map(lambda f: f.error_class), equal_to(["ValueError", "Refused"]))
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(
        MetricsFilter().with_namespace("PipelineListSink"))["counters"]}
    assert counters["received"] == 12
    assert (counters["written"], counters["failed"], counters["superseded"]) == (9, 2, 1)
    # writes that returned: every good sub-batch of the bisection
    accepted = [b for b in s.batches if (4, None) not in b]
    assert counters["write_ms_le_inf"] == len(accepted) > 0
    assert counters.get("write_ms_le_1", 0) <= counters["write_ms_le_10000"] <= len(accepted)


# -- the per-table conflict declaration -----------------------------------

def test_on_conflict_is_one_word_per_table():
    spec = TABLES["frontend_analytics"]
    assert "DO UPDATE SET" in upsert_sql(spec, "stg")
    first_wins = dataclasses.replace(spec, on_conflict="nothing")
    assert upsert_sql(first_wins, "stg").endswith('ON CONFLICT ("event_id") DO NOTHING')
    assert upsert_sql(spec, "stg", first_writer_wins=True) == upsert_sql(first_wins, "stg")
    with pytest.raises(ValueError, match="on_conflict"):
        TableSpec("t", ("a",), ("a",), on_conflict="replace")


def test_retry_budgets_are_pipeline_options_with_the_documented_default():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines.options import IheardOptions, resolve_connections

    conns = resolve_connections(PipelineOptions(
        ["--redis_retry_budget_seconds=90", "--snowflake_retry_budget_seconds=0"]
    ).view_as(IheardOptions), {})
    assert (conns.postgres_retry_budget_s, conns.redis_retry_budget_s,
            conns.snowflake_retry_budget_s) == (60.0, 90.0, 0.0)


def test_latency_by_sink_adds_up_the_steps_of_one_sink():
    pg_a = cumulative([3] * 30)
    pg_b = cumulative([3] * 20 + [20] * 50)
    redis_ = cumulative([0.5] * 10)
    counters = {}
    for ns, counts in (("WriteToPostgres", pg_a), ("WriteToPostgres", pg_b),
                       ("WriteLiveKpis", redis_)):
        for name, value in counts.items():
            counters[(ns, name)] = counters.get((ns, name), 0) + value
    counters[("frontend", "valid")] = 123  # not a latency counter
    counters[("WriteSessionState", "write_ms_le_inf")] = 0  # no batch yet
    # WriteToPostgres: 50 batches of 3 ms, 50 of 20 ms; p50 rank 50 in (2, 5] -> 5
    assert latency_by_sink(counters) == {
        "WriteLiveKpis": (10, {0.5: 0.5, 0.95: 0.95}),
        "WriteToPostgres": (100, {0.5: 5.0, 0.95: 10 + 15 * 45 / 50}),
    }
