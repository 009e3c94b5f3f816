"""The restore guard (rewind.guard) on a real state directory under tmp_path: one PITR of a cluster
at a time, backups blocked from `stopping` on, a failed rewind keeps them blocked, a damaged file
is reported with the way out."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from rewind import guard
from rewind.guard import PitrAlreadyRunning, RestoreFailed, RestoreInProgress
from rewind.pitr.journal import RunJournal
from rewind.state import StateFileDamaged, state_dir

DAG = "rewind_pitr__ledger"
A, B = "manual__2026-11-24T02:20:00+00:00", "manual__2026-11-24T03:05:00+00:00"  # as Airflow names manual runs
A_RE = re.escape(A)


def states(**by_run):
    """run_state as Airflow answers it: the DagRun state of each run id (None: unknown)."""
    return lambda dag_id, run_id: by_run.get(run_id)


def at_step(cluster, run_id, *steps: str) -> None:
    """The run's journal records these milestones (rewind.pitr.journal): where its rewind stands."""
    journal = RunJournal.load(cluster, run_id)
    for step in steps:
        journal.record(step)


def claim(cluster, run_id, *, run_state=None, log=None):
    return guard.claim(cluster, dag_id=DAG, run_id=run_id, run_state=run_state or states(), log=log or (lambda _line: None))


def test_a_fresh_claim_blocks_nothing_yet(ledger):
    held = claim(ledger, A)
    assert (held.run_id, held.dag_id, held.phase, held.blocks_backups) == (A, DAG, "claimed", False)
    assert (held.took_over, held.timeline_before, held.change, held.failed_step) == (None, None, None, None)
    assert guard.read_guard(ledger) == held
    path = guard.guard_path(ledger)
    assert path.parent == Path(ledger.state_dir) and json.loads(path.read_text())["run_id"] == A
    assert stat.S_IMODE(os.stat(ledger.state_dir).st_mode) == 0o750 and os.stat(ledger.state_dir).st_uid == os.geteuid()
    guard.require_no_restore(ledger)  # a claim alone does not stop backups


def test_the_same_run_claims_again_unchanged(ledger):
    first = claim(ledger, A)
    assert claim(ledger, A, run_state=states(**{A: "running"})) == first


@pytest.mark.parametrize("state", ["running", "queued", None])
def test_a_second_pitr_is_refused_while_the_first_is_active_naming_it(ledger, state):
    claim(ledger, A)
    guard.set_change(ledger, A, "CHG0010001")
    with pytest.raises(
        PitrAlreadyRunning,
        match=(rf"cluster 'ledger': PITR run {A_RE} \(change CHG0010001, phase claimed, since .*\) is still active: this run does nothing"),
    ):
        claim(ledger, B, run_state=states(**{A: state}))
    assert guard.read_guard(ledger).run_id == A
    assert PitrAlreadyRunning.opens_incident is False


def test_a_run_state_that_cannot_be_read_counts_as_active(ledger):
    claim(ledger, A)

    def unreadable(dag_id, run_id):
        raise ConnectionError("execution API down")

    with pytest.raises(PitrAlreadyRunning):
        claim(ledger, B, run_state=unreadable)


def test_a_stale_claim_of_an_ended_run_is_taken_over(ledger):
    stale = claim(ledger, A)
    lines: list[str] = []
    held = claim(ledger, B, run_state=states(**{A: "success"}), log=lines.append)
    assert (held.run_id, held.phase, held.blocks_backups, held.took_over) == (B, "claimed", False, None)
    assert lines == [f"taking over a stale claim of ended PITR run {A} (change -, phase claimed, since {stale.since})"]


def test_a_failed_rewind_is_taken_over_with_its_blocks_and_the_timeline_it_left(ledger):
    claim(ledger, A)
    guard.begin_rewind(ledger, A, change="CHG0010001", timeline_before=3)
    at_step(ledger, A, "stopped", "restore_started")
    failed = guard.fail(ledger, A, "restore")
    assert (failed.phase, failed.failed_step, failed.blocks_backups, failed.timeline_before) == ("failed", "restore", True, 3)
    lines: list[str] = []
    held = claim(ledger, B, run_state=states(**{A: "running"}), log=lines.append)  # failed counts whatever Airflow says
    assert (held.run_id, held.phase, held.blocks_backups, held.took_over, held.timeline_before) == (B, "claimed", True, A, 3)
    assert "taking over the restore guard of failed PITR run" in lines[0]
    with pytest.raises(RestoreInProgress):
        guard.require_no_restore(ledger)  # still blocked until B's new full backup
    # B failing before it touched anything does not lift what it inherited
    assert guard.fail(ledger, B, "preflight").phase == "failed"
    assert guard.read_guard(ledger).blocks_backups
    # a third run continues the chain: it knows every failed run before it (their holds end with its own)
    third = claim(ledger, "run-c")
    assert (third.took_over, third.predecessors) == (B, (A, B))
    assert guard.read_guard(ledger).predecessors == (A, B)  # survives the JSON file


def test_a_rewind_that_ended_without_recording_a_failure_needs_a_dba(ledger):
    claim(ledger, A)
    guard.begin_rewind(ledger, A, change="CHG0010001")
    at_step(ledger, A, "stopped", "restore_started")
    with pytest.raises(
        RestoreFailed,
        match=(
            rf"cluster 'ledger': PITR run {A_RE} \(change CHG0010001, phase restoring, since .*\) ended in the middle of a rewind "
            r"without recording a failure: look at the cluster, then `rewind guard clear --cluster ledger` and trigger again"
        ),
    ):
        claim(ledger, B, run_state=states(**{A: "failed"}))


