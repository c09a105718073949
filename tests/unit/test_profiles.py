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


# -- a literal --runner=FlinkRunner (no --profile) ------------------------------
def _never_probed():
    raise AssertionError("the local cluster must not be probed when a master is known")


@pytest.mark.parametrize("runner", [["--runner=FlinkRunner"], ["--runner", "FlinkRunner"],
                                    ["--runner=flink"],
                                    ["--runner=apache_beam.runners.portability.flink_runner.FlinkRunner"]])
def test_literal_flink_runner_gets_the_launcher_and_the_flink_local_flags(runner):
    out = expand_argv(runner + ["--input=x.jsonl"], ENV, cluster_up=lambda: True)
    vals = _values(out)
    assert vals["flink_job_server_jar"] == [LAUNCHER]  # never Beam's download
    assert vals["flink_master"] == [profiles.LOCAL_FLINK_MASTER]  # the local cluster is up
    # exactly the flink-local profile's flags, whatever spelling of the runner
    local = _values(profile_flags("flink-local", ENV))
    for name, value in local.items():
        if name != "runner":
            assert vals[name] == value, name
    assert len(vals["runner"]) == 1 and vals["input"] == ["x.jsonl"]


def test_literal_flink_runner_master_order():
    env = dict(ENV, FLINK_MASTER="flink.example:8081")
    # FLINK_MASTER first, without probing
    assert _values(expand_argv(["--runner=FlinkRunner"], env, cluster_up=_never_probed))[
        "flink_master"] == ["flink.example:8081"]
    # then the local cluster when it answers, else Beam's embedded Flink
    assert _values(expand_argv(["--runner=FlinkRunner"], ENV, cluster_up=lambda: False))[
        "flink_master"] == ["[auto]"]
    # an explicit master is kept, and still gets LOOPBACK (Beam would pick DOCKER)
    out = expand_argv(["--runner=FlinkRunner", "--flink_master", "h:1"], env, cluster_up=_never_probed)
    assert [a for a in out if a.startswith("--flink_master")] == ["--flink_master"]
    assert out[out.index("--flink_master") + 1] == "h:1"
    vals = _values(out)
    assert vals["environment_type"] == ["LOOPBACK"]
    assert vals["finish_bundle_before_checkpointing"] == [True]


def test_literal_flink_runner_user_flags_win_and_other_runners_are_untouched():
    out = expand_argv(["--runner=FlinkRunner", "--parallelism=4", "--environment_type=DOCKER",
                       "--flink_job_server_jar=/opt/js.jar"], ENV, cluster_up=lambda: False)
    vals = _values(out)
    assert vals["parallelism"] == ["4"] and vals["environment_type"] == ["DOCKER"]
    assert vals["flink_job_server_jar"] == ["/opt/js.jar"]
    for argv in (["--runner=DirectRunner"], ["--runner=PortableRunner"], []):
        assert expand_argv(argv, ENV, cluster_up=_never_probed) == argv


def test_local_cluster_probe_answers_false_when_nothing_listens():
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert profiles.local_cluster_answers(f"127.0.0.1:{port}", timeout_s=1.0) is False


def test_missing_job_server_jar_is_one_line_naming_the_install_command(tmp_path):
    with pytest.raises(profiles.MissingJobServerJar, match="bash flink/cluster.sh install"):
        profiles.check_job_server_jar(expand_argv(["--runner=FlinkRunner"], ENV,
                                                  cluster_up=lambda: False))
    jar = tmp_path / "js.jar"
    jar.write_bytes(b"PK")
    profiles.check_job_server_jar([f"--flink_job_server_jar={jar}", "--runner=FlinkRunner"])
    profiles.check_job_server_jar(["--runner=FlinkRunner",
                                   "--flink_job_server_jar=https://example.org/js.jar"])
    profiles.check_job_server_jar(["--runner=DirectRunner", "--flink_job_server_jar=/nope.jar"])
    # the pipeline's command line: one line on stderr, no traceback, no download
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("FLINK_")}
    env["IHEARD_HOME"] = str(tmp_path / "empty-home")
    result = subprocess.run([sys.executable, "-m", "beam_pipelines.frontend", "--runner=FlinkRunner"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bash flink/cluster.sh install" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "output").exists()
