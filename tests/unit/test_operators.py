"""Cluster operators with a fake PgBackRestHook: routine work skips while a PITR rewinds and fails
after a failed one, expire keeps what a hold covers, a PITR's own full backup is the one backup
allowed under its guard, and the hook's credentials are released however the task ends."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from rewind import guard
from rewind.guard import RestoreFailed
from rewind.lifecycle import mark_onboarded
from rewind.retention import place_hold
from rewind_airflow.operators import pgbackrest as pgbackrest_operators
from rewind_airflow.operators.base import RewindClusterOperator
from rewind_airflow.operators.pgbackrest import PgBackRestBackupOperator, PgBackRestExpireOperator
from tests.factories import local_cluster, stanza_info
from tests.fakes import FakePgBackRest, FakePgBackRestHook, FakeTaskInstance
from tests.unit.test_retention import BACKUPS, F1, F1_D, F2, F3, F4, F4_I

PITR_RUN = "manual__2026-11-24T02:20:00+00:00"
RUN = "scheduled__2026-11-24T02:00:00+00:00"


@pytest.fixture
def cluster(tmp_path):
    onboarded = local_cluster(tmp_path, repo={"retention_full": 2})
    mark_onboarded(onboarded, run_id="manual__onboarding", change="CHG0000001", how="the onboarding DAG")
    return onboarded


def test_routine_work_of_a_cluster_never_onboarded_skips_and_once_onboarded_runs(tmp_path):
    newcomer = local_cluster(tmp_path, name="newcomer")
    operator = with_hook(PgBackRestExpireOperator(task_id="expire", cluster="newcomer"), newcomer)
    with pytest.raises(AirflowSkipException, match="cluster 'newcomer' is not onboarded yet .* run rewind_onboard__newcomer"):
        operator.skip_unless_routine_work_may_run()
    mark_onboarded(newcomer, run_id="r", change=None, how="a full backup succeeded")
    operator.skip_unless_routine_work_may_run()  # onboarded: a missing config is now a failure of the work itself


def with_hook(operator, cluster, client=None):
    operator.__dict__["hook"] = FakePgBackRestHook(cluster=cluster, client=client or FakePgBackRest(cluster, BACKUPS))  # a cached_property
    return operator


def rewinding(cluster, *steps: str) -> None:
    """A PITR run under way: its guard up, its journal at `steps`."""
    from rewind.pitr.journal import RunJournal

    guard.claim(cluster, dag_id="rewind_pitr__ledger", run_id=PITR_RUN, run_state=lambda *_: "running")
    guard.begin_rewind(cluster, PITR_RUN, change="CHG0010001")
    journal = RunJournal.load(cluster, PITR_RUN, dag_id="rewind_pitr__ledger")
    for step in steps:
        journal.record(step)


def test_skip_unless_routine_work_may_run_skips_during_a_rewind_and_raises_after_a_failed_one(cluster):
    operator = with_hook(RewindClusterOperator(task_id="check", cluster="ledger"), cluster)
    operator.skip_unless_routine_work_may_run()
    rewinding(cluster)
    with pytest.raises(AirflowSkipException, match="cluster 'ledger': restore in progress"):
        operator.skip_unless_routine_work_may_run()
    operator.skip_unless_routine_work_may_run(allowed_run_id=PITR_RUN)
    guard.fail(cluster, PITR_RUN, "restore")
    with pytest.raises(RestoreFailed, match="failed and left backups blocked"):  # not a skip: a DBA must look
        operator.skip_unless_routine_work_may_run()


def test_expire_applies_retention_with_holds(cluster):
    place_hold(cluster, run_id=PITR_RUN, info=stanza_info(BACKUPS[2:]), timeline=1)  # floor F2
    operator = with_hook(PgBackRestExpireOperator(task_id="expire", cluster="ledger"), cluster)
    result = operator.execute({})
    assert (result["expired"], result["retained"], result["held"]) == ([F1, F1_D], [F2, F3, F4, F4_I], {PITR_RUN: [F2]})
    assert operator.hook.released == 1


def test_expire_skips_during_a_rewind_and_still_releases_the_credentials(cluster):
    rewinding(cluster)
    operator = with_hook(PgBackRestExpireOperator(task_id="expire", cluster="ledger"), cluster)
    with pytest.raises(AirflowSkipException):
        operator.execute({})
    assert operator.hook.client.calls == [] and operator.hook.released == 1


@pytest.fixture
def live_timeline(monkeypatch):
    """The timeline the running cluster is on: what psql would answer."""
    timelines = [1]
    monkeypatch.setattr(pgbackrest_operators, "live_timeline", lambda runner, cluster: timelines[-1])
    return timelines


def backup_context(dag_id: str, run_id: str, try_number: int = 1) -> dict:
    return {"ti": FakeTaskInstance(dag_id=dag_id, task_id="backup", try_number=try_number), "run_id": run_id, "outlet_events": {}}


def test_a_backup_is_annotated_with_its_run_and_a_retry_takes_no_second_one(cluster, live_timeline):
    client = FakePgBackRest(cluster)
    operator = with_hook(PgBackRestBackupOperator(task_id="backup", cluster="ledger", backup_type="full"), cluster, client)
    first = operator.execute(backup_context("rewind_backup_full__ledger", RUN))
    assert first["annotations"] == {
        "airflow_dag_id": "rewind_backup_full__ledger",
        "airflow_run_id": RUN,
        "airflow_try": "1",
        "rewind_requested_type": "full",
    }
    retry = operator.execute(backup_context("rewind_backup_full__ledger", RUN, try_number=2))
    assert (retry["label"], retry["reused"]) == (first["label"], True)
    assert [call[0] for call in client.calls] == ["backup"] and operator.hook.released == 2


def test_only_the_pitrs_own_full_backup_runs_under_its_guard(cluster, live_timeline):
    rewinding(cluster, "stopped", "restore_started", "restored", "started", "at_target", "checked", "promoted")
    routine = with_hook(PgBackRestBackupOperator(task_id="backup", cluster="ledger", backup_type="incr"), cluster)
    with pytest.raises(AirflowSkipException):
        routine.execute(backup_context("rewind_backup_incr__ledger", RUN))
    live_timeline.append(2)
    new_timeline = with_hook(
        PgBackRestBackupOperator(task_id="full_backup_new_timeline", cluster="ledger", backup_type="full", restore_run_id=PITR_RUN), cluster
    )
    record = new_timeline.execute(backup_context("rewind_pitr__ledger", PITR_RUN))
    assert (record["type"], record["reused"], record["annotations"]["airflow_run_id"]) == ("full", False, PITR_RUN)


def test_the_new_timelines_full_backup_refuses_a_run_that_has_not_promoted(cluster):
    """decide_at_target (or the downtime task) marked success by hand lets the backup task start on a
    cluster still paused at the target: it refuses before asking pgBackRest for anything."""
    from rewind_airflow.operators.pitr import PitrFullBackupOperator, PitrStepFinal

    rewinding(cluster, "stopped", "restore_started", "restored", "started", "at_target")
    client = FakePgBackRest(cluster, BACKUPS)
    backup = with_hook(PitrFullBackupOperator(task_id="full_backup_new_timeline", cluster="ledger"), cluster, client)
    with pytest.raises(PitrStepFinal, match="this run has not promoted ledger .* nothing was backed up"):
        backup.execute(backup_context("rewind_pitr__ledger", PITR_RUN))
    assert client.calls == [] and len(client.backups) == len(BACKUPS)


def test_a_refusal_waiting_cannot_change_fails_at_once_and_a_transient_failure_keeps_its_retries(tmp_path):
    """Issue: preflight ran a refusal twice ("try 2"): the same target before the oldest backup, the
    same ten seconds, the same log. A refusal ends the task without retry, with its own message and
    incident policy; an S3 outage or a held lock is retried as before."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from rewind.pgbackrest.errors import LockAcquireError
    from rewind.pitr.plan import TargetNotReachable
    from rewind.pitr.request import PitrParamError
    from rewind_airflow.operators.base import Refused, RewindClusterOperator

    class Step(RewindClusterOperator):
        def __init__(self, *, failure, **kwargs):
            super().__init__(**kwargs)
            self.failure = failure

        def execute_on_cluster(self, context):
            raise self.failure

    from rewind.change_control import ChangeNotUsable

    for refusal in (
        TargetNotReachable("param target: 2026-11-01 02:00:00 UTC is before the oldest backup"),
        PitrParamError("param target: '02:13' is not a timestamp"),
        # the change's answer: with a PITR step's twelve retries it was asked again for minutes
        ChangeNotUsable("stop_postgres refused: CHG0030001 is not approved (approval: requested)"),
    ):
        step = Step(failure=refusal, task_id="preflight", cluster="ledger")
        step.__dict__["hook"] = SimpleNamespace(release=lambda: None)
        with pytest.raises(Refused) as failed:
            step.execute({})
        assert isinstance(failed.value, AirflowFailException) and str(failed.value) == str(refusal)
        assert failed.value.opens_incident is False and failed.value.__cause__ is refusal
    transient = LockAcquireError("unable to acquire lock", command="backup")
    step = Step(failure=transient, task_id="preflight", cluster="ledger")
    step.__dict__["hook"] = SimpleNamespace(release=lambda: None)
    with pytest.raises(LockAcquireError):  # as it was: Airflow retries it
        step.execute({})
