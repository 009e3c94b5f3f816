"""decide_at_target: a DBA decides, in Airflow, what happens to a cluster paused at its target.

An Airflow human-in-the-loop operator (the task waits in `awaiting_input`, holding no worker slot,
and shows in "Required actions"; only the DBA role may answer, see rewind.roles) that is also a
PITR step: the answers, what they do and their checks are in rewind.pitr.decision. Each answer is
carried out when the task resumes, after the change's gate is read again; a move ends by asking
again, in the same task, so that one run can move its target as often as the DBA needs.

Airflow keeps one response per task instance (the next question clears it), so the answers are
recorded where they stay: the run's journal, a work note on the change, the task log, and finally
the close notes and the run note. A retry of this task (a crash, a clear) carries out an answer
that was recorded but not finished, then asks again; once the cluster is promoted, it only returns
what was done.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param

from rewind import guard as restore_guard
from rewind.change_control import ChangeNotUsable, close_change, open_change, require_gate, start_implementing
from rewind.errors import PreflightError, RewindError
from rewind.pitr.change import reapproval_correlation, reapproval_fields
from rewind.pitr.clone import compare_text, remove_clone
from rewind.pitr.decision import (
    ABORT,
    FORM_FIELDS,
    MOVE,
    OPTIONS,
    PROMOTE,
    NotThisAnswer,
    back_to_latest_request,
    checks_passed,
    describe_decision,
    moved_request,
    question_body,
    require_this_question,
    state_text,
)
from rewind.pitr.journal import RunJournal
from rewind.pitr.plan import RestorePlan
from rewind.pitr.preflight import plan_while_paused
from rewind.pitr.recovery import DataCheckFailed
from rewind.pitr.request import PitrRequest
from rewind.pitr.results import CheckResult, DecisionRecord, DecisionResult, DowntimeResult, RecoveryResult
from rewind.postgres import run_sql
from rewind.restore import RecoveryTarget, RestoreExecutor
from rewind_airflow.operators.pitr import PitrOperator, PitrStepFailed, PitrStepFinal, airflow_base_url, run_url
from rewind_airflow.run_note import airflow_rest_client, set_run_note
from rewind_airflow.triggers.servicenow import ChangeApprovalTrigger


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class DecisionTimedOut(RewindError):
    """No DBA answered within the decision timeout; the cluster stays paused."""


class ClusterChangedOutsideRun(RewindError):
    """The paused cluster was promoted or resumed by someone else: a restore would destroy writes."""


class DecideAtTargetOperator(PitrOperator, HITLOperator):
    """Asks the DBA, when the run's request has target_action `decide`: promote, move the target,
    or abort back to latest. Any other run passes through (nothing to decide)."""

    template_fields: Sequence[str] = ("cluster", "request", "servicenow_conn_id", "airflow_api_conn_id")

    def __init__(
        self,
        *,
        response_timeout: timedelta,
        airflow_api_conn_id: str = "airflow_api",
        recovery_timeout_s: float = 6 * 3600,
        reapproval_poll_s: float = 60.0,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's (the trigger form), merged in by Airflow: the question has its own form
        super().__init__(
            subject="Paused at the target: promote, move the target, or abort?",
            options=list(OPTIONS),
            params={name: Param(**field) for name, field in FORM_FIELDS.items()},
            response_timeout=response_timeout,
            **kwargs,
        )
        self.airflow_api_conn_id = airflow_api_conn_id
        self.recovery_timeout_s = recovery_timeout_s
        self.reapproval_poll_s = reapproval_poll_s

    # ---- the state this run is in ----------------------------------------------------------------
    def current_request(self, journal: RunJournal) -> PitrRequest:
        """The target the cluster is paused at: the DBA's last move, else the trigger's."""
        return PitrRequest.model_validate(journal.data.get("request") or self.request)

    @staticmethod
    def question(journal: RunJournal) -> int:
        """The question being asked: the run's count of targets the cluster was paused at."""
        return int(journal.data.get("question") or 1)

    def approved_requests(self, journal: RunJournal) -> list[PitrRequest]:
        """What promotion the run may do: the change's target (and window), and each target a
        follow-on change approved since."""
        return [PitrRequest.model_validate(self.request)] + [PitrRequest.model_validate(r) for r in journal.data.get("reapproved", [])]

    @staticmethod
    def on_clone(journal: RunJournal) -> bool:
        """Clone mode before its cutover: what is paused at the target is the clone; production serves."""
        return journal.clone_mode and not journal.at("stopped")

    def paused_executor(self, context, journal: RunJournal) -> RestoreExecutor:
        """The restore executor on what is paused at the target: the clone, or the cluster itself."""
        return self.clone_executor(context, journal) if self.on_clone(journal) else self.hook.restore_executor()

    @staticmethod
    def recovery_here(journal: RunJournal) -> RecoveryResult | None:
        recovery = journal.data.get("decide_recovery")
        return RecoveryResult.model_validate(recovery) if recovery else None

    @staticmethod
    def checks_here(journal: RunJournal) -> list[CheckResult]:
        return [CheckResult.model_validate(check) for check in journal.data.get("decide_checks") or []]

    @staticmethod
    def decisions(journal: RunJournal) -> list[DecisionRecord]:
        return [DecisionRecord.model_validate(decision) for decision in journal.data.get("decisions", [])]

    def result(self, journal: RunJournal) -> dict:
        return DecisionResult(
            asked=True,
            decisions=self.decisions(journal),
            request=self.current_request(journal),
            plan=journal.data.get("plan"),
            recovery=journal.data.get("decide_recovery"),
            checks=journal.data.get("decide_checks"),
            timeline=journal.data.get("decide_timeline"),
            aborted=journal.data.get("aborted", False),
        ).to_xcom()

    # ---- first execution (and every retry) -------------------------------------------------------
    def execute_on_cluster(self, context) -> dict:
        request = self.pitr_request
        if not request.dba_decides:
            self.log.info("nothing to decide: target_action is %s", request.target_action)
            return DecisionResult(asked=False).to_xcom()
        journal = self.journal(context)
        if journal.at("promoted"):
            decisions = self.decisions(journal)
            self.log.info("already decided and carried out: %s", describe_decision(decisions[-1]) if decisions else "no answer recorded")
            return self.result(journal)
        if not (journal.at("clone_started") if self.on_clone(journal) else journal.at("started")):
            raise PitrStepFailed(
                "nothing to decide: this run has not started PostgreSQL on restored data (stop_restore_promote did not run)"
            )
        pending = journal.data.get("pending_decision")
        if pending:  # recorded by an earlier try, not finished: finish it
            pending = DecisionRecord.model_validate(pending)
            self.log.info("carrying out the answer an earlier try recorded: %s", describe_decision(pending))
            return self.carry_out(context, journal, pending)
        unread = self.unread_answer(context, journal)
        if unread:
            self.log.info("an answer to this run's last question was not carried out by the try that asked: carrying it out")
            return self.answered(context, journal, unread)
        if "decide_checks" not in journal.data:  # first question: the downtime task's results
            pulled = context["ti"].xcom_pull(task_ids="stop_restore_promote")
            downtime = DowntimeResult.model_validate(pulled) if pulled else None
            journal.set(
                decide_recovery=downtime.recovery.to_xcom() if downtime else None,
                decide_checks=[check.to_xcom() for check in downtime.checks] if downtime else [],
            )
        return self.ask(context, journal)

    # ---- the question ----------------------------------------------------------------------------
    def ask(self, context, journal: RunJournal, *, problem: str | None = None):
        cluster = self.hook.cluster
        text = state_text(
            cluster.name,
            self.current_request(journal),
            change=journal.change,
            recovery=self.recovery_here(journal),
            checks=self.checks_here(journal),
            decisions=self.decisions(journal),
            problem=problem,
            question=self.question(journal),
            compare="Production serves, untouched; how to compare it with the clone side by side: the question's page."
            if self.on_clone(journal)
            else None,
        )
        link = self.generate_link_to_ui(task_instance=context["ti"], base_url=airflow_base_url())
        self.log.info("asking the DBA (%s):\n%s", link, text)
        question, _, details = text.partition("\n")  # where to answer right under the question: Airflow bounds a note
        set_run_note(self, context, f"{question}\nAnswer: {link}\n{details}")
        if not journal.data.get("asked_at"):  # the first question: whoever follows the change learns where to answer
            paused = (
                f"a clone of {cluster.name} is paused read-only at the target, production serving"
                if self.on_clone(journal)
                else (f"{cluster.name} is paused read-only at the target")
            )
            self.note(journal, f"Rewind PITR run {context['run_id']}: {paused}; a DBA decides in Airflow: {link}")
        compare = self.compare(context, journal)
        if compare:
            self.log.info("%s", compare)
        self.body = question_body(cluster.name, journal.change, compare=compare)
        # Airflow keeps a task's first question for every later one of the try: this default is
        # right for the first question only, which is the point (a page left open answers question 1)
        self.params["question"] = Param(**{**FORM_FIELDS["question"], "default": self.question(journal)})
        journal.set(asked_at=_now())
        HITLOperator.execute(self, context)  # writes the question, parks the task in awaiting_input

    def compare(self, context, journal: RunJournal) -> str | None:
        """Clone mode: how to look at the clone and production side by side."""
        if not self.on_clone(journal):
            return None
        cluster = self.hook.cluster
        database = self.current_request(journal).validation_database or cluster.postgres.database
        return compare_text(cluster, self.clone_paths(context), port=int(journal.data["clone_port"]), database=database)

    # ---- the answer ------------------------------------------------------------------------------
    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        return self.publishing_journal(context, self._complete, context, event)

    def _complete(self, context, event: dict[str, Any]) -> Any:
        try:
            if event.get("error_type") == "timeout":
                raise self.no_answer(self.journal(context))
            answer = HITLOperator.execute_complete(self, context, event)  # validated
            return self.answered(context, self.journal(context), answer)
        finally:
            self.hook.release()

    def no_answer(self, journal: RunJournal) -> PitrStepFinal:
        """No answer within the decision timeout: the task fails once (a retry would only ask for
        another timeout's worth), the cluster stays paused, and the failure says how to go on."""
        hours = self.response_timeout.total_seconds() / 3600 if self.response_timeout else 0
        cluster = self.hook.cluster
        message = (
            f"no DBA answered within {hours:g} h: {cluster.name} stays paused read-only at {self.current_request(journal).describe()} "
            f"(change {journal.change or '-'}); to decide now, clear decide_at_target (it asks again); "
            "nothing was promoted, moved or restored"
        )
        self.note(journal, f"Rewind PITR: {message}")
        return PitrStepFinal(DecisionTimedOut(message), "decide_at_target")

    def validate_params_input(self, params_input) -> None:
        """The move's form is checked where it is used (rewind.pitr.decision.moved_request), so a
        wrong or missing field is refused in one line naming it, and asked again, instead of failing
        the try as Airflow's schema check would (an answer sent over REST has no form to guide it)."""
        unknown = sorted(set(params_input) - set(self.params))
        if unknown:
            self.log.warning("form fields ignored (not part of the question): %s", ", ".join(map(str, unknown)))

    def unread_answer(self, context, journal: RunJournal) -> dict | None:
        """An answer Airflow recorded for this run's last question that no try has carried out: the
        try that asked was ended before it resumed (a crash; or the answer came while the parked
        task's process was still exiting, and Airflow failed that try). Carried out instead of
        asking again. Read through the public REST API (the `airflow_api` connection): Airflow 3.3's
        task supervisor does not serve the SDK's get_hitl_detail_content_detail ("Unhandled request")."""
        asked_at = journal.data.get("asked_at")
        client = airflow_rest_client(self.airflow_api_conn_id)
        if not asked_at or client is None:
            return None
        ti = context["ti"]
        try:
            detail = client.hitl_detail(ti.dag_id, context["run_id"], ti.task_id)
        except Exception as exc:  # no question written yet, or the API unreachable: ask (again)
            self.log.info("no recorded answer to read (%s)", exc)
            return None
        responded_at = dt.datetime.fromisoformat(detail["responded_at"]) if detail.get("responded_at") else None
        if not detail.get("response_received") or responded_at is None or responded_at <= dt.datetime.fromisoformat(asked_at):
            return None
        if responded_at.isoformat() in {decision.at for decision in self.decisions(journal)}:
            return None
        self.validate_chosen_options(detail.get("chosen_options") or [])
        return {
            "chosen_options": detail["chosen_options"],
            "params_input": detail.get("params_input") or {},
            "responded_at": responded_at,
            "responded_by_user": detail.get("responded_by_user"),
        }

    def answered(self, context, journal: RunJournal, answer: dict) -> Any:
        """Carry out the DBA's answer: checked first (a refusal touches nothing and asks again),
        recorded (journal, work note), then done."""
        who = answer["responded_by_user"] or {}
        chosen = answer["chosen_options"][0]
        decision = DecisionRecord(
            answer=chosen,
            by=f"{who.get('name')} (Airflow user id {who.get('id')})",
            at=answer["responded_at"].isoformat(),
            from_=self.current_request(journal).describe(),
            question=self.question(journal),
            # an abort names the timeline it goes back to, in its record even when it is refused
            **({"timeline_before": journal.data.get("timeline_before") or journal.data["plan"]["timeline"]} if chosen == ABORT else {}),
            **({"on_clone": True} if self.on_clone(journal) else {}),
        )
        self.log.info("answer: %s", describe_decision(decision))
        try:
            form = answer["params_input"] or {}
            require_this_question(form, question=self.question(journal), target=self.current_request(journal).describe())
            decision = self.prepare(context, journal, decision, form)
        except (NotThisAnswer, PreflightError) as exc:  # nothing was touched: ask again with the reason
            return self.refuse(context, journal, decision, exc)
        journal.set(pending_decision=decision.to_xcom())
        self.note(journal, f"Rewind PITR run {context['run_id']}: {describe_decision(decision)}")
        try:
            return self.carry_out(context, journal, decision)
        except ChangeNotUsable as exc:
            # The change's re-check refused the answer before it touched anything: the answer is
            # consumed (recorded as refused, no longer pending), never carried out by a later try.
            return self.refuse(context, journal, decision, exc)

    def refuse(self, context, journal: RunJournal, decision: DecisionRecord, exc: Exception):
        self.log.warning("%s: not carried out: %s", decision.answer, exc)
        refused = decision.model_copy(update={"refused": str(exc)})
        journal.set(decisions=[*journal.data.get("decisions", []), refused.answered()], pending_decision=None)
        self.note(journal, f"Rewind PITR run {context['run_id']}: {describe_decision(refused)}")
        return self.ask(context, journal, problem=str(exc))

    def prepare(self, context, journal: RunJournal, decision: DecisionRecord, form: dict) -> DecisionRecord:
        """Everything that can be checked before the answer touches the cluster; raises
        NotThisAnswer/PreflightError with the line the DBA reads."""
        current = self.current_request(journal)
        plan = RestorePlan.model_validate(journal.data["plan"])
        if decision.answer == PROMOTE:
            if not journal.at("checked") or not checks_passed(self.checks_here(journal)):
                raise NotThisAnswer(f"{PROMOTE} refused: a data check failed at {current.describe()}; move the target or abort")
            return decision
        if decision.answer == ABORT and decision.on_clone:
            return decision  # production was never touched: nothing to plan
        # a move stays on the history being recovered; an abort goes back to the timeline the cluster ran on
        timeline = plan.timeline if decision.answer == MOVE else decision.timeline_before
        if decision.answer == MOVE:
            new_request = moved_request(current, form, timeline=timeline)
        else:
            new_request = back_to_latest_request(current, timeline_before=timeline)
        new_plan = plan_while_paused(self.hook.get_conn(), new_request, timeline=timeline, runner=self.runner, log=self.log.info)
        self.log.info("plan for %s: %s", decision.answer, new_plan.describe())
        return decision.model_copy(update={"to": new_request.describe(), "request": new_request, "plan": new_plan})

    def carry_out(self, context, journal: RunJournal, decision: DecisionRecord) -> Any:
        if decision.answer == PROMOTE:
            return self.promote_here(context, journal, decision)
        if decision.answer == MOVE:
            self.restore_again(context, journal, decision)
            return self.ask(context, journal)
        return self.back_to_latest(context, journal, decision)

    # ---- promote ---------------------------------------------------------------------------------
    def promote_here(self, context, journal: RunJournal, decision: DecisionRecord) -> dict:
        cluster = self.hook.cluster
        current = self.current_request(journal)
        if not any(approved.covers(current) for approved in self.approved_requests(journal)):
            return self.ask_reapproval(context, journal, decision)
        self.gate(journal, step="promote", implementing=True)
        followon = journal.data.get("reapproval")
        if decision.reapproval and followon:  # promoted under the follow-on change too: it must still hold
            change = require_gate(
                self.servicenow,
                followon["sys_id"],
                step="promote",
                implementing=False,
                requester=(journal.data.get("requester") or {}).get("sys_id"),
                approval_group=journal.data.get("approval_group"),
            )
            start_implementing(self.servicenow, change, f"Rewind PITR run {context['run_id']}: promoting at {current.describe()}")
        if journal.clone_mode:  # production stops for seconds: the clone, promoted, takes its place
            self.cutover(context, journal)
        timeline = self.hook.restore_executor().promote()
        journal.record("promoted")
        self.finish(journal, decision, timeline=timeline)
        if decision.reapproval and followon:
            close_change(
                self.servicenow,
                followon["sys_id"],
                close_code="successful",
                close_notes=f"{cluster.name} promoted at {current.describe()} on timeline {timeline} by Rewind PITR run {context['run_id']} "
                f"(the rest of {journal.change}'s plan follows there).",
            )
        self.log.info("PostgreSQL is promoted at %s, on timeline %s", current.describe(), timeline)
        return self.result(journal)

    # ---- promote outside what the change approved --------------------------------------------------
    def ask_reapproval(self, context, journal: RunJournal, decision: DecisionRecord):
        """The change approved another target: open a follow-on change for this one (a retry finds
        the one it opened) and wait for its approval in the triggerer, PostgreSQL still paused."""
        cluster, run_id, dag_id = self.hook.cluster, context["run_id"], context["ti"].dag_id
        current = self.current_request(journal)
        asked = journal.data.get("reapproval")
        if not asked or asked["request"] != current.model_dump(mode="json"):
            attempt = 1 + sum(1 for r in journal.data.get("reapprovals_refused", []) if r["question"] == self.question(journal))
            correlation = reapproval_correlation(dag_id, run_id, question=self.question(journal), attempt=attempt)
            opened = open_change(
                self.servicenow,
                correlation=correlation,
                model=self.pitr_request.change_type,
                fields=lambda: reapproval_fields(
                    cluster,
                    approved=self.approved_requests(journal),
                    target=current,
                    change_number=journal.change or "-",
                    asked_by=decision.by,
                    run_id=run_id,
                    run_url=run_url(context),
                    correlation=correlation,
                    requester_sys_id=(journal.data.get("requester") or {}).get("sys_id"),
                    approval_group=journal.data.get("approval_group"),
                ),
            )
            asked = {
                "number": opened["number"],
                "sys_id": opened["sys_id"],
                "request": current.model_dump(mode="json"),
                "question": self.question(journal),
            }
            journal.set(reapproval=asked)
            self.note(
                journal,
                f"Rewind PITR run {run_id}: {PROMOTE} at {current.describe()} is outside what {journal.change or 'the change'} approved "
                f"({'; '.join(a.approval_text() for a in self.approved_requests(journal))}): re-approval asked in {asked['number']}; "
                f"{cluster.name} stays paused read-only until it is approved (rejected: the question is asked again)",
            )
        message = f"waiting for {asked['number']} to approve promoting {cluster.name} at {current.describe()}; it stays paused read-only meanwhile"
        self.log.info(message)
        set_run_note(self, context, message)
        timeout = self.response_timeout or timedelta(hours=24)
        self.defer(
            trigger=ChangeApprovalTrigger(
                change_number=asked["number"],
                servicenow_conn_id=self.servicenow_conn_id,
                poll_interval=self.reapproval_poll_s,
                timeout_at=(dt.datetime.now(dt.timezone.utc) + timeout).isoformat(),
                end_task_on_approval=False,  # the promotion happens when the task resumes
            ),
            method_name="execute_reapproved",
            timeout=timeout + timedelta(seconds=60),
        )

    def execute_reapproved(self, context, event: Any) -> Any:
        return self.publishing_journal(context, self._reapproved, context, event)

    def _reapproved(self, context, event: Any) -> Any:
        try:
            journal = self.journal(context)
            pending = journal.data.get("pending_decision")
            followon = journal.data.get("reapproval")
            if not pending or not followon:
                raise PitrStepFailed("resumed for a re-approval this run did not ask for: nothing was done")
            decision = DecisionRecord.model_validate(pending)
            status = "approved" if event == "success" else (event or {}).get("status")
            if status != "approved":
                reason = (event or {}).get("reason") or f"{followon['number']} was not approved"
                # consumed: a later Promote at this target asks a new follow-on change
                journal.set(reapproval=None, reapprovals_refused=[*journal.data.get("reapprovals_refused", []), followon])
                return self.refuse(context, journal, decision, NotThisAnswer(f"{PROMOTE} at {decision.from_}: {reason}"))
            if self.current_request(journal).model_dump(mode="json") != followon["request"]:
                raise PitrStepFailed(f"{followon['number']} approved another target than the cluster is paused at: nothing was done")
            journal.set(reapproved=[*journal.data.get("reapproved", []), followon["request"]])
            decision = decision.model_copy(update={"reapproval": followon["number"]})
            journal.set(pending_decision=decision.to_xcom())
            self.note(journal, f"Rewind PITR run {context['run_id']}: {followon['number']} approved promoting at {decision.from_}")
            return self.promote_here(context, journal, decision)
        finally:
            self.hook.release()

    # ---- move the target -------------------------------------------------------------------------
    def restore_again(self, context, journal: RunJournal, decision: DecisionRecord) -> None:
        """Stop the paused cluster, restore --delta to the new target, start, wait until paused
        there, run the checks. Nothing was written to the paused cluster: doing this again after a
        crash loses nothing either."""
        cluster, run_id = self.hook.cluster, context["run_id"]
        request, plan = decision.request, decision.plan
        recovery = self.restore(context, journal, request, plan)
        checks = self.checks(request, cluster=self.paused_executor(context, journal).cluster)
        if self.on_clone(journal):  # what the cutover re-checks: the clone is still paused where it was checked
            journal.set(clone_recovery=recovery.to_xcom(), clone_checks=[check.to_xcom() for check in checks])
        journal.forget("at_target", "checked")
        journal.record("at_target")
        if checks_passed(checks):
            journal.record("checked")
        journal.set(
            request=request.model_dump(mode="json"),
            plan=plan.as_dict(),
            decide_recovery=recovery.to_xcom(),
            decide_checks=[check.to_xcom() for check in checks],
        )
        self.finish(journal, decision)
        journal.set(question=self.question(journal) + 1)  # a new target: answers to the previous question no longer apply
        paused = (
            f"the clone of {cluster.name} is paused again, read-only (production serving),"
            if self.on_clone(journal)
            else (f"{cluster.name} is paused again, read-only,")
        )
        self.note(
            journal,
            f"Rewind PITR run {run_id}: {paused} at {request.describe()} "
            f"(backup {plan.backup_set}); data checks {sum(1 for c in checks if c.passed)}/{len(checks)} passed. Waiting for the DBA.",
        )

    # ---- abort -----------------------------------------------------------------------------------
    def back_to_latest(self, context, journal: RunJournal, decision: DecisionRecord) -> dict:
        cluster = self.hook.cluster
        if decision.on_clone:
            return self.remove_clone(context, journal, decision)
        request, plan = decision.request, decision.plan
        recovery = self.restore(context, journal, request, plan)
        timeline = self.hook.restore_executor().promote()  # recovery promoted itself at the end of the WAL: this checkpoints
        journal.record("promoted")
        # The request's checks were written for the target; the latest state is what it was before the stop.
        journal.set(
            request=request.model_dump(mode="json"), plan=plan.as_dict(), decide_recovery=recovery.to_xcom(), decide_checks=[], aborted=True
        )
        self.finish(journal, decision, timeline=timeline)
        self.log.info(
            "aborted: %s is at the latest archived WAL of timeline %s, now on timeline %s",
            cluster.name,
            decision.timeline_before,
            timeline,
        )
        return self.result(journal)

    def remove_clone(self, context, journal: RunJournal, decision: DecisionRecord) -> dict:
        """Abort in clone mode: production was never stopped; the clone is stopped and removed. The
        run ends without a rewind: no new timeline, so no new full backup (that task skips)."""
        self.gate(journal, step="abort: remove the clone", implementing=True)
        clone = self.clone_executor(context, journal)
        clone.stop(mode="fast")
        paths = self.clone_paths(context)
        remove_clone(paths)
        journal.set(aborted=True, clone_removed=_now())
        self.finish(journal, decision, timeline=decision.timeline_before)
        self.log.info("aborted on the clone: %s removed; %s was never stopped", paths.clone_dir, self.hook.cluster.name)
        return self.result(journal)

    # ---- the steps both share --------------------------------------------------------------------
    def restore(self, context, journal: RunJournal, request: PitrRequest, plan: RestorePlan) -> RecoveryResult:
        """Stop (the paused cluster), restore --delta with `plan`, start, wait for the target. A retry
        after this answer's start goes on waiting instead of stopping again."""
        cluster, run_id = self.hook.cluster, context["run_id"]
        pending = DecisionRecord.model_validate(journal.data["pending_decision"])
        executor = self.paused_executor(context, journal)  # the restart's credentials, before anything is stopped
        target, action = RecoveryTarget.of(request, plan), request.action
        if self.on_clone(journal):  # the clone pauses at every target: the cutover promotes
            target, action = dataclasses.replace(target, action="pause"), "pause"
        if not (pending.started and executor.instance.pid()):
            self.require_still_paused(journal, pending.answer, executor)
            self.gate(journal, step=f"{pending.answer}: restore", implementing=True)
            restore_guard.held_by(cluster, run_id)
            executor.stop(mode="fast")
            pending = pending.model_copy(update={"restore_started": _now()})
            journal.set(pending_decision=pending.to_xcom())
            executor.restore(target)
            offset = executor.start()
            pending = pending.model_copy(update={"started": _now(), "log_offset": offset})
            journal.set(pending_decision=pending.to_xcom())
        result = executor.wait(action, since_offset=pending.log_offset or 0, timeout_s=self.recovery_timeout_s)
        self.log.info("recovery: %s", result.to_xcom())
        return result

    def require_still_paused(self, journal: RunJournal, answer: str, executor: RestoreExecutor) -> None:
        """A Move or an Abort stops and restores the cluster (or the clone): only while it is still
        what this run left it, in recovery, paused where the run paused it. Promoted by hand (or
        resumed), it holds writes the restore would destroy: the task fails, touching nothing, and
        says so."""
        cluster = executor.cluster
        if not executor.instance.pid():
            return  # stopped: nothing can have been written since the run paused it
        state = run_sql(self.runner, cluster, "select pg_is_in_recovery()::text || ' ' || coalesce(pg_last_wal_replay_lsn()::text, '')")
        in_recovery, _, replay_lsn = state.partition(" ")
        paused_at = (self.recovery_here(journal) or RecoveryResult(state="", replay_lsn=None, stop_record=None, timeline=None)).replay_lsn
        if in_recovery != "true":
            problem = "is no longer in recovery: it was promoted outside this run"
        elif paused_at and replay_lsn != paused_at:
            problem = (
                f"has replayed past where this run paused it ({replay_lsn}, paused at {paused_at}): recovery was resumed outside this run"
            )
        else:
            return
        what = f"the clone of {cluster.name}" if self.on_clone(journal) else cluster.name
        message = (
            f"{answer} refused: {what} {problem}; a restore would destroy what it holds since. Nothing was stopped or restored; "
            f"the change {journal.change or '-'} stays open: see who did it, then decide by hand"
        )
        self.note(journal, f"Rewind PITR: {message}")
        journal.set(pending_decision=None)
        raise PitrStepFinal(ClusterChangedOutsideRun(message), "decide_at_target")

    def checks(self, request: PitrRequest, *, cluster=None) -> list[CheckResult]:
        """Every result, passed or not: the DBA decides with them in hand."""
        try:
            return self.data_checks(request, cluster=cluster)
        except DataCheckFailed as exc:
            return exc.results

    def finish(self, journal: RunJournal, decision: DecisionRecord, *, timeline: int | None = None) -> None:
        journal.set(decisions=[*journal.data.get("decisions", []), decision.answered()], pending_decision=None, decide_timeline=timeline)
