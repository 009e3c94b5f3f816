"""Operators for the PITR workflow. Each is one runbook step; the logic lives in rewind.pitr.

Three records keep a rewind honest whatever is cleared, re-run or marked by hand:
- the change in ServiceNow, re-read by every step that stops, restores or starts PostgreSQL: it must
  be approved, Scheduled/Implement (Implement once this run has begun) and inside its window now;
- the run's journal on the database host (rewind.pitr.journal): once PostgreSQL was started on the
  restored data, no step of the run stops or restores it again; before that, a retry of the stop,
  the restore or the start finishes the same rewind under the same change;
- the cluster's restore guard (rewind.guard): one PITR at a time, backups blocked while it rewinds.

Inputs arrive as templated fields rendered as native objects (the DAG sets
render_template_as_native_obj), e.g. request="{{ ti.xcom_pull(task_ids='validate_params') }}".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from rewind import guard as restore_guard
from rewind import metrics
from rewind.change_control import (
    MAX_NOTE_CHARS,
    ClosedChange,
    Person,
    approved_by,
    close_change,
    find_group,
    require_gate,
    start_implementing,
)
from rewind.errors import PreflightError, RewindError
from rewind.lifecycle import restore_command
from rewind.pitr.change import check_given_change, ensure_change, left_at, run_note, summary
from rewind.pitr.clone import (
    CloneOutOfRoom,
    ClonePaths,
    check_clone_possible,
    check_undo_possible,
    clone_instance,
    clone_paths,
    finish_interrupted_swap,
    free_space_watch,
    mark_history_for_archiving,
    out_of_room,
    remove_clone,
    reserve_bytes,
    swap,
    undo_paths,
    write_undo_recovery,
)
from rewind.pitr.journal import JOURNAL_XCOM_KEY, RunJournal, snapshot
from rewind.pitr.plan import RestorePlan
from rewind.pitr.preflight import pitr_preflight, replan
from rewind.pitr.recovery import DataCheckFailed, archive_current_wal, archive_left_behind, is_running, run_data_checks
from rewind.pitr.request import PitrRequest, parse_request
from rewind.pitr.results import (
    CheckResult,
    DecisionResult,
    DowntimeResult,
    PromoteResult,
    RecoveryResult,
    RestoreResult,
    StartResult,
    StopResult,
)
from rewind.postgres import control_timeline, live_timeline, postmaster_pid, run_sql
from rewind.restore import STATE_SQL, RecoveryTarget, RestoreExecutor
from rewind.retention import end_hold, hold_swapped_back, place_hold, set_hold_change, set_hold_kept_dir
from rewind.scratch import free_port
from rewind.wal import read_history
from rewind_airflow.hooks.pgbackrest import known_secret_values
from rewind_airflow.identity import requester_of
from rewind_airflow.operators.base import ChangeControlledOperator, Refused
from rewind_airflow.operators.pgbackrest import PgBackRestBackupOperator
from rewind_airflow.run_note import set_run_note


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def airflow_base_url() -> str:
    """Where people open Airflow's UI ([api] base_url), for links in changes and notes."""
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="http://127.0.0.1:8080").rstrip("/")


def run_url(context) -> str:
    return f"{airflow_base_url()}/dags/{context['ti'].dag_id}/runs/{context['run_id']}"


class PitrStepFailed(RewindError):
    pass


