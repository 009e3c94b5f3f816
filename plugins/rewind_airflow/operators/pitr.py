"""Operators for the PITR workflow. Each is one runbook step; the logic lives in rewind.pitr.

Inputs arrive as templated fields rendered as native objects (the DAG sets
render_template_as_native_obj), e.g. request="{{ ti.xcom_pull(task_ids='validate_params') }}".
Every step returns a JSON-serialisable dict with its own start and end time for the summary.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseHook

from rewind import metrics
from rewind.airflow_rest import AirflowRestClient
from rewind.guard import clear_guard, set_guard
from rewind.pitr.change import TABLE, ensure_change, summary
from rewind.pitr.preflight import pitr_preflight
from rewind.pitr.recovery import (
    archive_current_wal,
    current_timeline,
    is_running,
    log_offset,
    promote,
    run_data_checks,
    wait_for_recovery,
)
from rewind.pitr.request import PitrRequest, parse_request
from rewind.postgres import postmaster_pid, start_nowait_argv, stop_argv
from rewind_airflow.hooks.servicenow import ServiceNowHook
from rewind_airflow.operators.pgbackrest import _ClusterOperator


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def run_url(context) -> str:
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback="http://127.0.0.1:8080").rstrip("/")
    return f"{base}/dags/{context['ti'].dag_id}/runs/{context['run_id']}"


class _PitrOperator(_ClusterOperator):
    template_fields: Sequence[str] = ("cluster", "request")

    def __init__(self, *, request: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    @property
    def pitr_request(self) -> PitrRequest:
        return PitrRequest.model_validate(self.request)

    @property
    def runner(self):
        """psql and pg_ctl as the OS user, without repository secrets."""
        return self.hook.os_runner()


class PitrValidateParamsOperator(_ClusterOperator):
    """Cross-field validation of the run's params; one line naming the param on error."""

    def execute_on_cluster(self, context) -> dict:
        self.hook.cluster  # the cluster must exist in the inventory
        request = parse_request(dict(context["params"]))
        self.log.info("PITR request: %s; reason: %s", request.describe(), request.reason)
        return request.model_dump(mode="json")


class PitrPreflightOperator(_PitrOperator):
    """Read-only checks and the restore plan (backup set, target position), before any change."""

    def execute_on_cluster(self, context) -> dict:
        plan = pitr_preflight(
            self.hook.get_conn(), self.pitr_request, inventory_path=self.hook.inventory_file, log=self.log.info
        ).as_dict()
        plan["running"] = is_running(self.hook.cluster)
        self.log.info("restore plan: %s", plan)
        return plan


