"""DAG integrity: every DAG file imports cleanly with network, database and subprocess access made
to raise, and every DAG carries the metadata an operator and an auditor rely on."""

from __future__ import annotations

import datetime as dt
import importlib
import socket
import sqlite3
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.fakes import FakeServiceNow, servicenow_hook_class


class ForbiddenAtImport(AssertionError):
    pass


def _forbid(what: str):
    def raiser(*_args, **_kwargs):
        raise ForbiddenAtImport(f"{what} during DAG import")

    return raiser


@pytest.fixture
def example_inventory(monkeypatch, tmp_path):
    """The example inventory plus one broken cluster, which must not take the others down."""
    doc = yaml.safe_load((REPO / "config" / "inventory.example.yaml").read_text())
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("REWIND_INVENTORY", str(path))
    return path, doc


def import_dag_files(monkeypatch):
    """Parse dags/ with sockets, subprocesses and database connections forbidden."""
    import psycopg2
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setattr(socket.socket, "connect", _forbid("network connect"))
    monkeypatch.setattr(socket, "create_connection", _forbid("network connect"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _forbid("subprocess"))
    monkeypatch.setattr(psycopg2, "connect", _forbid("PostgreSQL connect"))
    monkeypatch.setattr(sqlite3, "connect", _forbid("database connect"))
    return DagBag(dag_folder=str(REPO / "dags"), safe_mode=False)


def test_dags_import_without_network_database_or_subprocess(monkeypatch, example_inventory):
    bag = import_dag_files(monkeypatch)
    assert bag.import_errors == {}
    expected = {f"rewind_backup_{t}__{c}" for t in ("full", "diff", "incr") for c in ("ledger", "crm")}
    assert expected <= set(bag.dag_ids)


def test_the_guard_really_catches_io_at_import(monkeypatch, tmp_path):
    """The import guard is not vacuous: a DAG file that shells out at import is reported."""
    from airflow.dag_processing.dagbag import DagBag

    bad = tmp_path / "bad_dag.py"
    bad.write_text("import subprocess\nsubprocess.run(['true'])\nfrom airflow.sdk import DAG\nDAG(dag_id='bad')\n")
    monkeypatch.setattr(subprocess.Popen, "__init__", _forbid("subprocess"))
    bag = DagBag(dag_folder=str(bad), safe_mode=False)
    assert "subprocess during DAG import" in next(iter(bag.import_errors.values()))


# Steps deliberately not retried, and why.
NOT_RETRIED = {
    "validate_params": "bad params do not get better on a second try",
    "validate": "a decommission form with the wrong stanza name, or a rehearsal's bad params or inventory, do not get better on a second try",
    "check_scratch": "a check that found a damaged copy must be read, not asked again (and it stopped the copy)",
    "compare": "row counts that differ must be read, not asked again",
}


def _callbacks(value) -> set[type]:
    return {type(cb) for cb in (value if isinstance(value, list) else [value]) if cb is not None}


def _alerts(value) -> bool:
    """An incident when the task fails: RewindAlertNotifier, or a workflow's own kind of it."""
    from rewind_airflow.notifiers.alerts import RewindAlertNotifier

    return any(issubclass(kind, RewindAlertNotifier) for kind in _callbacks(value))


def test_every_dag_has_docs_tags_owner_retries_alerts_and_one_active_run(monkeypatch, example_inventory):
    """The shared setup (rewind_airflow.defaults) reaches every DAG: a workflow file that builds its
    own default_args and forgets the alert callbacks (the verify DAG once did) fails here."""
    from rewind_airflow.notifiers.alerts import TaskRecoveredNotifier

    bag = import_dag_files(monkeypatch)
    assert {dag_id.split("__")[0] for dag_id in bag.dag_ids} == {
        "rewind_backup_full",
        "rewind_backup_diff",
        "rewind_backup_incr",
        "rewind_pitr",
        "rewind_health",
        "rewind_verify",
        "rewind_onboard",
        "rewind_decommission",
        "rewind_rehearsal",
        "rewind_find_target",
        "rewind_salvage",
        "rewind_release_kept",
    }
    for dag_id, dag in bag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert "rewind" in dag.tags and f"cluster:{dag_id.split('__')[1]}" in dag.tags, dag_id
        # A PITR lets a second trigger start so that the restore guard refuses it by name
        # (tests/integration/test_pitr_operations.py); everything else runs one at a time.
        assert dag.max_active_runs == (3 if dag_id.startswith("rewind_pitr__") else 1), dag_id
        assert not dag.catchup, dag_id
        for task in dag.tasks:
            assert task.owner == "dba", (dag_id, task.task_id)
            assert task.retries >= 1 or task.task_id in NOT_RETRIED, (dag_id, task.task_id)
            assert _alerts(task.on_failure_callback), (dag_id, task.task_id)
            assert TaskRecoveredNotifier in _callbacks(task.on_success_callback), (dag_id, task.task_id)


def test_a_pitr_step_rides_out_airflow_coming_back_and_resumes_within_a_minute(monkeypatch, example_inventory):
    """Every Airflow process killed mid-restore and restarted: a try that starts before the API
    server is up fails, and must not be the last (PostgreSQL would stay down until a DBA cleared the
    task). Each step resumes from the run's journal, so it is retried for minutes, at most 30 s apart."""

    bag = import_dag_files(monkeypatch)
    pitr = next(dag for dag_id, dag in bag.dags.items() if dag_id.startswith("rewind_pitr__"))
    for task in pitr.tasks:
        if task.task_id == "validate_params":
            continue
        delays, waited = [], 0.0
        for try_number in range(1, task.retries + 1):
            delay = min(
                task.retry_delay.total_seconds() * task.retry_exponential_backoff ** (try_number - 1), task.max_retry_delay.total_seconds()
            )
            delays.append(delay)
            waited += delay
        assert max(delays) <= 30 and waited >= 300, (task.task_id, delays)


DBA_ONLY_WORKFLOWS = (
    "rewind_pitr__",
    "rewind_onboard__",
    "rewind_decommission__",
    "rewind_rehearsal__",
    "rewind_find_target__",
    "rewind_salvage__",
    "rewind_release_kept__",
)


def test_only_a_dba_may_run_what_changes_production_and_every_dag_declares_who_may_run_it(monkeypatch, example_inventory):
    bag = import_dag_files(monkeypatch)
    for dag_id, dag in bag.dags.items():
        roles = set(dag.access_control or {}) - {"RewindService"}  # Rewind's own REST account: notes runs
        if dag_id.startswith(DBA_ONLY_WORKFLOWS):
            assert roles == {"DBA"}, dag_id
        else:
            assert roles == {"DBA", "BackupOperator"}, dag_id
        assert "DAG Runs" not in dag.access_control["RewindService"], dag_id  # it triggers nothing
        for role in roles:
            permissions = dag.access_control[role]
            assert "can_create" in permissions["DAG Runs"] and "can_edit" in permissions["DAGs"]
        for permissions in dag.access_control.values():
            assert not any("can_delete" in actions for actions in permissions.values()), dag_id  # runs stay on record


def test_pitr_dag_runbook_order_gate_and_failure_notes(monkeypatch, example_inventory):
    from airflow.sdk.exceptions import TaskDeferred

    from rewind_airflow.triggers.servicenow import ChangeApprovalTrigger

    bag = import_dag_files(monkeypatch)
    dag = bag.dags["rewind_pitr__ledger"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # triggered by hand only
    assert [t.task_id for t in dag.topological_sort()] == [
        "validate_params",
        "preflight",
        "ensure_change",
        "wait_for_approval",
        "stop_restore_promote",
        "decide_at_target",
        "full_backup_new_timeline",
        "release_restore_guard",
        "close_change",
    ]
    assert set(dag.params) == {
        "target_type",
        "target",
        "target_exclusive",
        "approved_window_s",
        "mode",
        "target_action",
        "target_timeline",
        "backup_set",
        "change_number",
        "change_type",
        "validation_sql",
        "validation_database",
        "reason",
    }
    assert dag.params["target_action"] == "pause"  # nobody writes to an unvalidated cluster by default
    gate = dag.get_task("wait_for_approval")
    assert gate.deferrable
    # The trigger this DAG's own gate defers to (a change still waiting for approval) is one the
    # triggerer can import from the installed package and rebuild from what it serialized.
    servicenow = FakeServiceNow()
    gate.change_number = servicenow.change(cmdb_ci="ledger")["number"]  # as the template renders it
    gate.__dict__["hook"] = servicenow_hook_class(servicenow)()
    with pytest.raises(TaskDeferred) as deferred:
        gate.execute({})
    classpath, kwargs = deferred.value.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    assert module.startswith("rewind_airflow.") and getattr(importlib.import_module(module), name) is ChangeApprovalTrigger
    assert ChangeApprovalTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert (kwargs["change_number"], kwargs["servicenow_conn_id"], kwargs["poll_interval"]) == ("CHG0010001", "servicenow_default", 2.0)
    from rewind_airflow.notifiers.servicenow import PitrFailureNotifier

    # every step settles the restore guard and notes the change when it fails
    for task in dag.tasks:
        assert PitrFailureNotifier in _callbacks(task.on_failure_callback), task.task_id
    for task_id in ("stop_restore_promote", "decide_at_target", "full_backup_new_timeline"):
        assert dag.get_task(task_id).pool == "rewind_ledger"
    # The DBA's question at the target is Airflow's own human-in-the-loop operator, with the three
    # answers, the move's form (not the trigger form's params) and the inventory's wait.
    from airflow.providers.standard.operators.hitl import HITLOperator

    from rewind.pitr.decision import OPTIONS

    decide = dag.get_task("decide_at_target")
    assert isinstance(decide, HITLOperator)
    assert decide.options == list(OPTIONS) and not decide.multiple and decide.defaults is None
    assert set(decide.params) == {"new_target_type", "new_target", "new_target_exclusive", "question"}
    assert decide.response_timeout == dt.timedelta(hours=8)
    # The downtime is one task; its steps are the runbook's, in order, and a failed data check or a
    # missed target is not tried again (a second wait or check cannot change what recovery did).
    from rewind_airflow.operators.pitr import FINAL_STEPS, WINDOW_STEPS

    assert WINDOW_STEPS == ("stop_postgres", "restore", "start_postgres", "wait_for_target", "validate_data", "promote")
    assert FINAL_STEPS == ("wait_for_target", "validate_data")
    assert "destructive" in dag.tags


def test_backup_dags_follow_the_inventory(monkeypatch, example_inventory):
    bag = import_dag_files(monkeypatch)
    crm_incr = bag.dags["rewind_backup_incr__crm"]
    assert crm_incr.timetable.expression == "30 * * * *"  # per-cluster override
    assert bag.dags["rewind_backup_full__ledger"].timetable.expression == "0 2 * * 0"
    assert bag.dags["rewind_backup_diff__ledger"].timetable.expression == "0 2 * * 1-6"
    for dag_id in ("rewind_backup_full__ledger", "rewind_backup_incr__crm"):
        dag = bag.dags[dag_id]
        assert [t.task_id for t in dag.topological_sort()] == ["preflight", "backup", "expire"]
        cluster = dag_id.split("__")[1]
        assert dag.get_task("backup").pool == f"rewind_{cluster}"
        assert dag.get_task("expire").pool == f"rewind_{cluster}"
        assert {t.queue for t in dag.tasks} == {f"pg-{cluster}-01"}
        assert [a.name for a in dag.get_task("backup").outlets] == [f"rewind_backup__{cluster}"]
        assert [a.uri for a in dag.get_task("backup").outlets] == [f"s3://acme-pg-backups/pgbackrest/{cluster}/backup/{cluster}"]


def test_asset_names_and_uris_are_unique_per_cluster_even_with_one_stanza_name(monkeypatch, example_inventory):
    """Airflow deactivates assets whose name or URI collides; two clusters may share a stanza
    name in different repositories."""
    path, doc = example_inventory
    doc["clusters"]["crm"]["stanza"] = "ledger"  # same stanza name, other repo path
    path.write_text(yaml.safe_dump(doc))
    bag = import_dag_files(monkeypatch)
    assets = {a for dag in bag.dags.values() for t in dag.tasks for a in t.outlets}
    assert len({a.name for a in assets}) == len({a.uri for a in assets}) == 2


def test_a_bad_cluster_is_an_import_error_and_the_others_keep_their_dags(monkeypatch, example_inventory):
    path, doc = example_inventory
    doc["clusters"]["broken"] = {"postgres": {"data_dir": "/d"}, "repo": {"path": "/x"}, "schedules": {"full": "every sunday"}}
    path.write_text(yaml.safe_dump(doc))
    bag = import_dag_files(monkeypatch)
    assert "rewind_backup_full__ledger" in bag.dag_ids and "rewind_backup_full__crm" in bag.dag_ids
    assert not any(dag_id.endswith("__broken") for dag_id in bag.dag_ids)
    ((file, error),) = bag.import_errors.items()
    assert file.endswith("rewind_inventory_errors.py")
    assert f"inventory {path}: cluster 'broken': field schedules.full: 'every sunday' is not a valid 5-field cron" in error


def test_onboarding_and_decommissioning_read_like_their_runbooks_and_gate_the_restart(monkeypatch, example_inventory):
    from rewind_airflow.notifiers.servicenow import ChangeFailureNotifier

    bag = import_dag_files(monkeypatch)
    onboard, decommission = bag.dags["rewind_onboard__ledger"], bag.dags["rewind_decommission__ledger"]
    assert [t.task_id for t in onboard.topological_sort()] == [
        "plan",
        "open_change",
        "wait_for_approval",
        "begin_change",
        "configure_archiving",
        "restart_postgres",
        "check",
        "first_full_backup",
        "verify",
        "close_change",
    ]
    assert [t.task_id for t in decommission.topological_sort()] == [
        "validate",
        "open_change",
        "wait_for_approval",
        "begin_change",
        "final_full_backup",
        "stop_archiving",
        "stop_stanza",
        "close_change",
    ]
    for dag in (onboard, decommission):
        assert type(dag.timetable).__name__ == "NullTimetable" and dag.get_task("wait_for_approval").deferrable
        for task in dag.tasks:
            assert ChangeFailureNotifier in _callbacks(task.on_failure_callback), (dag.dag_id, task.task_id)
    assert set(decommission.params) == {"confirm_stanza", "delete_repository", "reason"}
    assert decommission.params["delete_repository"] is False  # the repository is kept unless asked


def test_rehearsal_dag_runbook_order_schedule_queues_and_failure_outcome(monkeypatch, example_inventory):
    """The rehearsal reads top to bottom like its runbook; the scratch is removed whatever happened
    (all_done) and the change closes successful only after every check and the annotation; the
    steps on the copy run on the rehearsal host's queue, production's on the cluster's own."""
    from rewind_airflow.notifiers.alerts import RewindAlertNotifier
    from rewind_airflow.notifiers.rehearsal import RehearsalFailureNotifier

    bag = import_dag_files(monkeypatch)
    dag = bag.dags["rewind_rehearsal__ledger"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "validate",
        "open_change",
        "mark_production",
        "restore_scratch",
        "check_scratch",
        "compare",
        "annotate_backup",
        "remove_scratch",
        "close_change",
    ]
    assert dag.timetable.expression == "0 4 1 * *"  # the inventory's cron: ledger has a change template
    assert type(bag.dags["rewind_rehearsal__crm"].timetable).__name__ == "NullTimetable"  # no template: by hand only
    assert set(dag.params) == {"target", "reason"}
    assert dag.max_active_runs == 1  # never two rehearsals of a cluster at once
    assert dag.get_task("remove_scratch").trigger_rule == "all_done"
    assert dag.get_task("close_change").upstream_task_ids == {"annotate_backup", "remove_scratch"}
    assert dag.get_task("annotate_backup").pool == "rewind_ledger"  # annotate takes the stanza's backup lock
    assert dag.get_task("restore_scratch").pool != "rewind_ledger"  # backups keep running during a rehearsal
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert {queues[t] for t in ("restore_scratch", "check_scratch", "annotate_backup", "remove_scratch")} == {"pg-rehearsal-01"}
    assert {queues[t] for t in ("validate", "mark_production")} == {"pg-ledger-01"}
    for task in dag.tasks:
        kinds = _callbacks(task.on_failure_callback)
        assert kinds == {RehearsalFailureNotifier}, task.task_id  # one incident (problem rehearsal), not one per task as well
        assert RewindAlertNotifier not in kinds