class PitrOperator(ChangeControlledOperator):
    """A step of one PITR run: the request, the run's journal, its change in ServiceNow."""

    template_fields: Sequence[str] = ("cluster", "request", "servicenow_conn_id")

    def __init__(self, *, request: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    @property
    def pitr_request(self) -> PitrRequest:
        return PitrRequest.model_validate(self.request)

    def execute(self, context) -> Any:
        return self.publishing_journal(context, super().execute, context)

    def publishing_journal(self, context, step: Callable[..., Any], *args: Any) -> Any:
        """Run `step`, then publish the run's journal as this try left it (JOURNAL_XCOM_KEY): the
        audit page's record of what the run did, whether the try succeeded, failed, refused or
        parked. A failure to publish is logged, never raised over the step's own outcome."""
        failed = None
        try:
            return step(*args)
        except AirflowSkipException:
            raise
        except Exception as exc:
            original = exc.__cause__ if isinstance(exc, Refused) and exc.__cause__ else exc  # the refusal's own kind
            failed = f"{type(original).__name__}: {exc}"[:2000]
            raise
        finally:
            try:
                ti = context["ti"]
                record = snapshot(self.journal(context), task_id=ti.task_id, try_number=ti.try_number, failed=failed)
                ti.xcom_push(key=JOURNAL_XCOM_KEY, value=record.model_dump(mode="json"))
            except Exception as exc:  # the journal unreadable, the cluster unknown: the step's outcome stands
                self.log.warning("the run's journal was not published for the audit page: %s", exc)

    @property
    def runner(self):
        """psql and pg_ctl as the OS user, without repository secrets."""
        return self.hook.os_runner()

    def journal(self, context) -> RunJournal:
        return RunJournal.load(self.hook.cluster, context["run_id"], dag_id=context["ti"].dag_id)

    def gate(self, journal: RunJournal, *, step: str, implementing: bool):
        sys_id = journal.data.get("change_sys_id")
        if not sys_id:
            raise PitrStepFailed(f"{step}: this run has no change bound to it (ensure_change did not run): nothing was done")
        change = require_gate(
            self.servicenow,
            sys_id,
            step=step,
            implementing=implementing,
            requester=(journal.data.get("requester") or {}).get("sys_id"),
            approval_group=journal.data.get("approval_group"),
        )
        self.log.info("%s: %s is approved, %s, inside its window", step, change.number, change.state_name)
        return change

    def requested_by(self, journal: RunJournal) -> str | None:
        requester = journal.data.get("requester")
        return Person(**{**requester, "amr": tuple(requester.get("amr", ()))}).describe() if requester else None

    def approved_by(self, journal: RunJournal) -> str | None:
        """The approvers ServiceNow recorded, by name: for the close notes and the run note."""
        return approved_by(self.servicenow, journal.data["change_sys_id"])

    def restore_plan(self, request: PitrRequest, plan: RestorePlan) -> None:
        """`pgbackrest restore --delta` of the plan's backup set, on its numeric timeline, to the
        request's target, into the cluster's data directory (the restore executor, rewind.restore)."""
        self.hook.restore_executor().restore(RecoveryTarget.of(request, plan))

    def data_checks(self, request: PitrRequest, *, cluster=None) -> list[CheckResult]:
        """The request's checks as the check role, read-only (rewind.pitr.recovery.run_data_checks),
        on the cluster (or `cluster`: the same definition pointed at a clone); raises
        DataCheckFailed with every result when one fails."""
        cluster = cluster or self.hook.cluster
        self.hook.postmaster_secrets()  # known to this process, so a check's answer is masked against them
        return run_data_checks(
            self.runner,
            cluster,
            list(request.validation_sql),
            database=request.validation_database or cluster.postgres.database,
            secrets=known_secret_values(),
            log=self.log.info,
        )

    def note(self, journal: RunJournal, text: str) -> None:
        self.servicenow.add_change_note(journal.data["change_sys_id"], text[:MAX_NOTE_CHARS])

    # ---- clone mode (rewind.pitr.clone) --------------------------------------------------------------
    def clone_paths(self, context) -> ClonePaths:
        return clone_paths(self.hook.cluster, context["run_id"])

    def clone_executor(self, context, journal: RunJournal) -> RestoreExecutor:
        """The restore executor on this run's clone (its port chosen once, kept in the journal); one
        per task try, so the start's credentials are read once."""
        if getattr(self, "_clone_executor", None) is not None:
            return self._clone_executor
        port = journal.data.get("clone_port")
        if port is None:
            port = free_port()
            journal.set(clone_port=port)
        self._clone_executor = RestoreExecutor(
            self.hook.get_conn(),
            clone_instance(self.hook.cluster, self.clone_paths(context), port=int(port)),
            runner=self.runner,
            postmaster_runner=self.hook.postmaster_runner(),
            log=self.log.info,
        )
        return self._clone_executor

    def cutover(self, context, journal: RunJournal) -> StopResult:
        """The change re-read, the clone still paused where it was checked; a restartpoint on the
        clone and a checkpoint on production while it serves; production's current WAL archived and
        production stopped; then the clone promoted on its private socket (it was paused at the
        target: nothing to replay), stopped, the directories swapped (rewind.pitr.clone.swap,
        journaled) and production started on the clone's, a primary at once: no replay in the
        downtime, whatever the size of the database or of the WAL the clone replayed. A clone found
        not running and not promoted (a host restarted) is swapped in as it is: it recovers to the
        target and pauses again, and the promote step promotes it. A retry goes on from where the
        journal says; once swapped, it never stops again."""
        cluster, run_id, runner = self.hook.cluster, context["run_id"], self.runner
        paths = self.clone_paths(context)
        production = self.hook.restore_executor()
        plan = RestorePlan.model_validate(journal.data["plan"])
        pid_before = None
        if not journal.at("stopped"):
            journal.refuse_if_rewound("cutover")
            _require_claim(cluster, run_id)
            if not journal.at("checked"):
                raise PitrStepFailed("cutover refused: the data checks on the clone did not pass; production was not touched")
            clone = self.clone_executor(context, journal)
            self.servicenow  # noqa: B018 (the client is built here, in this thread)

            def clone_still_at_target() -> None:
                recorded = RecoveryResult.model_validate(journal.data["clone_recovery"]).replay_lsn
                if clone.instance.pid() is None:
                    return  # stopped by an earlier try, at a restartpoint: nothing replayed since
                state = run_sql(runner, clone.cluster, STATE_SQL, timeout=30)
                if state != f"t|paused|{recorded}":
                    raise PitrStepFailed(
                        f"cutover refused: the clone is no longer paused where it was checked ({state}, checked at {recorded})"
                    )

            change, _ = _with_gate(lambda: self.gate(journal, step="cutover", implementing=True), clone_still_at_target)
            restore_guard.begin_rewind(cluster, run_id, change=change.number, timeline_before=journal.data.get("timeline_before"))
            # Checkpoints while production still serves: the clone's (a restartpoint) and production's
            # flush what they hold, so the promotion's and the shutdowns' inside the downtime write little.
            if clone.instance.pid():
                run_sql(runner, clone.cluster, "checkpoint", timeout=600)
            pid_before = production.instance.pid()
            if pid_before:
                run_sql(runner, cluster, "checkpoint", timeout=600)
            journal.set(stop_started_at=_now())
            if pid_before:
                archive_current_wal(runner, cluster, log=self.log.info)  # every commit up to now in the repository
            production.stop(mode="fast")
            archive_left_behind(self.hook.get_conn(), cluster, log=self.log.info)
            journal.record("stopped")
        if not journal.at("swapped"):
            clone = self.clone_executor(context, journal)
            if not journal.at("clone_promoted") and clone.instance.pid():
                # Production is down: the clone, paused at the target, becomes the new timeline's
                # primary on its private socket, and its restart below replays nothing.
                timeline = clone.promote()
                mark_history_for_archiving(paths.clone_dir, timeline)
                journal.record("clone_promoted")
                self.log.info("the clone is promoted, on timeline %s", timeline)
            clone.stop(mode="fast")
            self.log.info("cutover: %s", swap(paths, log=self.log.info))
            # kept as long as the pre-rewind backups and WAL are: released by the first expire after the hold ends
            set_hold_kept_dir(cluster, run_id, str(paths.pre_rewind_dir))
            journal.record("swapped")
            shutil.rmtree(paths.run_dir, ignore_errors=True)
        if not journal.at("started") or not production.instance.pid():
            restore_guard.held_by(cluster, run_id)
            journal.set(log_offset=production.start())
            journal.record("started")
        promoted = bool(journal.at("clone_promoted"))
        production.wait(
            "promote" if promoted else "pause", since_offset=journal.data.get("log_offset", 0), timeout_s=self.recovery_timeout_s
        )
        self.log.info(
            "production runs on the rewound directory, %s; %s is kept, stopped",
            "promoted" if promoted else "paused at the target",
            paths.pre_rewind_dir,
        )
        return StopResult(
            plan=plan,
            pid_before=pid_before,
            timeline_before=journal.data.get("timeline_before"),
            started_at=journal.data.get("stop_started_at") or _now(),
            finished_at=_now(),
        )


class PitrValidateParamsOperator(PitrOperator):
    """Params checked across fields; a given change checked (this cluster's, open, unused); the
    cluster claimed for this run (a second PITR while one is active is refused, naming it)."""

    def execute_on_cluster(self, context) -> dict:
        cluster = self.hook.cluster
        request = parse_request(dict(context["params"]))
        if request.mode_for(cluster.pitr.mode) == "clone":
            request.refuse_in_clone_mode()
        journal = self.journal(context)
        journal.refuse_if_rewound("validate_params")
        # Who asked: a person ServiceNow knows, or nothing happens (the change names them, and they
        # may not approve it themselves).
        requester = requester_of(context, self.servicenow)
        approval_group = find_group(self.servicenow, cluster.change_control.approval_group)
        if request.change_number:
            check_given_change(self.servicenow, cluster, request.change_number, dag_id=context["ti"].dag_id, run_id=context["run_id"])
        guard = restore_guard.claim(
            cluster, dag_id=context["ti"].dag_id, run_id=context["run_id"], run_state=context["ti"].get_dagrun_state, log=self.log.info
        )
        # the failed runs this one continues: their holds end with this run's (retention)
        journal.set(predecessors=list(guard.predecessors), requester=requester.as_dict(), approval_group=approval_group)
        self.log.info("requested by %s", requester.describe())
        self.log.info("PITR request: %s; reason: %s", request.describe(), request.reason)
        return request.model_dump(mode="json")


def _require_claim(cluster, run_id: str) -> restore_guard.Guard:
    guard = restore_guard.read_guard(cluster)
    if guard is None or guard.run_id != run_id:
        raise PitrStepFailed(
            f"cluster {cluster.name!r}: this run does not hold the restore guard ({guard.describe() if guard else 'none'}): re-run validate_params"
        )
    return guard


class PitrPreflightOperator(PitrOperator):
    """Read-only checks and the restore plan, before any change; from here the pre-rewind history
    is held from expiry (rewind.retention)."""

    def execute_on_cluster(self, context) -> dict:
        cluster, request = self.hook.cluster, self.pitr_request
        guard = _require_claim(cluster, context["run_id"])
        journal = self.journal(context)
        if journal.data.get("clone") and journal.at("stopped") and not journal.at("swapped"):
            # this run's cutover (or undo's swap) was cut off between its renames, and the run was
            # cleared: the data directory is put back in place (the clone's or the kept one,
            # production's already aside) before anything reads it; the swap goes on from there
            paths = ClonePaths(**{name: Path(value) for name, value in journal.data["clone"].items()})
            self.log.info("an interrupted swap: %s", finish_interrupted_swap(paths, log=self.log.info))
        pgbackrest = self.hook.get_conn()
        if guard.timeline_before:
            self.log.info(
                "the cluster is mid-rewind (taken over from %s): it ran on timeline %s before", guard.took_over, guard.timeline_before
            )
        plan = pitr_preflight(
            pgbackrest,
            request,
            runner=self.runner,
            inventory_path=self.hook.inventory_file,
            timeline_before=guard.timeline_before,
            log=self.log.info,
        )
        mode, abandoned = request.mode_for(cluster.pitr.mode), plan.timeline
        if mode == "clone":  # refused now, before a change is even opened
            check_clone_possible(cluster, clone_paths(cluster, context["run_id"]), plan)
        if mode == "undo" and not journal.at("swapped"):
            live = control_timeline(self.runner, cluster)
            history = read_history(pgbackrest, live) if live else None
            parents = [tli for tli, _end in history.entries[:-1]] if history else []
            kept = check_undo_possible(
                cluster, self.runner, timeline=plan.timeline, live_timeline=live, parent_of_live=parents[-1] if parents else None
            )
            self.log.info(
                "undo: %s, kept by the rewind that left timeline %s, goes back in place of timeline %s", kept, plan.timeline, live
            )
            abandoned = live or plan.timeline  # what this run's hold keeps: the timeline the undo abandons
            journal.set(undo_kept=str(kept), undo_abandons=abandoned)
            self.log.info(
                "the writes made on timeline %s since the rewind are set aside with the directory the undo replaces, not lost: "
                "rewind_salvage__%s with timeline %s offers them as SQL after the undo",
                abandoned,
                cluster.name,
                abandoned,
            )
        hold = place_hold(cluster, run_id=context["run_id"], info=pgbackrest.info(), timeline=abandoned, reason=request.reason)
        if hold:
            self.log.info("retention %s", hold.describe())
        return plan.as_dict()


class EnsureChangeOperator(PitrOperator):
    """Bind the given change to this run, or find this run's change (a retry), or open one."""

    def execute_on_cluster(self, context) -> dict:
        cluster, journal = self.hook.cluster, self.journal(context)
        requester = journal.data.get("requester")
        change = ensure_change(
            self.servicenow,
            cluster,
            self.pitr_request,
            dag_id=context["ti"].dag_id,
            run_id=context["run_id"],
            run_url=run_url(context),
            requester=Person(**{**requester, "amr": tuple(requester.get("amr", ()))}) if requester else None,
            approval_group=journal.data.get("approval_group"),
            undo_abandons=journal.data.get("undo_abandons"),
        )
        journal.set(change=change["number"], change_sys_id=change["sys_id"])
        restore_guard.set_change(cluster, context["run_id"], change["number"])
        set_hold_change(cluster, context["run_id"], change["number"])
        self.log.info("change %s (%s)", change["number"], "created" if change["created"] else "existing")
        return change


# The steps of the downtime, in runbook order, as the journal, the task log and the change's notes name them.
WINDOW_STEPS = ("stop_postgres", "restore", "start_postgres", "wait_for_target", "validate_data", "promote")
# Clone mode (rewind.pitr.clone): production serves until the cutover; the checks run on the clone.
CLONE_STEPS = ("restore_clone", "start_clone", "wait_for_target", "validate_data", "cutover", "promote")
# Undo (rewind.pitr.clone): the directory a clone-mode rewind kept goes back in place of the data
# directory, recovers to its timeline's end and promotes onto a new timeline.
UNDO_STEPS = ("stop_postgres", "swap_back", "start_postgres", "wait_for_target", "validate_data", "promote")
# A failure here cannot be changed by trying again (recovery did not reach the target, a data check
# failed): the task fails without its retry, and the failure is read.
FINAL_STEPS = ("wait_for_target", "validate_data")


class PitrStepFinal(Refused):
    """A failure of a PITR step a retry cannot change, naming the step (Refused, with its step)."""

    def __init__(self, original: BaseException, step: str) -> None:
        super().__init__(original, step)


def _with_gate(gate: Callable[[], Any], work: Callable[[], Any]) -> tuple[Any, Any]:
    """The change gate (one ServiceNow GET) alongside read-only work that must be done before the
    step acts anyway; nothing acts until both are back, and a refusal of the gate is what is reported."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewind-gate") as pool:
        gated = pool.submit(gate)
        try:
            result = work()
        except BaseException:
            gated.result()  # raises the gate's refusal, if there is one
            raise
        return gated.result(), result


class StopRestorePromoteOperator(PitrOperator):
    """The downtime of a rewind, in one task, so that no scheduler hand-off sits inside it:

        stop_postgres -> restore -> start_postgres -> wait_for_target -> validate_data -> promote

    Each step does what it did as a task of its own, in the same order, with the same checks:
    - stop_postgres, the point of no return: re-reads the change and re-plans from the repository as
      it is now; only then raises the restore guard, marks the change Implement, archives the current
      WAL and stops PostgreSQL. A retry after the stop does not stop again;
    - restore: only after this run stopped PostgreSQL and while it is down, the change re-read, the
      plan's backup still valid; `pgbackrest restore --delta` of the plan recorded at the stop (its
      backup set, the request's target, the plan's numeric timeline); a retry converges (--delta);
    - start_postgres: the change re-read; starts recovery without waiting;
    - wait_for_target: until recovery stopped at the target and paused (or promoted) as asked; fails
      loudly when PostgreSQL reports the target was not reached;
    - validate_data: the request's checks as the check role, read-only, on the cluster still paused;
    - promote: only when this run's checks passed (recorded in its journal); returns the new timeline.
    Every step reads the run's journal before acting and records what it did right after. A retry
    (or a clear) after PostgreSQL was started on the restored data goes on from wait_for_target and
    never stops or restores again; once the run has promoted and checked, it refuses outright.
    The gate's ServiceNow GET runs alongside the read-only work that precedes each act (the re-plan,
    the backup check), never after the act."""

    template_fields: Sequence[str] = ("cluster", "request", "plan", "servicenow_conn_id")

    def __init__(self, *, plan: Any, recovery_timeout_s: float = 6 * 3600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.recovery_timeout_s = recovery_timeout_s

    def execute_on_cluster(self, context) -> dict:
        journal = self.journal(context)
        if journal.at("promoted") and journal.at("checked"):
            journal.refuse_if_rewound(self.task_id)
        rewound = journal.rewound
        if rewound:
            self.log.info(
                "PostgreSQL was started on the restored data by an earlier try at %s: going on from wait_for_target", journal.at("started")
            )
        results: dict[str, Any] = {}
        timings: dict[str, float] = {}
        request = self.pitr_request
        mode = journal.data.get("mode") or request.mode_for(self.hook.cluster.pitr.mode)  # a retry keeps its run's
        if mode == "clone":
            request.refuse_in_clone_mode()
        steps = CLONE_STEPS if mode == "clone" else UNDO_STEPS if mode == "undo" else WINDOW_STEPS
        for step in steps:
            if rewound and step in ("stop_postgres", "restore", "restore_clone"):
                continue
            if step == "swap_back" and journal.at("restored"):  # swapped, with its recovery settings, by an earlier try
                continue
            if step == "promote" and request.dba_decides:
                self.log.info("not promoting: the DBA decides at the target (decide_at_target), with the checks' results in hand")
                continue
            if step == "cutover" and request.dba_decides:
                self.log.info("no cutover yet: the DBA decides on the clone (decide_at_target), production serving meanwhile")
                continue
            self.log.info("---- %s ----", step)
            began = time.monotonic()
            try:
                method = f"_clone_{step}" if mode == "clone" and hasattr(self, f"_clone_{step}") else f"_{step}"
                results[step] = getattr(self, method)(context, journal)
            except AirflowFailException as exc:
                exc.pitr_step = step
                raise
            except Exception as exc:
                if step in FINAL_STEPS:
                    raise PitrStepFinal(exc, step) from exc
                exc.pitr_step = step  # the failure note names the step (rewind_airflow.notifiers.servicenow)
                raise
            timings[step] = round(time.monotonic() - began, 3)
        self.log.info("steps: %s", ", ".join(f"{step} {seconds:.2f}s" for step, seconds in timings.items()))
        return DowntimeResult(
            stop=results.get("stop_postgres") or results.get("cutover"),
            restore=results.get("restore") or results.get("restore_clone") or results.get("swap_back"),
            start=results.get("start_postgres") or results["start_clone"],
            recovery=results["wait_for_target"],
            checks=results["validate_data"],
            promote=results.get("promote"),
            timings_s=timings,
        ).to_xcom()

    # ---- stop_postgres ------------------------------------------------------------------------------
    def _stop_postgres(self, context, journal: RunJournal) -> StopResult:
        started = _now()
        cluster, runner, run_id = self.hook.cluster, self.runner, context["run_id"]
        journal.refuse_if_rewound("stop_postgres")
        _require_claim(cluster, run_id)
        implementing = journal.at("stopped") is not None
        self.servicenow  # noqa: B018 (the client is built here, in this thread)

        def prepare() -> tuple[RestorePlan | None, int | None]:
            # Nothing is stopped unless the restore and the restart can get their credentials: the
            # repository secrets (a Vault lease, revoked when this task ends) and PostgreSQL's own.
            pgbackrest = self.hook.get_conn()
            self.hook.postmaster_secrets()
            if journal.at("stopped") and not is_running(cluster):
                return None, None
            plan = replan(pgbackrest, self.pitr_request, RestorePlan.model_validate(self.plan), runner=runner, log=self.log.info)
            return plan, live_timeline(runner, cluster) if is_running(cluster) else None

        change, (plan, timeline_before) = _with_gate(lambda: self.gate(journal, step="stop_postgres", implementing=implementing), prepare)
        if plan is None:
            self.log.info("PostgreSQL was stopped by an earlier try of this run at %s; not stopping again", journal.at("stopped"))
            return StopResult(
                plan=journal.data["plan"],
                started_at=journal.data.get("stop_started_at", started),
                finished_at=_now(),
                timeline_before=journal.data.get("timeline_before"),
            )
        if plan.backup_set != self.plan["backup_set"]:
            self.note(
                journal,
                f"Rewind PITR run {run_id}: re-planned before stopping: backup {self.plan['backup_set']} is no longer "
                f"the one to use; restoring from {plan.backup_set} (same target, timeline {plan.timeline}).",
            )
        guard = restore_guard.begin_rewind(cluster, run_id, change=change.number, timeline_before=timeline_before)
        journal.set(plan=plan.as_dict(), stop_started_at=started, timeline_before=guard.timeline_before)
        pid = postmaster_pid(cluster)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewind-change") as pool:
            # The change moves to Implement while the current WAL is archived; both before the stop.
            implement = pool.submit(
                start_implementing,
                self.servicenow,
                change,
                f"Implementation started by {run_id}: stopping PostgreSQL of {cluster.name}; plan: {plan.describe()}",
            )
            try:
                if pid:
                    archive_current_wal(runner, cluster, log=self.log.info)
            finally:
                implement.result()
        if not self.hook.restore_executor().stop(mode="fast"):
            self.log.info("PostgreSQL was already stopped")
        # Found stopped (a crash, a DBA), or archiving failed at the shutdown: finished WAL never
        # archived would be destroyed by the restore. Archived now, or nothing is restored.
        archive_left_behind(self.hook.get_conn(), cluster, log=self.log.info)
        journal.record("stopped")
        self._backup_checked = (plan.backup_set, time.monotonic())  # by the re-plan, from the repository as it was at the stop
        return StopResult(plan=plan, pid_before=pid, timeline_before=timeline_before, started_at=started, finished_at=_now())

    # ---- restore ------------------------------------------------------------------------------------
    def _restore(self, context, journal: RunJournal) -> RestoreResult:
        started = _now()
        cluster, request, run_id = self.hook.cluster, self.pitr_request, context["run_id"]
        journal.refuse_if_rewound("restore")
        if not journal.at("stopped"):
            raise PitrStepFailed(
                f"restore refused: PostgreSQL of {cluster.name} was not stopped by this run (stop_postgres did not finish)"
            )
        plan = RestorePlan.model_validate(journal.data["plan"])
        pgbackrest = self.hook.get_conn()
        self.servicenow  # noqa: B018 (the client is built here, in this thread)

        def backup_of_plan_valid() -> bool:
            if postmaster_pid(cluster):
                raise PitrStepFailed(f"PostgreSQL of {cluster.name} is running: refusing to restore over it")
            checked, at = getattr(self, "_backup_checked", (None, 0.0))
            if checked == plan.backup_set:
                # This try re-planned from the repository right before it stopped PostgreSQL, seconds
                # ago, with the restore guard up since (no backup or expire of the stanza runs): asking
                # again would only add to the downtime. pgBackRest itself refuses a set that is gone.
                self.log.info("backup %s was checked by the re-plan %.1fs ago, just before the stop", checked, time.monotonic() - at)
                return True
            backup = pgbackrest.info().get(plan.backup_set)  # a retry: the repository may have changed since
            return backup is not None and not backup.error

        _change, valid = _with_gate(lambda: self.gate(journal, step="restore", implementing=True), backup_of_plan_valid)
        if not valid:
            raise PreflightError(f"backup {plan.backup_set} of the plan is no longer valid in the repository: nothing was restored")
        restore_guard.held_by(cluster, run_id)
        journal.record("restore_started")
        self.restore_plan(request, plan)
        journal.record("restored")
        return RestoreResult(backup_set=plan.backup_set, timeline=plan.timeline, started_at=started, finished_at=_now())

    # ---- swap_back (undo) ---------------------------------------------------------------------------
    def _swap_back(self, context, journal: RunJournal) -> RestoreResult:
        """Undo's restore, in seconds whatever the size: only after this run stopped PostgreSQL, the
        change re-read and the kept directory checked again; the data directory goes aside as this
        run's pre-rewind directory (kept, under this run's hold) and the kept one takes its place
        (rewind.pitr.clone.swap, journaled, converging from any half-swap), with recovery settings
        to its timeline's end. A retry converges."""
        started = _now()
        cluster, run_id = self.hook.cluster, context["run_id"]
        if not journal.at("stopped"):
            raise PitrStepFailed(
                f"swap_back refused: PostgreSQL of {cluster.name} was not stopped by this run (stop_postgres did not finish)"
            )
        plan = RestorePlan.model_validate(journal.data["plan"])
        kept = Path(journal.data["undo_kept"])
        paths = undo_paths(cluster, run_id, kept)
        if not journal.at("swapped"):
            if postmaster_pid(cluster):
                raise PitrStepFailed(f"PostgreSQL of {cluster.name} is running: refusing to swap its directory")
            self.servicenow  # noqa: B018 (the client is built here, in this thread)

            def kept_still_the_end() -> None:
                if kept.exists():  # else a half-swap of this run: swap() finishes it
                    check_undo_possible(cluster, self.runner, timeline=plan.timeline, live_timeline=None, parent_of_live=None)

            _with_gate(lambda: self.gate(journal, step="swap_back", implementing=True), kept_still_the_end)
            restore_guard.held_by(cluster, run_id)
            journal.set(clone=paths.as_dict())
            journal.record("restore_started")
            self.log.info("undo: %s", swap(paths, log=self.log.info))
            set_hold_kept_dir(cluster, run_id, str(paths.pre_rewind_dir))  # the branch this undo abandons, kept in turn
            hold_swapped_back(cluster, str(kept), by_run=run_id)
            journal.record("swapped")
        if write_undo_recovery(cluster, paths.data_dir, timeline=plan.timeline, run_id=run_id, restore_command=restore_command(cluster)):
            self.log.info(
                "recovery to the end of timeline %s written into %s (recovery.signal, postgresql.auto.conf)", plan.timeline, paths.data_dir
            )
        journal.record("restored")
        return RestoreResult(backup_set=plan.backup_set, timeline=plan.timeline, started_at=started, finished_at=_now())

    # ---- start_postgres -----------------------------------------------------------------------------
    def _start_postgres(self, context, journal: RunJournal) -> StartResult:
        """Start PostgreSQL on the restored data without waiting: recovery is watched by the next step."""
        cluster, run_id = self.hook.cluster, context["run_id"]
        if journal.rewound and is_running(cluster):
            self.log.info("PostgreSQL was started on the restored data at %s and is running", journal.at("started"))
            return StartResult(log_offset=journal.data.get("log_offset", 0), started_at=journal.at("started"))
        if not journal.at("restored"):
            raise PitrStepFailed(f"start refused: the restore of this run did not finish; PostgreSQL of {cluster.name} stays stopped")
        if not journal.rewound:
            self.gate(journal, step="start_postgres", implementing=True)
        restore_guard.held_by(cluster, run_id)
        offset = self.hook.restore_executor().start()
        journal.set(log_offset=offset)
        journal.record("started")
        return StartResult(log_offset=offset, started_at=journal.at("started"))

    # ---- wait_for_target ----------------------------------------------------------------------------
    def _wait_for_target(self, context, journal: RunJournal) -> RecoveryResult:
        """Until recovery stopped at the target and paused (or promoted) as asked; loud when PostgreSQL
        reports the target was not reached."""
        result = self.hook.restore_executor().wait(
            self.pitr_request.action, since_offset=journal.data.get("log_offset", 0), timeout_s=self.recovery_timeout_s
        )
        self.log.info("recovery: %s", result.to_xcom())
        journal.record("at_target")
        if result.state == "promoted":
            journal.record("promoted")
        return result.model_copy(update={"finished_at": _now()})

    # ---- validate_data ------------------------------------------------------------------------------
    def _validate_data(self, context, journal: RunJournal) -> list[CheckResult]:
        """The request's data checks as the check role, read-only; with target_action pause the
        cluster is still paused at the target, so nobody has written to it yet."""
        request = self.pitr_request
        try:
            results = self.data_checks(request)
        except DataCheckFailed as exc:
            if not request.dba_decides:
                raise
            # The DBA decides with this in hand (move the target or abort); promote stays refused.
            self.log.warning("%s: the DBA decides next (decide_at_target)", exc)
            return exc.results
        journal.record("checked")
        return results

    # ---- promote ------------------------------------------------------------------------------------
    def _promote(self, context, journal: RunJournal) -> PromoteResult:
        """Promote when recovery paused at the target and this run's data checks passed (recorded in
        its journal: a step that did not run to success here does not count)."""
        if self.pitr_request.action == "pause" and not journal.at("checked") and not journal.at("promoted"):
            raise PitrStepFailed(
                f"promote refused: the data checks of this run did not pass (validate_data was not run to success here); "
                f"{self.hook.cluster.name} stays paused and read-only at the target"
            )
        timeline = self.hook.restore_executor().promote()
        journal.record("promoted")
        self.log.info("PostgreSQL is promoted, on timeline %s", timeline)
        return PromoteResult(timeline=timeline, finished_at=_now())

    # ---- clone mode (the clone: PitrOperator.clone_executor; the cutover: PitrOperator.cutover) ----------
    def _clone_restore_clone(self, context, journal: RunJournal) -> RestoreResult:
        """Re-plan from the repository as it is now, then restore the plan's backup into the clone
        beside the data directory, paused at the target; production is not touched and keeps
        serving. A restore that fails removes the clone (production was never touched)."""
        started = _now()
        cluster, run_id, request = self.hook.cluster, context["run_id"], self.pitr_request
        journal.refuse_if_rewound("restore_clone")
        _require_claim(cluster, run_id)
        paths = self.clone_paths(context)
        if journal.at("stopped") or (journal.at("clone_restored") and paths.clone_dir.is_dir()):
            self.log.info("the clone %s was restored by an earlier try at %s", paths.clone_dir, journal.at("clone_restored"))
            plan = RestorePlan.model_validate(journal.data["plan"])
            return RestoreResult(
                backup_set=plan.backup_set, timeline=plan.timeline, started_at=journal.at("clone_restored"), finished_at=_now()
            )
        implementing = journal.at("clone_restore_started") is not None
        self.servicenow  # noqa: B018 (the client is built here, in this thread)

        def prepare() -> tuple[RestorePlan, int | None]:
            pgbackrest = self.hook.get_conn()
            self.hook.postmaster_secrets()  # the clone's restore_command, before anything is written
            plan = replan(pgbackrest, request, RestorePlan.model_validate(self.plan), runner=self.runner, log=self.log.info)
            return plan, live_timeline(self.runner, cluster) if is_running(cluster) else None

        change, (plan, timeline_before) = _with_gate(lambda: self.gate(journal, step="restore_clone", implementing=implementing), prepare)
        check_clone_possible(cluster, paths, plan)
        journal.set(mode="clone", plan=plan.as_dict(), clone=paths.as_dict(), timeline_before=timeline_before)
        if not implementing:
            start_implementing(
                self.servicenow,
                change,
                f"Implementation started by {run_id}: restoring a clone of {cluster.name} into {paths.clone_dir}, production "
                f"serving meanwhile; plan: {plan.describe()}",
            )
        journal.record("clone_restore_started")
        target = dataclasses.replace(RecoveryTarget.of(request, plan), action="pause")  # the cutover promotes
        executor = self.clone_executor(context, journal)
        reserve, fell = reserve_bytes(cluster, paths), {}
        try:
            # The clone shares production's file system: below production's reserve the restore is
            # stopped before production itself could run out of space (WAL it cannot write).
            with free_space_watch(paths.data_dir.parent, reserve, executor.pgbackrest.runner.terminate) as fell:
                executor.restore(target)
            if fell:  # below the reserve before pgBackRest had started: nothing to kill, refused all the same
                raise out_of_room(cluster, paths, reserve=reserve, free=fell["free"])
        except BaseException as exc:
            remove_clone(paths)
            self.log.info("the clone %s was removed; production was not touched", paths.clone_dir)
            if isinstance(exc, CloneOutOfRoom):
                raise
            if fell or "No space left on device" in str(exc):
                raise out_of_room(cluster, paths, reserve=reserve, free=fell.get("free")) from None
            raise
        journal.record("clone_restored")
        return RestoreResult(backup_set=plan.backup_set, timeline=plan.timeline, started_at=started, finished_at=_now())

    def _clone_start_clone(self, context, journal: RunJournal) -> StartResult:
        """Start the clone on its private socket, no TCP listener, archiving off (all on its command line)."""
        if journal.at("stopped"):
            return StartResult(log_offset=journal.data.get("clone_log_offset", 0), started_at=journal.at("clone_started"))
        executor = self.clone_executor(context, journal)
        if journal.at("clone_started") and executor.instance.pid():
            self.log.info("the clone was started by an earlier try at %s and runs", journal.at("clone_started"))
            return StartResult(log_offset=journal.data.get("clone_log_offset", 0), started_at=journal.at("clone_started"))
        offset = executor.start()
        journal.set(clone_log_offset=offset)
        journal.record("clone_started")
        self.log.info("the clone runs on socket %s, port %s", executor.instance.run_dir, executor.instance.port)
        return StartResult(log_offset=offset, started_at=journal.at("clone_started"))

    def _clone_wait_for_target(self, context, journal: RunJournal) -> RecoveryResult:
        """Until the clone paused at the target; loud when it did not reach it (the clone is kept, named)."""
        if journal.at("stopped") and journal.data.get("clone_recovery"):
            return RecoveryResult.model_validate(journal.data["clone_recovery"])
        executor = self.clone_executor(context, journal)
        try:
            result = executor.wait("pause", since_offset=journal.data.get("clone_log_offset", 0), timeout_s=self.recovery_timeout_s)
        except RewindError as exc:
            raise type(exc)(
                f"{exc}; production was not touched; the clone is kept for inspection in {executor.instance.data_dir}"
            ) from None
        result = result.model_copy(update={"finished_at": _now()})
        self.log.info("the clone: %s", result.to_xcom())
        journal.set(clone_recovery=result.to_xcom())
        journal.record("at_target")
        return result

    def _clone_validate_data(self, context, journal: RunJournal) -> list[CheckResult]:
        """The request's checks on the clone, as the check role, read-only; production is still serving."""
        if journal.at("stopped"):
            return [CheckResult.model_validate(check) for check in journal.data.get("clone_checks") or []]
        executor = self.clone_executor(context, journal)
        try:
            results = self.data_checks(self.pitr_request, cluster=executor.cluster)
        except DataCheckFailed as exc:
            journal.set(clone_checks=[check.to_xcom() for check in exc.results])
            if self.pitr_request.dba_decides:  # the DBA decides with this in hand (move the target or abort)
                self.log.warning("%s: the DBA decides next, on the clone (decide_at_target)", exc)
                return exc.results
            raise type(exc)(f"{exc}; production was not touched; the clone is kept in {executor.instance.data_dir}", exc.results) from None
        journal.set(clone_checks=[check.to_xcom() for check in results])
        journal.record("checked")
        return results

    def _clone_cutover(self, context, journal: RunJournal) -> StopResult:
        return self.cutover(context, journal)


