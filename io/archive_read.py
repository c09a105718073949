"""Reading the Avro archive back: a bounded source over a range of partitions.

The archive ``WriteToArchive`` writes (``iheard_io/archive.py``) is laid out
like a Hive table::

    <root>/source=<source>/date=YYYY-MM-DD/hour=HH/part-...avro

so a time range is read by listing only its ``date=`` folders and keeping
only its ``hour=`` folders (partition pruning), then the records whose
``timestamp_ms`` falls in the range. Used by the archive re-runs of the
frontend and text-agent jobs (``--input=<root>/source=<source>``) and by
``beam_pipelines.restate_costs``::

    list_archive (driver: FileSystems.match per day, sizes)
      -> ArchiveFiles (Create of the object paths)
      -> SpreadFiles (Reshuffle: one object per worker bundle)
      -> ReadAvroFiles (fastavro, one object at a time; counts records and
                        bytes for the progress line, iheard_io.read_progress)
      -> KeepRange (timestamp_ms in [start, end))

Records come back as fastavro decodes them: a ``timestamp-millis`` field is
an aware ``datetime`` (the frontend schema's ``timestamp_ms``), a ``long``
stays an int (the text-agent schema's). ``epoch_ms`` reads either.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import typing

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from iheard_io.read_progress import Tally

__all__ = [
    "ArchiveInput",
    "ArchiveFile",
    "ReadFromArchive",
    "archive_patterns",
    "list_archive",
    "parse_archive_input",
    "parse_bound",
    "epoch_ms",
]

_LOG = logging.getLogger(__name__)

_UTC = dt.timezone.utc
_PARTITION = re.compile(r"^(source|date|hour)=(.+)$")
_HOUR_FROM_PATH = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")


def parse_bound(text: str, is_end: bool) -> dt.datetime:
    """``YYYY-MM-DD`` (midnight UTC; as an end, the next midnight) or ISO-8601."""
    text = text.strip()
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        start = dt.datetime(day.year, day.month, day.day, tzinfo=_UTC)
        return start + dt.timedelta(days=1) if is_end else start
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_UTC)


def archive_patterns(archive_path: str, start: dt.datetime, end: dt.datetime,
                     source: str) -> typing.List[str]:
    """One glob per UTC day touching [start, end)."""
    base = archive_path.rstrip("/")
    day = start.astimezone(_UTC).date()
    last = (end - dt.timedelta(microseconds=1)).astimezone(_UTC).date()
    patterns = []
    while day <= last:
        patterns.append(f"{base}/source={source}/date={day.isoformat()}/hour=*/*.avro")
        day += dt.timedelta(days=1)
    return patterns


@dataclasses.dataclass(frozen=True)
class ArchiveInput:
    """An archive path split into its root and the partitions it names:
    ``output/archive/source=frontend/date=2026-01-01`` -> root
    ``output/archive``, source ``frontend``, date ``2026-01-01``."""

    root: str
    source: typing.Optional[str]
    date: typing.Optional[str] = None
    hour: typing.Optional[str] = None

    def range(self) -> typing.Tuple[typing.Optional[dt.datetime], typing.Optional[dt.datetime]]:
        """The [start, end) the named partitions cover (None: open)."""
        if self.date is None:
            return None, None
        start = parse_bound(self.date, False)
        if self.hour is None:
            return start, start + dt.timedelta(days=1)
        start += dt.timedelta(hours=int(self.hour))
        return start, start + dt.timedelta(hours=1)


def parse_archive_input(path: str) -> typing.Optional[ArchiveInput]:
    """The archive partitions ``path`` names, or None when it names none
    (no ``source=`` folder in it: not an archive path)."""
    parts = path.rstrip("/").split("/")
    found: typing.Dict[str, str] = {}
    first = None
    for i, part in enumerate(parts):
        match = _PARTITION.match(part)
        if match:
            if first is None:
                first = i
            found[match.group(1)] = match.group(2)
        elif first is not None:
            raise ValueError(f"{path}: expected only source=/date=/hour= folders after "
                             f"{'/'.join(parts[:first])}, got {part!r}")
    if first is None or "source" not in found:
        return None
    if parts[first] != f"source={found['source']}":
        raise ValueError(f"{path}: the first partition folder must be source=<name>")
    if "date" in found:
        dt.date.fromisoformat(found["date"])  # raises on a malformed date
    if "hour" in found and not (found["hour"].isdigit() and 0 <= int(found["hour"]) < 24):
        raise ValueError(f"{path}: hour= must be 00..23")
    return ArchiveInput("/".join(parts[:first]), found["source"], found.get("date"),
                        found.get("hour"))


class ArchiveFile(typing.NamedTuple):
    path: str
    size_in_bytes: int


def _hour_of(path: str) -> typing.Optional[dt.datetime]:
    match = _HOUR_FROM_PATH.search(path)
    if not match:
        return None
    day = dt.date.fromisoformat(match.group(1))
    return dt.datetime(day.year, day.month, day.day, int(match.group(2)), tzinfo=_UTC)


def list_archive(root: str, source: str, start: typing.Optional[dt.datetime] = None,
                 end: typing.Optional[dt.datetime] = None) -> typing.List[ArchiveFile]:
    """The archive objects of ``source`` whose hour partition overlaps
    [start, end) (None: open), sorted by path. Lists one ``date=`` folder per
    day of a closed range; an open range lists the whole ``source=`` folder."""
    base = root.rstrip("/")
    if start is not None and end is not None:
        patterns = archive_patterns(base, start, end, source)
    else:
        patterns = [f"{base}/source={source}/date=*/hour=*/*.avro"]
    files = []
    for result in FileSystems.match(patterns):
        for metadata in result.metadata_list:
            hour = _hour_of(metadata.path)
            if hour is not None and start is not None and hour + dt.timedelta(hours=1) <= start:
                continue
            if hour is not None and end is not None and hour >= end:
                continue
            files.append(ArchiveFile(metadata.path, metadata.size_in_bytes))
    return sorted(set(files))


def epoch_ms(value) -> typing.Optional[int]:
    """An archived ``timestamp_ms`` (int, or the aware datetime fastavro
    gives for ``timestamp-millis``) as epoch ms."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=_UTC)
        return (aware - dt.datetime(1970, 1, 1, tzinfo=_UTC)) // dt.timedelta(milliseconds=1)
    return int(value)


