"""The pre-rewind directory a clone-mode rewind kept (rewind.pitr.clone), released by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewind.retention import release_kept_directory
from rewind_airflow.operators.base import RewindClusterOperator
from rewind_airflow.run_note import set_run_note


class ReleaseKeptDirectoryOperator(RewindClusterOperator):
    """Removes the pre-rewind directory PITR run `pitr_run_id` kept, before its hold ends, when the
    directory is named in `confirm`; who asked and why go into the hold's record, the task log and
    the run note. The hold's backups and WAL stay held."""

    template_fields: Sequence[str] = ("cluster", "pitr_run_id", "confirm", "reason", "airflow_api_conn_id")

    def __init__(self, *, pitr_run_id: str, confirm: str, reason: str, airflow_api_conn_id: str = "airflow_api", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pitr_run_id = pitr_run_id
        self.confirm = confirm
        self.reason = reason
        self.airflow_api_conn_id = airflow_api_conn_id

    def execute_on_cluster(self, context) -> dict[str, str]:
        by = getattr(context["dag_run"], "triggering_user_name", None) or "unknown"
        removed = release_kept_directory(
            self.hook.cluster,
            str(self.pitr_run_id).strip(),
            confirm=str(self.confirm or "").strip(),
            by=f"Airflow user {by}",
            reason=str(self.reason or "").strip(),
            log=self.log.info,
        )
        set_run_note(self, context, f"released {removed} (the pre-rewind directory of PITR run {self.pitr_run_id}): {self.reason}")
        return {"released": removed, "pitr_run_id": str(self.pitr_run_id), "by": by}
