"""Roles under the real API server with the FAB auth manager: an auditor reads every run and log
and triggers nothing; only a DBA may trigger a PITR."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

PITR = "rewind_pitr__demo"
# Params the form's schema refuses: a request that passes authorization gets 400 from param
# validation and creates no run, so the test shows who is authorized without starting a restore.
BAD_CONF = {"target_type": "no-such-type", "reason": "access control test"}


@pytest.fixture(scope="module")
def roles(standalone):
    """Wait until the DAG processor has applied the DAGs' access_control to the roles (it does so
    when it serializes each DAG; the DBA is let through): before that every non-admin is refused,
    which would prove nothing."""
    import time

    standalone.wait_for_dag(PITR)
    deadline = time.monotonic() + 90
    while trigger_as(standalone, "dba", PITR, BAD_CONF).status_code == 403 and time.monotonic() < deadline:
        time.sleep(2)
    return standalone


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
