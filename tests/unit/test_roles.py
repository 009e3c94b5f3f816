"""Rewind's roles (include/rewind/roles.py) and `rewind roles`: the `airflow roles` commands
grant exactly the documented global permissions, `--apply` runs them as argv lists and refuses a
role that holds more. What the roles then may do is tested over REST in tests/e2e."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from rewind.cli import main
from rewind.roles import (
    BACKUP_OPERATOR_ROLE,
    DBA_ONLY,
    DBA_ROLE,
    GLOBAL_PERMISSIONS,
    OPERATIONS,
    ROLES,
    SERVICE_ROLE,
    role_commands,
    undeclared_global_permissions,
)


def granted_by(commands: list[list[str]]) -> dict[str, dict[str, set[str]]]:
    """What `airflow roles add-perms ROLE... --resource R... --action A` grants, per role."""
    granted: dict[str, dict[str, set[str]]] = {}
    for argv in commands:
        if argv[1:3] != ["roles", "add-perms"]:
            continue
        roles = argv[3 : argv.index("--resource")]
        resources = argv[argv.index("--resource") + 1 : argv.index("--action")]
        [action] = argv[argv.index("--action") + 1 :]
        for role in roles:
            for resource in resources:
                granted.setdefault(role, {}).setdefault(resource, set()).add(action)
    return granted


def test_the_commands_create_both_roles_and_grant_exactly_the_global_permissions():
    commands = role_commands("/opt/airflow/bin/airflow")
    assert commands[0] == ["/opt/airflow/bin/airflow", "roles", "create", DBA_ROLE, BACKUP_OPERATOR_ROLE, SERVICE_ROLE]
    assert all(argv[0] == "/opt/airflow/bin/airflow" and all(isinstance(item, str) for item in argv) for argv in commands)
    assert granted_by(commands) == GLOBAL_PERMISSIONS


def test_the_global_permissions_clear_and_mark_and_nothing_else():
    """README: a DBA and a BackupOperator clear and mark runs and task instances of the DAGs their
    access_control names. Global "DAGs" can_edit would open every DAG, the PITR included; deleting
    would erase a PITR's record; XComs carry the PITR's request, plan and change. Only a DBA answers a
    PITR's question at its target (HITL Detail can_edit; the DAG's access_control does the rest)."""
    clear_and_mark = {"DAG Runs": {"can_edit"}, "Task Instances": {"can_edit"}, "Website": {"can_read"}}
    assert GLOBAL_PERMISSIONS[BACKUP_OPERATOR_ROLE] == clear_and_mark
    assert GLOBAL_PERMISSIONS[DBA_ROLE] == {**clear_and_mark, "HITL Detail": {"can_read", "can_edit"}}
    # Rewind's own REST account: notes a run, reads a recorded answer; answers nothing, triggers nothing
    assert GLOBAL_PERMISSIONS[SERVICE_ROLE] == {"DAG Runs": {"can_read", "can_edit"}, "HITL Detail": {"can_read"}, "Website": {"can_read"}}
    granted = {(resource, action) for perms in GLOBAL_PERMISSIONS.values() for resource, actions in perms.items() for action in actions}
    assert not {resource for resource, _ in granted} & {"DAGs", "XComs", "Connections", "Variables", "Pools"}
    assert not {action for _, action in granted} - {"can_read", "can_edit"}


def test_per_dag_access_control_names_only_rewinds_roles_and_never_lets_the_operator_near_a_pitr():
    assert set(DBA_ONLY) == {DBA_ROLE, SERVICE_ROLE}
    assert set(OPERATIONS) == {*ROLES, SERVICE_ROLE}
    for control in (DBA_ONLY, OPERATIONS):
        for role, permissions in control.items():
            if role == SERVICE_ROLE:  # may note a run (edit), never trigger one (no DAG Runs can_create)
                assert permissions == {"DAGs": {"can_read", "can_edit"}}
            else:
                assert permissions == {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}


def test_undeclared_global_permissions_are_found_and_per_dag_ones_left_to_access_control():
    exported = [
        {"name": "DBA", "resource": "DAG Runs", "action": "can_edit"},
        {"name": "DBA", "resource": "Task Instances", "action": "can_edit,can_delete"},
        {"name": "DBA", "resource": "DAG:rewind_pitr__ledger", "action": "can_edit,can_read"},
        {"name": "DBA", "resource": "DAG Run:rewind_pitr__ledger", "action": "can_create,can_read"},
        {"name": "BackupOperator", "resource": "DAGs", "action": "can_edit"},
        {"name": "BackupOperator", "resource": "Website", "action": "can_read"},
        {"name": "SomeoneElse", "resource": "DAGs", "action": "can_edit"},
        {"name": "EmptyRole", "resource": "", "action": ""},
    ]
    assert undeclared_global_permissions(exported) == [
        ("BackupOperator", "DAGs", "can_edit"),
        ("DBA", "Task Instances", "can_delete"),
    ]
    assert undeclared_global_permissions([]) == []


def test_access_imports_no_airflow():
    """The `rewind` CLI reads access.py; the CLI must work where Airflow is not importable."""
    code = "import sys, rewind.roles; print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_rewind_roles_prints_the_commands_and_needs_no_inventory(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("REWIND_INVENTORY", str(tmp_path / "missing.yaml"))
    assert main(["roles"]) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == role_commands("airflow")


FAKE_AIRFLOW = """\
#!{python}
import json, os, sys
with open(os.environ["FAKE_AIRFLOW_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["roles", "export"]:
    with open(sys.argv[3], "w") as out:
        json.dump(json.loads(os.environ["FAKE_AIRFLOW_EXPORT"]), out)
sys.exit(int(os.environ.get("FAKE_AIRFLOW_EXIT", "0")))
"""


@pytest.fixture
def fake_airflow(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    airflow = bin_dir / "airflow"
    airflow.write_text(textwrap.dedent(FAKE_AIRFLOW).format(python=sys.executable))
    airflow.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AIRFLOW_LOG", str(log))
    monkeypatch.setenv("FAKE_AIRFLOW_EXPORT", json.dumps([{"name": "DBA", "resource": "Task Instances", "action": "can_edit"}]))

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return str(airflow), calls


def test_apply_runs_the_commands_then_checks_the_roles(fake_airflow, capsys):
    airflow, calls = fake_airflow
    assert main(["roles", "--apply"]) == 0
    ran = calls()
    assert ran[:-1] == [argv[1:] for argv in role_commands(airflow)]
    assert ran[-1][:2] == ["roles", "export"]
    assert "global permissions as Rewind defines them" in capsys.readouterr().out


def test_apply_fails_naming_a_global_permission_beyond_rewinds(fake_airflow, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_AIRFLOW_EXPORT", json.dumps([{"name": "BackupOperator", "resource": "DAGs", "action": "can_edit,can_read"}]))
    assert main(["roles", "--apply"]) == 1
    err = capsys.readouterr().err
    assert "BackupOperator holds can_edit on 'DAGs'" in err
    assert "airflow roles del-perms BackupOperator --resource DAGs --action can_edit" in err
    assert "can_read" in err  # global DAGs can_read is Viewer's, not the custom role's


def test_apply_stops_at_the_first_failing_command(fake_airflow, monkeypatch, capsys):
    _, calls = fake_airflow
    monkeypatch.setenv("FAKE_AIRFLOW_EXIT", "1")
    assert main(["roles", "--apply"]) == 2
    assert len(calls()) == 1
    assert "roles create DBA BackupOperator" in capsys.readouterr().err
