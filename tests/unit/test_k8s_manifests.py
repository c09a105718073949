"""Static checks of the deployment artefacts: flink/k8s, Dockerfile, the deploy workflow.

There is no Kubernetes cluster here, so the manifests are validated offline
by ``flink/k8s/validate.sh``: kubeconform against the Kubernetes 1.30 API
schemas and the Flink Kubernetes Operator's CRD schemas (fetched from PyPI /
Maven Central into $IHEARD_HOME on first use; needs go, mvn and pip once).
Deliberately broken manifests must be rejected, so a validator that accepts
everything would fail here. The rest checks that the artefacts agree with each
other and with the code: the worker-pool port, the image, the secrets, the
local cluster's Flink configuration.

Run: ``python -m pytest tests/unit/test_k8s_manifests.py``.
"""
from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S = REPO / "flink" / "k8s"
VALIDATE = K8S / "validate.sh"
WORKFLOW = REPO / ".github" / "workflows" / "deploy.yml"
IMAGE_PLACEHOLDER = "ghcr.io/iheardai/iheardai-beam-pipelines:main"
WORKER_POOL = "localhost:50000"


def _validate(*args: str, stdin: str | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(VALIDATE), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest_files() -> list[pathlib.Path]:
    return sorted(K8S.rglob("*.yaml"))


def _by_kind(kind: str) -> list[dict]:
    return [doc for path in _manifest_files() for doc in _documents(path) if doc["kind"] == kind]


@pytest.fixture(scope="module")
def validator_ready():
    done = _validate("--install")
    assert done.returncode == 0, done.stderr
    return True


# ------------------------------------------------------------ schema validation


def test_every_manifest_is_valid(validator_ready):
    expected = sum(len(_documents(path)) for path in _manifest_files())
    assert expected >= 10
    done = _validate()
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert f"{expected} resources found" in summary
    assert f"Valid: {expected}, Invalid: 0, Errors: 0, Skipped: 0" in summary


def _flink_deployment_text() -> str:
    return (K8S / "flink-deployment.yaml").read_text()


_BROKEN = {
    "unsupported Flink version": (
        _flink_deployment_text().replace("flinkVersion: v1_19", "flinkVersion: v1_99"),
        "/spec/flinkVersion",
    ),
    "misspelt field in the sidecar": (
        _flink_deployment_text().replace("containerPort: 50000", "containerPortt: 50000"),
        "containerPortt",
    ),
    "unknown FlinkDeployment field": (
        _flink_deployment_text().replace("  mode: standalone", "  mode: standalone\n  taskManagers: 2"),
        "taskManagers",
    ),
    "wrong type in a Job": (
        (K8S / "jobs" / "submit-frontend.yaml").read_text().replace("backoffLimit: 0", 'backoffLimit: "zero"'),
        "/spec/backoffLimit",
    ),
    "Service port as a word": (
        (K8S / "metrics-service.yaml").read_text().replace("port: 9249", "port: metrics"),
        "/spec/ports/0/port",
    ),
    "kind nobody knows": ("apiVersion: v1\nkind: Widget\nmetadata:\n  name: x\n", "could not find schema"),
}


@pytest.mark.parametrize("name", sorted(_BROKEN))
def test_broken_manifest_is_rejected(validator_ready, name):
    text, complaint = _BROKEN[name]
    assert text != "", name
    done = _validate("-", stdin=text)
    assert done.returncode != 0, done.stdout
    assert complaint in done.stdout, done.stdout


# ----------------------------------------------------- agreement with the code


def test_flink_configuration_matches_the_local_cluster():
    """The session cluster behaves like the one the Flink tests ran on."""
    local = yaml.safe_load((REPO / "flink" / "conf" / "config.yaml.template").read_text())
    remote = _by_kind("FlinkDeployment")[0]["spec"]["flinkConfiguration"]
    for key in (
        "state.backend.type",
        "restart-strategy.type",
        "restart-strategy.fixed-delay.attempts",
        "restart-strategy.fixed-delay.delay",
        "jobmanager.execution.failover-strategy",
        "taskmanager.numberOfTaskSlots",
        "taskmanager.memory.managed.fraction",
        "taskmanager.memory.jvm-metaspace.size",
        "taskmanager.memory.task.off-heap.size",
    ):
        assert str(remote[key]) == str(local[key]), key
    # Locally a loopback-bound variant of the reporter; in pods Flink's own,
    # which listens on the pod's address where Prometheus can reach it.
    assert local["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    assert remote["metrics.reporter.prom.factory.class"] == (
        "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    )
    for key in ("state.checkpoints.dir", "state.savepoints.dir", "high-availability.storageDir"):
        assert remote[key].startswith("s3://"), key
    assert remote["metrics.reporter.prom.port"] == "9249"
    # The S3 plugin the pods enable must be the one shipped in this image version.
    spec = _by_kind("FlinkDeployment")[0]["spec"]
    version = re.match(r"flink:(\d+\.\d+\.\d+)-", spec["image"]).group(1)
    for role in ("jobManager", "taskManager"):
        (main,) = [c for c in spec[role]["podTemplate"]["spec"]["containers"] if c["name"] == "flink-main-container"]
        plugins = {e["name"]: e.get("value") for e in main["env"]}["ENABLE_BUILT_IN_PLUGINS"]
        assert plugins == f"flink-s3-fs-hadoop-{version}.jar", role


def test_taskmanagers_run_the_beam_worker_pool_sidecar():
    from runners import profiles, submit

    spec = _by_kind("FlinkDeployment")[0]["spec"]
    assert spec["flinkVersion"] == "v1_19" and spec["image"].startswith("flink:1.19")
    containers = {c["name"]: c for c in spec["taskManager"]["podTemplate"]["spec"]["containers"]}
    assert "flink-main-container" in containers  # the operator merges into this name
    pool = containers["beam-worker-pool"]
    assert pool["image"] == IMAGE_PLACEHOLDER
    assert pool["command"][:3] == ["python", "-m", "apache_beam.runners.worker.worker_pool_main"]
    port = int(WORKER_POOL.split(":")[1])
    assert f"--service_port={port}" in pool["command"]
    assert [p["containerPort"] for p in pool["ports"]] == [port]
    # The address the pipelines are told to use is this sidecar's.
    assert profiles.EXTERNAL_WORKER_POOL == WORKER_POOL == submit.DEFAULT_WORKER_POOL


def test_submit_jobs_call_runners_submit_with_known_flags():
    from runners import submit

    jobs = _by_kind("Job")
    assert {job["metadata"]["generateName"] for job in jobs} == {
        "iheard-submit-frontend-",
        "iheard-submit-text-agent-",
    }
    for job in jobs:
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == IMAGE_PLACEHOLDER
        command = container["command"]
        assert command[:3] == ["python", "-m", "runners.submit"]
        args, pipeline_args = submit.parse_args(command[3:])
        assert args.command == "upgrade"
        assert args.environment_type == "EXTERNAL" and args.environment_config == WORKER_POOL
        assert args.flink_master == "http://iheard-flink-rest:8081"
        module, _ = submit.parse_pipeline_ref(args.pipeline)
        __import__(module)
        assert "--streaming" in pipeline_args and "--profile=flink-k8s" in pipeline_args
        sources = {ref[key]["name"] for ref in container["envFrom"] for key in ref}
        assert sources == {"iheard-pipeline-config", "iheard-pipeline-secrets"}
        # Every $(VAR) the command expands comes from the ConfigMap or the Secret.
        known = set(_by_kind("ConfigMap")[0]["data"]) | set(_example_secret()["stringData"])
        used = set(re.findall(r"\$\(([A-Z_]+)\)", " ".join(command)))
        assert used and used <= known, used - known


def _example_secret() -> dict:
    (secret,) = _documents(K8S / "example" / "secret.example.yaml")
    return secret


def test_secret_holds_placeholders_only_and_covers_what_is_referenced():
    secret = _example_secret()
    values = secret["stringData"]
    assert set(values.values()) == {"REPLACE_ME"}
    for name in ("KAFKA_USER", "KAFKA_PASSWORD", "POSTGRES_USER", "POSTGRES_PASSWORD", "REDIS_PASSWORD",
                 "SPACES_ACCESS_KEY", "SPACES_SECRET_KEY", "MARKETO_CLIENT_ID", "MARKETO_CLIENT_SECRET",
                 "PII_HMAC_SECRET"):
        assert name in values
    text = "\n".join(path.read_text() for path in _manifest_files())
    for ref in re.findall(r"secretKeyRef:\s+name: (\S+)\s+key: (\S+)", text):
        assert ref[0] == secret["metadata"]["name"] and ref[1] in values, ref
    # No Secret with values outside example/: `kubectl apply -f flink/k8s/` must not overwrite the real one.
    assert all(path.parent.name == "example" for path in _manifest_files() if "kind: Secret" in path.read_text())


def test_prometheus_can_find_the_metrics_port():
    spec = _by_kind("FlinkDeployment")[0]["spec"]
    for role in ("jobManager", "taskManager"):
        template = spec[role]["podTemplate"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "9249"
    (service,) = _by_kind("Service")
    assert service["spec"]["selector"] == {"app": _by_kind("FlinkDeployment")[0]["metadata"]["name"]}
    assert service["spec"]["ports"][0]["port"] == 9249


# -------------------------------------------------------------- the workflow


def test_workflow_lints_clean(validator_ready):
    done = _validate("--workflows", str(WORKFLOW))
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_rejects_a_broken_workflow(validator_ready, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    done = _validate("--workflows", str(broken))
    assert done.returncode != 0
    assert "runs-on" in done.stdout + done.stderr


def test_workflow_builds_the_image_and_runs_runners_submit():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as true
    assert "push" in triggers
    jobs = workflow["jobs"]
    assert jobs["deploy"]["needs"] == "image" and jobs["image"]["needs"] == "unit-tests"
    assert any("docker/build-push-action" in step.get("uses", "") for step in jobs["image"]["steps"])
    runs = "\n".join(step.get("run", "") for step in jobs["deploy"]["steps"])
    assert "python -m runners.submit stop" in runs
    assert "python -m runners.submit submit" in runs and '--from_savepoint="${!savepoint_var}"' in runs
    assert workflow["env"]["IMAGE_PLACEHOLDER"] == IMAGE_PLACEHOLDER
    assert IMAGE_PLACEHOLDER in (K8S / "flink-deployment.yaml").read_text()
    # The Secret the workflow builds has exactly the example's keys.
    created = set(re.findall(r"--from-literal=([A-Z_]+)=", runs))
    assert created == set(_example_secret()["stringData"])
    referenced = set(re.findall(r"secrets\.([A-Z0-9_]+)", WORKFLOW.read_text()))
    assert referenced - {"GITHUB_TOKEN", "KUBECONFIG_B64"} == created


# ------------------------------------------------------------------ the image


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _setup_py_packages() -> tuple[list[str], dict]:
    text = (REPO / "setup.py").read_text()
    names = re.findall(r'"([a-z_]+)"', re.search(r"PACKAGES = \[(.*?)\]", text, re.S).group(1))
    package_dir = dict(re.findall(r'"([a-z_]+)": "([a-z_]+)"', re.search(r"package_dir=\{(.*?)\}", text).group(1)))
    return names, package_dir


def test_dockerfile_ships_every_package_and_the_job_server_jar():
    from runners import submit

    dockerfile = (REPO / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M)
    ignored = _dockerignore_patterns()
    for source in copies:
        path = REPO / source.rstrip("/")
        assert path.exists(), source
        assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"
    copied = {source.rstrip("/") for source in copies}
    names, package_dir = _setup_py_packages()
    assert "iheard_io" in names and package_dir == {"iheard_io": "io"}
    for name in names:
        assert package_dir.get(name, name) in copied, f"package {name} is not copied into the image"
    assert "flink/uberjar/pom.xml" in copied
    # The jar the build stage produces is the one runners.submit is pointed at.
    pom = (REPO / "flink" / "uberjar" / "pom.xml").read_text()
    artifact = re.search(r"<artifactId>(iheard-[^<]+)</artifactId>\s*<version>([^<]+)</version>", pom)
    assert f"target/{artifact.group(1)}-{artifact.group(2)}.jar" in dockerfile
    jar_env = re.search(rf"ENV {submit.JAR_ENV_VAR}=(\S+)", dockerfile)
    assert jar_env and f"/beam-flink-job-server.jar {jar_env.group(1)}" in dockerfile
    # Same apache-beam on both sides: the image installs setup.py's pin, the jar is built for it.
    beam = re.search(r'BEAM_VERSION = "([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert f"<beam.version>{beam}</beam.version>" in pom
    # The unprivileged user of the image is the one the pods run as.
    uid = re.search(r"useradd --uid (\d+)", dockerfile).group(1)
    assert re.search(rf"^USER {uid}$", dockerfile, re.M)
    run_as = re.findall(r"runAsUser: (\d+)", "\n".join(p.read_text() for p in _manifest_files()))
    assert run_as and set(run_as) == {uid}


# ------------------------------------------------------ the CRD conversion


def _converter():
    import importlib.util

    spec = importlib.util.spec_from_file_location("crd_to_jsonschema", K8S / "crd_to_jsonschema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crd_conversion_is_strict_where_kubernetes_would_prune():
    import jsonschema

    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.org",
            "names": {"kind": "Widget"},
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {
                            "size": {"x-kubernetes-int-or-string": True},
                            "note": {"type": "string", "nullable": True},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                     "properties": {"a": {"type": "string"}}},
                            "tags": {"type": "array", "items": {"type": "object", "properties": {
                                "k": {"type": "string"}}}},
                        }},
                    },
                }}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}},
            ],
        },
    }
    schemas = _converter().crd_to_jsonschemas(crd)
    assert list(schemas) == ["example.org/widget_v1.json"]
    validator = jsonschema.Draft7Validator(schemas["example.org/widget_v1.json"])

    def errors(spec, **top):
        doc = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec, **top}
        return [e.message for e in validator.iter_errors(doc)]

    assert errors({"size": 3, "note": None, "free": {"a": "x", "anything": 1}, "tags": [{"k": "v"}]}) == []
    assert errors({"size": "50%"}) == []
    assert errors({"size": 1.5})  # neither integer nor string
    assert errors({"sise": 3})  # misspelt: rejected, not pruned
    assert errors({"tags": [{"key": "v"}]})  # strict inside array items too
    assert errors({}, kind="Gadget")
    assert errors({}, status={})  # not in this CRD's schema
    with pytest.raises(ValueError):
        _converter().crd_to_jsonschemas({"kind": "Deployment"})


