"""Operators for the monthly restore rehearsal. Each is one runbook step; the logic lives in
rewind.rehearsal.

Where each runs: `validate` and `mark_production` on the cluster's own worker (they read the
restore guard and count on production over its socket); the steps that work on the scratch copy
on `rehearsal.queue` (the rehearsal host, by default the same worker). The run's change and change
task are found by correlation_id, so a retried or failed step always reaches the right ones.

Inputs arrive as templated fields rendered as native objects (the DAG sets
render_template_as_native_obj), e.g. request="{{ ti.xcom_pull(task_ids='validate') }}".
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from rewind import metrics
from rewind.backup import wait_for_backup_lock
from rewind.change_control import ClosedChange, require_gate
from rewind.errors import PreflightError, RewindError
from rewind.guard import RestoreFailed, RestoreInProgress, require_no_restore
from rewind.pgbackrest.errors import PgBackRestError
from rewind.pitr.plan import check_free_disk
from rewind.preflight import run_repository_preflight
from rewind.rehearsal import change as rehearsal_change
from rewind.rehearsal import checks as rehearsal_checks
from rewind.rehearsal.evidence import summary
from rewind.rehearsal.production import Mark, choose_backup, mark_production, missing_tables
from rewind.rehearsal.request import RehearsalRefused, RehearsalRequest, parse_request
from rewind.rehearsal.site import check_scratch_path, read_marker, remove_scratch, write_marker
from rewind.scratch import ScratchCluster, free_port
from rewind.wal import read_archive, read_history
from rewind_airflow.notifiers.alerts import clear_alert
from rewind_airflow.notifiers.rehearsal import PROBLEM, run_seconds
from rewind_airflow.operators.base import ChangeControlledOperator
from rewind_airflow.operators.pitr import run_url

LAST_VERIFIED = "rewind_last_verified"
VERIFIED_BY = "rewind_verified_by"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RehearsalCheckFailed(RewindError):
    """The copy failed a check: the backup it came from cannot be trusted as it is."""


class RehearsalOperator(ChangeControlledOperator):
    """A step of one rehearsal run: the request, its change in ServiceNow."""

    template_fields: Sequence[str] = ("cluster", "request", "servicenow_conn_id")

    def __init__(self, *, request: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    @property
    def rehearsal_request(self) -> RehearsalRequest:
        return RehearsalRequest.model_validate(self.request)

    def opened(self, context) -> dict:
        opened = rehearsal_change.find_opened(self.servicenow, dag_id=context["ti"].dag_id, run_id=context["run_id"])
        if opened is None or not opened.get("task_sys_id"):
            raise RehearsalRefused(f"{context['ti'].task_id}: this run has no change and change task (open_change did not finish)")
        return opened


class RehearsalValidateOperator(RehearsalOperator):
    """Before anything is touched: the params, the inventory's rehearsal section (a change template,
    a safe scratch directory), no PITR replacing the data directory, production answering as the
    primary with every declared table, the repository ready with a backup before the target."""

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        request = parse_request(dict(context["params"]), cluster)
        rehearsal_change.require_template(cluster)
        check_scratch_path(cluster)
        try:
            require_no_restore(cluster)
        except (RestoreInProgress, RestoreFailed) as exc:
            raise AirflowSkipException(f"no rehearsal while a PITR holds the cluster: {exc}") from None
        runner = self.hook.os_runner()
        missing = missing_tables(runner, cluster)
        if missing:
            raise RehearsalRefused(
                f"rehearsal.tables: {', '.join(missing)} not found in database {cluster.rehearsal_database!r} of {cluster.name}: "
                "fix the inventory (schema.table as the catalog spells it)"
            )
        pgbackrest = self.hook.get_conn()
        info = run_repository_preflight(cluster, inventory_path=self.hook.inventory_file, pgbackrest=pgbackrest, allow_no_backup=False)
        if request.target == "time":
            oldest = next((b for b in info.backups if not b.error), None)
            if oldest is None or oldest.stopped_at >= request.target_time:
                raise RehearsalRefused(
                    f"param target: {request.describe()} is before the oldest valid backup"
                    + (f" ({oldest.label} ended {oldest.stopped_at:%Y-%m-%d %H:%M:%S} UTC)" if oldest else "")
                    + ": it cannot be restored"
                )
        self.log.info("rehearsal of %s: target %s; reason: %s", cluster.name, request.describe(), request.reason)
        return request.model_dump(mode="json")


class OpenRehearsalChangeOperator(RehearsalOperator):
    """The standard change from the inventory's template (or this run's, on a retry) and its change task."""

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        opened = rehearsal_change.open_change(
            self.servicenow,
            cluster,
            self.rehearsal_request,
            dag_id=context["ti"].dag_id,
            run_id=context["run_id"],
            run_url=run_url(context),
            scratch=cluster.rehearsal_path,
        )
        self.log.info(
            "change %s (%s), change task %s", opened["number"], "created" if opened["created"] else "existing", opened["task_number"]
        )
        return opened


class MarkProductionOperator(RehearsalOperator):
    """The change re-read and moved to Implement, the task to In Progress; then production's row
    counts and a restore point as one moment, and the WAL archived (rewind.rehearsal.production)."""

    def execute_on_cluster(self, context) -> dict:
        cluster, request = self.hook.cluster, self.rehearsal_request
        opened = self.opened(context)
        try:
            require_no_restore(cluster)
        except (RestoreInProgress, RestoreFailed) as exc:
            raise RehearsalRefused(f"mark_production refused: a PITR holds the cluster: {exc}") from None
        rehearsal_change.implement(
            self.servicenow,
            opened,
            f"Rewind rehearsal run {context['run_id']} started: marking production ({request.describe()}).",
        )
        mark = mark_production(self.hook.os_runner(), cluster, request, log=self.log.info)
        return mark.as_dict()


class RestoreScratchOperator(RehearsalOperator):
    """The newest backup before the mark restored into the scratch directory with
    --archive-mode=off, started on its own socket, recovered and promoted. RTO: restore start to
    the first query answered; RPO at that moment: the age of the newest archived WAL."""

    template_fields: Sequence[str] = ("cluster", "request", "mark", "servicenow_conn_id")

    def __init__(self, *, mark: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mark = mark

    def execute_on_cluster(self, context) -> dict:
        cluster, request, mark = self.hook.cluster, self.rehearsal_request, Mark(**self.mark)
        opened = self.opened(context)
        require_gate(self.servicenow, opened["sys_id"], step="restore_scratch", implementing=True)
        path = check_scratch_path(cluster)
        pgbackrest = self.hook.get_conn()
        if read_marker(path) is not None:
            self.log.info("a scratch copy is left from an earlier run or try: removing it first")
            remove_scratch(pgbackrest, path, log=self.log.info)
        info = pgbackrest.info()
        backup = choose_backup(info, read_history(pgbackrest, mark.timeline), mark, request)
        port = cluster.rehearsal.port or free_port()
        write_marker(cluster, path, run_id=context["run_id"], port=port)  # from here on, remove_scratch removes it
        check_free_disk(str(path / "data"), backup.info.size or 0, in_use_bytes=0)
        scratch = ScratchCluster(pgbackrest, path, port, postmaster_runner=self.hook.postmaster_runner(), log=self.log.info)
        self.log.info("restoring backup %s (%s) into %s for %s", backup.label, backup.type, path, request.describe())
        started = _now()
        if mark.restore_point:
            scratch.restore(backup_set=backup.label, restore_type="name", target=mark.restore_point, target_timeline=str(mark.timeline))
        else:
            target = request.target_time.strftime("%Y-%m-%d %H:%M:%S.%f+00")
            scratch.restore(backup_set=backup.label, restore_type="time", target=target, target_timeline=str(mark.timeline))
        restored_at = _now()
        scratch.start(wait=False)
        scratch.wait_until_promoted(timeout_s=cluster.rehearsal.recovery_timeout_s, log=self.log.info)
        scratch.psql("select 1")
        answered = _now()
        listing = read_archive(pgbackrest, info.current_archive().id)
        newest = listing.newest_upload()
        result = {
            "scratch": str(path),
            "port": port,
            "backup": {
                "label": backup.label,
                "type": backup.type,
                "stopped_at": backup.stopped_at.isoformat(),
                "size_bytes": backup.info.size,
                "timeline": backup.timeline,
            },
            "restore_started_at": started.isoformat(),
            "restored_at": restored_at.isoformat(),
            "answered_at": answered.isoformat(),
            "rto_s": (answered - started).total_seconds(),
            "newest_wal_at": newest.isoformat() if newest else None,
            "rpo_s": max(0.0, (answered - newest).total_seconds()) if newest else None,
        }
        self.log.info("the copy answers queries: RTO %.1f s, RPO at that moment %s s", result["rto_s"], result["rpo_s"])
        return result


class CheckScratchOperator(RehearsalOperator):
    """On the copy: row counts, pg_amcheck --heapallindexed, pg_dump of every database; then stopped
    cleanly: pg_checksums, and nothing of its timeline in the repository. Every check runs; the
    task fails when any failed, with all results in its XCom `checks`."""

    template_fields: Sequence[str] = ("cluster", "request", "mark", "restored", "servicenow_conn_id")

    def __init__(self, *, mark: Any, restored: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mark = mark
        self.restored = restored

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        pgbackrest = self.hook.get_conn()
        runner = self.hook.os_runner()
        scratch = ScratchCluster(pgbackrest, Path(self.restored["scratch"]), int(self.restored["port"]))
        counts = rehearsal_checks.count_rows(scratch, cluster, timeout=cluster.rehearsal.check_timeout_s)
        results = rehearsal_checks.check_running_copy(scratch, runner, cluster, log=self.log.info)
        scratch.stop()
        checksums, timeline = rehearsal_checks.check_stopped_copy(scratch, runner, cluster)
        results.append(checksums)
        listing = read_archive(pgbackrest, pgbackrest.info().current_archive().id)
        results.append(rehearsal_checks.archive_untouched(listing, timeline, int(self.mark["timeline"])))
        outcome = {"checks": [r.as_dict() for r in results], "counts": counts, "timeline": timeline}
        context["ti"].xcom_push(key="checks", value=outcome)
        self.log.info("checks: %s", rehearsal_checks.describe(results))
        failed = [r for r in results if not r.ok]
        if failed:
            raise RehearsalCheckFailed(
                f"the copy of backup {self.restored['backup']['label']} failed {len(failed)} check(s): {rehearsal_checks.describe(failed)}"[
                    :2000
                ]
            )
        return outcome


class CompareRowCountsOperator(RehearsalOperator):
    """The declared tables' rows on the copy against production's at the restore point (exact), or
    reported for a time target."""

    template_fields: Sequence[str] = ("cluster", "request", "mark", "checked", "servicenow_conn_id")

    def __init__(self, *, mark: Any, checked: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mark = mark
        self.checked = checked

    def execute_on_cluster(self, context) -> dict:
        result = rehearsal_checks.compare_counts(self.mark["counts"], self.checked["counts"], exact=self.rehearsal_request.exact)
        self.log.info("row counts: %s", result.summary)
        if not result.ok:
            raise RehearsalCheckFailed(f"row counts {result.summary}")
        return result.as_dict()


class AnnotateVerifiedBackupOperator(RehearsalOperator):
    """`pgbackrest annotate` on the backup the rehearsal proved: rewind_last_verified=<time> and the
    change. annotate takes the stanza's backup lock: it runs in the stanza's pool and waits out a
    backup or expire that holds the lock."""

    template_fields: Sequence[str] = ("cluster", "request", "restored", "servicenow_conn_id")

    def __init__(self, *, restored: Any, lock_wait_s: float = 3600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.restored = restored
        self.lock_wait_s = lock_wait_s

    def execute_on_cluster(self, context) -> dict:
        pgbackrest = self.hook.get_conn()
        label = self.restored["backup"]["label"]
        opened = self.opened(context)
        annotations = {LAST_VERIFIED: self.restored["answered_at"], VERIFIED_BY: opened["number"]}
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            wait_for_backup_lock(pgbackrest, timeout_s=max(1.0, deadline - time.monotonic()), log=self.log.info)
            try:
                pgbackrest.annotate(label, annotations)
                break
            except PgBackRestError as exc:
                if exc.code != 50 or time.monotonic() > deadline:
                    raise
                self.log.info("backup lock taken meanwhile: %s; waiting", exc)
                time.sleep(10)
        backup = pgbackrest.info().get(label)
        if backup is None or backup.annotations.get(LAST_VERIFIED) != annotations[LAST_VERIFIED]:
            raise PreflightError(f"backup {label} does not show the annotation {LAST_VERIFIED} after pgbackrest annotate")
        self.log.info("backup %s annotated %s", label, annotations)
        return {"label": label, "annotations": annotations}


class RemoveScratchOperator(RehearsalOperator):
    """The copy stopped and its directory removed, whatever happened before (trigger rule all_done).
    Only a directory carrying Rewind's marker is removed."""

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        path = Path(cluster.rehearsal_path)
        removed = remove_scratch(self.hook.get_conn(), path, log=self.log.info) if path.exists() else False
        if read_marker(path) is not None:
            raise PreflightError(f"the scratch copy in {path} is still there after its removal")
        return {"removed": removed, "path": str(path)}


