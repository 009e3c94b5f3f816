"""Decide while paused, under the real scheduler, triggerer and API server: a PITR with
target_action `decide` pauses read-only at its target and asks the DBA in Airflow's
human-in-the-loop "Required actions"; the answers go through the public REST API as each person.

The 02:17 story, in clone mode: the clone is built beside production, which keeps serving while the
DBA decides. The on-call DBA's first guess of the target is after the runaway UPDATE, so the data
check fails on the clone. Promote is refused and asked again; a move to a target that is not a
timestamp is refused before anything is touched; a move to the instant before the UPDATE restores
the clone again in the same run (production untouched), the check passes, and Promote cuts over and
opens the cluster there. Only the DBA may answer (the auditor and the backup operator get 403). A
second rewind, in place and aborted, gives back every row the cluster had before it was stopped; a
third, on a clone and aborted, removes the clone and never stops production."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from rewind.pitr.clone import clone_instance, clone_paths
from rewind.pitr.decision import ABORT, MOVE, PROMOTE
from rewind.pitr.journal import RunJournal
from rewind.postgres import postmaster_pid, psql_argv
from rewind.servicenow import Auth, ServiceNowClient
from tests.e2e.conftest import task_log, wait_for_task_state

pytestmark = pytest.mark.e2e

DAG_ID = "rewind_pitr__demo"
VOID_CHECK = [{"sql": "select count(*) from trade where status = 'void'", "expect": 0}]
FORM = {"new_target_type": "time", "new_target": "", "new_target_exclusive": False}


def _instant() -> str:
    time.sleep(1.1)
    at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=1)
    time.sleep(2.1)
    return at.strftime("%Y-%m-%d %H:%M:%S+00")


def _decisions(demo_stack, run_id) -> list[dict]:
    return RunJournal.load(demo_stack.cluster, run_id).data.get("decisions", [])


def _question(standalone, demo_stack, run_id, answered: int, timeout: float = 150) -> None:
    """Until the run asks again after `answered` answers, and the DBA has read the question for a
    couple of seconds (an answer within a second of the question can reach Airflow's scheduler
    before the event of the task parking; the product then carries it out in the next try, but a
    person does not answer that fast, and the test follows one answer at a time)."""
    deadline = time.monotonic() + timeout
    asked_since = None
    while time.monotonic() < deadline:
        state = standalone.task_states(DAG_ID, run_id).get("decide_at_target")
        if state == "awaiting_input" and len(_decisions(demo_stack, run_id)) == answered:
            asked_since = asked_since or time.monotonic()
            if time.monotonic() - asked_since >= 2:
                return
            time.sleep(0.5)
            continue
        asked_since = None
        if state in ("failed", "upstream_failed", "success"):
            raise AssertionError(f"decide_at_target ended {state}: {task_log(standalone, DAG_ID, run_id, 'decide_at_target')[-3000:]}")
        time.sleep(0.5)
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/decide_at_target"
    raise AssertionError(
        f"no question after {answered} answers: {standalone.task_states(DAG_ID, run_id)}; answers {_decisions(demo_stack, run_id)}; "
        f"task instance: {standalone.api('GET', path).text[:1500]}; tries: {standalone.api('GET', f'{path}/tries').text[:3000]}; "
        f"log: {_all_tries(standalone, run_id)}; components' log about it: {standalone.log_lines('decide_at_target')}; "
        # a DAG file that fails to import (or to serialize) deactivates its DAGs: a running run's next
        # tasks are then never scheduled, and stay without a state (seen with an unknown access_control role)
        f"import errors: {standalone.api('GET', '/importErrors').text[:2000]}; "
        f"serialization failures: {standalone.log_lines('Failed to write serialized DAG', last=5)}"
    )


def _all_tries(standalone, run_id) -> str:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/decide_at_target"
    tries = standalone.api("GET", path).json()["try_number"]
    lines = []
    for number in range(1, tries + 1):
        for entry in standalone.api("GET", f"{path}/logs/{number}").json().get("content", []):
            if isinstance(entry, dict) and entry.get("level") in ("error", "warning", "info") and "event" in entry:
                lines.append(f"[try {number}] {entry.get('timestamp')} {entry['event']}"[:600])
    return "\n".join(lines[-60:])


def _events(standalone, run_id, task_id: str = "full_backup_new_timeline") -> str:
    import json

    text = task_log(standalone, DAG_ID, run_id, task_id)
    try:
        content = json.loads(text).get("content", [])
    except ValueError:
        return text[-3000:]
    return "\n".join(str(entry.get("event"))[:500] for entry in content if isinstance(entry, dict))[-4000:]


def _answer(client, run_id, option: str, form: dict | None = None, *, question: int = 1):
    return client.api(
        "PATCH",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/decide_at_target/-1/hitlDetails",
        json={"chosen_options": [option], "params_input": {**FORM, "question": question, **(form or {})}},
    )


def _followon(sn, run_id, timeout: float = 120) -> dict:
    """The follow-on change a promotion outside the approved target opens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sn.query("change_request", f"correlation_id=rewind:{DAG_ID}:{run_id}:question-2:reapproval-1")
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no follow-on change for {run_id}")


