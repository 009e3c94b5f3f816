"""What the PITR tests share: the ledger of the guide's story, the form as the UI sends it, and
ServiceNow as a test reads it."""

from __future__ import annotations

from devstack.servicenow_sim import DEFAULT_APPROVER
from rewind.servicenow import Auth, ServiceNowClient
from tests.conftest import run_once

REASON = "migration 42 ran UPDATE ledger_entry SET status='void' without WHERE"
VOID_CHECK = {"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}

# The whole form, as the UI sends it (dag.test() would otherwise reuse the values of an earlier run
# on the same DAG object for params left out).
FORM_DEFAULTS = {
    "target": "",
    "target_exclusive": False,
    "target_action": "pause",
    "target_timeline": "current",
    "backup_set": None,
    "change_number": None,
    "change_type": "normal",
    "validation_sql": [],
    "validation_database": None,
    "approved_window_s": 0,
    "mode": "inventory",
    "reason": REASON,
}


def client(servicenow) -> ServiceNowClient:
    return ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))


def fresh_ledger(stack) -> None:
    stack.psql("drop table if exists ledger_entry")
    stack.psql("create table ledger_entry (id bigint primary key, amount numeric(12,2), status text not null)")


def write(stack, first: int, rows: int) -> None:
    stack.psql(f"insert into ledger_entry select g, g * 1.5, 'posted' from generate_series({first}, {first + rows - 1}) g")


def ledger(stack) -> tuple[int, int, int]:
    """(rows, void rows, max id)"""
    rows, void, top = stack.psql(
        "select count(*) || ' ' || count(*) filter (where status = 'void') || ' ' || coalesce(max(id), 0) from ledger_entry"
    ).split()
    return int(rows), int(void), int(top)


def timeline(stack) -> int:
    return int(stack.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)


def the_incident(stack) -> None:
    """The migration's UPDATE without WHERE, then more work committed after it."""
    stack.psql("update ledger_entry set status = 'void'")
    write(stack, 10_001, 50)


def run_pitr(dag, **conf):
    """Trigger with the whole form, as the UI does."""
    run_args = {k: conf.pop(k) for k in ("logical_date", "run_after", "mark_success_pattern") if k in conf}
    return run_once(dag, run_conf={**FORM_DEFAULTS, **conf}, **run_args)


def states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def assert_success(run):
    from airflow.utils.state import DagRunState

    assert run.state == DagRunState.SUCCESS, states(run)


def change_of(servicenow, run) -> dict:
    [change] = client(servicenow).query("change_request", f"correlation_id=rewind:{run.dag_id}:{run.run_id}")
    return change


def notes(servicenow, change: dict) -> list[str]:
    return client(servicenow).work_notes("change_request", change["sys_id"])


def incidents_for(servicenow, cluster: str, problem_prefix: str = "") -> list[dict]:
    return [
        i
        for i in client(servicenow).query("incident", f"cmdb_ci={cluster}")
        if i.get("correlation_id", "").startswith(f"rewind:{cluster}:{problem_prefix}")
    ]


def given_change(servicenow, **fields) -> dict:
    """A change raised and approved outside Rewind, as a CAB would: its approval recorded by a CAB member."""
    change = servicenow.state.create_change_for_test(
        **{"short_description": "CAB-approved rewind", "state": -2, "approval": "approved", "cmdb_ci": "demo", **fields}
    )
    approver = servicenow.state.user(DEFAULT_APPROVER)
    servicenow.state.create(
        "sysapproval_approver",
        {"sysapproval": change["sys_id"], "approver": approver["sys_id"], "state": "approved", "source_table": "change_request"},
    )
    return change