class PitrFullBackupOperator(PgBackRestBackupOperator):
    """The new timeline's first full backup: allowed while this run's restore guard is up, annotated
    with the change, recorded in the run's journal (the change's notes say whether it exists)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("backup_type", "full")
        super().__init__(**kwargs)

    def execute_on_cluster(self, context) -> dict:
        journal = RunJournal.load(self.hook.cluster, context["run_id"])
        if journal.clone_mode and journal.data.get("clone_removed") and not journal.at("stopped"):
            # the DBA aborted on the clone: production was never stopped, there is no new timeline
            raise AirflowSkipException(f"no new timeline: the DBA aborted on the clone; {self.hook.cluster.name} was never stopped")
        if not journal.at("promoted"):
            # e.g. decide_at_target or stop_restore_promote marked success by hand: the cluster is
            # paused (or down), and its "new timeline" does not exist yet.
            refused = PitrStepFailed(
                f"{self.task_id} refused: this run has not promoted {self.hook.cluster.name} (its journal records no promotion); "
                "nothing was backed up. Answer the run's question at the target, or let its downtime task finish"
            )
            raise PitrStepFinal(refused, self.task_id)  # a retry cannot change it
        self.restore_run_id = context["run_id"]
        self.extra_annotations = {**self.extra_annotations, "rewind_change": journal.change or "-"}
        record = super().execute_on_cluster(context)
        journal.record("backup", record["label"])
        return record


class ReleaseRestoreGuardOperator(PitrOperator):
    """Lift the restore guard once the new timeline has its full backup: backups may resume."""

    def execute_on_cluster(self, context) -> dict:
        return {"released": restore_guard.release(self.hook.cluster, context["run_id"])}


class CloseChangeOperator(PitrOperator):
    """Close the change (successful) with the run summary, start the hold's last period, and set the
    same summary as the run note."""

    template_fields: Sequence[str] = ("cluster", "request", "steps", "servicenow_conn_id", "airflow_api_conn_id")

    def __init__(self, *, steps: Any, airflow_api_conn_id: str = "airflow_api", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # stop_restore_promote's "stop", "recovery", "checks", "promote" (rewind.pitr.results.DowntimeResult),
        # decide_at_target's return as "decision" (DecisionResult), the full backup's record as "backup"
        self.steps = steps
        self.airflow_api_conn_id = airflow_api_conn_id

    def execute_on_cluster(self, context) -> dict:
        cluster, journal, steps = self.hook.cluster, self.journal(context), self.steps
        # the downtime task's step results (DowntimeResult's fields) and decide_at_target's return
        stop = StopResult.model_validate(steps["stop"]) if steps.get("stop") else None
        recovery = RecoveryResult.model_validate(steps["recovery"])
        checks = [CheckResult.model_validate(check) for check in steps.get("checks") or []]
        promoted = PromoteResult.model_validate(steps["promote"]) if steps.get("promote") else None
        decision = DecisionResult.model_validate(steps.get("decision") or {"asked": False})
        seconds = lambda a, b: (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()  # noqa: E731
        never_stopped = journal.clone_mode and not journal.at("stopped")  # the DBA aborted on the clone
        stop_started = journal.data.get("stop_started_at") or (stop.started_at if stop else None)
        promoted_at = journal.at("promoted") or recovery.finished_at
        if journal.clone_mode:  # restored and recovered on the clone, production serving
            timings = {
                "clone restore (production serving)": seconds(journal.at("clone_restore_started"), journal.at("clone_restored")),
                "clone recovery (production serving)": seconds(journal.at("clone_started"), journal.at("at_target")),
            }
        else:
            timings = {
                "restore": seconds(journal.at("restore_started"), journal.at("restored")),
                "recovery": seconds(journal.at("started"), journal.at("at_target")),
            }
        if not never_stopped:
            timings["downtime (stop to promoted)"] = seconds(stop_started, promoted_at)
            timings["full backup"] = float(steps["backup"]["duration_s"])
        # target_action decide: the DBA's answers and where they left the cluster
        request, recovery, checks, timeline = left_at(
            self.pitr_request, recovery=recovery, checks=checks, promoted=promoted, decision=decision
        )
        requested, approved = self.requested_by(journal), self.approved_by(journal)
        text = summary(
            cluster,
            request,
            run_id=context["run_id"],
            run_url=run_url(context),
            plan=RestorePlan.model_validate(journal.data["plan"]),
            recovery=recovery,
            checks=checks,
            timeline=timeline,
            backup=steps.get("backup"),
            timings=timings,
            requested_by=requested,
            approved_by=approved,
            decisions=decision.decisions,
            undo=(
                f"the directory a clone-mode rewind kept, {journal.data['undo_kept']}, swapped back in (nothing restored) and "
                f"recovered to the end of timeline {journal.data['plan']['timeline']}; the directory it replaced is kept as "
                f"{journal.data['clone']['pre_rewind_dir']}, with the writes made on timeline {journal.data.get('undo_abandons')} "
                f"since the rewind: rewind_salvage__{cluster.name} with timeline {journal.data.get('undo_abandons')} offers them "
                "as SQL to re-apply"
                if journal.data.get("undo_kept") and journal.data.get("clone")
                else None
            ),
        )
        # An abort restored the state before the stop: the change was not implemented as asked.
        close_code = "unsuccessful" if decision.aborted else "successful"
        if not never_stopped:
            metrics.emit(
                cluster.name,
                {
                    "pitr.duration_seconds": seconds(stop_started, _now()),
                    "pitr.downtime_seconds": timings["downtime (stop to promoted)"],
                },
            )
        close_change(self.servicenow, journal.data["change_sys_id"], close_code=close_code, close_notes=text)
        journal.record("closed")
        for run_id in (context["run_id"], *journal.data.get("predecessors", [])):
            hold = end_hold(cluster, run_id, keep_days=cluster.pitr.hold_days)
            if hold:
                self.log.info("retention %s", hold.describe())
        self.log.info("closed %s:\n%s", journal.change, text)
        set_run_note(
            self,
            context,
            run_note(journal.change, text, close_code),
        )
        closed = ClosedChange(
            number=journal.change,
            close_code=close_code,
            close_notes=text,
            approved_by=approved,
            requested_by=requested,
            target=request.describe(),
        )
        return closed.model_dump()
