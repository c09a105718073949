"""The stateful steps of the streaming jobs and the Flink operator ids their state lives under.

A savepoint maps each piece of operator state to an *operator id*. Beam 2.70's
portable Flink translator (``FlinkStreamingPortablePipelineTranslator``, the
path every job here takes) sets a Flink ``uid`` on the operators it builds,
and Flink derives the operator id from it (murmur3_128 of the uid, seed 0,
``StreamGraphHasherV2``). Read from the 2.70 jar's bytecode:

* a GroupByKey becomes a ``WindowDoFnOperator`` whose uid is the
  GroupByKey's full Beam label (e.g. ``ArchiveEvents/GroupByPartition``);
* an executable stage (the fused Python steps) gets the stage's id as uid
  (its display name, e.g. ``[11]{DedupeEvents, AggregateSessions, ...}``,
  is a different string). The job server's fuser (``FusedPipeline``) names
  a stage ``<input PCollection's unique name>/<environment urn>:<n>``, n
  counting stages that read the same PCollection from 0; a stateful DoFn
  always starts its own stage, so the uid of its state is its *input's*
  unique name, which Python writes as ``<length of the producing step's
  label><label>.<output tag>``: e.g.
  ``28DedupeEvents/SplitByIdBucket.None/beam:env:external:v1:0``. The Kafka
  read's splittable DoFn is fused with the steps between it and the
  Impulse, so its stage (and the offsets it holds) is named after the
  Impulse's output (``21ReadFromKafka/Impulse.None/...``). Checked against a
  running job's vertex ids by tests/flink/test_upgrade.py.

Inside the operator, Beam names user state by its state id (``ids``,
``version``, ...), with the coder the DoFn declares, but a timer by the
*transform id* the Python SDK gave the DoFn, ``ref_AppliedPTransform_<label>_<n>``
with n counting every transform applied before it in the pipeline. A
restored timer whose transform id the new job lacks fails the job when it
fires (``NullPointerException: No receiver found for timer
ref_AppliedPTransform_AggregateSessions-SessionizeBuckets_29 ts-deadline``,
seen on this cluster after adding one step ahead of the parser). So a restore
keeps a step's state when, and only when: the label of the step feeding a
stateful DoFn, that DoFn's transform id (its label and the number of
transforms applied before it), its state ids and coders, and the label of
every GroupByKey (and its coders and windowing) are unchanged, on the same
Beam version (Flink keeps Beam's coders Java-serialized: README, "Why Beam
2.70.0"). Steps without state can be renamed freely, except the one right
before a stateful DoFn; a step can be added or removed only where it is
applied after every stateful DoFn (e.g. at the end of ``build_pipeline``).

``flink/state_ids.json`` records these for the streaming jobs' graphs;
``tests/unit/test_state_ids.py`` fails when a change alters one, and
``runners.submit --from_savepoint`` refuses a savepoint that holds no state
for an operator id the new job expects (``missing_in_savepoint``).
``python -m runners.state_ids`` prints the current list; ``--write`` stores it.
The Kafka source's own state (offsets of the splittable read) sits in an
operator the job server names when it expands the read; it is not listed
here (the same graph before the read gives it the same id, and offsets are
also committed to the consumer group).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import struct
import sys
import typing

__all__ = [
    "ENVIRONMENT_URN",
    "STATE_IDS_FILE",
    "JOBS",
    "flink_operator_id",
    "stateful_steps",
    "job_graph",
    "current",
    "recorded",
    "expected_operator_ids",
    "missing_in_savepoint",
]

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
STATE_IDS_FILE = REPO_ROOT / "flink" / "state_ids.json"
# LOOPBACK is submitted as an external environment too (Beam replaces it), so
# tests and the Kubernetes worker pool give the same names.
ENVIRONMENT_URN = "beam:env:external:v1"
GBK_URN = "beam:transform:group_by_key:v1"
PAR_DO_URN = "beam:transform:pardo:v1"

# The streaming jobs whose state must survive an upgrade: pipeline -> the
# arguments of its production streaming graph (Kafka, the default hot path).
# The sinks are part of the graph (the PostgreSQL sink's dead letters, the
# archive's windows), so these name them all; nothing is contacted.
_PRODUCTION = [
    "--streaming", "--kafka_bootstrap=kafka:9092",
    "--postgres_dsn=host=postgres dbname=analytics user=iheard", "--redis_url=redis://redis:6379/0",
    "--archive_path=s3://iheardai-archive/archive",
]
JOBS: typing.Dict[str, typing.List[str]] = {
    "frontend": list(_PRODUCTION),
    "text_agent": list(_PRODUCTION),
}
RESHUFFLE_URN = "beam:transform:reshuffle:v1"

_M = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    return k ^ (k >> 33)


def _murmur3_x64_128(data: bytes, seed: int = 0) -> bytes:
    """Guava's ``Hashing.murmur3_128(seed)`` bytes (h1 then h2, little-endian)."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    n = len(data) // 16
    for i in range(n):
        k1, k2 = struct.unpack_from("<QQ", data, i * 16)
        k1 = (_rotl((k1 * c1) & _M, 31) * c2) & _M
        h1 ^= k1
        h1 = (_rotl(h1, 27) + h2) & _M
        h1 = (h1 * 5 + 0x52DCE729) & _M
        k2 = (_rotl((k2 * c2) & _M, 33) * c1) & _M
        h2 ^= k2
        h2 = (_rotl(h2, 31) + h1) & _M
        h2 = (h2 * 5 + 0x38495AB5) & _M
    tail = data[n * 16:]
    k1 = k2 = 0
    for i in range(len(tail) - 1, 7, -1):
        k2 ^= tail[i] << ((i - 8) * 8)
    if len(tail) > 8:
        h2 ^= (_rotl((k2 * c2) & _M, 33) * c1) & _M
    for i in range(min(len(tail), 8) - 1, -1, -1):
        k1 ^= tail[i] << (i * 8)
    if tail:
        h1 ^= (_rotl((k1 * c1) & _M, 31) * c2) & _M
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    return struct.pack("<QQ", h1, h2)


