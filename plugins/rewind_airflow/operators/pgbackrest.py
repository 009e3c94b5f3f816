"""Operators for the backup rotation: preflight, backup, expire."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from rewind.backup import RUN_ID_ANNOTATION, take_backup
from rewind.guard import require_no_restore
from rewind.preflight import run_repository_preflight
from rewind_airflow.hooks.pgbackrest import PgBackRestHook


class _ClusterOperator(BaseOperator):
    """One runbook step on one inventory cluster. Subclasses implement `execute_on_cluster`; the
    task's repository credentials are released (a Vault lease revoked) when it ends, however."""

    template_fields: Sequence[str] = ("cluster",)

    def __init__(self, *, cluster: str, inventory_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.inventory_file = inventory_file

    @cached_property
    def hook(self) -> PgBackRestHook:
        return PgBackRestHook(cluster=self.cluster, inventory_file=self.inventory_file)

    def execute(self, context) -> Any:
        try:
            return self.execute_on_cluster(context)
        finally:
            self.hook.release()

    def execute_on_cluster(self, context) -> Any:
        raise NotImplementedError

    def on_kill(self) -> None:
        self.hook.terminate()
        self.hook.release()


class PgBackRestPreflightOperator(_ClusterOperator):
    """Read-only checks before a repository is written: installed pgbackrest.conf matches the
    inventory, CA file readable by the OS user, S3 endpoint reachable, pgBackRest recent enough,
    credentials present, stanza ok (no backup yet is fine)."""

    ui_color = "#e8f4fd"

    def execute_on_cluster(self, context) -> dict:
        hook = self.hook
        require_no_restore(hook.cluster)
        info = run_repository_preflight(
            hook.cluster, inventory_path=hook.inventory_file, pgbackrest=hook.get_conn(), allow_no_backup=True
        )
        latest = info.latest()
        summary = {
            "stanza": info.name,
            "status": info.status.message,
            "backups": len(info.backup),
            "latest": latest.label if latest else None,
        }
        self.log.info("preflight ok: %s", summary)
        return summary


class PgBackRestBackupOperator(_ClusterOperator):
    """Take one full/diff/incr backup annotated with the Airflow DAG and run, and publish it as an
    asset event (label, type, stop LSN, size) on the operator's outlets.

    Retry-safe: a retry finds the backup its run already took (by annotation) and does not take a
    second one; a backup lock held by another process is waited for, never raced.
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
        require_no_restore(self.hook.cluster, allowed_run_id=self.restore_run_id)
        annotations = {
            **{str(k): str(v) for k, v in self.extra_annotations.items()},
            "airflow_dag_id": ti.dag_id,
            RUN_ID_ANNOTATION: context["run_id"],
            "airflow_try": str(ti.try_number),
        }
        record = take_backup(
            self.hook.get_conn(),
            self.backup_type,
            annotations=annotations,
            lock_wait_s=self.lock_wait_s,
            log=self.log.info,
        ).as_dict()
        self.log.info(
            "backup %s (%s) stop LSN %s, %s bytes (%s in repo)",
            record["label"], record["type"], record["stop_lsn"], record["size_bytes"], record["repo_size_bytes"],
        )
        for asset in self.outlets:
            context["outlet_events"][asset].extra = record
        return record


class PgBackRestExpireOperator(_ClusterOperator):
    """Apply the repository retention (`pgbackrest expire`) and log which backups it removed."""

    def execute_on_cluster(self, context) -> dict:
        client = self.hook.get_conn()
        before = {b.label for b in client.info().backup}
        client.expire()
        after = client.info()
        expired = sorted(before - {b.label for b in after.backup})
        self.log.info("expired %d backup(s): %s; retained: %s", len(expired), expired or "none", [b.label for b in after.backups])
        return {"expired": expired, "retained": [b.label for b in after.backups]}
