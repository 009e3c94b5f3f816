"""Operators for a cluster's onboarding and decommissioning. The logic lives in rewind.lifecycle;
the change request goes through rewind.change_control (the Change Management API), and every step that
touches production re-reads the change first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from rewind.change_control import (
    MAX_NOTE_CHARS,
    ClosedChange,
    Person,
    approved_by,
    close_change,
    correlation_id,
    find_group,
    free_text,
    open_change,
    require_gate,
    start_implementing,
)
from rewind.forms import FormValueError, form_bool
from rewind.lifecycle import (
    DecommissionRefused,
    alter_system_sql,
    archiving_off_settings,
    bucket_posture_problems,
    check_decommission_request,
    mark_decommissioned,
    mark_onboarded,
    plan_onboarding,
    read_settings,
    refuse_if_archiving_elsewhere,
    refuse_if_held,
    refuse_unless_rewind_archives,
)
from rewind.pgbackrest.config import install_config
from rewind.pitr.recovery import archive_current_wal
from rewind.postgres import reload_argv, restart_argv, run_sql
from rewind.retention import active_holds
from rewind.servicenow import ChangeStatus
from rewind_airflow.identity import requester_of
from rewind_airflow.operators.base import ChangeControlledOperator


class LifecycleOperator(ChangeControlledOperator):
    """A step of an onboarding or decommissioning run: its change, and its plan from the first step."""

    template_fields: Sequence[str] = ("cluster", "change", "plan", "servicenow_conn_id")

    def __init__(self, *, change: Any = None, plan: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.change = change  # {number, sys_id} from open_change
        self.plan = plan

    def gate(self, step: str, *, implementing: bool = True) -> ChangeStatus:
        return require_gate(
            self.servicenow,
            self.change["sys_id"],
            step=step,
            implementing=implementing,
            requester=self.change.get("requester"),
            approval_group=self.change.get("approval_group"),
        )

    def who_asked(self, context) -> dict:
        """The person who triggered the run and the group that approves: refused before anything
        when the person cannot be named."""
        requester = requester_of(context, self.servicenow)
        self.log.info("requested by %s", requester.describe())
        return {
            "requester": requester.as_dict(),
            "approval_group": find_group(self.servicenow, self.hook.cluster.change_control.approval_group),
        }


# ---- onboarding -------------------------------------------------------------------------------------
class PlanOnboardingOperator(LifecycleOperator):
    """Read-only: the bucket's posture (through the amazon provider's S3Hook), archiving elsewhere,
    a stanza of another database system, and what would change. Skips the run when nothing would."""

    def execute_on_cluster(self, context) -> dict:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        cluster = self.hook.cluster
        problems = bucket_posture_problems(S3Hook(aws_conn_id=cluster.connections.aws).get_conn(), cluster.repo.bucket)
        plan = plan_onboarding(
            cluster,
            runner=self.hook.os_runner(),
            pgbackrest_for=self.hook.client_for,
            inventory_path=self.hook.inventory_file,
            bucket_problems=problems,
        )
        self.log.info("onboarding plan for %s: %s", cluster.name, plan.describe())
        if plan.nothing_to_do:
            raise AirflowSkipException(f"cluster {cluster.name!r} is {plan.describe()}")
        return {**plan.as_dict(), **self.who_asked(context)}


class OpenChangeOperator(LifecycleOperator):
    """Open (or, on a retry, find) this run's normal change, describing what will be done."""

    template_fields: Sequence[str] = ("cluster", "plan", "servicenow_conn_id", "summary")

    def __init__(self, *, workflow: str, summary: Any, **kwargs: Any) -> None:
        # `plan`: the first step's XCom, holding the requester and the approval group
        super().__init__(**kwargs)
        self.workflow = workflow
        self.summary = summary

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        reason = dict(context["params"]).get("reason") or f"Rewind {self.workflow} of {cluster.name}"

        requester = Person(**{**self.plan["requester"], "amr": tuple(self.plan["requester"].get("amr", ()))})

        def fields() -> dict:
            return {
                "requested_by": requester.sys_id,
                "assignment_group": self.plan["approval_group"],
                "short_description": f"Rewind {self.workflow}: {cluster.name} (stanza {cluster.stanza})",
                "description": (
                    f"{self.summary}\nReason: {free_text(reason)}\nRequested by: {requester.describe()}\nAirflow run: {context['run_id']}"
                )[:MAX_NOTE_CHARS],
                "justification": reason,
                "implementation_plan": str(self.summary)[:MAX_NOTE_CHARS],
                "backout_plan": "The previous postgresql.auto.conf settings are in this change's notes; set them back and restart.",
                "cmdb_ci": cluster.name,
            }

        change = open_change(
            self.servicenow, correlation=correlation_id(context["ti"].dag_id, context["run_id"]), model="normal", fields=fields
        )
        self.log.info("change %s (%s)", change["number"], "created" if change["created"] else "existing")
        # every gate of this run checks the approval against these two (separation of duties)
        return {**change, "requester": requester.sys_id, "approval_group": self.plan["approval_group"]}


