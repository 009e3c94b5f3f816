"""The failure and recovery callbacks with a fake ServiceNow behind their hook: RewindAlertNotifier
(an incident per cluster and failing task, none for a refusal by design, details masked and
bounded), TaskRecoveredNotifier (the task's own incident resolved) and PitrFailureNotifier (the
guard settled, the hold ended when nothing was touched, the change told what the run did)."""

from __future__ import annotations

import json

import pytest

from rewind import guard
from rewind.guard import PitrAlreadyRunning
from rewind.incidents import INCIDENT_TABLE
from rewind.inventory import load_inventory
from rewind.pitr.journal import RunJournal
from rewind.pitr.request import PitrParamError
from rewind.retention import get_hold, place_hold
from rewind.servicenow import CHANGE_TABLE, ServiceNowUnavailable
from rewind_airflow.defaults import alert_callbacks
from rewind_airflow.hooks import pgbackrest as pgbackrest_hook
from rewind_airflow.notifiers import alerts
from rewind_airflow.notifiers import servicenow as pitr_notifier
from rewind_airflow.notifiers.alerts import RewindAlertNotifier, TaskRecoveredNotifier
from rewind_airflow.notifiers.servicenow import PitrFailureNotifier
from rewind_airflow.sensors.servicenow import ChangeRejected
from tests.factories import cluster, local_cluster_doc, stanza_info, write_inventory
from tests.fakes import FakeTaskInstance, servicenow_hook_class
from tests.unit.test_retention import BACKUPS

RUN = "scheduled__2026-11-24T02:00:00+00:00"
SECRET = "cipher-pass-Zq81xW"


@pytest.fixture
def secrets(monkeypatch):
    """A secret a PgBackRestHook of this process handed out, registered the way the hook registers it."""
    monkeypatch.setattr(pgbackrest_hook, "_KNOWN_SECRETS", set())
    pgbackrest_hook.PgBackRestHook._masked({"PGBACKREST_REPO1_CIPHER_PASS": SECRET})
    return SECRET


@pytest.fixture
def hooks(monkeypatch, fake_servicenow):
    hook = servicenow_hook_class(fake_servicenow)
    monkeypatch.setattr(alerts, "ServiceNowHook", hook)
    monkeypatch.setattr(pitr_notifier, "ServiceNowHook", hook)
    return hook


def context(exception=None, *, dag_id="rewind_backup_full__ledger", task_id="backup", try_number=1, run_id=RUN) -> dict:
    return {"ti": FakeTaskInstance(dag_id=dag_id, task_id=task_id, try_number=try_number), "run_id": run_id, "exception": exception}


def incidents(client) -> list[dict]:
    return client.records(INCIDENT_TABLE)


# ---- RewindAlertNotifier, TaskRecoveredNotifier -----------------------------------------------------------
def alert_notifier():
    return RewindAlertNotifier(cluster="ledger", servicenow_conn_id="servicenow_ledger", impact=1, urgency=3)


@pytest.mark.parametrize(
    "refusal",
    [
        PitrParamError("param target: required for target_type time"),
        PitrAlreadyRunning("cluster 'ledger': PITR run manual__x is still active"),
        ChangeRejected("CHG0010001 was rejected"),
    ],
)
def test_a_refusal_by_design_opens_no_incident(hooks, fake_servicenow, refusal):
    alert_notifier()(context(refusal, dag_id="rewind_pitr__ledger", task_id="validate_params"))
    assert incidents(fake_servicenow) == [] and hooks.conn_ids == []


