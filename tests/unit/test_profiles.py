"""expand_argv: --profile expansion, user flags winning, environment lookup."""
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)

from runners import profiles
from runners.profiles import expand_argv, flag_name, profile_flags

ENV = {"IHEARD_HOME": "/srv/iheard"}
LAUNCHER = "/srv/iheard/flink/jobserver/2.70.0/beam-runners-flink-1.19-job-server-launcher-2.70.0.jar"


def _values(argv):
    """flag name -> list of values, to check a flag occurs once."""
    out = {}
    for arg in argv:
        name = flag_name(arg)
        if name is not None:
            out.setdefault(name, []).append(arg.split("=", 1)[1] if "=" in arg else True)
    return out


def test_without_profile_argv_is_unchanged_copy():
    argv = ["--streaming", "--input", "x.jsonl"]
    out = expand_argv(argv, ENV)
    assert out == argv
    assert out is not argv


@pytest.mark.parametrize("form", [["--profile=flink-local"], ["--profile", "flink-local"]])
def test_both_profile_forms_expand_and_are_removed(form):
    out = expand_argv(form + ["--streaming"], ENV)
    assert not any(a.startswith("--profile") for a in out)
    assert "flink-local" not in out
    vals = _values(out)
    assert vals["runner"] == ["FlinkRunner"]
    assert vals["flink_master"] == ["localhost:18081"]
    assert vals["flink_version"] == ["1.19"]
    assert vals["environment_type"] == ["LOOPBACK"]
    assert vals["flink_job_server_jar"] == [LAUNCHER]
    assert vals["streaming"] == [True]
    # The user's own flags come after the profile's.
    assert out[-1] == "--streaming"


@pytest.mark.parametrize(
    "user",
    [["--parallelism=1"], ["--parallelism", "1"]],
)
def test_user_flag_wins_and_is_not_added_twice(user):
    out = expand_argv(["--profile=flink-local"] + user, ENV)
    assert sum(1 for a in out if flag_name(a) == "parallelism") == 1
    opts = PipelineOptions(out)
    assert opts.view_as(FlinkRunnerOptions).parallelism == 1


def test_expanded_flags_parse_as_beam_options():
    opts = PipelineOptions(expand_argv(["--profile=flink-local", "--streaming"], ENV))
    assert opts.view_as(StandardOptions).runner == "FlinkRunner"
    assert opts.view_as(StandardOptions).streaming is True
    assert opts.view_as(PortableOptions).environment_type == "LOOPBACK"
    flink = opts.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "localhost:18081"
    assert flink.flink_job_server_jar == LAUNCHER
    # Not a Python-side option in Beam 2.62 or 2.70: passed through to the Java runner.
    assert opts.get_all_options(retain_unknown_options=True)["finish_bundle_before_checkpointing"] is True


def test_environment_overrides_master_and_jar():
    env = {"FLINK_MASTER": "flink.example:8081", "FLINK_JOB_SERVER_JAR": "/opt/js.jar"}
    vals = _values(expand_argv(["--profile=flink-k8s"], env))
    assert vals["flink_master"] == ["flink.example:8081"]
    assert vals["flink_job_server_jar"] == ["/opt/js.jar"]
    assert vals["environment_type"] == ["EXTERNAL"]
    assert vals["environment_config"] == ["localhost:50000"]


def test_direct_profile_names_the_fn_api_runner():
    out = expand_argv(["--profile=direct"], ENV)
    runner = PipelineOptions(out).view_as(StandardOptions).runner
    assert runner.endswith("fn_runner.FnApiRunner")
    # The class path must import: Pipeline() resolves it by name.
    from apache_beam.runners.runner import create_runner

    assert type(create_runner(runner)).__name__ == "FnApiRunner"


def test_user_runner_replaces_profile_runner():
    out = expand_argv(["--runner=BundleBasedDirectRunner", "--profile=direct"], ENV)
    assert _values(out)["runner"] == ["BundleBasedDirectRunner"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--profile=nope"], "unknown runner profile"),
        (["--profile"], "needs a value"),
        (["--profile", "--streaming"], "needs a value"),
        (["--profile="], "needs a value"),
        (["--profile=direct", "--profile=flink-local"], "more than once"),
    ],
)
def test_bad_profile_arguments_raise(argv, message):
    with pytest.raises(ValueError, match=message):
        expand_argv(argv, ENV)


def test_every_profile_resolves():
    for name in profiles.PROFILES:
        flags = profile_flags(name, ENV)
        assert flags and all(f.startswith("--") for f in flags)
        assert len({flag_name(f) for f in flags}) == len(flags)


def test_module_prints_profiles():
    out = subprocess.run(
        [sys.executable, "-m", "runners.profiles"], check=True, capture_output=True, text=True
    ).stdout
    for name in profiles.PROFILES:
        assert f"{name}:" in out
    assert "--environment_type=LOOPBACK" in out


def test_flink_local_keeps_state_on_the_heap_with_checkpoints_under_iheard_home():
    flags = profile_flags("flink-local", {"IHEARD_HOME": "/srv/ih"})
    assert "--state_backend=filesystem" in flags
    assert "--state_backend_storage_path=file:///srv/ih/flink/checkpoints" in flags
    assert not any(f.startswith("--state_backend") for f in profile_flags("flink-k8s", {}))