def flink_operator_id(uid: str) -> str:
    """The operator id (32 hex digits) Flink gives an operator with this uid;
    also the job vertex id when the operator heads its chain."""
    return _murmur3_x64_128(uid.encode("utf-8")).hex()


def _coder_shape(components, coder_id: str) -> str:
    """A coder as its urn tree, e.g. ``kv(string_utf8, iterable(bool))`` (payloads left out:
    a pickled coder's bytes change with unrelated code)."""
    coder = components.coders[coder_id]
    name = coder.spec.urn.rsplit(":", 2)[-2] if coder.spec.urn.count(":") >= 2 else coder.spec.urn
    parts = [_coder_shape(components, c) for c in coder.component_coder_ids]
    return f"{name}({', '.join(parts)})" if parts else name


def stateful_steps(proto, environment_urn: str = ENVIRONMENT_URN) -> typing.List[dict]:
    """Every step of a pipeline proto (``Pipeline.to_runner_api()``) that holds
    keyed state on Flink, sorted by label: kind, Beam label, the Flink uid and
    operator id its state is stored under, and its state layout."""
    from apache_beam.portability.api import beam_runner_api_pb2

    components = proto.components
    producers, producer_ids, consumers = {}, {}, {}
    # Flink translates a Reshuffle as a rebalance: the GroupByKey inside never runs.
    under_reshuffle = set()
    pending = [t.subtransforms for t in components.transforms.values() if t.spec.urn == RESHUFFLE_URN]
    while pending:
        for child in pending.pop():
            under_reshuffle.add(child)
            pending.append(components.transforms[child].subtransforms)
    for transform_id, transform in components.transforms.items():
        if transform.subtransforms:
            continue
        for pcoll in transform.outputs.values():
            producers[pcoll] = transform.unique_name
            producer_ids[pcoll] = transform_id
        for pcoll in transform.inputs.values():
            consumers[pcoll] = consumers.get(pcoll, 0) + 1
    steps = []
    for transform_id, transform in components.transforms.items():
        if transform.subtransforms or transform_id in under_reshuffle:
            continue
        if transform.spec.urn == GBK_URN:
            (pcoll_id,) = transform.inputs.values()
            pcoll = components.pcollections[pcoll_id]
            windowing = components.windowing_strategies[pcoll.windowing_strategy_id]
            uid = transform.unique_name
            steps.append({
                "kind": "group_by_key",
                "label": transform.unique_name,
                "flink_uid": uid,
                "flink_operator_id": flink_operator_id(uid),
                "state": {
                    "input": _coder_shape(components, pcoll.coder_id),
                    "window_fn": windowing.window_fn.urn,
                    "window_coder": _coder_shape(components, windowing.window_coder_id),
                },
            })
        elif transform.spec.urn == PAR_DO_URN:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            splittable = bool(payload.restriction_coder_id)
            if not (splittable or payload.state_specs or payload.timer_family_specs):
                continue
            main = [v for k, v in transform.inputs.items() if k not in payload.side_inputs]
            (pcoll_id,) = main
            if splittable:  # the stage starts at the nearest non-ParDo output upstream
                pcoll_id = _stage_input(components, producer_ids, pcoll_id)
            pcoll = components.pcollections[pcoll_id]
            uid = f"{pcoll.unique_name}/{environment_urn}:0"
            state = {}
            for state_id, spec in sorted(payload.state_specs.items()):
                kind = spec.WhichOneof("spec")
                coder_id = getattr(spec, kind).element_coder_id if kind == "bag_spec" else (
                    getattr(spec, kind).coder_id if hasattr(getattr(spec, kind), "coder_id") else "")
                state[state_id] = f"{kind}:{_coder_shape(components, coder_id) if coder_id else '?'}"
            for timer_id, spec in sorted(payload.timer_family_specs.items()):
                state[timer_id] = f"timer:{beam_runner_api_pb2.TimeDomain.Enum.Name(spec.time_domain)}"
            steps.append({
                "kind": "splittable_pardo" if splittable else "stateful_pardo",
                "label": transform.unique_name,
                # Timers are stored with the Python transform id, which counts
                # the transforms applied before this one.
                "beam_transform_id": transform_id,
                "input_from": producers.get(pcoll_id, ""),
                "_input": pcoll_id,
                "flink_uid": uid,
                "flink_operator_id": flink_operator_id(uid),
                "state": {"key_value": _coder_shape(components, pcoll.coder_id), **state},
            })
    # Two stages reading one PCollection are numbered :0, :1 in the fuser's
    # order: the listed uid may then not be the real one, so say so.
    for step in steps:
        if step["kind"] != "group_by_key" and consumers.get(step.pop("_input"), 0) > 1:
            step["flink_uid_ambiguous"] = True
    return sorted(steps, key=lambda s: s["label"])