def test_a_failure_opens_one_incident_masked_and_bounded_then_notes_it(hooks, fake_servicenow, secrets):
    failure = RuntimeError(f"pgbackrest backup failed [95]: unable to decrypt with {secrets}: " + "x" * 5000)
    alert_notifier()(context(failure, try_number=2))
    [incident] = incidents(fake_servicenow)
    assert incident["correlation_id"] == "rewind:ledger:task_failed.rewind_backup_full__ledger.backup"
    assert incident["short_description"] == "Rewind: ledger: rewind_backup_full__ledger.backup failed"
    assert (incident["cmdb_ci"], incident["impact"], incident["urgency"]) == ("ledger", "1", "3")
    masked = f"run {RUN}, try 2: pgbackrest backup failed [95]: unable to decrypt with ***: " + "x" * 5000
    assert incident["description"] == masked[:2980] + f"... ({len(masked)} chars)"  # at most 3000 characters
    assert hooks.conn_ids == ["servicenow_ledger"]

    alert_notifier()(context(RuntimeError("again"), try_number=3))
    assert len(incidents(fake_servicenow)) == 1
    assert fake_servicenow.work_notes(INCIDENT_TABLE, incident["sys_id"]) == [
        f"Still failing: ledger: rewind_backup_full__ledger.backup failed\nrun {RUN}, try 3: again"
    ]


def test_a_task_that_succeeds_resolves_its_own_incident_only(hooks, fake_servicenow):
    alert_notifier()(context(RuntimeError("boom"), task_id="backup"))
    alert_notifier()(context(RuntimeError("boom"), task_id="expire"))
    recovered = TaskRecoveredNotifier(cluster="ledger", servicenow_conn_id="servicenow_ledger")
    recovered(context(task_id="backup", run_id="scheduled__2026-11-25T02:00:00+00:00"))
    states = {i["correlation_id"].rsplit(".", 1)[1]: i["state"] for i in incidents(fake_servicenow)}
    assert states == {"backup": "6", "expire": "1"}
    [backup] = [i for i in incidents(fake_servicenow) if i["correlation_id"].endswith(".backup")]
    assert backup["close_notes"] == "rewind_backup_full__ledger.backup succeeded in run scheduled__2026-11-25T02:00:00+00:00"
    recovered(context(task_id="backup"))  # nothing open any more: nothing to do
    assert len(incidents(fake_servicenow)) == 2
    alert_notifier()(context(RuntimeError("boom again"), task_id="backup"))
    assert len(incidents(fake_servicenow)) == 3  # a new incident, paged again, not a note on the resolved one


def test_the_callbacks_carry_the_clusters_pagers_as_plain_data():
    """Every DAG's callbacks get the cluster's pagers from the inventory, as JSON-able dicts that
    turn back into the validated pagers when the callback runs."""
    pagers = [
        {"type": "pagerduty", "conn_id": "pagerduty_dba", "severity": "error"},
        {"type": "smtp", "conn_id": "smtp_oncall", "to": ["oncall@example.com"]},
    ]
    ledger = cluster("ledger", alerts={"pagers": pagers})
    callbacks = alert_callbacks(ledger)
    for notifier in (callbacks["on_failure_callback"], callbacks["on_success_callback"]):
        assert json.loads(json.dumps(notifier.pagers)) == pagers
        assert alerts.pagers_from(notifier.pagers) == ledger.alerts.pagers


def test_what_slack_is_told_is_text_not_markup():
    page = alerts.Page("opened", "ledger", "archive_failing", "INC0010001", "archiving <!channel> & co", "x > y")
    assert page.slack_text() == ":rotating_light: *Rewind: ledger: archiving &lt;!channel&gt; &amp; co (INC0010001)*\n```x &gt; y```"
    assert alerts.Page("resolved", "ledger", "archive_failing", "INC0010001", "archiving ok").slack_text() == (
        ":white_check_mark: Rewind: ledger: resolved archive_failing (INC0010001): archiving ok"
    )


# ---- PitrFailureNotifier ---------------------------------------------------------------------------------
PITR_RUN = "manual__2026-11-24T02:20:00+00:00"


@pytest.fixture
def pitr_cluster(tmp_path, monkeypatch):
    """Cluster ledger as the notifier loads it: from the inventory $REWIND_INVENTORY names."""
    path = write_inventory(tmp_path / "inventory.yaml", {"ledger": local_cluster_doc(tmp_path)})
    monkeypatch.setenv("REWIND_INVENTORY", str(path))
    return load_inventory(path).get("ledger")


