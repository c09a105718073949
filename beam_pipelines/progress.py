"""Progress of long bounded work: records read, rate, time left, a summary.

A backfill from a large file, a re-run of the archive or a replay of dead
letters can take minutes; ``cli.run_job`` shows how far it is::

    on a terminal (stderr), redrawn in place:
      [frontend] [#########...........]  45%  912,000 records  61.0 MB/135.2 MB  15,200 rec/s  ETA 1m13s
    otherwise, one log line every --progress_interval_seconds (10 s):
      [frontend] 45% read: 912,000 records, 61.0 MB of 135.2 MB, 15,200 records/s, about 1m13s left
    at the end (stdout), always:
      [frontend] read 2,011,034 records (135.2 MB) in 2m14s: 15,007 records/s

What is counted: the records a source emitted and the input bytes they came
from (``iheard_io.read_progress``; a source that is no file reader counts
records with ``CountReads`` and registers their number with ``expect(key,
total_records=N)``; the replay stages its dead letters in a file and is read
like any file); the total is known before the run from a
listing (file sizes; a gzip file's uncompressed size from its trailer; the
archive objects' sizes), so the time left is ``elapsed * (total - done) /
done`` in bytes: the rate so far, applied to what is left. Without a total
(an unknown size) the line shows the count and the rate only.

Where the counts come from: the in-process tally (FnApiRunner, the
DirectRunner, Flink ``LOOPBACK``: the workers run in this process), else the
runner's metrics of the running job (``PipelineResult.metrics()``, polled);
runners that report neither while running (Flink ``EXTERNAL`` workers behind
the portable job server) show the counters in their dashboard
(``progress_records_read``), and the summary still prints at the end.

``--progress=auto`` (default): a bar on a terminal, log lines otherwise;
``bar``, ``log``, ``off`` force one. Only sources that register a total show
progress (files and the archive; not Kafka).

The formatting and the estimate are pure functions (``progress_line``,
``summary_line``, ``eta_seconds`` ...), tested without Beam.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import typing
import uuid

from beam_pipelines.options import DEFAULT_PROGRESS_INTERVAL_SECONDS as DEFAULT_INTERVAL_SECONDS
from beam_pipelines.options import PROGRESS_MODES
from iheard_io import read_progress

__all__ = [
    "PROGRESS_MODES",
    "DEFAULT_INTERVAL_SECONDS",
    "eta_seconds",
    "format_duration",
    "format_bytes",
    "progress_line",
    "progress_bar_line",
    "summary_line",
    "ProgressReporter",
    "report",
    "new_key",
]

_LOG = logging.getLogger(__name__)

# DEFAULT_INTERVAL_SECONDS (options): a log line every 10 s keeps a long
# backfill's log readable (360 lines an hour).
# A terminal bar is redrawn this often.
BAR_REFRESH_SECONDS = 0.5
BAR_WIDTH = 20
# A runner's metrics of the running job are asked for at most this often.
METRICS_POLL_SECONDS = 5.0


# -- pure core -------------------------------------------------------------------
def eta_seconds(done: float, total: typing.Optional[float], elapsed_s: float
                ) -> typing.Optional[float]:
    """Seconds left at the rate so far, or None when it cannot be known
    (no total, nothing done yet, no time elapsed). Done past the total (an
    estimated total that was short) leaves 0."""
    if not total or done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, elapsed_s * (total - done) / done)


def format_duration(seconds: typing.Optional[float]) -> str:
    """``42s``, ``3m07s``, ``1h02m``; ``?`` for None."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_bytes(n: typing.Optional[float]) -> str:
    """``512 B``, ``61.0 KB``, ``135.2 MB``, ``2.1 GB`` (powers of 1000)."""
    if n is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _rate(records: int, elapsed_s: float) -> float:
    return records / elapsed_s if elapsed_s > 0 else 0.0


def _fraction(nbytes: int, total: typing.Optional[int]) -> typing.Optional[float]:
    if not total:
        return None
    return min(1.0, nbytes / total)


