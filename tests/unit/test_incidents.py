"""Deduplicated incidents (rewind.incidents) against a fake ServiceNow: one open incident per cluster
and problem, notes while it stays open, resolved when the check passes, a new one after that."""

from __future__ import annotations

from rewind.incidents import INCIDENT_TABLE, IncidentAction, correlation_key, report_healthy, report_problem


def problem(client, problem="archive", summary="ledger: archiving failing", details="last attempt failed: 000000010000000000000009"):
    return report_problem(client, cluster="ledger", problem=problem, summary=summary, details=details, impact=1, urgency=2)


def test_the_first_failure_opens_an_incident_later_ones_add_notes(fake_servicenow):
    assert problem(fake_servicenow) == IncidentAction("opened", "INC0010001")
    [incident] = fake_servicenow.records(INCIDENT_TABLE)
    assert (incident["correlation_id"], incident["cmdb_ci"], incident["state"]) == ("rewind:ledger:archive", "ledger", "1")
    assert (incident["short_description"], incident["impact"], incident["urgency"]) == ("Rewind: ledger: archiving failing", "1", "2")
    assert incident["description"] == "last attempt failed: 000000010000000000000009"

    assert problem(fake_servicenow, details="still 000000010000000000000009") == IncidentAction("noted", "INC0010001")
    assert len(fake_servicenow.records(INCIDENT_TABLE)) == 1
    assert fake_servicenow.work_notes(INCIDENT_TABLE, incident["sys_id"]) == [
        "Still failing: ledger: archiving failing\nstill 000000010000000000000009"
    ]


def test_a_passing_check_resolves_it_and_the_next_failure_opens_a_new_one(fake_servicenow):
    assert report_healthy(fake_servicenow, cluster="ledger", problem="archive", note="archiving ok") == IncidentAction("none")
    problem(fake_servicenow)
    resolved = report_healthy(fake_servicenow, cluster="ledger", problem="archive", note="archiving ok")
    assert resolved == IncidentAction("resolved", "INC0010001")
    [resolved] = fake_servicenow.records(INCIDENT_TABLE)
    assert (resolved["state"], resolved["close_code"], resolved["close_notes"]) == ("6", "Solved (Permanently)", "archiving ok")
    assert fake_servicenow.work_notes(INCIDENT_TABLE, resolved["sys_id"]) == ["Resolved by Rewind: archiving ok"]
    assert report_healthy(fake_servicenow, cluster="ledger", problem="archive", note="archiving ok") == IncidentAction("none")
    assert problem(fake_servicenow) == IncidentAction("opened", "INC0010002")


def test_problems_and_clusters_have_their_own_incidents(fake_servicenow):
    problem(fake_servicenow, problem="archive")
    assert problem(fake_servicenow, problem="backup_age", summary="ledger: no good backup for 27.0 h").action == "opened"
    other_cluster = report_problem(fake_servicenow, cluster="crm", problem="archive", summary="crm: archiving failing", details="x")
    assert other_cluster.action == "opened"
    assert report_healthy(fake_servicenow, cluster="ledger", problem="backup_age", note="ok").number == "INC0010002"
    states = {r["number"]: r["state"] for r in fake_servicenow.records(INCIDENT_TABLE)}
    assert states == {"INC0010001": "1", "INC0010002": "6", "INC0010003": "1"}
    assert correlation_key("ledger", "task_failed.rewind_pitr__ledger.restore") == "rewind:ledger:task_failed.rewind_pitr__ledger.restore"


def test_an_incident_someone_put_in_progress_or_on_hold_is_still_the_open_one(fake_servicenow):
    problem(fake_servicenow)
    [incident] = fake_servicenow.records(INCIDENT_TABLE)
    fake_servicenow.update(INCIDENT_TABLE, incident["sys_id"], {"state": 3})  # On Hold
    assert problem(fake_servicenow).action == "noted"
    fake_servicenow.update(INCIDENT_TABLE, incident["sys_id"], {"state": 7})  # Closed by someone
    assert problem(fake_servicenow) == IncidentAction("opened", "INC0010002")


def test_the_summary_is_bounded_for_short_description(fake_servicenow):
    problem(fake_servicenow, summary="x" * 400)
    [incident] = fake_servicenow.records(INCIDENT_TABLE)
    assert incident["short_description"] == ("Rewind: " + "x" * 400)[:160]
