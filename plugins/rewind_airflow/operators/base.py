"""RewindClusterOperator: the base of every operator that works on one inventory cluster."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from rewind.errors import RewindError
from rewind.guard import RestoreInProgress, require_no_restore
from rewind.lifecycle import awaiting_onboarding, decommissioned
from rewind.servicenow import ServiceNowClient
from rewind_airflow.hooks.pgbackrest import PgBackRestHook
from rewind_airflow.hooks.servicenow import ServiceNowHook


class Refused(AirflowFailException):
    """A failure no retry can change (a RewindError with retryable False, or a PITR step's final
    failure): fails the task without its retries, with the original's message and incident policy."""

    def __init__(self, original: BaseException, step: str | None = None) -> None:
        super().__init__(str(original))
        self.opens_incident = getattr(original, "opens_incident", True)
        self.pitr_step = step or getattr(original, "pitr_step", None)


class RewindClusterOperator(BaseOperator):
    """One runbook step on one inventory cluster, on the worker that serves the cluster's queue.

    Subclasses implement `execute_on_cluster`. The task's repository credentials are released (a
    Vault lease revoked) when it ends, however it ends; on_kill stops the running command's whole
    process group first.
    """

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
        except RewindError as exc:
            if not exc.retryable:  # a refusal waiting cannot change: once, with its one line
                raise Refused(exc) from exc
            raise
        finally:
            self.hook.release()

    def execute_on_cluster(self, context) -> Any:
        raise NotImplementedError

    def skip_unless_routine_work_may_run(self, *, allowed_run_id: str | None = None) -> None:
        """Routine work (backups, verify, the watchdog) skips, not fails and opens no incident, while
        a PITR replaces the data directory, before the cluster is onboarded and once it is
        decommissioned. A PITR that failed mid-rewind is another matter: that raises (the cluster
        needs a DBA); so does an onboarded cluster that lost its config, stanza or archiving."""
        if awaiting_onboarding(self.hook.cluster):
            raise AirflowSkipException(
                f"cluster {self.hook.cluster.name!r} is not onboarded yet (no {self.hook.cluster.config_path}, no onboarding record): "
                f"run rewind_onboard__{self.hook.cluster.name}; its routine work skips until then"
            )
        retired = decommissioned(self.hook.cluster)
        if retired:
            raise AirflowSkipException(
                f"cluster {self.hook.cluster.name!r} was decommissioned at {retired.get('at')} by run {retired.get('run_id')} "
                f"(change {retired.get('change')}): remove it from the inventory"
            )
        try:
            require_no_restore(self.hook.cluster, allowed_run_id=allowed_run_id)
        except RestoreInProgress as exc:
            raise AirflowSkipException(str(exc)) from None

    def on_kill(self) -> None:
        self.hook.terminate()
        self.hook.release()


class ChangeControlledOperator(RewindClusterOperator):
    """A step of a workflow that runs under a ServiceNow change (PITR, rehearsal, onboarding,
    decommissioning): its ServiceNow client is built once per task, from the hook that owns the
    connection, and reused by every gate and note of the step."""

    template_fields: Sequence[str] = ("cluster", "servicenow_conn_id")

    def __init__(self, *, servicenow_conn_id: str = "servicenow_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.servicenow_conn_id = servicenow_conn_id

    @cached_property
    def servicenow(self) -> ServiceNowClient:
        return ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn()
