"""Roles under the real API server with the FAB auth manager, over REST, as README "Who may do what
(roles)" says. For each role, on a PITR DAG and on a routine DAG (verify): trigger, clear a run,
clear a task, mark a task, mark a run, set its note, pause.

  auditor   Viewer                   reads everything; every write is refused (403)
  dba       Viewer + DBA             all of it, on the PITR and on the routine DAGs
  operator  Viewer + BackupOperator  all of it on the routine DAGs; on a PITR everything is refused,
                                     also through the wildcard (~) and bulk endpoints
Nobody but Admin deletes a run or a task instance, writes an XCom, or changes connections,
variables, pools or roles.

The runs cleared and marked here touch nothing: the PITR run's params pass the form's schema but
fail Rewind's own check in its first task (a time without time zone), the routine run verifies the
repository.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

PITR = "rewind_pitr__demo"
ROUTINE = "rewind_verify__demo"
# Params the form's schema refuses: a request that passes authorization gets 400 from param
# validation and creates no run, so the test shows who is authorized without starting a restore.
BAD_CONF = {"target_type": "no-such-type", "reason": "access control test"}
# Params the schema accepts and validate_params refuses ("has no time zone"): a PITR run that fails
# in its first task, before anything is touched, whatever is cleared or re-run.
NO_TIME_ZONE = {"target_type": "time", "target": "2026-11-24 02:13:30", "reason": "access control test: a target without time zone"}
# What is cleared and what is marked: re-running validate_params refuses again; close_change has no
# downstream task that a mark would clear and resume.
CLEARED = {PITR: "validate_params", ROUTINE: "verify_repository"}
MARKED = {PITR: "close_change", ROUTINE: "verify_repository"}


@pytest.fixture(scope="module")
def roles(standalone):
    """Wait until the DAG processor has applied both DAGs' access_control to the roles (it does so
    when it serializes each DAG) and the API server sees it for every user let through: before that
    every non-admin is refused, which would prove nothing. The API server keeps a user's permissions
    for [fab] cache_ttl (30 s) from when it first loads them, so each allowed user is asked until it
    is let through on each DAG (a wait on the PITR alone left the DBA's cached view without the
    routine DAG in CI)."""
    import time

    for dag_id in (PITR, ROUTINE):
        standalone.wait_for_dag(dag_id)
    deadline = time.monotonic() + 120
    for user, dag_id in ALLOWED:
        while not may_clear(standalone, user, dag_id) and time.monotonic() < deadline:
            time.sleep(1)
    return standalone


def may_clear(standalone, user: str, dag_id: str) -> bool:
    """Whether `user` may clear `dag_id`'s task instances: a dry run that matches nothing (no run
    starts in 2100), so it changes nothing either way."""
    body = {"dry_run": True, "only_failed": False, "start_date": "2100-01-01T00:00:00Z", "task_ids": [CLEARED[dag_id]]}
    return standalone.rest_as(user).api("POST", f"/dags/{dag_id}/clearTaskInstances", json=body).status_code == 200


def trigger_as(standalone, user: str, dag_id: str, conf: dict):
    return standalone.rest_as(user).api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})


def test_an_auditor_cannot_trigger_a_pitr(roles):
    response = trigger_as(roles, "auditor", PITR, BAD_CONF)
    assert response.status_code == 403, response.text


def test_a_backup_operator_cannot_trigger_a_pitr(roles):
    response = trigger_as(roles, "operator", PITR, BAD_CONF)
    assert response.status_code == 403, response.text


def test_a_dba_is_authorized_to_trigger_a_pitr(roles):
    response = trigger_as(roles, "dba", PITR, BAD_CONF)
    assert response.status_code == 400, response.text  # past authorization, stopped by the params
    assert "no-such-type" in response.text


def test_no_run_was_created_by_these_tests(roles):
    assert roles.api("GET", f"/dags/{PITR}/dagRuns").json()["total_entries"] == 0


def test_an_auditor_reads_every_dag_its_runs_and_its_docs(roles):
    auditor = roles.rest_as("auditor")
    dags = auditor.api("GET", "/dags", params={"limit": 100}).json()["dags"]
    assert {"rewind_pitr__demo", "rewind_backup_full__demo", "rewind_health__demo", "rewind_verify__demo"} <= {d["dag_id"] for d in dags}
    assert auditor.api("GET", f"/dags/{PITR}/dagRuns").status_code == 200
    assert "only the DBA role may trigger" in auditor.api("GET", f"/dags/{PITR}/details").json()["doc_md"]
    assert auditor.api("PATCH", f"/dags/{PITR}", json={"is_paused": False}).status_code == 403


# --- clearing and marking: runs to work on, and who may do what with them ---------------------------


@pytest.fixture(scope="module")
def rest(roles):
    """The REST API as each user (one token each)."""
    clients: dict = {}

    def as_user(user: str):
        if user not in clients:
            clients[user] = roles.rest_as(user)
        return clients[user]

    return as_user


@pytest.fixture(scope="module")
def runs(roles):
    """One finished run of the PITR, refused by validate_params with nothing touched, and one of
    the routine DAG, both triggered by the admin. Afterwards every run is finished and both DAGs are
    paused again, as the other e2e tests expect to find them."""
    pitr = roles.trigger(PITR, conf=NO_TIME_ZONE, note="access control test")
    assert pitr.status_code == 200, pitr.text
    routine = roles.trigger(ROUTINE, note="access control test")
    assert routine.status_code == 200, routine.text
    ids = {PITR: pitr.json()["dag_run_id"], ROUTINE: routine.json()["dag_run_id"]}
    assert roles.wait_for_run(PITR, ids[PITR])["state"] == "failed"
    assert roles.task_states(PITR, ids[PITR])["validate_params"] == "failed"
    assert "has no time zone" in task_log(roles, PITR, ids[PITR], "validate_params")
    assert roles.wait_for_run(ROUTINE, ids[ROUTINE])["state"] == "success"
    try:
        yield ids
    finally:
        for dag_id in (PITR, ROUTINE):
            for run in roles.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]:
                roles.wait_for_run(dag_id, run["dag_run_id"])
            roles.api("PATCH", f"/dags/{dag_id}", json={"is_paused": True}).raise_for_status()


def task_instance(standalone, dag_id: str, run_id: str, task_id: str) -> dict:
    response = standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    response.raise_for_status()
    return response.json()


def task_log(standalone, dag_id: str, run_id: str, task_id: str) -> str:
    try_number = task_instance(standalone, dag_id, run_id, task_id)["try_number"]
    return standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}").text


def snapshot(standalone, dag_id: str, run_id: str):
    """Everything a refused request could have changed: the DAG's runs, this run, its task instances."""
    run = standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
    tis = standalone.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    return (
        standalone.api("GET", f"/dags/{dag_id}").json()["is_paused"],
        standalone.api("GET", f"/dags/{dag_id}/dagRuns").json()["total_entries"],
        (run["state"], run["note"], run["queued_at"]),
        {ti["task_id"]: (ti["state"], ti["try_number"], ti["note"]) for ti in tis},
    )