def _done_total(records, nbytes, total_bytes, total_records):
    """What the fraction and the estimate count: records when their total is
    known, else bytes."""
    if total_records:
        return records, total_records
    return nbytes, total_bytes


def progress_line(label: str, records: int, nbytes: int, total_bytes: typing.Optional[int],
                  elapsed_s: float, total_records: typing.Optional[int] = None) -> str:
    """The periodic log line."""
    rate = _rate(records, elapsed_s)
    done, total = _done_total(records, nbytes, total_bytes, total_records)
    fraction = _fraction(done, total)
    if fraction is None:
        return (f"[{label}] read: {records:,} records, {format_bytes(nbytes)}, "
                f"{rate:,.0f} records/s")
    if fraction >= 1.0:
        return (f"[{label}] input read: {records:,} records, {format_bytes(nbytes)}; "
                f"the job is finishing its writes")
    left = eta_seconds(done, total, elapsed_s)
    of = (f"{records:,} of {total_records:,} records" if total_records else
          f"{records:,} records, {format_bytes(nbytes)} of {format_bytes(total_bytes)}")
    return (f"[{label}] {fraction:.0%} read: {of}, {rate:,.0f} records/s, "
            f"about {format_duration(left)} left")


def progress_bar_line(label: str, records: int, nbytes: int, total_bytes: typing.Optional[int],
                      elapsed_s: float, width: int = BAR_WIDTH,
                      total_records: typing.Optional[int] = None) -> str:
    """The terminal line (redrawn in place with ``\\r``)."""
    rate = _rate(records, elapsed_s)
    done, total = _done_total(records, nbytes, total_bytes, total_records)
    fraction = _fraction(done, total)
    if fraction is None:
        return f"[{label}] {records:,} records  {format_bytes(nbytes)}  {rate:,.0f} rec/s"
    filled = int(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    left = eta_seconds(done, total, elapsed_s)
    of = (f"{records:,}/{total_records:,} records" if total_records else
          f"{records:,} records  {format_bytes(nbytes)}/{format_bytes(total_bytes)}")
    return (f"[{label}] [{bar}] {fraction:4.0%}  {of}  {rate:,.0f} rec/s  "
            f"ETA {format_duration(left)}")


def summary_line(label: str, records: int, nbytes: int, elapsed_s: float) -> str:
    """The line printed when the run is over."""
    return (f"[{label}] read {records:,} records ({format_bytes(nbytes)}) in "
            f"{format_duration(elapsed_s)}: {_rate(records, elapsed_s):,.0f} records/s")


# -- the driver's reporter ----------------------------------------------------------
def _metric_counts(result) -> typing.Optional[typing.Tuple[int, int]]:
    """(records, bytes) from a running job's metrics, or None when the runner
    does not answer."""
    from apache_beam.metrics.metric import MetricsFilter

    if result is None:
        return None
    try:
        if hasattr(result, "_job_service") and hasattr(result, "_metrics"):
            # The portable runner's result keeps its first metrics answer
            # for good: ask the job service again.
            result._metrics = None  # pylint: disable=protected-access
        found = result.metrics().query(
            MetricsFilter().with_namespace(read_progress.NAMESPACE))["counters"]
    except Exception:  # pylint: disable=broad-except
        return None
    values = {read_progress.RECORDS: 0, read_progress.BYTES: 0}
    for counter in found:
        name = counter.key.metric.name
        if name in values:
            value = counter.committed if counter.committed is not None else counter.attempted
            values[name] += value or 0
    return values[read_progress.RECORDS], values[read_progress.BYTES]


class ProgressReporter:
    """Prints the progress of one run under ``key`` from a daemon thread.

    ``mode``: ``bar`` (redrawn on ``stream``), ``log`` (a log line every
    ``interval_s``) or ``off`` (summary only). ``start()`` before the run,
    ``attach(result)`` once the runner returned a result (polled when the
    in-process tally stays empty), ``stop()`` when it finished: prints the
    summary to ``out`` and returns it."""

    def __init__(self, label: str, key: str, mode: str = "log",
                 interval_s: float = DEFAULT_INTERVAL_SECONDS, stream=None, out=None,
                 clock: typing.Callable[[], float] = time.monotonic):
        if mode not in ("bar", "log", "off"):
            raise ValueError(f"mode must be bar, log or off, got {mode!r}")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._label = label
        self._key = key
        self._mode = mode
        self._interval_s = interval_s
        self._stream = stream if stream is not None else sys.stderr
        self._out = out if out is not None else sys.stdout
        self._clock = clock
        self._started = None
        self._result = None
        self._stop = threading.Event()
        self._thread = None
        self._last_metrics = (0, 0)
        self._last_poll = None

    def counts(self) -> typing.Tuple[int, int]:
        """(records, bytes) read so far: the in-process tally, else the job's metrics."""
        local = read_progress.counts(self._key)
        if local != (0, 0):
            return local
        now = self._clock()
        if self._result is not None and (
                self._last_poll is None or now - self._last_poll >= METRICS_POLL_SECONDS):
            # A job-service round trip: not at a terminal bar's refresh rate.
            self._last_poll = now
            remote = _metric_counts(self._result)
            if remote is not None:
                self._last_metrics = max(self._last_metrics, remote)
        return self._last_metrics

    def total(self) -> typing.Optional[int]:
        return read_progress.expected(self._key)[1]

    def start(self) -> "ProgressReporter":
        self._started = self._clock()
        if self._mode != "off":
            self._thread = threading.Thread(target=self._loop, name=f"progress-{self._label}",
                                            daemon=True)
            self._thread.start()
        return self

    def attach(self, result) -> None:
        self._result = result

    def elapsed(self) -> float:
        return self._clock() - self._started if self._started is not None else 0.0

    def _loop(self) -> None:
        tick = BAR_REFRESH_SECONDS if self._mode == "bar" else self._interval_s
        while not self._stop.wait(tick):
            self.tick()

    def tick(self) -> str:
        """Shows one progress line now; returns it."""
        records, nbytes = self.counts()
        elapsed = self.elapsed()
        if self._mode == "bar":
            line = progress_bar_line(self._label, records, nbytes, self.total(), elapsed,
                                     total_records=read_progress.expected_records(self._key))
            self._stream.write("\r" + line + "\x1b[K")
            self._stream.flush()
        else:
            line = progress_line(self._label, records, nbytes, self.total(), elapsed,
                                 total_records=read_progress.expected_records(self._key))
            if self._mode == "log":
                _LOG.info(line)
        return line

    def stop(self) -> str:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._mode == "bar":
            self._stream.write("\n")
            self._stream.flush()
        records, nbytes = self.counts()
        remote = _metric_counts(self._result)
        if remote is not None and remote[0] > records:
            records, nbytes = remote  # e.g. workers in other processes
        line = summary_line(self._label, records, nbytes, self.elapsed())
        print(line, file=self._out, flush=True)
        read_progress.forget(self._key)
        return line


def new_key() -> str:
    """A progress key for one run."""
    return uuid.uuid4().hex


def resolve_mode(mode: typing.Optional[str], stream=None) -> str:
    """``auto`` -> ``bar`` on a terminal, else ``log``."""
    mode = mode or "auto"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"--progress must be one of {PROGRESS_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


@contextlib.contextmanager
def report(label: str, key: typing.Optional[str], mode: typing.Optional[str] = "auto",
           interval_s: float = DEFAULT_INTERVAL_SECONDS):
    """Shows the progress of the run inside the block when its source
    registered ``key`` (``read_progress.expect``); yields the reporter (None
    when there is nothing to show). The summary prints when the block ends
    without an exception."""
    registered = key is not None and read_progress.expected(key)[0]
    if not registered:
        yield None
        return
    reporter = ProgressReporter(label, key, resolve_mode(mode), interval_s).start()
    try:
        yield reporter
    except BaseException:
        reporter._stop.set()  # pylint: disable=protected-access
        read_progress.forget(key)
        raise
    reporter.stop()
