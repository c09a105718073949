"""Stable identities of the streaming jobs' state (runners/state_ids.py, flink/state_ids.json).

A savepoint restores a step's state only into an operator with the same Flink
uid; the uids come from Beam labels (see runners/state_ids.py). The first
test fails when a change to the frontend or text-agent graph changes a
stateful step's uid, label or state layout: a running job could then not be
upgraded from its savepoint (README, "Upgrading a running job"). If the
change is meant, run ``python -m runners.state_ids --write``, commit the file,
and deploy that version with the procedure for a change that cannot restore.
"""
from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.userstate import BagStateSpec

from runners import state_ids


def _diff(recorded_steps, current_steps):
    """Human-readable differences between two lists of stateful steps, keyed by uid."""
    old = {s["flink_uid"]: s for s in recorded_steps}
    new = {s["flink_uid"]: s for s in current_steps}
    lines = []
    for uid in sorted(old.keys() - new.keys()):
        lines.append(f"- gone: {old[uid]['label']} (uid {uid!r}): its savepoint state would not map")
    for uid in sorted(new.keys() - old.keys()):
        lines.append(f"+ new:  {new[uid]['label']} (uid {uid!r}): it would start with empty state")
    for uid in sorted(old.keys() & new.keys()):
        if old[uid] != new[uid]:
            lines.append(f"~ changed: {uid!r}:\n    was {json.dumps(old[uid], sort_keys=True)}"
                         f"\n    now {json.dumps(new[uid], sort_keys=True)}")
    return lines


@pytest.mark.parametrize("job", sorted(state_ids.JOBS))
def test_stateful_steps_match_the_recorded_state_ids(job):
    recorded = state_ids.recorded()
    current_steps = state_ids.stateful_steps(state_ids.job_graph(job))
    differences = _diff(recorded["jobs"][job], current_steps)
    assert not differences, (
        f"the {job} job's stateful steps differ from flink/state_ids.json, so a savepoint of the "
        "running job would not restore into this build:\n" + "\n".join(differences)
        + "\nIf meant: python -m runners.state_ids --write, and deploy with the README's "
        "'Upgrading a running job' procedure for a change that cannot restore."
    )


def test_a_stateless_step_applied_last_keeps_every_state_id():
    # The "next build" tests/flink/test_upgrade.py restores the current build's savepoint into.
    from tests.flink.upgrade_variants import build_with_extra_step

    variant = state_ids.stateful_steps(state_ids.job_graph("frontend", build=build_with_extra_step))
    assert not _diff(state_ids.recorded()["jobs"]["frontend"], variant)


def test_a_stateless_step_applied_before_the_stateful_ones_renumbers_their_timers():
    from tests.flink.upgrade_variants import build_with_step_before_parse

    recorded = {s["label"]: s for s in state_ids.recorded()["jobs"]["frontend"]}
    variant = {s["label"]: s for s in state_ids.stateful_steps(
        state_ids.job_graph("frontend", build=build_with_step_before_parse))}
    assert {label: s["flink_uid"] for label, s in variant.items()} == {
        label: s["flink_uid"] for label, s in recorded.items()}
    dedupe = "DedupeEvents/DropDuplicateBatches"
    assert variant[dedupe]["beam_transform_id"] != recorded[dedupe]["beam_transform_id"]
    assert _diff(recorded.values(), variant.values())


def test_the_recorded_file_names_the_beam_version_it_holds_for():
    assert state_ids.recorded()["beam_version"] == beam.__version__, (
        "Beam's version changed: savepoints of the older version do not restore (README, "
        "'Why Beam 2.70.0'); regenerate flink/state_ids.json with python -m runners.state_ids --write"
    )


def test_every_stateful_kind_of_the_jobs_is_listed():
    kinds = {s["kind"] for steps in state_ids.recorded()["jobs"].values() for s in steps}
    labels = {s["label"] for s in state_ids.recorded()["jobs"]["frontend"]}
    assert kinds == {"group_by_key", "stateful_pardo", "splittable_pardo"}
    assert {"DedupeEvents/DropDuplicateBatches", "AggregateSessions/SessionizeBuckets"} <= labels


def test_operator_ids_are_the_ones_flink_derives_from_uids():
    # Vertex ids of a frontend job on this cluster (REST /jobs/<id>/plan, Flink 1.19.3, Beam 2.70).
    assert state_ids.flink_operator_id("ArchiveEvents/GroupByPartition") == "bb11f5f2e03e18e16928bf7bc63dfd22"
    assert (state_ids.flink_operator_id("28DedupeEvents/SplitByIdBucket.None/beam:env:external:v1:0")
            == "d05374acc13dc803e68204309ffdccdd")


class _Remember(beam.DoFn):
    SEEN = BagStateSpec("seen", BooleanCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        seen.add(True)
        yield element


def _toy(key_label="KeyBy", state_label="Remember", extra_step=False, gbk_label="Group"):
    pipeline = beam.Pipeline()
    words = pipeline | "Words" >> beam.Create(["a", "b"])
    if extra_step:
        words = words | "Upper" >> beam.Map(str.upper)
    keyed = words | key_label >> beam.Map(lambda w: (w, 1))
    _ = keyed | state_label >> beam.ParDo(_Remember())
    _ = keyed | gbk_label >> beam.GroupByKey()
    return {s["label"]: s for s in state_ids.stateful_steps(pipeline.to_runner_api())}


def test_what_a_refactor_may_change_and_what_it_may_not():
    base = _toy()
    uid = base["Remember"]["flink_uid"]
    assert uid.endswith(f"KeyBy.None/{state_ids.ENVIRONMENT_URN}:0")
    # A stateless step added upstream, or a renamed stateful DoFn: same uid
    # (but another transform id: see the frontend's variants above).
    assert _toy(extra_step=True)["Remember"]["flink_uid"] == uid
    assert _toy(state_label="RememberSeen")["RememberSeen"]["flink_uid"] == uid
    # The step feeding the stateful DoFn renamed: another uid, the state would not map.
    assert _toy(key_label="KeyByWord")["Remember"]["flink_uid"] != uid
    # A GroupByKey's uid is its own label.
    assert base["Group"]["flink_uid"] == "Group"
    assert "Regroup" in _toy(gbk_label="Regroup")


def test_missing_in_savepoint_names_operators_without_any_entry():
    ids = {state_ids.flink_operator_id("A"): "step A", state_ids.flink_operator_id("B"): "step B"}
    metadata = b"\x00header" + bytes.fromhex(state_ids.flink_operator_id("A")) + b"rest"
    assert state_ids.missing_in_savepoint(metadata, ids) == ["step B"]


def test_savepoint_metadata_reads_local_paths_only(tmp_path):
    (tmp_path / "_metadata").write_bytes(b"meta")
    assert state_ids.savepoint_metadata(f"file:{tmp_path}") == b"meta"
    assert state_ids.savepoint_metadata(f"file://{tmp_path}") == b"meta"
    assert state_ids.savepoint_metadata(str(tmp_path / "_metadata")) == b"meta"
    assert state_ids.savepoint_metadata("s3://bucket/savepoint-1") is None
    assert state_ids.savepoint_metadata(f"file:{tmp_path}/none") is None
