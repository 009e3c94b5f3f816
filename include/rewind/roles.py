"""Who may do what in Airflow (FAB auth manager): the one definition of Rewind's roles.

  Viewer          Airflow's built-in read-only role: every DAG, run, task log, run note. Auditors
                  get only this: they read everything and change nothing. Everyone gets it.
  DBA             may trigger, clear and mark (runs and tasks) the PITR DAGs and every other Rewind DAG,
                  and answer a PITR's question at its target (promote, move the target, abort).
  BackupOperator  may trigger, clear and mark backup, verify and health DAGs, never a PITR.
  RewindService   the `airflow_api` connection's account, used by Rewind's tasks: sets a run's note,
                  reads a question's recorded answer; triggers nothing, answers nothing. No person's.
Do not hand out Airflow's built-in User or Op roles: they may trigger every DAG, PITR included.

Each role is two halves, both defined here:

- per DAG, each DAG's `access_control` (DBA_ONLY, OPERATIONS): can_edit on "DAG:<dag_id>" and
  can_create on "DAG Run:<dag_id>". The DAG processor applies it whenever it serializes the DAG, and
  revokes per-DAG grants it does not list.
- global, GLOBAL_PERMISSIONS: FAB has no per-DAG resource for task instances. Clearing or marking a
  task instance needs can_edit on the global "Task Instances" AND "DAG Runs" resources, and, like
  clearing or marking a run, can_edit on that DAG's "DAG:<dag_id>" as well. That last part is
  the per-DAG right: the global grants open nothing on a DAG whose access_control does not name
  the role (a BackupOperator still gets 403 on every PITR). Applied once per deployment, and after
  every upgrade, with `rewind roles --apply` (the argv of role_commands()).

Never granted to these roles: can_delete on anything (a PITR run stays on record), writing XComs
(the PITR's tasks take their request, plan and change from XCom), global "DAGs" can_edit (every
DAG, PITR included), connections, variables, pools, roles.

Nothing here imports Airflow: the `rewind` CLI reads it.
"""

from __future__ import annotations

DBA_ROLE = "DBA"
BACKUP_OPERATOR_ROLE = "BackupOperator"
ROLES = (DBA_ROLE, BACKUP_OPERATOR_ROLE)  # people's roles (single sign-on maps groups to these)
# The REST account Rewind's own tasks use (the `airflow_api` connection: a run's note, reading the
# answer to a PITR's question). Never a person's, and neither DBA nor auditor: it cannot trigger a
# run (no can_create on "DAG Run") nor answer a question (no can_edit on "HITL Detail").
SERVICE_ROLE = "RewindService"
ALL_ROLES = (*ROLES, SERVICE_ROLE)

_RUN_IT = {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}
# A run's note is an edit of the run: can_edit on the DAG (per DAG) and on the global "DAG Runs".
_NOTE_IT = {"DAGs": {"can_read", "can_edit"}}

# Restores, onboarding and decommissioning: a DBA's decision, under change control.
DBA_ONLY = {DBA_ROLE: _RUN_IT, SERVICE_ROLE: _NOTE_IT}
# Backups, verification, the watchdog: routine operations.
OPERATIONS = {DBA_ROLE: _RUN_IT, BACKUP_OPERATOR_ROLE: _RUN_IT, SERVICE_ROLE: _NOTE_IT}

# Clear and mark runs and task instances of the DAGs the role may edit (reading comes with Viewer).
# FAB gives every custom role Website can_read by itself; it is listed so that it is expected.
_CLEAR_AND_MARK = {"DAG Runs": {"can_edit"}, "Task Instances": {"can_edit"}, "Website": {"can_read"}}
# Answer a PITR's question at its target (target_action decide, Airflow's "Required actions"): the
# DBA only. Like clearing, an answer also needs can_edit on that DAG's "DAG:<dag_id>" (access_control),
# so even this grant opens no other DAG's questions.
_ANSWER_QUESTIONS = {"HITL Detail": {"can_read", "can_edit"}}
GLOBAL_PERMISSIONS = {
    DBA_ROLE: {**_CLEAR_AND_MARK, **_ANSWER_QUESTIONS},
    BACKUP_OPERATOR_ROLE: _CLEAR_AND_MARK,
    # set a run's note; read a question's recorded answer (never give one)
    SERVICE_ROLE: {"DAG Runs": {"can_read", "can_edit"}, "HITL Detail": {"can_read"}, "Website": {"can_read"}},
}

# Resource name prefixes of FAB's per-DAG resources: managed by access_control, not by GLOBAL_PERMISSIONS.
PER_DAG_PREFIXES = ("DAG:", "DAG Run:")


def role_commands(airflow: str = "airflow") -> list[list[str]]:
    """The `airflow roles` commands that create Rewind's roles and grant GLOBAL_PERMISSIONS, as argv
    lists. Idempotent: an existing role is kept, a permission it already has is not added twice."""
    commands = [[airflow, "roles", "create", *ALL_ROLES]]
    grants: dict[tuple[tuple[str, ...], str], set[str]] = {}  # (roles, action) -> resources
    for resource, action in sorted({(r, a) for perms in GLOBAL_PERMISSIONS.values() for r, actions in perms.items() for a in actions}):
        roles = tuple(role for role in ALL_ROLES if action in GLOBAL_PERMISSIONS.get(role, {}).get(resource, ()))
        grants.setdefault((roles, action), set()).add(resource)
    for (roles, action), resources in sorted(grants.items()):
        commands.append([airflow, "roles", "add-perms", *roles, "--resource", *sorted(resources), "--action", action])
    return commands


def undeclared_global_permissions(exported: list[dict]) -> list[tuple[str, str, str]]:
    """(role, resource, action) that Rewind's roles hold beyond GLOBAL_PERMISSIONS, from the rows of
    `airflow roles export` ({"name", "resource", "action": "a,b"}). Per-DAG resources are left to
    access_control and the DAG processor."""
    extra = []
    for row in exported:
        role, resource = row.get("name"), row.get("resource") or ""
        if role not in ALL_ROLES or not resource or resource.startswith(PER_DAG_PREFIXES):
            continue
        for action in filter(None, (row.get("action") or "").split(",")):
            if action not in GLOBAL_PERMISSIONS.get(role, {}).get(resource, ()):
                extra.append((role, resource, action))
    return sorted(extra)
