"""Who may do what, as Airflow DAG access_control (FAB auth manager).

Roles (create them once: `airflow roles create DBA BackupOperator`; give every person Viewer too):
  Viewer          Airflow's built-in read-only role: every DAG, run, task log, run note. Auditors
                  get only this: they read everything and trigger nothing.
  DBA             may trigger and clear the PITR DAGs (and, with them, every other Rewind DAG).
  BackupOperator  may trigger and clear backup, verify and health DAGs, never a PITR.
Do not hand out Airflow's built-in User or Op roles: they may trigger every DAG, PITR included.

The auth manager enforces this on the UI and the REST API alike: POST /api/v2/dags/<id>/dagRuns
needs can_edit on the DAG and can_create on its runs.
"""

from __future__ import annotations

DBA_ROLE = "DBA"
BACKUP_OPERATOR_ROLE = "BackupOperator"

_RUN_IT = {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}

# Restores, onboarding and decommissioning: a DBA's decision, under change control.
DBA_ONLY = {DBA_ROLE: _RUN_IT}
# Backups, verification, the watchdog: routine operations.
OPERATIONS = {DBA_ROLE: _RUN_IT, BACKUP_OPERATOR_ROLE: _RUN_IT}