def _clone_psql(demo_stack, run_id: str, sql: str) -> str:
    """A query on the run's clone, on its private socket, as the DBA compares it with production."""
    port = int(RunJournal.load(demo_stack.cluster, run_id).data["clone_port"])
    clone = clone_instance(demo_stack.cluster, clone_paths(demo_stack.cluster, run_id), port=port).cluster
    return demo_stack.runner(line_logger=lambda _line: None).run(psql_argv(clone, sql), timeout=60, log_stdout=False).stdout.strip()


def _rewind(standalone, servicenow, target: str, reason: str, *, mode: str) -> tuple[str, dict]:
    response = standalone.trigger(
        DAG_ID,
        conf={
            "target_type": "time",
            "target": target,
            "target_action": "decide",
            "validation_sql": VOID_CHECK,
            "reason": reason,
            "mode": mode,
        },
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    wait_for_task_state(standalone, DAG_ID, run_id, "wait_for_approval", "deferred")
    sn = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    [change] = sn.query("change_request", f"correlation_id=rewind:{DAG_ID}:{run_id}")
    servicenow.approve(change["number"])
    return run_id, change


def test_the_dba_moves_a_wrong_target_then_promotes_and_a_second_rewind_is_aborted_losing_nothing(standalone, demo_stack, servicenow):
    standalone.wait_for_dag(DAG_ID)
    sn = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "e2e-decide-base"})  # whatever ran before
    demo_stack.psql("drop table if exists trade")
    demo_stack.psql("create table trade (id bigint primary key, status text not null)")
    demo_stack.psql("insert into trade select g, 'booked' from generate_series(1, 50) g")
    before_update = _instant()
    runaway = demo_stack.psql("update trade set status = 'void'; select pg_current_xact_id()")  # the runaway migration
    after_update = _instant()  # the on-call's first guess: too late
    demo_stack.psql("insert into trade values (51, 'booked')")

    pid = postmaster_pid(demo_stack.cluster)
    run_id, change = _rewind(standalone, servicenow, after_update, "e2e decide: runaway UPDATE voided every trade", mode="clone")
    _question(standalone, demo_stack, run_id, answered=0)
    dba, auditor, operator = (standalone.rest_as(name) for name in ("dba", "auditor", "operator"))
    note = standalone.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["note"]
    assert "the clone of demo is paused read-only at time" in note and "Data checks here: 0/1 passed" in note, note
    assert "Production serves, untouched; how to compare it with the clone side by side: the question's page." in note, note
    body = standalone.rest.hitl_detail(DAG_ID, run_id, "decide_at_target")["body"]
    assert "**Compare side by side**" in body and f"-p {RunJournal.load(demo_stack.cluster, run_id).data['clone_port']} " in body, body
    assert note.split("\n")[1].endswith("/tasks/decide_at_target/required_actions?map_index=-1"), note  # under the question
    assert _clone_psql(demo_stack, run_id, "select pg_is_in_recovery()") == "t"
    assert _clone_psql(demo_stack, run_id, "select count(*) from trade where status = 'void'") == "50"  # paused at the wrong target
    # production serves meanwhile, writable, untouched
    assert demo_stack.psql("select pg_is_in_recovery()") == "f" and postmaster_pid(demo_stack.cluster) == pid
    assert demo_stack.psql("select count(*) from trade") == "51"

    # Only the DBA role answers.
    for person in (auditor, operator):
        refused = _answer(person, run_id, PROMOTE)
        assert refused.status_code == 403, refused.text
    # Promote with a failed check: refused, asked again; nothing touched.
    assert _answer(dba, run_id, PROMOTE).status_code == 200
    _question(standalone, demo_stack, run_id, answered=1)
    # A move to something that is not a timestamp: refused before anything is touched.
    assert _answer(dba, run_id, MOVE, {"new_target": "02:13"}).status_code == 200
    _question(standalone, demo_stack, run_id, answered=2)
    assert postmaster_pid(demo_stack.cluster) == pid and demo_stack.psql("select pg_is_in_recovery()") == "f"
    first, second = _decisions(demo_stack, run_id)
    assert first["answer"] == PROMOTE and "a data check failed" in first["refused"] and "dba" in first["by"]
    assert second["answer"] == MOVE and second["refused"].startswith("new_target: '02:13' is not a timestamp")
    # The move to the instant before the UPDATE: the clone only restored again in this run, paused,
    # checked, asked again; production still serves, the same postmaster.
    assert _answer(dba, run_id, MOVE, {"new_target": before_update}).status_code == 200
    _question(standalone, demo_stack, run_id, answered=3)
    assert postmaster_pid(demo_stack.cluster) == pid and demo_stack.psql("select pg_is_in_recovery()") == "f"
    assert _clone_psql(demo_stack, run_id, "select count(*) || ' ' || count(*) filter (where status = 'void') from trade") == "50 0"
    note = standalone.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["note"]
    assert "Data checks here: 1/1 passed" in note and "Decision 3: Move the target by" in note, note
    assert note.startswith("Question 2: "), note
    # A Promote from a page still showing the first question: refused, consumed, nothing touched.
    assert _answer(dba, run_id, PROMOTE, question=1).status_code == 200
    _question(standalone, demo_stack, run_id, answered=4)
    assert "this answer was given to question 1; the cluster is now at question 2" in _decisions(demo_stack, run_id)[-1]["refused"]
    assert _clone_psql(demo_stack, run_id, "select pg_is_in_recovery()") == "t"
    # Promote at the moved target: the change approved the first one, so a follow-on change must be
    # approved first; the task waits in the triggerer, PostgreSQL still paused.
    assert _answer(dba, run_id, PROMOTE, question=2).status_code == 200
    followon = _followon(sn, run_id)
    wait_for_task_state(standalone, DAG_ID, run_id, "decide_at_target", "deferred")
    assert postmaster_pid(demo_stack.cluster) == pid and demo_stack.psql("select pg_is_in_recovery()") == "f"  # serving meanwhile
    assert "re-approval asked in " + followon["number"] in " ".join(sn.work_notes("change_request", change["sys_id"]))
    servicenow.approve(followon["number"])
    run = standalone.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", (standalone.task_states(DAG_ID, run_id), _events(standalone, run_id, "decide_at_target"))
    assert demo_stack.psql("select pg_is_in_recovery()") == "f" and postmaster_pid(demo_stack.cluster) != pid  # cut over
    assert demo_stack.psql("select count(*) || ' ' || count(*) filter (where status = 'void') || ' ' || max(id) from trade") == "50 0 50"
    paths = clone_paths(demo_stack.cluster, run_id)
    assert paths.pre_rewind_dir.is_dir() and not paths.clone_dir.exists()  # production's old directory kept, stopped
    # Salvage what the rewind discarded but the runaway UPDATE: trade 51, read from the kept directory.
    standalone.wait_for_dag("rewind_salvage__demo")
    salvage = standalone.trigger("rewind_salvage__demo", conf={"bad_xids": [int(runaway)]})
    assert salvage.status_code == 200, salvage.text
    salvage_run = standalone.wait_for_run("rewind_salvage__demo", salvage.json()["dag_run_id"], timeout=180)
    assert salvage_run["state"] == "success", task_log(standalone, "rewind_salvage__demo", salvage_run["dag_run_id"], "salvage")[-3000:]
    salvaged = standalone.api(
        "GET", f"/dags/rewind_salvage__demo/dagRuns/{salvage_run['dag_run_id']}/taskInstances/salvage/xcomEntries/return_value"
    ).json()["value"]
    salvaged = json.loads(salvaged) if isinstance(salvaged, str) else salvaged
    assert salvaged["kept_dir"] == str(paths.pre_rewind_dir), salvaged
    assert salvaged["tables"]["public.trade"]["inserted"] == 1 and int(runaway) in salvaged["bad_xids"], salvaged

    closed = sn.get("change_request", change["sys_id"])
    assert (closed["state"], closed["close_code"]) == ("3", "successful")
    assert f"Target: time {before_update.replace('+00', '.000000+00')}" in closed["close_notes"], closed["close_notes"]
    for line in (
        "Decision 1: Promote by",
        "(not carried out:",
        "Decision 3: Move the target by",
        "Decision 4: Promote by",
        "Decision 5: Promote by",
        f"(re-approved in {followon['number']})",
        "Data checks: 1/1 passed",
    ):
        assert line in closed["close_notes"], (line, closed["close_notes"])
    work_notes = sn.work_notes("change_request", change["sys_id"])
    assert any("Move the target by" in n and "dba" in n and before_update[:19] in n for n in work_notes), work_notes
    assert any("the clone of demo is paused again, read-only (production serving)" in n for n in work_notes), work_notes
    link = f"/dags/{DAG_ID}/runs/{run_id}/tasks/decide_at_target/required_actions"
    assert sum("a DBA decides in Airflow" in n and link in n for n in work_notes) == 1, work_notes  # where to answer, once
    moves = [d for d in _decisions(demo_stack, run_id) if d["answer"] == MOVE and not d.get("refused")]
    assert len(moves) == 1 and "dba" in moves[0]["by"]
    # What a retry reads to carry out an answer its try could not (the airflow_api connection's client):
    # Airflow keeps the last response, which the journal has too, at the same instant.
    detail = standalone.rest.hitl_detail(DAG_ID, run_id, "decide_at_target")
    assert detail["response_received"] and detail["chosen_options"] == [PROMOTE] and detail["responded_by_user"]["name"] == "dba"
    assert dt.datetime.fromisoformat(detail["responded_at"]).isoformat() == _decisions(demo_stack, run_id)[-1]["at"]

    # A second rewind, aborted at the question: every row the cluster had before the stop is back.
    demo_stack.psql("insert into trade select g, 'booked' from generate_series(51, 60) g")
    target = _instant()
    demo_stack.psql("update trade set status = 'settled' where id > 55")
    rows_before = demo_stack.psql("select string_agg(id || status, ',' order by id) from trade")
    timeline_before = demo_stack.psql("select timeline_id from pg_control_checkpoint()")
    run_id, change = _rewind(standalone, servicenow, target, "e2e decide: a rewind the DBA aborts", mode="in_place")
    _question(standalone, demo_stack, run_id, answered=0)
    assert demo_stack.psql("select count(*) filter (where status = 'settled') from trade") == "0"  # paused before the update
    # The question marked success by hand instead of answered: the new timeline's backup refuses (the
    # cluster was never promoted) and the cluster stays paused. Cleared, the task asks again.
    marked = dba.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/decide_at_target", json={"new_state": "success"})
    assert marked.status_code == 200, marked.text
    wait_for_task_state(standalone, DAG_ID, run_id, "full_backup_new_timeline", "failed")
    assert "this run has not promoted demo" in task_log(standalone, DAG_ID, run_id, "full_backup_new_timeline")
    assert demo_stack.psql("select pg_is_in_recovery()") == "t"
    cleared = dba.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        json={"dag_run_id": run_id, "task_ids": ["decide_at_target"], "include_downstream": True, "only_failed": False, "dry_run": False},
    )
    assert cleared.status_code == 200, cleared.text
    _question(standalone, demo_stack, run_id, answered=0)
    assert _answer(dba, run_id, ABORT).status_code == 200
    run = standalone.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", standalone.task_states(DAG_ID, run_id)
    assert demo_stack.psql("select string_agg(id || status, ',' order by id) from trade") == rows_before
    assert int(demo_stack.psql("select timeline_id from pg_control_checkpoint()")) > int(timeline_before)
    closed = sn.get("change_request", change["sys_id"])
    assert closed["close_code"] == "unsuccessful" and "aborted by the DBA" in closed["close_notes"], closed
    assert f"back to the latest archived WAL of timeline {timeline_before}" in closed["close_notes"]
    assert standalone.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["note"].startswith(f"{change['number']} closed unsuccessful")

    # A third rewind, on a clone, aborted at the question: the clone is removed, production was never
    # stopped; no new timeline, so no new full backup; the change closes unsuccessful.
    # Its target is after the last write: no commit follows it in the archived WAL but the marker
    # commit Rewind makes before archiving (recovery to a time stops at the first commit after it;
    # without one it ended in "recovery ended before configured recovery target was reached": this
    # rewind failed so before the marker, in place with PostgreSQL left stopped)
    demo_stack.psql("insert into trade values (61, 'booked')")
    target = _instant()
    pid, rows_before = postmaster_pid(demo_stack.cluster), demo_stack.psql("select string_agg(id || status, ',' order by id) from trade")
    timeline_before = demo_stack.psql("select timeline_id from pg_control_checkpoint()")
    run_id, change = _rewind(standalone, servicenow, target, "e2e decide: a clone the DBA aborts", mode="clone")
    _question(standalone, demo_stack, run_id, answered=0)
    assert _clone_psql(demo_stack, run_id, "select string_agg(id || status, ',' order by id) from trade") == rows_before
    assert clone_paths(demo_stack.cluster, run_id).clone_dir.is_dir()
    assert _answer(dba, run_id, ABORT).status_code == 200
    run = standalone.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", standalone.task_states(DAG_ID, run_id)
    states = standalone.task_states(DAG_ID, run_id)
    assert (states["full_backup_new_timeline"], states["release_restore_guard"], states["close_change"]) == (
        "skipped",
        "success",
        "success",
    )
    assert (
        postmaster_pid(demo_stack.cluster) == pid and demo_stack.psql("select timeline_id from pg_control_checkpoint()") == timeline_before
    )
    assert demo_stack.psql("select string_agg(id || status, ',' order by id) from trade") == rows_before
    assert not clone_paths(demo_stack.cluster, run_id).clone_dir.exists()
    closed = sn.get("change_request", change["sys_id"])
    assert (
        closed["close_code"] == "unsuccessful" and "aborted by the DBA on the clone: production was never stopped" in closed["close_notes"]
    )
    assert "No new full backup: there is no new timeline" in closed["close_notes"], closed["close_notes"]
