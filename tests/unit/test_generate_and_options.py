"""Sample-data generator and option resolution (pure, no Beam runner)."""
import gzip
import json

import pytest

from beam_pipelines import generate
from beam_pipelines.options import DEV_PII_SECRET, IheardOptions, resolve_connections


def _parse(lines):
    good, bad = [], []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if (
            isinstance(obj.get("timestamp"), int)
            and obj["timestamp"] > 0
            and obj.get("session_id")
            and obj.get("event_type")
        ):
            good.append(obj)
        else:
            bad.append(line)
    return good, bad


def test_generator_is_deterministic_and_counts_exactly():
    a = list(generate.frontend_events(500, seed=3))
    b = list(generate.frontend_events(500, seed=3))
    c = list(generate.frontend_events(500, seed=4))
    assert a == b
    assert a != c
    assert len(a) == 500


def test_generator_mixes_malformed_and_duplicates_in_requested_share():
    lines = list(generate.frontend_events(5000, seed=11, malformed_ratio=0.05, duplicate_ratio=0.03))
    good, bad = _parse(lines)
    # 5% malformed of 5000 draws is ~250; binomial sd ~15, so 150..350 is > 6 sd wide.
    assert 150 <= len(bad) <= 350
    duplicates = len(lines) - len(set(lines))
    assert 60 <= duplicates <= 250
    kinds = {e["event_type"] for e in good}
    # the trackEvent example's names and the funnel query's names, both
    assert {"page_view", "widget_open", "message_sent", "product_click", "user_message",
            "product_interest", "conversion"} <= kinds


def test_both_tracker_vocabularies_enrich_to_the_same_stages():
    from transforms.frontend_enrich import EnrichmentConfig, STAGES

    rules = EnrichmentConfig()
    for vocabulary in generate.TRACKER_VOCABULARIES:
        assert rules.stage_of_type(vocabulary["message"]) == "user_message"
        assert rules.stage_of_type(vocabulary["product"]) == "product_interest"
        assert rules.is_known_type(vocabulary["message"]) and rules.is_known_type(vocabulary["product"])
    assert rules.stage_of_type("user_message") in STAGES


def test_end_ms_moves_only_the_timestamps():
    base = list(generate.frontend_events(800, seed=5))
    end_ms = 1_900_000_000_000
    moved = list(generate.frontend_events(800, seed=5, end_ms=end_ms))
    assert len(moved) == len(base)
    times = []
    for a, b in zip(base, moved):
        try:
            ea, eb = json.loads(a), json.loads(b)
        except ValueError:
            assert a == b  # truncated within its first 60 characters, before the timestamp
            continue
        ta, tb = ea.pop("timestamp", None), eb.pop("timestamp", None)
        assert ea == eb
        if isinstance(ta, int) and ta > 0:
            times.append((ta, tb))
    shifts = {tb - ta for ta, tb in times}
    assert len(shifts) == 1  # one shift for every event
    assert max(tb for _, tb in times) == end_ms


def test_ending_now_dates_the_last_event_a_minute_ago(tmp_path, monkeypatch):
    monkeypatch.setattr(generate.time, "time", lambda: 1_800_000_000.0)
    out = tmp_path / "recent.jsonl"
    assert generate.main(["--events=300", "--malformed_ratio=0", "--ending_now", f"--output={out}"]) == 0
    stamps = [json.loads(line)["timestamp"] for line in out.read_text().splitlines()]
    assert max(stamps) == 1_800_000_000_000 - 60_000


def test_generator_payload_has_the_trackevent_fields():
    good, _ = _parse(generate.frontend_events(200, seed=1, malformed_ratio=0, duplicate_ratio=0))
    expected = {
        "event_type", "session_id", "user_id", "page_url", "page_title", "referrer",
        "user_agent", "screen_resolution", "viewport_size", "widget_id", "interaction_type",
        "timestamp", "time_on_page", "element_id", "element_class", "element_text",
        "click_coordinates", "country", "timezone",
    }
    for event in good:
        assert expected <= set(event)
    # events of one session are in time order
    by_session = {}
    for e in good:
        by_session.setdefault(e["session_id"], []).append(e["timestamp"])
    assert all(ts == sorted(ts) for ts in by_session.values())


def test_generator_writes_gzip(tmp_path):
    out = tmp_path / "e.jsonl.gz"
    assert generate.main(["--events=50", f"--output={out}"]) == 0
    with gzip.open(out, "rt") as handle:
        assert len(handle.read().splitlines()) == 50


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError):
        list(generate.frontend_events(-1))
    with pytest.raises(ValueError):
        list(generate.frontend_events(10, malformed_ratio=2))