class EnsureChangeOperator(_PitrOperator):
    """Use the given change, or this run's change (found by correlation id on retry), or create one."""

    template_fields: Sequence[str] = ("cluster", "request", "servicenow_conn_id")

    def __init__(self, *, servicenow_conn_id: str = "servicenow_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.servicenow_conn_id = servicenow_conn_id

    def execute_on_cluster(self, context) -> dict:
        client = ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn()
        change = ensure_change(
            client, self.hook.cluster, self.pitr_request, dag_id=context["ti"].dag_id, run_id=context["run_id"], run_url=run_url(context)
        )
        self.log.info("change %s (%s)", change["number"], "created" if change["created"] else "existing")
        return change


class StopPostgresOperator(_PitrOperator):
    """Mark the change Implement, raise the restore guard, archive the current WAL, stop PostgreSQL."""

    template_fields: Sequence[str] = ("cluster", "change", "servicenow_conn_id")

    def __init__(self, *, change: Any, servicenow_conn_id: str = "servicenow_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.change = change
        self.servicenow_conn_id = servicenow_conn_id

    def execute_on_cluster(self, context) -> dict:
        started = _now()
        cluster, runner = self.hook.cluster, self.runner
        # Nothing is stopped unless the restore and the restart can get their credentials: the
        # repository secrets (a Vault lease, revoked when this task ends) and PostgreSQL's own.
        self.hook.secrets()
        self.hook.postmaster_secrets()
        client = ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn()
        client.update(TABLE, self.change["sys_id"], {"state": -1, "work_notes": f"Implementation started by {context['run_id']}: stopping PostgreSQL of {cluster.name}"})
        set_guard(cluster, dag_id=context["ti"].dag_id, run_id=context["run_id"], change=self.change["number"])
        pid = postmaster_pid(cluster)
        timeline_before = None
        if pid:
            timeline_before = current_timeline(runner, cluster)
            archive_current_wal(runner, cluster, log=self.log.info)
            runner.run(stop_argv(cluster, mode="fast"), timeout=330)
        else:
            self.log.info("PostgreSQL was already stopped")
        if postmaster_pid(cluster):
            raise RuntimeError(f"PostgreSQL of {cluster.name} is still running after stop")
        return {"pid_before": pid, "timeline_before": timeline_before, "started_at": started, "finished_at": _now()}


class PgBackRestRestoreOperator(_PitrOperator):
    """`pgbackrest restore --delta` with the plan's backup set and the request's target (argv items only).

    Safe to retry: --delta makes a second run converge on the same result after a kill midway."""

    template_fields: Sequence[str] = ("cluster", "request", "plan")

    def __init__(self, *, plan: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def execute_on_cluster(self, context) -> dict:
        started = _now()
        request = self.pitr_request
        cluster = self.hook.cluster
        if postmaster_pid(cluster):
            raise RuntimeError(f"PostgreSQL of {cluster.name} is running: refusing to restore over it")
        self.hook.get_conn().restore(
            restore_type=request.pgbackrest_type,
            target=request.pgbackrest_target,
            target_exclusive=request.target_exclusive,
            target_action=request.target_action if request.target_type != "latest" else None,
            target_timeline=request.target_timeline,
            backup_set=self.plan["backup_set"],
            delta=True,
        )
        return {"backup_set": self.plan["backup_set"], "started_at": started, "finished_at": _now()}


class StartPostgresOperator(_PitrOperator):
    """Start PostgreSQL without waiting: recovery is watched by the next step."""

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        offset = log_offset(cluster)
        self.hook.postmaster_runner().run(start_nowait_argv(cluster), timeout=120)
        return {"log_offset": offset, "started_at": _now()}


class WaitForRecoveryTargetOperator(_PitrOperator):
    """Wait until recovery stopped at the target and promoted or paused as asked; fail loudly when
    PostgreSQL reports the target was not reached."""

    template_fields: Sequence[str] = ("cluster", "request", "started")

    def __init__(self, *, started: Any, recovery_timeout_s: float = 6 * 3600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = started
        self.recovery_timeout_s = recovery_timeout_s

    def execute_on_cluster(self, context) -> dict:
        request = self.pitr_request
        action = "promote" if request.target_type == "latest" else request.target_action
        result = wait_for_recovery(
            self.runner, self.hook.cluster, action=action, since_offset=self.started["log_offset"],
            timeout_s=self.recovery_timeout_s, log=self.log.info,
        ).as_dict()
        self.log.info("recovery: %s", result)
        return {**result, "finished_at": _now()}


class ValidateDataOperator(_PitrOperator):
    """Run the request's data checks read-only against the restored cluster."""

    def execute_on_cluster(self, context) -> list[dict]:
        return run_data_checks(self.runner, self.hook.cluster, list(self.pitr_request.validation_sql), log=self.log.info)


class PromoteOperator(_PitrOperator):
    """Promote when recovery paused at the target; returns the timeline PostgreSQL is on."""

    def execute_on_cluster(self, context) -> dict:
        timeline = promote(self.runner, self.hook.cluster)
        self.log.info("PostgreSQL is promoted, on timeline %s", timeline)
        return {"timeline": timeline, "finished_at": _now()}


class ReleaseRestoreGuardOperator(_ClusterOperator):
    """Lift the restore guard once the new timeline has its full backup: backups may resume."""

    def execute_on_cluster(self, context) -> dict:
        return {"cleared": clear_guard(self.hook.cluster, run_id=context["run_id"])}


class CloseChangeOperator(_PitrOperator):
    """Close the change (successful) with the run summary and set the same summary as the run note."""

    template_fields: Sequence[str] = ("cluster", "request", "change", "steps", "servicenow_conn_id", "airflow_api_conn_id")

    def __init__(
        self,
        *,
        change: Any,
        steps: Any,
        servicenow_conn_id: str = "servicenow_default",
        airflow_api_conn_id: str = "airflow_api",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.change = change
        self.steps = steps  # {"plan": ..., "stop": ..., "restore": ..., "recovery": ..., ...}
        self.servicenow_conn_id = servicenow_conn_id
        self.airflow_api_conn_id = airflow_api_conn_id

    def execute_on_cluster(self, context) -> str:
        steps = self.steps
        seconds = lambda a, b: (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()  # noqa: E731
        promoted_at = (steps.get("promote") or {}).get("finished_at") or steps["recovery"]["finished_at"]
        timings = {
            "restore": seconds(steps["restore"]["started_at"], steps["restore"]["finished_at"]),
            "recovery": seconds(steps["start"]["started_at"], steps["recovery"]["finished_at"]),
            "downtime (stop to promoted)": seconds(steps["stop"]["started_at"], promoted_at),
            "full backup": float(steps["backup"]["duration_s"]),
        }
        text = summary(
            self.hook.cluster, self.pitr_request, run_id=context["run_id"], run_url=run_url(context), plan=steps["plan"],
            recovery=steps["recovery"], checks=steps.get("checks") or [], timeline=(steps.get("promote") or steps["recovery"]).get("timeline"),
            backup=steps["backup"], timings=timings,
        )
        metrics.emit(self.hook.cluster.name, {
            "pitr.duration_seconds": seconds(steps["stop"]["started_at"], _now()),
            "pitr.downtime_seconds": timings["downtime (stop to promoted)"],
        })
        client = ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn()
        client.update(TABLE, self.change["sys_id"], {"state": 3, "close_code": "successful", "close_notes": text})
        self.log.info("closed %s:\n%s", self.change["number"], text)
        self._set_run_note(context, f"{self.change['number']} closed successful\n{text}")
        return text

    def _set_run_note(self, context, note: str) -> None:
        """The execution API cannot change a run's note; the public REST API can."""
        try:
            conn = BaseHook.get_connection(self.airflow_api_conn_id)
        except Exception:  # not configured: the summary is in the change and this task's XCom
            self.log.warning("connection %r not configured: run note not set", self.airflow_api_conn_id)
            return
        base = f"{conn.schema or 'http'}://{conn.host}:{conn.port or 8080}"
        for attempt in range(3):
            try:
                AirflowRestClient(base, conn.login, conn.password).set_run_note(context["ti"].dag_id, context["run_id"], note)
                return
            except Exception as exc:  # the restore is done; a note that cannot be set is not a failure
                self.log.warning("setting the run note failed (attempt %d): %s", attempt + 1, exc)
                time.sleep(2)
