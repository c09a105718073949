"""Two small pipelines the Flink tests submit to the local cluster.

``batch``: words -> count per word, with a GroupByKey and a DoFn that counts
what it sees with a Beam counter.

``streaming``: a splittable DoFn that emits a finite run of timestamped
events a few at a time (``defer_remainder`` between calls, a manual
watermark estimator), 10 s event-time windows, GroupByKey, one line per
window and key. It exercises what the Kafka source relies on: SDF residuals
checkpointed by Flink while the job runs and the watermark carried by the SDF.

Run (from the repository root, the cluster up)::

    python -m tests.flink.probe_pipelines batch --output=/tmp/words.txt --profile=flink-local
    python -m tests.flink.probe_pipelines streaming --output=/tmp/windows.txt \\
        --profile=flink-local --streaming --checkpointing_interval=2000

The streaming job never finishes by itself (with checkpointing on, Flink
keeps finished sources alive); cancel it through the REST API. In LOOPBACK
the Python workers run inside this process, so it must stay alive meanwhile.
"""
from __future__ import annotations

import argparse
import logging
import sys
import typing

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp

from runners.profiles import expand_argv

__all__ = ["WORDS", "expected_word_counts", "expected_windows", "StreamSpec", "run"]

METRICS_NAMESPACE = "iheardai_flink_test"

WORDS = ["to be or not to be", "that is the question", "to be is to do"]


def expected_word_counts() -> typing.Dict[str, int]:
    counts: typing.Dict[str, int] = {}
    for line in WORDS:
        for word in line.split():
            counts[word] = counts.get(word, 0) + 1
    return counts


class StreamSpec(typing.NamedTuple):
    """The streaming probe's input: event i has event time base_s + i * spacing_s."""

    # 60 calls a second apart: the job runs ~60 s, long enough for the test
    # to see a finite watermark while it runs even when the tasks take a while
    # to start (after the last event the watermark rightly goes to +inf, which
    # the start-up check would take for the Beam 2.62 race; at ~25 s that
    # happened in a CI run).
    events: int = 240
    per_call: int = 4
    pause_s: float = 1.0
    spacing_s: float = 0.5
    # A multiple of the window size, so windows hold whole groups of events.
    base_s: int = 1_700_000_000
    window_s: int = 10
    keys: int = 2


def expected_windows(spec: StreamSpec) -> typing.Set[str]:
    """The lines the streaming probe writes: "<window start> <key> <count> <sum of i>"."""
    groups: typing.Dict[typing.Tuple[int, str], typing.List[int]] = {}
    for i in range(spec.events):
        ts = spec.base_s + i * spec.spacing_s
        start = int(ts // spec.window_s * spec.window_s)
        groups.setdefault((start, f"k{i % spec.keys}"), []).append(i)
    return {f"{start} {key} {len(v)} {sum(v)}" for (start, key), v in groups.items()}


class _CountWordsFn(beam.DoFn):
    def __init__(self):
        self.words_seen = Metrics.counter(METRICS_NAMESPACE, "words_seen")

    def process(self, word):
        self.words_seen.inc()
        yield word, 1


class _RangeProvider(RestrictionProvider):
    def initial_restriction(self, element):
        # One position past the last event: see _EmitEventsFn.
        return OffsetRange(0, element.events + 1)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()


class _EmitEventsFn(beam.DoFn):
    """Emits ``per_call`` events per call, then hands the rest back to the runner.

    Returning after each slice is what lets Flink finish the bundle and take a
    checkpoint that contains the residual restriction; a DoFn that loops
    forever inside ``process()`` would block checkpoints.

    The restriction has one extra position, claimed by a last call that emits
    nothing. Without it, the call that emits the last events also finishes
    the restriction, the SDF's watermark hold goes away with that same bundle
    and on Flink 1.19 / Beam 2.62 the watermark overtook those events: the
    last window was dropped as late (seen with this very pipeline).
    """

    def __init__(self):
        self.events_emitted = Metrics.counter(METRICS_NAMESPACE, "events_emitted")

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        spec: StreamSpec,
        tracker=beam.DoFn.RestrictionParam(_RangeProvider()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        position = tracker.current_restriction().start
        for _ in range(spec.per_call):
            if not tracker.try_claim(position):
                return
            if position == spec.events:  # the empty closing position
                return
            ts = Timestamp(spec.base_s + position * spec.spacing_s)
            self.events_emitted.inc()
            yield window.TimestampedValue((f"k{position % spec.keys}", position), ts)
            watermark.set_watermark(ts)
            position += 1
        tracker.defer_remainder(Duration(seconds=spec.pause_s))


class _AppendLineFn(beam.DoFn):
    """Appends one line per element to a local file (LOOPBACK workers share the host)."""

    def __init__(self, path: str):
        self.path = path
        self.lines_written = Metrics.counter(METRICS_NAMESPACE, "lines_written")

    def process(self, line):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.lines_written.inc()


def _format_window(key_values, win=beam.DoFn.WindowParam):
    key, values = key_values
    values = list(values)
    return f"{int(win.start)} {key} {len(values)} {sum(values)}"


def build_batch(pipeline: beam.Pipeline, output: str) -> None:
    _ = (
        pipeline
        | "CreateLines" >> beam.Create(WORDS)
        | "SplitWords" >> beam.FlatMap(str.split)
        | "CountWords" >> beam.ParDo(_CountWordsFn())
        | "GroupByWord" >> beam.GroupByKey()
        | "FormatCounts" >> beam.MapTuple(lambda word, ones: f"{word} {sum(ones)}")
        | "WriteCounts" >> beam.ParDo(_AppendLineFn(output))
    )


def build_streaming(pipeline: beam.Pipeline, output: str, spec: StreamSpec) -> None:
    _ = (
        pipeline
        | "CreateSpec" >> beam.Create([spec])
        | "EmitEvents" >> beam.ParDo(_EmitEventsFn())
        | "Window10s" >> beam.WindowInto(window.FixedWindows(spec.window_s))
        | "GroupByKey" >> beam.GroupByKey()
        | "FormatWindows" >> beam.Map(_format_window)
        | "WriteWindows" >> beam.ParDo(_AppendLineFn(output))
    )


def run(argv: typing.Sequence[str]) -> beam.runners.runner.PipelineResult:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["batch", "streaming"])
    parser.add_argument("--output", required=True)
    known, beam_args = parser.parse_known_args(list(argv))
    options = PipelineOptions(expand_argv(beam_args))
    pipeline = beam.Pipeline(options=options)
    if known.kind == "batch":
        build_batch(pipeline, known.output)
    else:
        build_streaming(pipeline, known.output, StreamSpec())
    result = pipeline.run()
    print(f"submitted, state {result.state}", flush=True)
    result.wait_until_finish()
    print(f"final state {result.state}", flush=True)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:])
