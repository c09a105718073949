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

Progress (``progress_key``): the lines read and their bytes (uncompressed,
newline included) are counted by ``iheard_io.read_progress``; ``input_bytes``
gives the total to expect before the run: the files' sizes, a gzip file's
uncompressed size from its trailer.
"""
from __future__ import annotations

import logging
import struct
import typing

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from iheard_io.read_progress import Tally
from schemas.records import SourceRecord

__all__ = ["ReadFromJsonLines", "read_lines", "input_bytes"]

_LOG = logging.getLogger(__name__)


def read_lines(readable_file, metric_namespace: str = "files",
               progress_key: typing.Optional[str] = None) -> typing.Iterator[SourceRecord]:
    """Yields one ``SourceRecord`` per non-blank line of a ``ReadableFile``."""
    path = readable_file.metadata.path
    blank = Metrics.counter(metric_namespace, "blank_lines")
    tally = Tally(progress_key)
    with readable_file.open() as handle:  # compression detected from the suffix
        # Beam's CompressedFile has readline() but is not iterable.
        for line_number, line in enumerate(iter(handle.readline, b""), start=1):
            value = line.rstrip(b"\r\n")
            if not value.strip():
                blank.inc()
                tally.add(0, len(line))
                continue
            tally.add(1, len(line))
            yield SourceRecord(value=value, topic=path, partition=0, offset=line_number)
    tally.flush()


def _gzip_size(path: str, compressed_size: int) -> typing.Optional[int]:
    """A gzip file's uncompressed size from its trailer (ISIZE: the size
    modulo 2**32 of the last member), or None when it cannot be trusted
    (several members, over 4 GiB, unreadable)."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            handle.seek(max(0, compressed_size - 4))
            trailer = handle.read(4)
    except Exception:  # pylint: disable=broad-except
        return None
    if len(trailer) != 4:
        return None
    size = struct.unpack("<I", trailer)[0]
    # Text compresses; a trailer smaller than the compressed file means a
    # wrapped (>= 4 GiB) or multi-member file.
    return size if size >= compressed_size else None


def input_bytes(file_pattern: str) -> typing.Optional[int]:
    """The bytes ``ReadFromJsonLines(file_pattern)`` will count (uncompressed),
    from a listing; None when a size is unknown or the listing fails."""
    try:
        matched = FileSystems.match([file_pattern])[0].metadata_list
    except Exception as exc:  # pylint: disable=broad-except
        _LOG.debug("cannot list %s for progress: %s", file_pattern, exc)
        return None
    total = 0
    for metadata in matched:
        size = metadata.size_in_bytes
        if metadata.path.endswith(".gz"):
            size = _gzip_size(metadata.path, size)
            if size is None:
                return None
        total += size
    return total


class ReadFromJsonLines(beam.PTransform):
    """``PTransform[PBegin, PCollection[SourceRecord]]`` over a file pattern."""

    def __init__(self, file_pattern: str, metric_namespace: str = "files",
                 progress_key: typing.Optional[str] = None):
        super().__init__()
        if not file_pattern:
            raise ValueError("file_pattern must be a non-empty path or glob")
        self._file_pattern = file_pattern
        self._metric_namespace = metric_namespace
        self._progress_key = progress_key

    def expand(self, pbegin):
        return (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._file_pattern)
            | "ReadMatches" >> fileio.ReadMatches()
            | "ReadLines" >> beam.FlatMap(read_lines, self._metric_namespace,
                                          self._progress_key)
        )
