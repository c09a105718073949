"""One copy each: the --generate pre-parser, the sample fallback, the JSON
default of JSON columns and payloads, the Kafka security arguments."""
import decimal
import gzip
import json

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import cli
from beam_pipelines.options import IheardOptions
from schemas.tables import TABLES, json_default, row_values


def test_generate_writes_the_sample_and_asks_the_job_to_stop(tmp_path, capsys):
    out = tmp_path / "s.jsonl.gz"
    calls = []

    def lines(n, seed):
        calls.append((n, seed))
        return [json.dumps({"i": i}) for i in range(n)]

    assert cli.generate_if_asked(["--generate=3", f"--output={out}", "--seed=5"], "x", lines,
                                 "unused", 1) is None
    assert calls == [(3, 5)]
    with gzip.open(out, "rt") as f:
        assert [json.loads(line)["i"] for line in f] == [0, 1, 2]
    assert f"wrote 3 lines to {out}" in capsys.readouterr().out


def test_without_generate_the_other_arguments_go_on():
    rest = cli.generate_if_asked(["--input=a.jsonl", "--output_dir=o"], "x",
                                 lambda n, s: pytest.fail("must not generate"), "d", 1)
    assert rest == ["--input=a.jsonl", "--output_dir=o"]


def test_sample_only_without_a_source(tmp_path):
    sample = str(tmp_path / "sample.jsonl.gz")
    options = PipelineOptions([])
    cli.input_or_sample(options, sample, lambda: ['{"a": 1}'])
    assert options.view_as(IheardOptions).input == sample
    with gzip.open(sample, "rt") as f:
        assert f.read().strip() == '{"a": 1}'
    for given in (["--input=mine.jsonl"], ["--kafka_bootstrap=k:1"]):
        options = PipelineOptions(given)
        cli.input_or_sample(options, sample, lambda: pytest.fail("must not write"))
        assert options.view_as(IheardOptions).input in (None, "mine.jsonl")
        assert options.view_as(IheardOptions).input != sample


def test_json_default_gives_one_text_per_set_in_tables_and_warehouse():
    from schemas.warehouse import JSON, WarehouseColumn, WarehouseTable, load_fields

    assert json_default({"b", "a", "c"}) == ["a", "b", "c"]
    assert json_default(frozenset({3, 1, 2})) == [1, 2, 3]
    assert json_default({1, "a"}) == sorted([1, "a"], key=repr)  # mixed: still one order
    assert json_default(decimal.Decimal("1.25")) == 1.25
    assert json_default(b"caf\xc3\xa9") == "café"
    spec = TABLES["frontend_analytics"]
    column = sorted(spec.json_columns)[0]
    index = spec.columns.index(column)
    one = row_values(spec, {column: {"tags": {"x", "y", "z"}}})[index]
    assert one == row_values(spec, {column: {"tags": {"z", "y", "x"}}})[index]
    assert json.loads(one) == {"tags": ["x", "y", "z"]}
    table = WarehouseTable("T", "frontend_analytics", (WarehouseColumn(
        column.upper(), JSON, True, None, 38, 0),), ())
    assert load_fields(table, {column: {"tags": {"z", "x", "y"}}}) == (one,)


def test_kafka_security_arguments_are_checked_in_one_place():
    from iheard_io.kafka import ReadFromKafka, WriteToKafka

    with pytest.raises(TypeError):
        ReadFromKafka("127.0.0.1:1", "t", sasl_mechansim="PLAIN")  # misspelt: refused
    with pytest.raises(TypeError):
        WriteToKafka("127.0.0.1:1", "t", cafile="/ca.pem")
    read = ReadFromKafka("127.0.0.1:1", "t", security_protocol="SASL_SSL", username="u",
                         password_file="/run/pw", ssl_cafile="/ca.pem")
    assert read._client_config["sasl_plain_password_file"] == "/run/pw"