class CloseRehearsalChangeOperator(RehearsalOperator):
    """Change task Closed `successful` and change closed successful, both with the evidence; the
    rehearsal metrics; an open `rehearsal` incident from an earlier run resolved."""

    template_fields: Sequence[str] = ("cluster", "request", "steps", "servicenow_conn_id")

    def __init__(self, *, steps: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = steps  # {"mark", "restored", "checked", "annotated", "removed"}

    def execute_on_cluster(self, context) -> dict:
        cluster, request, steps = self.hook.cluster, self.rehearsal_request, self.steps
        text = summary(
            cluster,
            request,
            outcome="PASSED",
            run_id=context["run_id"],
            run_url=run_url(context),
            mark=steps["mark"],
            restored=steps["restored"],
            checks=[*steps["checked"]["checks"], steps["compared"]],
            copy_counts=steps["checked"].get("counts"),
            annotated=steps["annotated"],
            removed=steps["removed"],
        )
        opened = self.opened(context)
        rehearsal_change.succeed(self.servicenow, opened, text)
        values = {"rehearsal.ok": 1, "rehearsal.rto_seconds": steps["restored"]["rto_s"]}
        if steps["restored"].get("rpo_s") is not None:
            values["rehearsal.rpo_seconds"] = steps["restored"]["rpo_s"]
        duration = run_seconds(context)
        if duration is not None:
            values["rehearsal.duration_seconds"] = duration
        metrics.emit(cluster.name, values)
        clear_alert(
            cluster=cluster.name,
            problem=PROBLEM,
            note=f"restore rehearsal passed in run {context['run_id']} ({opened['number']})",
            servicenow_conn_id=self.servicenow_conn_id,
            pagers=cluster.alerts.pagers,
            log=self.log.info,
        )
        self.log.info("closed %s and %s:\n%s", opened["number"], opened["task_number"], text)
        # a standard change: pre-approved by its template, no one approves this run
        return ClosedChange(number=opened["number"], close_code="successful", close_notes=text).model_dump()
