"""Operators for the backup rotation: preflight, backup, expire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewind.backup import DAG_ID_ANNOTATION, RUN_ID_ANNOTATION, take_backup
from rewind.lifecycle import mark_onboarded, onboarding_record
from rewind.postgres import live_timeline
from rewind.preflight import run_repository_preflight
from rewind.retention import expire_with_holds
from rewind_airflow.operators.base import RewindClusterOperator


class PgBackRestPreflightOperator(RewindClusterOperator):
    """Read-only checks before a repository is written: installed pgbackrest.conf matches the
    inventory, CA file readable by the OS user, S3 endpoint reachable, pgBackRest recent enough,
    credentials present, stanza ok (no backup yet is fine)."""

    ui_color = "#e8f4fd"

    def execute_on_cluster(self, context) -> dict:
        hook = self.hook
        self.skip_unless_routine_work_may_run()
        info = run_repository_preflight(hook.cluster, inventory_path=hook.inventory_file, pgbackrest=hook.get_conn(), allow_no_backup=True)
        latest = info.latest()
        summary = {
            "stanza": info.name,
            "status": info.status.message,
            "backups": len(info.backup),
            "latest": latest.label if latest else None,
        }
        self.log.info("preflight ok: %s", summary)
        return summary


class PgBackRestBackupOperator(RewindClusterOperator):
    """Take one full/diff/incr backup annotated with the Airflow DAG and run, and publish it as an
    asset event (label, type, stop LSN, size) on the operator's outlets.

    Retry-safe: a retry finds the backup an earlier try of this task took (same DAG, run, type and
    timeline, by annotation) and does not take a second one; a backup lock held by another process
    is waited for, never raced. While a PITR replaces the data directory it skips.
    """

    template_fields: Sequence[str] = ("cluster", "backup_type", "extra_annotations", "restore_run_id")
    ui_color = "#d4edda"

    def __init__(
        self,
        *,
        backup_type: str,
        lock_wait_s: float = 600.0,
        extra_annotations: dict[str, str] | None = None,
        restore_run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_type = backup_type
        self.lock_wait_s = lock_wait_s
        self.extra_annotations = extra_annotations or {}
        # A PITR run passes its own run id: its full backup on the new timeline is the one backup
        # allowed while its restore guard is up.
        self.restore_run_id = restore_run_id

    def execute_on_cluster(self, context) -> dict:
        ti = context["ti"]
        self.skip_unless_routine_work_may_run(allowed_run_id=self.restore_run_id)
        annotations = {
            **{str(k): str(v) for k, v in self.extra_annotations.items()},
            DAG_ID_ANNOTATION: ti.dag_id,
            RUN_ID_ANNOTATION: context["run_id"],
            "airflow_try": str(ti.try_number),
        }
        record = take_backup(
            self.hook.get_conn(),
            self.backup_type,
            annotations=annotations,
            timeline=live_timeline(self.hook.os_runner(), self.hook.cluster),
            lock_wait_s=self.lock_wait_s,
            log=self.log.info,
        ).as_dict()
        self.log.info(
            "backup %s (%s) stop LSN %s, %s bytes (%s in repo)",
            record["label"],
            record["type"],
            record["stop_lsn"],
            record["size_bytes"],
            record["repo_size_bytes"],
        )
        if onboarding_record(self.hook.cluster) is None:  # a cluster onboarded before the record existed, or by hand
            mark_onboarded(self.hook.cluster, run_id=context["run_id"], change=None, how=f"a {record['type']} backup succeeded")
        for asset in self.outlets:
            context["outlet_events"][asset].extra = record
        return record


class PgBackRestExpireOperator(RewindClusterOperator):
    """Apply the repository retention (`pgbackrest expire`), never removing what a PITR's hold keeps
    (rewind.retention), and log what it removed and what it held."""

    def execute_on_cluster(self, context) -> dict:
        self.skip_unless_routine_work_may_run()
        return expire_with_holds(self.hook.get_conn(), log=self.log.info)