class BeginChangeOperator(LifecycleOperator):
    """The change is approved, Scheduled and inside its window now: mark it Implement."""

    def execute_on_cluster(self, context) -> str:
        change = self.gate("begin", implementing=False)
        start_implementing(self.servicenow, change, f"Implementation started by {context['run_id']}")
        return change.number


class ConfigureArchivingOperator(LifecycleOperator):
    """Install pgbackrest.conf, create the stanza, ALTER SYSTEM the archive settings, reload."""

    def execute_on_cluster(self, context) -> dict:
        cluster, runner, plan = self.hook.cluster, self.hook.os_runner(), self.plan
        self.gate("configure")
        # as at the plan, now inside the change window: another tool may have started archiving since
        refuse_if_archiving_elsewhere(cluster, read_settings(runner, cluster))
        before = run_sql(runner, cluster, "select string_agg(name || '=' || setting, ', ') from pg_settings where name like 'archive%'")
        self.servicenow.add_change_note(self.change["sys_id"], f"Settings before onboarding: {before}")
        if plan["install_config"]:
            install_config(cluster, inventory_path=self.hook.inventory_file)
        if plan["stanza_create"]:
            self.hook.get_conn().stanza_create()
        for sql in alter_system_sql(plan["settings"]):
            run_sql(runner, cluster, sql)
        runner.run(reload_argv(cluster), timeout=60)
        return {"settings": plan["settings"], "before": before}