# ------------------------------------------------- no secret on a command line


def _secret_variables() -> set[str]:
    """Names of the pipeline Secret's keys (the example Secret lists them all)."""
    return set(_example_secret()["stringData"])


def _command_lines() -> list[tuple[str, str]]:
    """(where, text) of every command a shipped manifest or the workflow runs."""
    out = []
    for path in _manifest_files():
        for doc in _documents(path):
            for spec in _pod_specs(doc):
                for container in spec.get("containers", []) + spec.get("initContainers", []):
                    text = " ".join(container.get("command", []) + container.get("args", []))
                    out.append((f"{path.relative_to(REPO)}:{container['name']}", text))
    workflow = yaml.safe_load(WORKFLOW.read_text())
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if step.get("run"):
                # Shell line continuations: one logical command a line.
                out.append((f"deploy.yml:{job_name}:{step.get('name', '?')}", step["run"].replace("\\\n", " ")))
    return out


def _pod_specs(doc):
    """Pod specs anywhere in a manifest (Job templates, FlinkDeployment pod templates)."""
    if isinstance(doc, dict):
        if "containers" in doc and isinstance(doc["containers"], list):
            yield doc
        for value in doc.values():
            yield from _pod_specs(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _pod_specs(value)


def _secret_pipeline_options(text: str, secrets: set[str]) -> list[str]:
    """``--option=value`` words whose option names a secret or whose value expands a Secret key."""
    found = []
    for option, value in re.findall(r"--([a-z0-9_]+)=(\S*)", text):
        if re.search(r"secret|password|token", option):
            found.append(f"--{option}")
        refs = set(re.findall(r"\$\(([A-Z0-9_]+)\)|\$\{?([A-Z0-9_]+)", value))
        names = {name for pair in refs for name in pair if name}
        if names & secrets:
            found.append(f"--{option}={value}")
    return found


def test_no_manifest_or_workflow_passes_a_secret_as_a_pipeline_option():
    """Pipeline options are the Flink job's configuration (shown on its dashboard):
    secrets reach the submitter and the workers through their environment
    (a Secret), never a ``--flag``."""
    secrets = _secret_variables()
    assert {"SPACES_SECRET_KEY", "POSTGRES_PASSWORD"} <= secrets
    lines = _command_lines()
    assert any("runners.submit" in text for _, text in lines)  # the scan sees the submit commands
    offenders = {where: hits for where, text in lines if (hits := _secret_pipeline_options(text, secrets))}
    assert offenders == {}


def test_the_secret_option_scan_catches_what_it_should():
    secrets = {"SPACES_SECRET_KEY", "POSTGRES_PASSWORD"}
    assert _secret_pipeline_options("--s3_secret_access_key=$(SPACES_SECRET_KEY)", secrets)
    assert _secret_pipeline_options('--s3_secret_access_key="$SPACES_SECRET_KEY"', secrets)
    assert _secret_pipeline_options("--postgres_dsn=postgresql://u:${POSTGRES_PASSWORD}@h/db", secrets)
    assert _secret_pipeline_options("--pii_secret=abc", secrets)
    assert not _secret_pipeline_options("--s3_endpoint_url=$(SPACES_ENDPOINT) --kafka_group_id=x", secrets)


def test_worker_pool_gets_the_s3_keys_from_the_secret():
    """With no keys among the options, the SDK workers (EXTERNAL pool) need boto3's variables."""
    spec = _by_kind("FlinkDeployment")[0]["spec"]
    containers = {c["name"]: c for c in spec["taskManager"]["podTemplate"]["spec"]["containers"]}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in containers["beam-worker-pool"].get("env", [])
           if "valueFrom" in e}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "iheard-pipeline-secrets", "key": "SPACES_ACCESS_KEY"}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "iheard-pipeline-secrets", "key": "SPACES_SECRET_KEY"}