def _stage_input(components, producer_ids, pcoll_id: str) -> str:
    """Walks up through ParDos to the output of the nearest other primitive (Impulse, GBK, Flatten)."""
    while pcoll_id in producer_ids:
        producer = components.transforms[producer_ids[pcoll_id]]
        if producer.spec.urn != PAR_DO_URN or not producer.inputs:
            return pcoll_id
        payload_inputs = list(producer.inputs.values())
        pcoll_id = payload_inputs[0]
    return pcoll_id


def job_graph(pipeline_name: str, argv: typing.Optional[typing.Sequence[str]] = None, build=None):
    """The pipeline proto of ``beam_pipelines.<pipeline_name>``'s job for ``argv``
    (default ``JOBS[pipeline_name]``), built without contacting any service;
    ``build`` replaces the module's ``build_pipeline`` (a variant of the job)."""
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import cli, common

    module = importlib.import_module(f"beam_pipelines.{pipeline_name}")
    topic = {"frontend": "FRONTEND_TOPIC", "text_agent": "TEXT_AGENT_TOPIC"}[pipeline_name]
    options = PipelineOptions(list(JOBS[pipeline_name] if argv is None else argv))
    pipeline, _ = cli.build_job(options, common.event_source(getattr(module, topic)),
                                build or module.build_pipeline, batches=True, prepare=False)
    return pipeline.to_runner_api()


def current() -> dict:
    """The stateful steps of every job in ``JOBS``, as ``flink/state_ids.json`` holds them."""
    import apache_beam

    return {
        "beam_version": apache_beam.__version__,
        "environment_urn": ENVIRONMENT_URN,
        "jobs": {name: stateful_steps(job_graph(name)) for name in JOBS},
    }


def recorded(path: pathlib.Path = STATE_IDS_FILE) -> dict:
    return json.loads(path.read_text())


def expected_operator_ids(pipeline_name: str, proto=None,
                          environment_urn: str = ENVIRONMENT_URN) -> typing.Dict[str, str]:
    """operator id -> label of the stateful steps whose uid is known (not ambiguous), of
    ``proto`` when given, else of ``pipeline_name`` as recorded."""
    steps = (stateful_steps(proto, environment_urn) if proto is not None
             else recorded()["jobs"][pipeline_name])
    return {s["flink_operator_id"]: s["label"] for s in steps if not s.get("flink_uid_ambiguous")}


def savepoint_metadata(savepoint_path: str) -> typing.Optional[bytes]:
    """The bytes of a savepoint's ``_metadata`` when it is on a local file system, else None."""
    local = savepoint_path
    if local.startswith("file://"):
        local = local[len("file://"):]
    elif local.startswith("file:"):
        local = local[len("file:"):]
    elif "://" in local:
        return None
    path = pathlib.Path(local)
    if path.is_dir():
        path = path / "_metadata"
    try:
        return path.read_bytes()
    except OSError:
        return None


def missing_in_savepoint(metadata: bytes, operator_ids: typing.Mapping[str, str]) -> typing.List[str]:
    """Labels whose operator id does not occur in a savepoint's ``_metadata``.

    Flink's metadata (format v3/v4) writes each operator's id as two 8-byte
    longs, which are the id's 16 bytes in order, for every operator of the
    job that wrote it, stateless ones included (checked on a frontend
    savepoint here): an id that is missing belonged to no operator of that
    job. The new job's operator with that id would start with empty state,
    which Flink does not report.
    """
    return sorted(label for op_id, label in operator_ids.items() if bytes.fromhex(op_id) not in metadata)


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.state_ids", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"store the list in {STATE_IDS_FILE}")
    args = parser.parse_args(argv)
    text = json.dumps(current(), indent=2, sort_keys=True) + "\n"
    if args.write:
        STATE_IDS_FILE.write_text(text)
        print(f"wrote {STATE_IDS_FILE}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