class RestartPostgresOperator(LifecycleOperator):
    """Restart PostgreSQL when the plan needs it (archive_mode, wal_level), only inside the window."""

    template_fields: Sequence[str] = ("cluster", "change", "plan", "servicenow_conn_id", "settings")

    def __init__(self, *, settings: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings  # when given (decommission), ALTER SYSTEM these first

    def execute_on_cluster(self, context) -> str:
        cluster, runner = self.hook.cluster, self.hook.os_runner()
        if self.plan is not None and not self.plan.get("restart"):
            self.log.info("no setting that needs a restart changed: reloaded only")
            return "not needed (reloaded only)"
        self.gate("restart")
        for sql in alter_system_sql(self.settings or {}):
            run_sql(runner, cluster, sql)
        self.hook.postmaster_runner().run(restart_argv(cluster), timeout=360)
        settings = run_sql(runner, cluster, "select string_agg(name || '=' || setting, ', ') from pg_settings where name like 'archive%'")
        self.log.info("PostgreSQL of %s restarted: %s", cluster.name, settings)
        return settings


class PgBackRestCheckOperator(LifecycleOperator):
    """`pgbackrest check`: a WAL switch makes the round trip into the repository."""

    def execute_on_cluster(self, context) -> str:
        return self.hook.get_conn().check().output[-2000:]


class CloseLifecycleChangeOperator(LifecycleOperator):
    """Close the change successful with what was done."""

    template_fields: Sequence[str] = ("cluster", "change", "plan", "servicenow_conn_id", "done")

    def __init__(self, *, done: Any, record_onboarding: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done = done
        self.record_onboarding = record_onboarding

    def execute_on_cluster(self, context) -> dict:
        approver = approved_by(self.servicenow, self.change["sys_id"])
        lines = [f"Rewind run {context['run_id']} on cluster {self.hook.cluster.name} completed."]
        lines += [f"{step}: {value}" for step, value in (self.done or {}).items() if value not in (None, "", [], {})]
        lines.append(f"approved by: {approver or 'unknown'}")
        text = "\n".join(lines)[:MAX_NOTE_CHARS]
        close_change(self.servicenow, self.change["sys_id"], close_code="successful", close_notes=text)
        if self.record_onboarding:
            mark_onboarded(self.hook.cluster, run_id=context["run_id"], change=self.change["number"], how="the onboarding DAG")
        self.log.info("closed %s:\n%s", self.change["number"], text)
        return ClosedChange(number=self.change["number"], close_code="successful", close_notes=text, approved_by=approver).model_dump()


# ---- decommissioning -------------------------------------------------------------------------------
class ValidateDecommissionOperator(LifecycleOperator):
    """The form: the stanza's name typed, a reason; the cluster running (the final full backup needs it)."""

    def execute_on_cluster(self, context) -> dict:
        params = dict(context["params"])
        cluster = self.hook.cluster
        check_decommission_request(cluster, confirm_stanza=params.get("confirm_stanza") or "", reason=params.get("reason") or "")
        try:
            params["delete_repository"] = form_bool(params.get("delete_repository"), "param delete_repository")
        except FormValueError as exc:
            raise DecommissionRefused(str(exc)) from None
        refuse_unless_rewind_archives(cluster, read_settings(self.hook.os_runner(), cluster))
        if params.get("delete_repository"):
            refuse_if_held(cluster, active_holds(cluster))
        info = self.hook.get_conn().info()
        plan = {
            **self.who_asked(context),
            "delete_repository": params["delete_repository"],
            "summary": (
                f"Decommission {cluster.name}: a final full backup into s3://{cluster.repo.bucket}{cluster.repo.path}, archiving "
                "stopped (archive_mode off, restart in the change window), `pgbackrest stop` for the stanza, and "
                + (
                    "the stanza deleted from the repository (stanza-delete --force)."
                    if params.get("delete_repository")
                    else "the repository kept."
                )
            ),
            "backups_before": len(info.backup),
        }
        self.log.info("%s", plan["summary"])
        return plan


class StopArchivingOperator(LifecycleOperator):
    """Archive the current WAL (the final backup's WAL is in the repository), then ALTER SYSTEM
    archive_mode off / archive_command '' and restart inside the window."""

    def execute_on_cluster(self, context) -> str:
        cluster, runner = self.hook.cluster, self.hook.os_runner()
        self.gate("stop_archiving")
        refuse_unless_rewind_archives(cluster, read_settings(runner, cluster))  # again, at the moment of acting
        archive_current_wal(runner, cluster, log=self.log.info)
        for sql in alter_system_sql(archiving_off_settings()):
            run_sql(runner, cluster, sql)
        self.hook.postmaster_runner().run(restart_argv(cluster), timeout=360)
        return run_sql(runner, cluster, "select string_agg(name || '=' || setting, ', ') from pg_settings where name like 'archive%'")


class StopStanzaOperator(LifecycleOperator):
    """`pgbackrest stop`, and `stanza-delete --force` only when the form asked for it."""

    def execute_on_cluster(self, context) -> str:
        self.gate("stop_stanza")
        if self.plan["delete_repository"]:
            refuse_if_held(self.hook.cluster, active_holds(self.hook.cluster))  # again, at the moment of deleting
        client = self.hook.get_conn()
        client.stop()
        if self.plan["delete_repository"]:
            client.stanza_delete()
            done = "pgbackrest stopped for the stanza; the stanza was deleted from the repository"
        else:
            done = "pgbackrest stopped for the stanza; the repository is kept"
        mark_decommissioned(self.hook.cluster, run_id=context["run_id"], change=self.change["number"], repository=done)
        return done
