"""Pure parts of ``runners.submit``, ``runners.flink_rest`` and ``runners.uberjar``:
argument handling, Flink REST answer parsing, the runner's flags.

The REST answers below have the shape Flink 1.19 returns (taken from the local
cluster's responses); the end-to-end behaviour is in tests/flink/test_submit.py.
"""
import pytest

from runners import flink_rest, submit, uberjar


def test_split_argv_at_first_double_dash():
    own, pipeline = submit.split_argv(["submit", "--pipeline=x", "--", "--streaming", "--", "y"])
    assert own == ["submit", "--pipeline=x"]
    assert pipeline == ["--streaming", "--", "y"]
    assert submit.split_argv(["list"]) == (["list"], [])


@pytest.mark.parametrize(
    "given, expected",
    [
        ("flink:8081", "http://flink:8081"),
        (" http://flink:8081/ ", "http://flink:8081"),
        ("https://flink.example/", "https://flink.example"),
    ],
)
def test_normalize_master(given, expected):
    assert flink_rest.normalize_master(given) == expected


@pytest.mark.parametrize("bad", ["", "   ", "ftp://flink:21"])
def test_normalize_master_rejects(bad):
    with pytest.raises(ValueError):
        flink_rest.normalize_master(bad)


def test_job_ids():
    job_id = submit.new_job_id()
    assert flink_rest.check_job_id(job_id) == job_id
    assert job_id != submit.new_job_id()
    for bad in ["", "xyz", "A" * 32, "0" * 31]:
        with pytest.raises(ValueError):
            flink_rest.check_job_id(bad)


def test_parse_pipeline_ref():
    assert submit.parse_pipeline_ref("beam_pipelines.frontend") == ("beam_pipelines.frontend", "run")
    assert submit.parse_pipeline_ref("tests.flink.test_submit:run_x") == ("tests.flink.test_submit", "run_x")
    for bad in ["", "beam-pipelines.frontend", "a.b:", "a.b:1x", ":run"]:
        if bad == "a.b:":  # an empty function part means the default
            assert submit.parse_pipeline_ref(bad) == ("a.b", "run")
            continue
        with pytest.raises(ValueError):
            submit.parse_pipeline_ref(bad)


def test_flink_version_ok():
    assert uberjar.flink_version_ok({"flink-version": "1.19.3"})
    assert uberjar.flink_version_ok({"flink-version": "1.19"})
    assert not uberjar.flink_version_ok({"flink-version": "1.20.1"})
    assert not uberjar.flink_version_ok({"flink-version": "1.190.0"})
    assert not uberjar.flink_version_ok({})


def test_run_request_body():
    assert uberjar.run_request_body() == {"entryClass": "org.apache.beam.runners.flink.FlinkPipelineRunner"}
    body = uberjar.run_request_body(
        job_id="0" * 32, savepoint_path="s3://b/sp-1", allow_non_restored_state=True, parallelism=4
    )
    assert body == {
        "entryClass": "org.apache.beam.runners.flink.FlinkPipelineRunner",
        "jobId": "0" * 32,
        "savepointPath": "s3://b/sp-1",
        "allowNonRestoredState": True,
        "parallelism": 4,
    }
    with pytest.raises(ValueError):
        uberjar.run_request_body(allow_non_restored_state=True)
    with pytest.raises(ValueError):
        uberjar.run_request_body(job_id="not-hex")


def test_jar_id_from_upload():
    answer = {"filename": "/tmp/flink-web-x/flink-web-upload/1a2b_beam-pipeline.jar", "status": "success"}
    assert flink_rest.jar_id_from_upload(answer) == "1a2b_beam-pipeline.jar"
    with pytest.raises(flink_rest.SubmitError):
        flink_rest.jar_id_from_upload({"status": "failure"})


def test_root_exception_prefers_history_and_keeps_python_error():
    java_frames = [f"\tat org.apache.flink.Frame{i}.run(Frame.java:{i})" for i in range(40)]
    stack = "\n".join(
        ["java.lang.RuntimeException: Error received from SDK harness"]
        + java_frames
        + ["ValueError: boom [while running 'Explode']"]
    )
    answer = {
        "root-exception": "older field",
        "exceptionHistory": {"entries": [{"exceptionName": "java.lang.RuntimeException", "stacktrace": stack}]},
    }
    text = flink_rest.root_exception(answer, max_lines=5)
    assert text.splitlines()[0] == "java.lang.RuntimeException: Error received from SDK harness"
    assert "ValueError: boom [while running 'Explode']" in text
    assert "Frame39" not in text
    assert flink_rest.root_exception({"root-exception": "java.io.IOException: x"}) == "java.io.IOException: x"
    assert flink_rest.root_exception({"exceptionHistory": {"entries": []}, "root-exception": None}) is None