def another_state(state: str | None) -> str:
    return "skipped" if state != "skipped" else "failed"


def refused_entities(response, action: str) -> bool:
    """A bulk request refused: 403 at the route, or (the handler authorizes each entity) 200 with
    every entity refused with 403 and none done."""
    if response.status_code == 403:
        return True
    result = response.json()[action] if response.status_code == 200 else None
    return bool(result) and result["success"] == [] and {error["status_code"] for error in result["errors"]} == {403}


# Each action as the API offers it; dry_run where the API has one (authorization comes first: it is
# a dependency of the route, checked before the handler reads the body's dry_run).
def trigger(client, dag_id, run_id, dry_run=False):
    return client.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": BAD_CONF if dag_id == PITR else {}})


def clear_run(client, dag_id, run_id, dry_run=False):
    return client.api("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": dry_run})


def clear_task(client, dag_id, run_id, dry_run=False):
    body = {"dag_run_id": run_id, "task_ids": [CLEARED[dag_id]], "only_failed": False, "dry_run": dry_run}
    return client.api("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)


def mark_task(client, dag_id, run_id, dry_run=False, state="skipped"):
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{MARKED[dag_id]}" + ("/dry_run" if dry_run else "")
    return client.api("PATCH", path, json={"new_state": state})


def mark_run(client, dag_id, run_id, dry_run=False, state="failed"):
    return client.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", params={"update_mask": "state"}, json={"state": state})


def set_run_note(client, dag_id, run_id, dry_run=False):
    return client.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", params={"update_mask": "note"}, json={"note": "access control test"})


ACTIONS = [trigger, clear_run, clear_task, mark_task, mark_run, set_run_note]
REFUSED = [("auditor", PITR), ("auditor", ROUTINE), ("operator", PITR)]
ALLOWED = [("dba", PITR), ("dba", ROUTINE), ("operator", ROUTINE)]


@pytest.mark.parametrize("user,dag_id", REFUSED)
@pytest.mark.parametrize("action", ACTIONS, ids=lambda action: action.__name__)
def test_refused_for_real_and_nothing_changes(runs, rest, roles, user, dag_id, action):
    before = snapshot(roles, dag_id, runs[dag_id])
    response = action(rest(user), dag_id, runs[dag_id])
    assert response.status_code == 403, response.text
    assert snapshot(roles, dag_id, runs[dag_id]) == before


@pytest.mark.parametrize("user,dag_id", ALLOWED)
@pytest.mark.parametrize("action", [clear_run, clear_task, mark_task], ids=lambda action: action.__name__)
def test_authorized_dry_run_changes_nothing(runs, rest, roles, user, dag_id, action):
    run_id = runs[dag_id]
    before = snapshot(roles, dag_id, run_id)
    kwargs = {"state": another_state(task_instance(roles, dag_id, run_id, MARKED[dag_id])["state"])} if action is mark_task else {}
    response = action(rest(user), dag_id, run_id, dry_run=True, **kwargs)
    assert response.status_code == 200, response.text
    task_id = MARKED[dag_id] if action is mark_task else CLEARED[dag_id]
    assert task_id in [ti["task_id"] for ti in response.json()["task_instances"]]
    assert snapshot(roles, dag_id, run_id) == before


@pytest.mark.parametrize("user", ["dba", "operator"])
def test_dba_and_backup_operator_trigger_a_routine_dag(runs, rest, roles, user):
    response = trigger(rest(user), ROUTINE, None)
    assert response.status_code == 200, response.text
    assert roles.wait_for_run(ROUTINE, response.json()["dag_run_id"])["state"] == "success"


@pytest.mark.parametrize("user,dag_id", [("dba", PITR), ("operator", ROUTINE)])
def test_clearing_a_run_runs_it_again(runs, rest, roles, user, dag_id):
    run_id, task_id = runs[dag_id], CLEARED[dag_id]
    tries = task_instance(roles, dag_id, run_id, task_id)["try_number"]
    response = clear_run(rest(user), dag_id, run_id)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "queued"
    run = roles.wait_for_run(dag_id, run_id)
    assert task_instance(roles, dag_id, run_id, task_id)["try_number"] > tries
    if dag_id == PITR:  # refused again by validate_params, nothing touched
        assert run["state"] == "failed"
        assert "has no time zone" in task_log(roles, dag_id, run_id, task_id)
    else:
        assert run["state"] == "success"


@pytest.mark.parametrize("user,dag_id", [("dba", PITR), ("operator", ROUTINE)])
def test_clearing_a_task_runs_it_again(runs, rest, roles, user, dag_id):
    run_id, task_id = runs[dag_id], CLEARED[dag_id]
    tries = task_instance(roles, dag_id, run_id, task_id)["try_number"]
    response = clear_task(rest(user), dag_id, run_id)
    assert response.status_code == 200, response.text
    assert [ti["task_id"] for ti in response.json()["task_instances"]] == [task_id]
    run = roles.wait_for_run(dag_id, run_id)
    assert task_instance(roles, dag_id, run_id, task_id)["try_number"] > tries
    assert run["state"] == ("failed" if dag_id == PITR else "success")


@pytest.mark.parametrize("user,dag_id", [("dba", PITR), ("operator", ROUTINE)])
def test_marking_a_task_and_noting_the_run(runs, rest, roles, user, dag_id):
    run_id, task_id = runs[dag_id], MARKED[dag_id]
    run_state = roles.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
    state = another_state(task_instance(roles, dag_id, run_id, task_id)["state"])
    response = mark_task(rest(user), dag_id, run_id, state=state)
    assert response.status_code == 200, response.text
    assert task_instance(roles, dag_id, run_id, task_id)["state"] == state
    assert roles.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"] == run_state  # nothing resumed
    response = set_run_note(rest(user), dag_id, run_id)
    assert response.status_code == 200, response.text
    assert roles.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["note"] == "access control test"


@pytest.mark.parametrize("user,dag_id", ALLOWED)
def test_marking_a_run(runs, rest, roles, user, dag_id):
    # A PITR run is only marked failed here (it is): success would mark all its tasks success.
    for state in ["failed"] if dag_id == PITR else ["failed", "success"]:
        response = mark_run(rest(user), dag_id, runs[dag_id], state=state)
        assert response.status_code == 200, response.text
        assert roles.api("GET", f"/dags/{dag_id}/dagRuns/{runs[dag_id]}").json()["state"] == state


@pytest.mark.parametrize("user,dag_id", [("dba", PITR), ("operator", ROUTINE)])
def test_pausing_and_unpausing(runs, rest, roles, user, dag_id):
    for paused in (True, False):
        response = rest(user).api("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})
        assert response.status_code == 200, response.text
        assert roles.api("GET", f"/dags/{dag_id}").json()["is_paused"] is paused


@pytest.mark.parametrize("user", ["auditor", "dba", "operator"])
def test_no_custom_role_changes_connections_variables_pools_or_roles(roles, rest, user):
    import requests

    client = rest(user)
    for method, path, body in [
        ("POST", "/connections", {"connection_id": "rewind_access_test", "conn_type": "http"}),
        ("POST", "/variables", {"key": "rewind_access_test", "value": "x"}),
        ("PATCH", "/pools/default_pool", {"name": "default_pool", "slots": 1000}),
    ]:
        response = client.api(method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
    roles_api = f"{roles.url}/auth/fab/v1/roles/DBA"
    response = requests.patch(
        roles_api, headers={"Authorization": f"Bearer {client.token()}"}, json={"name": "DBA", "actions": []}, timeout=30
    )
    assert response.status_code == 403, response.text
    assert requests.get(roles_api, headers={"Authorization": f"Bearer {roles.rest.token()}"}, timeout=30).status_code == 200  # the admin's


def test_a_backup_operator_gets_nothing_on_a_pitr_through_wildcards_and_bulk_endpoints(runs, rest, roles):
    """The global "Task Instances" and "DAG Runs" can_edit a BackupOperator holds open nothing on a
    DAG it may not edit: not through ~ in the path, nor a PITR entity in a routine DAG's bulk body."""
    operator, run_id = rest("operator"), runs[PITR]
    before = snapshot(roles, PITR, run_id)
    pitr_run = {"dag_id": PITR, "dag_run_id": run_id}
    pitr_task = {**pitr_run, "task_id": CLEARED[PITR], "new_state": "success"}
    routine_path = f"/dags/{ROUTINE}/dagRuns/{runs[ROUTINE]}"
    refused = [
        ("POST", "/dags/~/clearDagRuns", {"dag_runs": [pitr_run], "dry_run": False}),
        ("POST", f"/dags/{ROUTINE}/clearDagRuns", {"dag_runs": [pitr_run], "dry_run": False}),
        ("PATCH", "/dags/~/dagRuns", {"actions": [{"action": "update", "entities": [{**pitr_run, "state": "success"}]}]}),
        ("PATCH", f"/dags/{ROUTINE}/dagRuns", {"actions": [{"action": "update", "entities": [{**pitr_run, "state": "success"}]}]}),
        ("PATCH", f"/dags/{PITR}", {"is_paused": True}),
        ("PUT", f"/dags/{PITR}/dagRuns/{run_id}/taskInstances/{CLEARED[PITR]}/state-store/k", {"value": 1}),
    ]
    for method, path, body in refused:
        response = operator.api(method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
    for path in ("/dags/~/dagRuns/~/taskInstances", f"{routine_path}/taskInstances"):
        response = operator.api("PATCH", path, json={"actions": [{"action": "update", "entities": [pitr_task]}]})
        assert refused_entities(response, "update"), (path, response.status_code, response.text)
    # ~ cannot name a DAG where the handler needs one: not found, nothing done.
    for method, path, body in [
        ("POST", "/dags/~/clearTaskInstances", {"dag_run_id": run_id, "task_ids": [CLEARED[PITR]], "only_failed": False, "dry_run": False}),
        ("PATCH", f"/dags/~/dagRuns/{run_id}/taskInstances/{CLEARED[PITR]}", {"new_state": "success"}),
        ("POST", f"/dags/~/dagRuns/{run_id}/clear", {"dry_run": False}),
    ]:
        response = operator.api(method, path, json=body)
        assert response.status_code in (403, 404), (method, path, response.text)
    assert snapshot(roles, PITR, run_id) == before


@pytest.mark.parametrize("user,dag_id", [*ALLOWED, ("auditor", PITR)])
def test_nobody_but_admin_deletes_a_run_or_a_task_instance_or_writes_an_xcom(runs, rest, roles, user, dag_id):
    client, run_id, task_id = rest(user), runs[dag_id], CLEARED[dag_id]
    before = snapshot(roles, dag_id, run_id)
    path = f"/dags/{dag_id}/dagRuns/{run_id}"
    for method, url, body in [
        ("DELETE", path, None),
        ("DELETE", f"{path}/taskInstances/{task_id}", None),
        ("POST", f"{path}/taskInstances/{task_id}/xcomEntries", {"key": "return_value", "value": {"number": "CHG0000001"}}),
    ]:
        response = client.api(method, url, json=body)
        assert response.status_code == 403, (method, url, response.text)
    response = client.api("PATCH", f"{path}/taskInstances", json={"actions": [{"action": "delete", "entities": [task_id]}]})
    assert refused_entities(response, "delete"), (response.status_code, response.text)
    assert snapshot(roles, dag_id, run_id) == before


def test_the_deployed_roles_are_rewinds_definition(runs, roles, tmp_path):
    """What `rewind roles --apply` and the DAG processor left in Airflow: the global permissions of
    access.GLOBAL_PERMISSIONS, per DAG the DAGs' access_control, and nothing of a PITR for the operator."""
    import json

    from rewind.roles import DBA_ONLY, GLOBAL_PERMISSIONS, OPERATIONS, PER_DAG_PREFIXES

    exported = tmp_path / "roles.json"
    roles.cli("roles", "export", str(exported))
    granted: dict[str, dict[str, set[str]]] = {}
    for row in json.loads(exported.read_text()):
        granted.setdefault(row["name"], {})[row["resource"]] = set(filter(None, row["action"].split(",")))
    for role, permissions in GLOBAL_PERMISSIONS.items():
        global_grants = {resource: actions for resource, actions in granted[role].items() if not resource.startswith(PER_DAG_PREFIXES)}
        assert global_grants == permissions, role
    assert granted["DBA"][f"DAG:{PITR}"] == DBA_ONLY["DBA"]["DAGs"]
    assert granted["DBA"][f"DAG Run:{PITR}"] == DBA_ONLY["DBA"]["DAG Runs"]
    assert granted["BackupOperator"][f"DAG:{ROUTINE}"] == OPERATIONS["BackupOperator"]["DAGs"]
    assert granted["BackupOperator"][f"DAG Run:{ROUTINE}"] == OPERATIONS["BackupOperator"]["DAG Runs"]
    assert not [resource for resource in granted["BackupOperator"] if "rewind_pitr__" in resource]


def test_rewinds_own_rest_account_notes_runs_and_reads_answers_but_triggers_and_answers_nothing(runs, roles):
    """The `airflow_api` connection's account (role RewindService): what Rewind's tasks need and no
    more. A leaked service password triggers no PITR and answers no question."""
    from devstack.airflow import SERVICE_USER

    service = roles.rest_as(SERVICE_USER)
    assert trigger_as(roles, SERVICE_USER, PITR, BAD_CONF).status_code == 403
    run_id = runs[PITR]
    noted = service.api("PATCH", f"/dags/{PITR}/dagRuns/{run_id}", params={"update_mask": "note"}, json={"note": "set by Rewind's task"})
    assert noted.status_code == 200, noted.text
    path = f"/dags/{PITR}/dagRuns/{run_id}/taskInstances/decide_at_target/-1/hitlDetails"
    assert service.api("GET", path).status_code in (200, 404)  # read: allowed (404: this run never asked)
    answered = service.api("PATCH", path, json={"chosen_options": ["Promote"], "params_input": {}})
    assert answered.status_code == 403, answered.text
    marked = service.api("PATCH", f"/dags/{PITR}/dagRuns/{run_id}/taskInstances/close_change", json={"new_state": "success"})
    assert marked.status_code == 403, marked.text  # no "Task Instances" can_edit: it marks nothing