def pitr_context(exception, task_id):
    return context(exception, dag_id="rewind_pitr__ledger", task_id=task_id, run_id=PITR_RUN)


def test_a_pitr_that_failed_before_touching_anything_releases_the_guard_and_the_hold(hooks, fake_servicenow, pitr_cluster):
    guard.claim(pitr_cluster, dag_id="rewind_pitr__ledger", run_id=PITR_RUN, run_state=lambda *_: "running")
    place_hold(pitr_cluster, run_id=PITR_RUN, info=stanza_info(BACKUPS), timeline=1)
    PitrFailureNotifier(cluster="ledger")(pitr_context(RuntimeError("repository unreachable"), "preflight"))
    assert guard.read_guard(pitr_cluster) is None
    assert get_hold(pitr_cluster, PITR_RUN).ends_at is not None  # ends now: nothing of this run to keep
    assert fake_servicenow.records(CHANGE_TABLE) == []  # no change yet: nothing to note


def test_a_pitr_that_failed_mid_rewind_keeps_backups_blocked_and_tells_the_change(hooks, fake_servicenow, pitr_cluster, secrets):
    change = fake_servicenow.change(cmdb_ci="ledger", state=-1, approval="approved")
    guard.claim(pitr_cluster, dag_id="rewind_pitr__ledger", run_id=PITR_RUN, run_state=lambda *_: "running")
    guard.begin_rewind(pitr_cluster, PITR_RUN, change=change["number"], timeline_before=1)
    place_hold(pitr_cluster, run_id=PITR_RUN, info=stanza_info(BACKUPS), timeline=1)
    journal = RunJournal.load(pitr_cluster, PITR_RUN, dag_id="rewind_pitr__ledger")
    journal.set(change=change["number"], change_sys_id=change["sys_id"])
    journal.record("stopped", "2026-11-24T02:31:00.000+00:00")
    journal.record("restore_started", "2026-11-24T02:31:05.000+00:00")

    failure = RuntimeError(f"pgbackrest restore failed [95]: {secrets}")
    failure.pitr_step = "restore"  # what stop_restore_promote sets on the failure of one of its steps
    PitrFailureNotifier(cluster="ledger")(pitr_context(failure, "stop_restore_promote"))

    held = guard.read_guard(pitr_cluster)
    assert (held.phase, held.failed_step, held.blocks_backups) == ("failed", "restore", True)
    assert get_hold(pitr_cluster, PITR_RUN).ends_at is None  # open until a DBA clears the guard
    [note] = fake_servicenow.work_notes(CHANGE_TABLE, change["sys_id"])
    assert note.splitlines() == [
        f"Rewind PITR run {PITR_RUN}: step restore failed (task stop_restore_promote, try 1): pgbackrest restore failed [95]: ***",
        "What this run did: PostgreSQL stopped at 2026-11-24T02:31:00.000+00:00; restore started at 2026-11-24T02:31:05.000+00:00 "
        "and not finished; no new full backup was taken.",
        "Cluster ledger: PostgreSQL is stopped. Restore guard is up (phase failed at restore): backups of ledger are blocked until "
        "a DBA clears it or a new PITR takes it over.",
        "The run has failed; see the Airflow task log.",
    ]


def test_a_change_that_cannot_be_noted_does_not_hide_the_failure(hooks, fake_servicenow, pitr_cluster):
    change = fake_servicenow.change(cmdb_ci="ledger")
    RunJournal.load(pitr_cluster, PITR_RUN).set(change=change["number"], change_sys_id=change["sys_id"])
    fake_servicenow.fail("update_change", ServiceNowUnavailable("ServiceNow PATCH: HTTP 503 after 5 attempts"))
    PitrFailureNotifier(cluster="ledger")(pitr_context(RuntimeError("boom"), "ensure_change"))  # logs, does not raise
    assert fake_servicenow.work_notes(CHANGE_TABLE, change["sys_id"]) == []
