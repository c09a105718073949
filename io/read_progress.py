"""How far a bounded source has read: the counts behind a progress line.

A source that reads files (``ReadFromJsonLines``, ``ReadFromArchive``) counts
the records it emitted and the input bytes they came from, under a *progress
key* (one per run). The counts go two ways:

* Beam counters ``progress/records_read`` and ``progress/bytes_read``: the
  runner aggregates them (the Flink dashboard and the Prometheus exporter show
  them; ``PipelineResult.metrics()`` reports them when a runner answers while
  the job runs);
* an in-process tally (``counts(key)``), because the in-process runners
  (FnApiRunner, the DirectRunner) report metrics only when the run is over.
  Their workers, and Flink ``LOOPBACK`` workers, live in the submitting
  process, so the driver's progress thread reads the tally directly.

The driver registers the total it expects (``expect``: bytes of the input
files or archive objects, known from a listing before the run), which gives
the estimate of the time left (``beam_pipelines.progress``).

``Tally`` is what a reader holds: it buffers its increments and flushes every
``FLUSH_RECORDS`` records and when the reader finishes a file, so counting
costs a few additions per record, not a counter update and a lock.
"""
from __future__ import annotations

import threading
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics

__all__ = ["NAMESPACE", "RECORDS", "BYTES", "Tally", "CountReads", "expect", "counts", "expected",
           "expected_records", "forget"]

NAMESPACE = "progress"
RECORDS = "records_read"
BYTES = "bytes_read"
# Flush the buffered counts this often (records): often enough for a line
# every few seconds, rarely enough to cost nothing per record.
FLUSH_RECORDS = 1000

_LOCK = threading.Lock()
_COUNTS: typing.Dict[str, typing.List[int]] = {}  # key -> [records, bytes]
# key -> (total bytes, total records); None: unknown
_EXPECTED: typing.Dict[str, typing.Tuple[typing.Optional[int], typing.Optional[int]]] = {}


def expect(key: str, total_bytes: typing.Optional[int] = None,
           total_records: typing.Optional[int] = None) -> None:
    """Driver side: this run's source will read about ``total_bytes`` (files)
    or ``total_records`` (rows selected from a table, e.g. dead letters to
    replay); None: unknown. Registering a key is what makes the driver show
    progress."""
    with _LOCK:
        _EXPECTED[key] = (total_bytes, total_records)
        _COUNTS.setdefault(key, [0, 0])


def expected(key: str) -> typing.Tuple[bool, typing.Optional[int]]:
    """(registered, total bytes) of ``key``."""
    with _LOCK:
        return key in _EXPECTED, (_EXPECTED.get(key) or (None, None))[0]


def expected_records(key: str) -> typing.Optional[int]:
    """The total records registered for ``key`` (None: unknown)."""
    with _LOCK:
        return (_EXPECTED.get(key) or (None, None))[1]


def counts(key: str) -> typing.Tuple[int, int]:
    """(records, bytes) read so far under ``key`` in this process."""
    with _LOCK:
        records, nbytes = _COUNTS.get(key, (0, 0))
        return records, nbytes


def forget(key: str) -> None:
    with _LOCK:
        _COUNTS.pop(key, None)
        _EXPECTED.pop(key, None)


def _add(key: str, records: int, nbytes: int) -> None:
    with _LOCK:
        entry = _COUNTS.setdefault(key, [0, 0])
        entry[0] += records
        entry[1] += nbytes


class Tally:
    """A reader's buffered counts under ``key`` (None: Beam counters only).
    Picklable; create it in the DoFn's constructor or per file."""

    def __init__(self, key: typing.Optional[str]):
        self._key = key
        self._records_counter = Metrics.counter(NAMESPACE, RECORDS)
        self._bytes_counter = Metrics.counter(NAMESPACE, BYTES)
        self._records = 0
        self._bytes = 0

    def add(self, records: int = 1, nbytes: int = 0) -> None:
        self._records += records
        self._bytes += nbytes
        if self._records >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        records, nbytes = self._records, self._bytes
        if not records and not nbytes:
            return
        self._records = self._bytes = 0
        self._records_counter.inc(records)
        self._bytes_counter.inc(nbytes)
        if self._key:
            _add(self._key, records, nbytes)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_records"] = state["_bytes"] = 0  # never ship unflushed counts
        return state


class _CountReadsFn(beam.DoFn):
    def __init__(self, key: typing.Optional[str]):
        self._key = key
        self._tally = None

    def setup(self):
        self._tally = Tally(self._key)

    def process(self, element):
        self._tally.add(1, 0)
        yield element

    def finish_bundle(self):
        self._tally.flush()


class CountReads(beam.PTransform):
    """Passes elements through, counting each as a record read under
    ``key``: for a source that is not a file reader (a replay's selected
    dead letters), with ``expect(key, total_records=N)``."""

    def __init__(self, key: typing.Optional[str]):
        super().__init__()
        self._key = key

    def expand(self, pcoll):
        return pcoll | "CountReads" >> beam.ParDo(_CountReadsFn(self._key))