def test_blocking_failure_skips_missing_slots_only():
    no_slots = {"stacktrace": "java.util.concurrent.CompletionException: org.apache.flink.runtime.jobmanager."
                "scheduler.NoResourceAvailableException: Could not acquire the minimum required resources."}
    python_error = {"stacktrace": "java.lang.RuntimeException: Error received from SDK harness\nValueError: boom"}
    only_slots = {"exceptionHistory": {"entries": [no_slots, no_slots]}}
    assert flink_rest.blocking_failure(only_slots) is None
    assert "NoResourceAvailableException" in flink_rest.root_exception(only_slots)
    # A code failure counts even when a slot shortage was recorded after it.
    mixed = {"exceptionHistory": {"entries": [no_slots, python_error]}}
    assert "ValueError: boom" in flink_rest.blocking_failure(mixed)
    assert flink_rest.blocking_failure({"exceptionHistory": {"entries": []}}) is None
    assert flink_rest.blocking_failure({"root-exception": "java.io.IOException: disk"}) == "java.io.IOException: disk"


def test_savepoint_outcome():
    assert flink_rest.savepoint_outcome({"status": {"id": "IN_PROGRESS"}}) is None
    done = {"status": {"id": "COMPLETED"}, "operation": {"location": "file:/sp/savepoint-1"}}
    assert flink_rest.savepoint_outcome(done) == "file:/sp/savepoint-1"
    failed = {
        "status": {"id": "COMPLETED"},
        "operation": {"failure-cause": {"class": "x", "stack-trace": "CheckpointException: not all tasks running"}},
    }
    with pytest.raises(flink_rest.SubmitError, match="not all tasks running"):
        flink_rest.savepoint_outcome(failed)


def _job(state, *statuses):
    return {"state": state, "vertices": [{"status": s} for s in statuses]}


def test_job_progress():
    deploying = flink_rest.JobProgress.from_job(_job("RUNNING", "RUNNING", "DEPLOYING"))
    assert not deploying.all_running and not deploying.failed
    running = flink_rest.JobProgress.from_job(_job("RUNNING", "RUNNING", "FINISHED"))
    assert running.all_running and not running.terminal
    # Restarting alone is not failed: the recorded exception decides (blocking_failure).
    restarting = flink_rest.JobProgress.from_job(_job("RESTARTING", "CANCELED"))
    assert not restarting.failed and not restarting.terminal and not restarting.all_running
    assert flink_rest.JobProgress.from_job(_job("FAILING", "FAILED")).failed
    finished = flink_rest.JobProgress.from_job(_job("FINISHED", "FINISHED"))
    assert finished.terminal and not finished.failed
    assert not flink_rest.JobProgress.from_job(_job("RUNNING")).all_running


def test_running_jobs_named():
    overview = {
        "jobs": [
            {"jid": "a", "name": "iheard-frontend", "state": "RUNNING"},
            {"jid": "b", "name": "iheard-frontend", "state": "FINISHED"},
            {"jid": "c", "name": "iheard-text-agent", "state": "RUNNING"},
            {"jid": "d", "name": "iheard-frontend", "state": "RESTARTING"},
        ]
    }
    assert flink_rest.running_jobs_named(overview, "iheard-frontend") == ["a", "d"]
    assert flink_rest.running_jobs_named({"jobs": []}, "x") == []


def test_pipeline_argv_appends_imposed_flags_last():
    argv = uberjar.pipeline_argv(
        ["--runner=DirectRunner", "--streaming"],
        "http://flink:8081",
        "/jars/js.jar",
        "EXTERNAL",
        "localhost:50000",
        "iheard-frontend",
    )
    assert argv[:2] == ["--runner=DirectRunner", "--streaming"]
    assert argv[2:] == [
        "--runner=runners.uberjar.FlinkUberJarRunner",
        "--flink_master=http://flink:8081",
        "--flink_version=1.19",
        "--flink_submit_uber_jar",
        "--flink_job_server_jar=/jars/js.jar",
        "--environment_type=EXTERNAL",
        "--finish_bundle_before_checkpointing",
        "--environment_config=localhost:50000",
        "--job_name=iheard-frontend",
    ]
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    # argparse keeps the last value: the imposed runner wins.
    assert PipelineOptions(argv).view_as(StandardOptions).runner == "runners.uberjar.FlinkUberJarRunner"


def test_parse_args():
    args, pipeline_args = submit.parse_args(
        ["submit", "--flink_master=flink:8081", "--pipeline=beam_pipelines.frontend", "--", "--streaming"]
    )
    assert args.command == "submit" and args.environment_type == "EXTERNAL" and args.wait_for == "running"
    assert pipeline_args == ["--streaming"]
    with pytest.raises(submit.SubmitError, match="--job_name"):
        submit.parse_args(["upgrade", "--flink_master=f:1", "--pipeline=a.b"])
    with pytest.raises(submit.SubmitError, match="needs --from_savepoint"):
        submit.parse_args(["submit", "--flink_master=f:1", "--pipeline=a.b", "--allow_non_restored_state"])
    with pytest.raises(submit.SubmitError, match="no pipeline arguments"):
        submit.parse_args(["stop", "--flink_master=f:1", "--job_id=" + "0" * 32, "--", "--x"])
    with pytest.raises(ValueError):
        submit.parse_args(["submit", "--flink_master=f:1", "--pipeline=a-b"])


