"""A backup safe to retry (rewind.backup): a retry reuses only its own earlier try (same DAG, run,
requested type and timeline), never another DAG's, another timeline's or a failed one."""

from __future__ import annotations

import pytest

from rewind.backup import (
    DAG_ID_ANNOTATION,
    REQUESTED_TYPE_ANNOTATION,
    RUN_ID_ANNOTATION,
    BackupLockHeldError,
    earlier_try,
    take_backup,
)
from tests.factories import backup_json, stanza_info
from tests.fakes import FakePgBackRest

RUN = "scheduled__2026-11-24T02:00:00+00:00"  # the full, diff and incr DAGs all have runs of this id
DIFF_DAG, INCR_DAG = "rewind_backup_diff__ledger", "rewind_backup_incr__ledger"


def annotated(label, *, dag=DIFF_DAG, run=RUN, requested=None, timeline=1, error=False, stop=1795500000):
    notes = {DAG_ID_ANNOTATION: dag, RUN_ID_ANNOTATION: run, **({REQUESTED_TYPE_ANNOTATION: requested} if requested else {})}
    return backup_json(label, stop=stop, wal_start=f"{timeline:08X}0000000000000004", lsn_stop="0/4000100", annotations=notes, error=error)


def test_the_earlier_try_of_this_task_is_found():
    promoted = annotated("20261124-020000F", requested="diff")  # pgBackRest took a full: no prior full existed
    info = stanza_info([promoted])
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="diff", timeline=1).label == "20261124-020000F"
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="full", timeline=1) is None  # a full was not what it asked for


def test_another_dag_run_type_or_timeline_is_not_reused():
    info = stanza_info([annotated("20261124-020000F", requested="full"), annotated("20261124-020000F_20261124-030000D", requested="diff")])
    assert earlier_try(info, dag_id=INCR_DAG, run_id=RUN, backup_type="diff", timeline=1) is None  # same run id, other DAG
    assert earlier_try(info, dag_id=DIFF_DAG, run_id="manual__other", backup_type="diff", timeline=1) is None
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="incr", timeline=1) is None
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="diff", timeline=2) is None  # before a rewind
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="diff", timeline=1).label == "20261124-020000F_20261124-030000D"


def test_a_backup_without_the_requested_type_annotation_counts_by_its_type():
    info = stanza_info([annotated("20261124-020000F")])
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="full", timeline=1) is not None
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="diff", timeline=1) is None


def test_a_failed_earlier_try_is_not_reused():
    info = stanza_info([annotated("20261124-020000F", requested="full", error=True)])
    assert earlier_try(info, dag_id=DIFF_DAG, run_id=RUN, backup_type="full", timeline=1) is None


def annotations(dag=DIFF_DAG, run=RUN):
    return {DAG_ID_ANNOTATION: dag, RUN_ID_ANNOTATION: run, "airflow_try": "1"}


def test_take_backup_reports_the_promoted_full_and_a_retry_reuses_it(ledger):
    pgbackrest = FakePgBackRest(ledger, promote_to_full=("diff",))
    lines: list[str] = []
    first = take_backup(pgbackrest, "diff", annotations=annotations(), timeline=1, log=lines.append)
    assert (first.type, first.reused, first.timeline) == ("full", False, 1)
    assert first.annotations[REQUESTED_TYPE_ANNOTATION] == "diff"
    assert "requested diff, pgBackRest took full (no suitable prior backup)" in lines
    retry = take_backup(pgbackrest, "diff", annotations={**annotations(), "airflow_try": "2"}, timeline=1, log=lines.append)
    assert (retry.label, retry.reused) == (first.label, True)
    assert [call[0] for call in pgbackrest.calls] == ["backup"]


def test_take_backup_does_not_reuse_across_dags_or_timelines(ledger):
    pgbackrest = FakePgBackRest(ledger)
    full = take_backup(pgbackrest, "full", annotations=annotations(dag="rewind_backup_full__ledger"), timeline=1, log=print)
    incr = take_backup(pgbackrest, "incr", annotations=annotations(dag=INCR_DAG), timeline=1, log=print)
    assert (incr.type, incr.reused, incr.reference) == ("incr", False, [full.label])
    after_rewind = take_backup(pgbackrest, "incr", annotations=annotations(dag=INCR_DAG), timeline=2, log=print)
    assert not after_rewind.reused and after_rewind.label != incr.label
    unknown_timeline = take_backup(pgbackrest, "incr", annotations=annotations(dag=INCR_DAG), timeline=None, log=print)
    assert not unknown_timeline.reused
    assert len([call for call in pgbackrest.calls if call[0] == "backup"]) == 4


def test_a_backup_lock_held_by_another_process_is_not_raced(ledger):
    pgbackrest = FakePgBackRest(ledger, lock_held=True)
    with pytest.raises(BackupLockHeldError, match="stanza 'ledger': a backup is still running .* not starting a second one"):
        take_backup(pgbackrest, "full", annotations=annotations(), timeline=1, lock_wait_s=0, lock_poll_s=0, log=print)
    assert pgbackrest.calls == []
