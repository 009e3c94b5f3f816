"""PitrFailureNotifier: the on_failure_callback of every PITR task.

It settles the restore guard (released when nothing was touched yet; left up in phase `failed` when
the rewind had begun, so backups stay blocked), ends the run's retention hold when nothing was
touched, and writes on the change what this run has really done (from its journal: stopped,
restored, started, promoted, whether the new full backup exists), the state the cluster is in and
what to do next. Everything written is masked and bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk.bases.notifier import BaseNotifier

from rewind import guard as restore_guard
from rewind.change_control import MAX_NOTE_CHARS
from rewind.credentials import bounded, redact
from rewind.inventory import load_inventory
from rewind.pitr.journal import RunJournal
from rewind.pitr.recovery import describe_state
from rewind.retention import end_hold
from rewind.runner import CommandRunner
from rewind.servicenow import ServiceNowError
from rewind_airflow.hooks.pgbackrest import known_secret_values
from rewind_airflow.hooks.servicenow import ServiceNowHook

NEXT_STEPS_PAUSED = (
    "PostgreSQL is paused at the target, read-only and not promoted: nobody can write to it. Next: trigger a new PITR "
    "with another target (it takes over this run's restore guard) or with target_type latest to return to the state "
    "before this rewind (nothing is lost); see the README, 'When the data checks fail'."
)


class PitrFailureNotifier(BaseNotifier):
    template_fields: Sequence[str] = ("cluster",)

    def __init__(self, *, cluster: str, servicenow_conn_id: str = "servicenow_default") -> None:
        super().__init__()
        self.cluster = cluster
        self.servicenow_conn_id = servicenow_conn_id

    def notify(self, context) -> None:
        ti, run_id = context["ti"], context["run_id"]
        # stop_restore_promote runs several runbook steps: its failure names the one that failed
        step = getattr(context.get("exception"), "pitr_step", None) or ti.task_id
        task = "" if step == ti.task_id else f"task {ti.task_id}, "
        exception = bounded(redact(str(context.get("exception")), known_secret_values()), 1500)
        cluster = load_inventory().get(self.cluster)
        journal = RunJournal.load(cluster, run_id)
        try:
            held = restore_guard.read_guard(cluster)
            guard = restore_guard.fail(cluster, run_id, step)
        except Exception as exc:  # settling the guard must never hide the original failure
            guard_text = f"Restore guard state unknown ({exc})."
        else:
            if guard is not None and guard.run_id == run_id:
                guard_text = f"Restore guard is up (phase failed at {step}): backups of {cluster.name} are blocked until a DBA clears it or a new PITR takes it over."
            elif held is not None and held.run_id == run_id:
                guard_text = "The restore guard is released: nothing blocks backups."
            else:
                guard_text = f"This run does not hold the restore guard ({held.describe() if held else 'none is up'})."
        if not journal.at("stopped"):
            end_hold(cluster, run_id, keep_days=0)  # this run never touched the cluster: nothing to keep for it
        try:
            state = describe_state(CommandRunner(os_user=cluster.postgres.os_user), cluster)
        except Exception as exc:  # describing must never hide the original failure
            state = f"cluster state unknown ({exc})"
        lines = [
            f"Rewind PITR run {run_id}: step {step} failed ({task}try {ti.try_number}): {exception}",
            f"What this run did: {journal.describe()}.",
            f"Cluster {cluster.name}: {state}. {guard_text}",
        ]
        if "paused" in state and journal.at("at_target") and not journal.at("promoted"):
            lines.append(NEXT_STEPS_PAUSED)
        lines.append("The run has failed; see the Airflow task log.")
        note = redact("\n".join(lines), known_secret_values())[:MAX_NOTE_CHARS]
        self.log.info("%s", note)
        sys_id = journal.data.get("change_sys_id")
        if not sys_id:
            return  # failed before a change existed: the run's log says it all
        try:
            ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn().add_change_note(sys_id, note)
        except ServiceNowError as exc:
            self.log.error("could not add the work note to the change: %s", exc)


class ChangeFailureNotifier(BaseNotifier):
    """on_failure_callback of the onboarding and decommissioning steps: which step failed, and why,
    on the run's change (when it has one yet). Masked and bounded."""

    template_fields: Sequence[str] = ("change_sys_id",)

    def __init__(self, *, change_sys_id: str, servicenow_conn_id: str = "servicenow_default") -> None:
        super().__init__()
        self.change_sys_id = change_sys_id
        self.servicenow_conn_id = servicenow_conn_id

    def notify(self, context) -> None:
        if not self.change_sys_id or self.change_sys_id == "None":
            return  # failed before the change was opened: the run's log says it all
        ti = context["ti"]
        exception = bounded(redact(str(context.get("exception")), known_secret_values()), 1500)
        note = f"Rewind run {context['run_id']}: step {ti.task_id} failed (try {ti.try_number}): {exception}\nSee the Airflow task log."
        try:
            ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn().add_change_note(self.change_sys_id, note[:MAX_NOTE_CHARS])
        except ServiceNowError as exc:
            self.log.error("could not add the work note to the change: %s", exc)