def test_stop_takes_a_job_id_or_a_job_name():
    args, _ = submit.parse_args(["stop", "--flink_master=f:1", "--job_name=iheard-frontend"])
    assert args.job_name == "iheard-frontend" and args.job_id is None and not args.drain
    with pytest.raises(SystemExit):
        submit.parse_args(["stop", "--flink_master=f:1"])
    with pytest.raises(SystemExit):
        submit.parse_args(["stop", "--flink_master=f:1", "--job_id=" + "0" * 32, "--job_name=x"])


def test_parse_args_needs_a_master(monkeypatch):
    monkeypatch.delenv("FLINK_MASTER", raising=False)
    with pytest.raises(submit.SubmitError, match="flink_master"):
        submit.parse_args(["list"])


def test_main_reports_unreachable_cluster(capsys, monkeypatch):
    monkeypatch.setattr(flink_rest, "GET_ATTEMPTS", 2)
    monkeypatch.setattr(flink_rest, "GET_RETRY_DELAY_S", 0.01)
    assert submit.main(["list", "--flink_master=http://127.0.0.1:9"]) == 1
    assert "runners.submit:" in capsys.readouterr().err


def test_runner_class_resolves_by_name():
    from apache_beam.runners.portability.flink_runner import FlinkRunner
    from apache_beam.runners.runner import create_runner

    runner = create_runner("runners.uberjar.FlinkUberJarRunner")
    assert isinstance(runner, FlinkRunner)


def _listening_addresses(port: int) -> set:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows.read().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    found.add(address)
    return found


def test_artifact_server_wrapper_binds_loopback_only():
    from concurrent import futures

    import grpc

    server = uberjar._LoopbackOnlyServer(grpc.server(futures.ThreadPoolExecutor(max_workers=1)))
    port = server.add_insecure_port("[::]:0")  # what Beam asks for
    server.start()
    try:
        found = _listening_addresses(port)
        # 127.0.0.1, possibly as the IPv4-mapped IPv6 address ::ffff:127.0.0.1.
        assert found and found <= {"0100007F", "0000000000000000FFFF00000100007F"}, found
    finally:
        server.stop(0)


# Flink 1.19's text for a savepoint whose state has no operator in the new job
# (seen with tests/flink/test_submit.py's relabelled probe).
_UNMAPPED = (
    "org.apache.flink.runtime.client.JobInitializationException: Could not start the JobMaster.\n"
    "Caused by: java.lang.IllegalStateException: Failed to rollback to checkpoint/savepoint "
    "file:/sp/savepoint-1. Cannot map checkpoint/savepoint state for operator "
    "bb11f5f2e03e18e16928bf7bc63dfd22 to the new program, because the operator is not available in "
    "the new program. If you want to allow to skip this, you can set the --allowNonRestoredState "
    "option on the CLI.\n\tat org.apache.flink.runtime.checkpoint.Checkpoints.throwNonRestoredStateException"
)


def test_a_savepoint_with_unmapped_state_is_explained_with_the_step_and_the_procedure():
    from runners.submit import explain_restore_failure

    reason = explain_restore_failure(["job x is FAILED", _UNMAPPED], "file:/sp/savepoint-1")
    assert "bb11f5f2e03e18e16928bf7bc63dfd22 (ArchiveEvents/GroupByPartition of the frontend job)" in reason
    assert 'README, "Upgrading a running job"' in reason
    assert "Cannot map checkpoint/savepoint state" in reason
    assert "\n" not in reason  # one line: the CLI prints it as its error


def test_a_savepoint_another_coder_wrote_is_explained_as_such():
    from runners.submit import explain_restore_failure

    text = ("java.lang.Exception: Exception while creating StreamOperatorStateContext.\n"
            "Caused by: java.io.InvalidClassException: org.apache.beam.sdk.coders.Coder; local class "
            "incompatible: stream classdesc serialVersionUID = 4890299557713051384\n")
    reason = explain_restore_failure([text], "file:/sp/savepoint-2")
    assert "another Beam version or another coder" in reason and "InvalidClassException" in reason


def test_other_failures_are_left_as_flink_reported_them():
    from runners.submit import explain_restore_failure

    assert explain_restore_failure(["Cannot find checkpoint or savepoint file:/none"], "file:/none") is None
    assert explain_restore_failure(["ValueError: boom in ParseEvents"], "file:/sp") is None


def test_a_restored_timer_without_its_transform_is_explained():
    from runners.submit import explain_restore_failure

    # The root exception of a frontend job restored into a build with a step added before the parser.
    text = ("java.lang.NullPointerException: No receiver found for timer "
            "ref_AppliedPTransform_AggregateSessions-SessionizeBuckets_29 ts-deadline\n"
            "\tat org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkNotNull")
    reason = explain_restore_failure(["job x is RESTARTING", text], "file:/sp/savepoint-3")
    assert "ref_AppliedPTransform_AggregateSessions-SessionizeBuckets_29" in reason
    assert "beam_transform_id" in reason and 'README, "Upgrading a running job"' in reason
