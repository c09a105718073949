"""Progress of bounded work: the pure formatting and estimate, the reporter
over the in-process tally, and a bounded file run that prints both."""
import gzip
import io
import json
import logging

import pytest

from beam_pipelines import progress
from iheard_io import read_progress
from iheard_io.files import input_bytes


def test_eta_is_the_rate_so_far_applied_to_what_is_left():
    # 25 of 100 bytes in 10 s: 75 bytes left at 2.5 bytes/s = 30 s
    assert progress.eta_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert progress.eta_seconds(0, 100, 10.0) is None  # no rate yet
    assert progress.eta_seconds(10, None, 10.0) is None  # no total
    assert progress.eta_seconds(120, 100, 10.0) == 0.0  # a short estimate


@pytest.mark.parametrize("seconds, text", [
    (None, "?"), (0.4, "0s"), (42, "42s"), (187, "3m07s"), (3725, "1h02m")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


@pytest.mark.parametrize("n, text", [
    (512, "512 B"), (61_000, "61.0 KB"), (135_200_000, "135.2 MB"), (2_100_000_000, "2.1 GB")])
def test_format_bytes(n, text):
    assert progress.format_bytes(n) == text


def test_lines_with_and_without_a_total():
    line = progress.progress_line("frontend", 912_000, 61_000_000, 135_200_000, 60.0)
    # 61/135.2 = 45%; 912,000/60 = 15,200 records/s; 60 * 74.2/61 = 73 s left
    assert line == ("[frontend] 45% read: 912,000 records, 61.0 MB of 135.2 MB, "
                    "15,200 records/s, about 1m13s left")
    assert progress.progress_line("x", 10, 1000, None, 2.0) == (
        "[x] read: 10 records, 1.0 KB, 5 records/s")
    assert "input read: 10 records" in progress.progress_line("x", 10, 1000, 1000, 2.0)
    bar = progress.progress_bar_line("frontend", 912_000, 61_000_000, 135_200_000, 60.0, width=10)
    assert bar.startswith("[frontend] [####......]  45%  912,000 records")
    assert bar.endswith("ETA 1m13s")
    assert progress.summary_line("frontend", 2_011_034, 135_200_000, 134.0) == (
        "[frontend] read 2,011,034 records (135.2 MB) in 2m14s: 15,008 records/s")


def test_reporter_reads_the_tally_and_prints_a_summary():
    key = progress.new_key()
    read_progress.expect(key, 1000)
    now = [100.0]
    out, stream = io.StringIO(), io.StringIO()
    reporter = progress.ProgressReporter("job", key, "bar", stream=stream, out=out,
                                         clock=lambda: now[0])
    reporter._started = now[0]  # no thread: ticks by hand
    tally = read_progress.Tally(key)
    for _ in range(250):
        tally.add(1, 1)
    tally.flush()
    now[0] += 5.0
    assert "[#####...............]  25%  250 records" in reporter.tick()
    assert stream.getvalue().startswith("\r[job]")
    now[0] += 15.0
    assert reporter.stop() == "[job] read 250 records (250 B) in 20s: 12 records/s"
    assert out.getvalue().strip() == "[job] read 250 records (250 B) in 20s: 12 records/s"
    assert read_progress.expected(key) == (False, None)  # forgotten


def test_unregistered_key_shows_nothing():
    with progress.report("job", progress.new_key()) as reporter:
        assert reporter is None


def test_auto_mode_is_a_bar_on_a_terminal_only():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.resolve_mode("auto", Tty()) == "bar"
    assert progress.resolve_mode("auto", io.StringIO()) == "log"
    assert progress.resolve_mode("off") == "off"
    with pytest.raises(ValueError):
        progress.resolve_mode("loud")


def test_input_bytes_reads_the_gzip_trailer(tmp_path):
    lines = "".join(json.dumps({"n": i, "pad": "x" * 50}) + "\n" for i in range(2000))
    plain = tmp_path / "a.jsonl"
    plain.write_text(lines)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(lines.encode()))
    assert input_bytes(str(plain)) == len(lines)
    assert input_bytes(str(packed)) == len(lines)  # uncompressed, as the reader counts
    assert input_bytes(str(tmp_path / "*.jsonl*")) == 2 * len(lines)


def test_a_bounded_file_run_prints_progress_lines_and_the_summary(tmp_path, caplog, capsys):
    """The frontend job over a generated file: progress log lines while it
    runs (every 0.2 s here) and the summary line with every record read."""
    from beam_pipelines import frontend, generate
    from tests.unit.conftest import SECRET, fn_api_runner

    lines = list(generate.frontend_events(3000, seed=11))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.INFO, logger="beam_pipelines.progress")
    from beam_pipelines import cli

    options = cli.parse_options([f"--input={path}", f"--output_dir={tmp_path}",
                                 f"--pii_secret={SECRET.decode()}", "--progress=log",
                                 "--progress_interval_seconds=0.2"], "frontend", "")
    cli.run_job(options, frontend.PIPELINE, frontend.common.event_source(frontend.FRONTEND_TOPIC),
                frontend.build_pipeline, runner=fn_api_runner())
    logged = [r.getMessage() for r in caplog.records if r.name == "beam_pipelines.progress"]
    assert logged and all(m.startswith("[frontend] ") for m in logged)
    assert any(" records" in m and "read" in m for m in logged)
    out = capsys.readouterr().out
    summary = [l for l in out.splitlines() if l.startswith("[frontend] read ")]
    assert len(summary) == 1 and f"read {len(lines):,} records" in summary[0]


def test_a_total_in_records_drives_the_fraction_and_the_estimate():
    # 250 of 1,000 records in 10 s: 750 left at 25 records/s = 30 s
    line = progress.progress_line("replay", 250, 0, None, 10.0, total_records=1000)
    assert line == "[replay] 25% read: 250 of 1,000 records, 25 records/s, about 30s left"
    bar = progress.progress_bar_line("replay", 250, 0, None, 10.0, width=4, total_records=1000)
    assert bar == "[replay] [#...]  25%  250/1,000 records  25 rec/s  ETA 30s"


def test_count_reads_counts_a_collection_under_its_key():
    import apache_beam as beam

    from tests.unit.conftest import fn_api_runner

    key = progress.new_key()
    read_progress.expect(key, total_records=3)
    with beam.Pipeline(runner=fn_api_runner()) as p:
        _ = p | beam.Create(["a", "b", "c"]) | read_progress.CountReads(key)
    assert read_progress.counts(key) == (3, 0)
    assert read_progress.expected_records(key) == 3
    read_progress.forget(key)