def test_a_rewind_blocks_backups_keeps_the_first_timeline_and_takes_its_phase_from_the_journal(ledger):
    claim(ledger, A)
    guard.set_change(ledger, A, "CHG0010001")
    stopping = guard.begin_rewind(ledger, A, timeline_before=3)
    assert (stopping.phase, stopping.blocks_backups, stopping.change, stopping.timeline_before) == ("stopping", True, "CHG0010001", 3)
    # the journal is the one record of progress: the guard says what it says
    for steps, phase in (
        (("stopped",), "stopped"),
        (("restore_started",), "restoring"),
        (("restored", "started"), "started"),
        (("at_target",), "at_target"),
        (("checked", "promoted"), "promoted"),
        (("backup",), "backed_up"),
    ):
        at_step(ledger, A, *steps)
        assert guard.read_guard(ledger).phase == phase
    assert json.loads(guard.guard_path(ledger).read_text())["phase"] == "rewinding"  # nothing kept twice
    later = guard.begin_rewind(ledger, A, timeline_before=4)
    assert (later.timeline_before, later.change) == (3, "CHG0010001")
    with pytest.raises(RestoreFailed, match=rf"the restore guard is not held by this run \(held by PITR run {A_RE} "):
        guard.begin_rewind(ledger, B)
    with pytest.raises(RestoreFailed, match=rf"the restore guard is not held by this run \(held by PITR run {A_RE} "):
        guard.held_by(ledger, B)


def test_a_dbas_move_at_the_target_shows_as_restoring_then_started(ledger):
    claim(ledger, A)
    guard.begin_rewind(ledger, A)
    at_step(ledger, A, "stopped", "restore_started", "restored", "started", "at_target")
    journal = RunJournal.load(ledger, A)
    journal.set(pending_decision={"answer": "Move the target", "restore_started": "2026-11-24T02:40:00+00:00"})
    assert guard.read_guard(ledger).phase == "restoring"
    journal.set(pending_decision={"answer": "Move the target", "restore_started": "x", "started": "2026-11-24T02:41:00+00:00"})
    assert guard.read_guard(ledger).phase == "started"
    journal.set(pending_decision=None)
    assert guard.read_guard(ledger).phase == "at_target"


def test_a_rewind_without_a_guard_refuses(ledger):
    with pytest.raises(RestoreFailed, match=r"the restore guard is not held by this run \(held by nobody\): refusing to go on"):
        guard.begin_rewind(ledger, A)


def test_fail_before_anything_was_touched_releases_the_claim(ledger):
    claim(ledger, A)
    assert guard.fail(ledger, A, "preflight") is None
    assert guard.read_guard(ledger) is None


def test_fail_of_another_run_leaves_the_guard_alone(ledger):
    claim(ledger, A)
    guard.begin_rewind(ledger, A)
    at_step(ledger, A, "stopped")
    assert guard.fail(ledger, B, "validate_params").run_id == A
    assert guard.read_guard(ledger).phase == "stopped"
    assert guard.fail(ledger.model_copy(update={"state_path": str(ledger.state_dir) + "-none"}), A, "x") is None


def test_release_is_for_the_run_that_holds_it(ledger):
    assert guard.release(ledger, A) is False
    claim(ledger, A)
    guard.begin_rewind(ledger, A)
    at_step(ledger, A, "backup")
    with pytest.raises(RestoreFailed, match=f"the restore guard belongs to PITR run {A_RE} .*, not this run"):
        guard.release(ledger, B)
    assert guard.release(ledger, A) is True
    assert guard.read_guard(ledger) is None
    guard.require_no_restore(ledger)


def test_require_no_restore_skips_during_a_rewind_and_fails_after_a_failed_one(ledger):
    claim(ledger, A)
    guard.begin_rewind(ledger, A, change="CHG0010001")
    in_progress = rf"cluster 'ledger': restore in progress \(PITR run {A_RE} .*\): backups wait for its new full backup"
    with pytest.raises(RestoreInProgress, match=in_progress):
        guard.require_no_restore(ledger)
    guard.require_no_restore(ledger, allowed_run_id=A)  # the PITR's own full backup on the new timeline
    with pytest.raises(RestoreInProgress):
        guard.require_no_restore(ledger, allowed_run_id=B)
    guard.fail(ledger, A, "start_postgres")
    with pytest.raises(
        RestoreFailed,
        match=(
            f"PITR run {A_RE} .*at step start_postgres.* failed and left backups blocked: when the cluster is verified, "
            "clear it with `rewind guard clear --cluster ledger`"
        ),
    ):
        guard.require_no_restore(ledger)
    guard.require_no_restore(ledger, allowed_run_id=A)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"cluster": "ledger", "run_id": A, "phase": "stopped"}),
        json.dumps({"cluster": "ledger", "run_id": A, "dag_id": DAG, "phase": "x", "since": "", "updated": "", "added_later": 1}),
    ],
)
def test_a_damaged_guard_is_reported_with_the_way_out_and_clear_removes_it(ledger, content):
    state_dir(ledger)
    guard.guard_path(ledger).write_text(content)
    for use in (guard.read_guard, guard.require_no_restore, lambda c: claim(c, B)):
        with pytest.raises(
            StateFileDamaged,
            match=rf"restore guard {guard.guard_path(ledger)} is damaged \(.*\): look at the cluster, "
            r"then remove it with `rewind guard clear --cluster ledger`",
        ):
            use(ledger)
    assert guard.clear(ledger) == f"restore guard of cluster ledger cleared (was: {content.strip()[:300]})"
    assert guard.read_guard(ledger) is None
    assert guard.clear(ledger) == "no restore guard for cluster ledger"
