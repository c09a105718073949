"""Reads JSON-lines files (plain or gzip) as ``SourceRecord``s.

The file plays the role of a Kafka topic for local runs and backfills: each
line becomes one ``SourceRecord`` whose topic is the file path and whose
offset is the 1-based line number, so a dead letter says exactly which line
was bad. Blank lines carry no event; they are counted (``blank_lines``), not
emitted.

Expansion::

    pattern --MatchFiles--> file metadata --ReadMatches--> readable files
            --ReadLines (FlatMap)--> SourceRecord per non-blank line

Each file is read whole by one worker (gzip is not splittable anyway);
parallelism comes from having several files.
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from schemas.records import SourceRecord

__all__ = ["ReadFromJsonLines", "read_lines"]


def read_lines(readable_file, metric_namespace: str = "files") -> typing.Iterator[SourceRecord]:
    """Yields one ``SourceRecord`` per non-blank line of a ``ReadableFile``."""
    path = readable_file.metadata.path
    blank = Metrics.counter(metric_namespace, "blank_lines")
    with readable_file.open() as handle:  # compression detected from the suffix
        # Beam's CompressedFile has readline() but is not iterable.
        for line_number, line in enumerate(iter(handle.readline, b""), start=1):
            value = line.rstrip(b"\r\n")
            if not value.strip():
                blank.inc()
                continue
            yield SourceRecord(value=value, topic=path, partition=0, offset=line_number)


class ReadFromJsonLines(beam.PTransform):
    """``PTransform[PBegin, PCollection[SourceRecord]]`` over a file pattern."""

    def __init__(self, file_pattern: str, metric_namespace: str = "files"):
        super().__init__()
        if not file_pattern:
            raise ValueError("file_pattern must be a non-empty path or glob")
        self._file_pattern = file_pattern
        self._metric_namespace = metric_namespace

    def expand(self, pbegin):
        return (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._file_pattern)
            | "ReadMatches" >> fileio.ReadMatches()
            | "ReadLines" >> beam.FlatMap(read_lines, self._metric_namespace)
        )