# Count the bytes read every this many records (the file position moves a
# block, about 64 KB, at a time).
_POSITION_EVERY = 256


class _ReadAvroFileFn(beam.DoFn):
    """An archive object path -> its records, with ``_archive`` = (path,
    index) naming where each was read; counts what it read."""

    def __init__(self, progress_key: typing.Optional[str]):
        self._progress_key = progress_key
        self._files = Metrics.counter("ReadFromArchive", "files")
        self._tally = None

    def setup(self):
        self._tally = Tally(self._progress_key)

    def process(self, path: str):
        import fastavro

        tally = self._tally
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            position = 0
            for index, record in enumerate(fastavro.reader(handle)):
                if index % _POSITION_EVERY == 0:
                    now = handle.tell()
                    tally.add(0, now - position)
                    position = now
                tally.add(1, 0)
                record["_archive"] = (path, index)
                yield record
            handle.seek(0, 2)
            tally.add(0, handle.tell() - position)
        tally.flush()
        self._files.inc()


class ReadFromArchive(beam.PTransform):
    """``PTransform[PBegin, PCollection[dict]]``: the records of the given
    archive objects (``list_archive``) whose ``timestamp_ms`` is in [start,
    end) (None: open). Each record gets ``_archive``: (object path, index).

    ``progress_key``: counts records and bytes for the driver's progress line
    (``iheard_io.read_progress``)."""

    def __init__(self, files: typing.Sequence[ArchiveFile],
                 start: typing.Optional[dt.datetime] = None,
                 end: typing.Optional[dt.datetime] = None,
                 progress_key: typing.Optional[str] = None):
        super().__init__()
        self._paths = [f.path if isinstance(f, ArchiveFile) else str(f) for f in files]
        self._start_ms = int(start.timestamp() * 1000) if start is not None else None
        self._end_ms = int(end.timestamp() * 1000) if end is not None else None
        self._progress_key = progress_key

    def expand(self, pbegin):
        records = (
            pbegin
            | "ArchiveFiles" >> beam.Create(self._paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAvroFiles" >> beam.ParDo(_ReadAvroFileFn(self._progress_key))
        )
        start_ms, end_ms = self._start_ms, self._end_ms
        if start_ms is None and end_ms is None:
            return records

        def in_range(record):
            ts = epoch_ms(record.get("timestamp_ms"))
            return ts is not None and (start_ms is None or ts >= start_ms) and (
                end_ms is None or ts < end_ms)

        return records | "KeepRange" >> beam.Filter(in_range)