def test_connections_default_to_embedded_outputs():
    opts = IheardOptions(["--output_dir=/tmp/x"])
    conns = resolve_connections(opts, env={})
    assert conns.postgres_dsn is None
    assert conns.embedded_db == "/tmp/x/iheardai.duckdb"
    assert conns.archive_path == "/tmp/x/archive"
    assert conns.redis_url is None
    assert conns.pii_secret == DEV_PII_SECRET.encode()


def test_connections_read_the_seed_environment_when_flags_are_absent():
    env = {
        "POSTGRES_HOST": "db.internal", "POSTGRES_USER": "analytics_user",
        "POSTGRES_PASSWORD": "pw", "POSTGRES_PORT": "25060", "POSTGRES_SSLMODE": "require",
        "REDIS_HOST": "cache.internal", "REDIS_PASSWORD": "rpw", "REDIS_TLS": "true",
        "KAFKA_USER": "ku", "KAFKA_PASSWORD": "kp", "PII_HMAC_SECRET": "s3cret",
    }
    opts = IheardOptions(["--kafka_security_protocol=SASL_SSL", "--kafka_sasl_mechanism=SCRAM-SHA-256"])
    conns = resolve_connections(opts, env=env)
    assert "host=db.internal" in conns.postgres_dsn
    assert "port=25060" in conns.postgres_dsn and "sslmode=require" in conns.postgres_dsn
    assert conns.embedded_db is None
    assert conns.redis_url == "rediss://:rpw@cache.internal:6379/0"
    assert conns.kafka_security == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
        "username": "ku", "password": "kp",
    }
    assert conns.pii_secret == b"s3cret"


def test_postgres_dsn_from_environment_defaults_and_quoting():
    # One builder (resolve_connections); iheard_io.postgres has no fallback of
    # its own any more (it used to default to user iheard on 127.0.0.1).
    from psycopg.conninfo import conninfo_to_dict

    conns = resolve_connections(IheardOptions([]), env={
        "POSTGRES_HOST": "db.internal", "POSTGRES_PASSWORD": "it's a secret"})
    assert conninfo_to_dict(conns.postgres_dsn) == {
        "host": "db.internal", "port": "5432", "user": "postgres",
        "password": "it's a secret", "dbname": "analytics", "sslmode": "prefer",
        "connect_timeout": "10"}
    assert resolve_connections(IheardOptions([]), env={"POSTGRES_USER": "u"}).postgres_dsn is None


def test_connectors_take_settings_as_arguments_not_from_the_environment(monkeypatch):
    from iheard_io.kafka import ReadFromKafka, WriteToKafka
    from iheard_io.postgres import WriteToPostgres

    monkeypatch.setenv("POSTGRES_HOST", "db.internal")
    monkeypatch.setenv("KAFKA_USER", "alice")
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cret")
    with pytest.raises(ValueError, match="dsn is required"):
        WriteToPostgres(None, "frontend_analytics")
    with pytest.raises(ValueError, match="username and password"):
        ReadFromKafka("127.0.0.1:1", "t", security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="username and password"):
        WriteToKafka("127.0.0.1:1", "t", security_protocol="SASL_PLAINTEXT")


def test_kafka_tuning_config_cannot_override_validated_security():
    from iheard_io.kafka import ReadFromKafka, WriteToKafka

    with pytest.raises(ValueError, match="consumer_config may not set"):
        ReadFromKafka("127.0.0.1:1", "t", consumer_config={"security_protocol": "SASL_SSL"})
    with pytest.raises(ValueError, match="producer_config may not set"):
        WriteToKafka("127.0.0.1:1", "t", producer_config={"sasl_plain_password": "x"})
    read = ReadFromKafka("127.0.0.1:1", "t", consumer_config={"fetch_max_bytes": 1024})
    assert read._consumer_config == {"fetch_max_bytes": 1024}


def test_kafka_security_from_resolve_connections_reaches_the_source():
    import apache_beam as beam

    from beam_pipelines import common

    opts = IheardOptions(["--kafka_bootstrap=127.0.0.1:1", "--kafka_security_protocol=SASL_SSL",
                          "--kafka_sasl_mechanism=SCRAM-SHA-512"])
    conns = resolve_connections(opts, env={"KAFKA_USER": "ku", "KAFKA_PASSWORD": "kp"})
    records = common.read_source(beam.Pipeline(), conns, opts, "t", streaming=False)
    discover = records.producer.inputs[0].producer.transform.fn
    assert discover._client_config["sasl_plain_username"] == "ku"
    assert discover._client_config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert discover._consumer_config == {}


def test_flags_win_over_environment():
    opts = IheardOptions(["--postgres_dsn=host=flag", "--redis_url=redis://flag:1/0", "--pii_secret=f"])
    conns = resolve_connections(opts, env={"POSTGRES_HOST": "env", "REDIS_HOST": "env", "PII_HMAC_SECRET": "e"})
    assert conns.postgres_dsn == "host=flag"
    assert conns.redis_url == "redis://flag:1/0"
    assert conns.pii_secret == b"f"


def test_streaming_on_the_direct_runner_is_refused_with_advice():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines.cli import check_runner

    for argv in (["--streaming"], ["--streaming", "--runner=DirectRunner"]):
        with pytest.raises(ValueError, match="profile=flink-local"):
            check_runner(PipelineOptions(argv))
    check_runner(PipelineOptions(["--runner=DirectRunner"]))  # bounded: fine
    check_runner(PipelineOptions(["--streaming", "--runner=FlinkRunner"]))


def test_help_lists_the_project_options(capsys):
    from beam_pipelines import frontend

    with pytest.raises(SystemExit) as exit_info:
        frontend.run(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--input", "--kafka_bootstrap", "--postgres_dsn", "--redis_url",
                 "--archive_path", "--pii_secret", "--session_gap_seconds", "--runner",
                 "--s3_endpoint_url"):
        assert flag in out


def test_spaces_variables_fill_the_s3_options_not_given():
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    from beam_pipelines.options import apply_s3_options

    options = PipelineOptions(["--s3_region_name=flag-region"])
    conns = resolve_connections(options, env={
        "SPACES_ACCESS_KEY": "env-key", "SPACES_SECRET_KEY": "env-secret",
        "SPACES_ENDPOINT": "https://nyc3.digitaloceanspaces.com", "SPACES_REGION": "nyc3"})
    worker_env = {}
    apply_s3_options(options, conns, environ=worker_env)
    s3 = options.view_as(S3Options)
    assert s3.s3_region_name == "flag-region"  # the flag wins
    assert s3.s3_endpoint_url == "https://nyc3.digitaloceanspaces.com"
    # The keys are no pipeline options (the Flink dashboard shows those): boto3
    # reads them from the workers' environment (or a credentials file).
    assert s3.s3_access_key_id is None and s3.s3_secret_access_key is None
    assert "env-secret" not in repr(options.get_all_options())
    assert worker_env == {"AWS_ACCESS_KEY_ID": "env-key", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    assert "env-secret" not in repr(conns)


def test_s3_keys_given_as_flags_win_and_are_warned_about(caplog):
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    from beam_pipelines.options import apply_s3_options

    options = PipelineOptions(["--s3_access_key_id=flag-key", "--s3_secret_access_key=flag-secret"])
    conns = resolve_connections(options, env={
        "SPACES_ACCESS_KEY": "env-key", "SPACES_SECRET_KEY": "env-secret"})
    worker_env = {}
    apply_s3_options(options, conns, environ=worker_env)
    assert options.view_as(S3Options).s3_secret_access_key == "flag-secret"
    assert worker_env == {}
    assert "shows them in the job configuration" in caplog.text


@pytest.mark.parametrize("mode, expected", [("streaming", 0.25), ("bounded", "default")])
def test_kafka_max_read_seconds_reaches_the_streaming_source_only(mode, expected):
    import apache_beam as beam

    from beam_pipelines import common
    from iheard_io.kafka import DEFAULT_MAX_READ_TIME_S

    opts = IheardOptions(["--kafka_bootstrap=127.0.0.1:1", "--kafka_max_read_seconds=0.25", f"--kafka_mode={mode}"])
    conns = resolve_connections(opts, env={})
    records = common.read_source(beam.Pipeline(), conns, opts, "frontend_user_interaction", streaming=False)
    read_fn = records.producer.transform.fn
    assert read_fn._bounded == (mode == "bounded")
    # Bounded reads are not given the limit (one call reads to the stop offset).
    assert read_fn._max_read_time_s == (DEFAULT_MAX_READ_TIME_S if expected == "default" else expected)


def test_kafka_source_rejects_a_non_positive_read_time():
    from iheard_io.kafka import ReadFromKafka

    with pytest.raises(ValueError, match="max_read_time_seconds"):
        ReadFromKafka("127.0.0.1:1", "t", mode="streaming", max_read_time_seconds=0)
