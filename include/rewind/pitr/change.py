"""The change request a PITR runs under: what it says, a change named in the form checked and bound
to the run, and the summary it is closed with. The change's life itself (opened, re-checked at each
destructive step, implemented, closed) is rewind.change_control's, as for every workflow."""

from __future__ import annotations

from rewind.airflow_rest import bounded_note
from rewind.change_control import MAX_NOTE_CHARS, ChangeNotUsable, Person, correlation_id, free_text, open_change
from rewind.inventory import Cluster
from rewind.pitr.decision import ABORT, describe_decision
from rewind.pitr.journal import run_using_change
from rewind.pitr.plan import RestorePlan
from rewind.pitr.request import PitrRequest
from rewind.pitr.results import CheckResult, DecisionRecord, DecisionResult, PromoteResult, RecoveryResult
from rewind.servicenow import ChangeState, ChangeStatus, ServiceNowClient, ServiceNowNotFound


def change_fields(
    cluster: Cluster,
    request: PitrRequest,
    *,
    dag_id: str,
    run_id: str,
    run_url: str,
    requester: Person | None = None,
    approval_group: str | None = None,
    undo_abandons: int | None = None,
) -> dict:
    target = request.describe()
    who = {"requested_by": requester.sys_id} if requester else {}
    if approval_group:
        who["assignment_group"] = approval_group
    return {
        **who,
        "short_description": f"Rewind PITR: restore {cluster.name} (stanza {cluster.stanza}) to {target}",
        "description": (
            f"Point-in-time recovery of PostgreSQL cluster {cluster.name} ({cluster.postgres.data_dir}, port {cluster.postgres.port}) "
            f"to {target}, with pgBackRest from s3://{cluster.repo.bucket}{cluster.repo.path}.\nReason: {free_text(request.reason)}\n"
            f"Requested by: {requester.describe() if requester else 'unknown'}\n"
            f"At the target: {request.action_text()}.\n"
            + (f"Approved by this change: {request.approval_text()}.\n" if request.dba_decides else "")
            + f"Airflow run: {run_id}\n{run_url}"
        ),
        "justification": request.reason,
        "implementation_plan": implementation_plan(cluster, request, undo_abandons=undo_abandons),
        "backout_plan": backout_plan(cluster, request),
        "test_plan": f"Data checks ({'before' if request.action == 'pause' else 'after'} promotion): "
        + ("; ".join(c.sql for c in request.validation_sql) or "none given"),
        "cmdb_ci": cluster.name,
        "correlation_id": correlation_id(dag_id, run_id),
    }


def implementation_plan(cluster: Cluster, request: PitrRequest, *, undo_abandons: int | None = None) -> str:
    """What the approver approves, step by step, as the run will do it in the request's mode."""
    mode = request.mode_for(cluster.pitr.mode)
    if mode == "clone":
        steps = [
            f"Restore the backup into a clone beside the data directory ({cluster.postgres.data_dir}.rewind-clone-<run>), on the "
            "same file system; production is not touched and keeps serving.",
            "Start the clone on a private socket (no TCP listener, archiving off) and wait until its recovery pauses at the target.",
            "Run the data checks on the clone, production still serving"
            + (
                "; a DBA decides in Airflow: promote (the cutover below), move the target (the clone alone is restored "
                "again; each move is a work note here) or abort (the clone is removed; production was never stopped)."
                if request.dba_decides
                else "; cut over only if they pass."
            ),
            "Cutover, seconds of downtime: archive production's current WAL, stop the clone and production, rename production's "
            f"directory to {cluster.postgres.data_dir}.pre-rewind-<run> (kept, stopped, held {cluster.pitr.hold_days:g} days), "
            "rename the clone into its place, start, promote.",
        ]
    elif mode == "undo":
        abandoned = f"timeline {undo_abandons}" if undo_abandons else "the current timeline"
        steps = [
            "Archive current WAL and stop PostgreSQL.",
            f"Swap back: the directory the clone-mode rewind kept (the end of timeline {request.target_timeline}) goes back "
            f"in place of the data directory, nothing restored; the current directory is kept as "
            f"{cluster.postgres.data_dir}.pre-rewind-<run> (stopped, held {cluster.pitr.hold_days:g} days). The writes made "
            f"since the rewind ({abandoned}) are set aside with it, not lost: rewind_salvage__{cluster.name} with timeline "
            f"{undo_abandons or '<that timeline>'} offers them as SQL to re-apply after the undo.",
            f"Start PostgreSQL and recover to the end of timeline {request.target_timeline}.",
            "Run the data checks on the paused, read-only cluster; continue only if they pass.",
            "Promote onto a new timeline.",
        ]
    else:
        steps = [
            "Archive current WAL and stop PostgreSQL.",
            "pgbackrest restore --delta to the target, on the timeline the plan names.",
            "Start PostgreSQL and wait until recovery reaches the target.",
        ]
        if request.dba_decides:
            steps += [
                "Run the data checks on the paused, read-only cluster.",
                "A DBA decides in Airflow: promote (only if they passed), move the target (restore again with --delta, pause, "
                "check, decide again; each move is a work note here) or abort (restore to the latest archived WAL, nothing lost).",
            ]
        elif request.action == "pause":
            steps += ["Run the data checks on the paused, read-only cluster.", "Promote only if they pass."]
        else:
            steps += ["PostgreSQL promotes itself at the target.", "Run the data checks."]
    steps += ["Take a full backup on the new timeline.", "Close this change with the run summary."]
    return "".join(f"{number}. {step}\n" for number, step in enumerate(steps, 1)).rstrip("\n")


def backout_plan(cluster: Cluster, request: PitrRequest) -> str:
    mode = request.mode_for(cluster.pitr.mode)
    held = (
        "the old timeline stays in the repository (Rewind holds it from expiry): a new PITR with target_timeline set to it returns there."
    )
    if mode == "clone":
        return (
            "Before the cutover: nothing to back out, production was never stopped; the clone is removed. After the "
            f"cutover: the pre-rewind directory is kept, stopped, for {cluster.pitr.hold_days:g} days: a PITR with mode undo "
            "swaps it back in seconds; and " + held
        )
    if mode == "undo":
        return (
            "After the swap the directory it replaced is kept, stopped: another undo (its timeline) swaps it back in seconds; and " + held
        )
    return "Before promotion: stop PostgreSQL and restore again with another target (the repository is unchanged). After promotion " + held


def check_given_change(client: ServiceNowClient, cluster: Cluster, number: str, *, dag_id: str, run_id: str) -> ChangeStatus:
    """A change named in the form must be open, raised for this cluster, and not drive another PITR."""
    try:
        record = client.get_change_by_number(number)
    except ServiceNowNotFound:
        raise ChangeNotUsable(f"param change_number: {number} does not exist in ServiceNow") from None
    change = ChangeStatus.from_record(record)
    if change.state in (ChangeState.CLOSED, ChangeState.CANCELED) or change.approval == "rejected":
        raise ChangeNotUsable(f"param change_number: {number} is {change.state_name} (approval {change.approval}): use an open change")
    ci = record.get("cmdb_ci", "")
    if ci != cluster.name:
        raise ChangeNotUsable(
            f"param change_number: {number} is for configuration item {ci or '(none)'}, not cluster {cluster.name}: use a change raised for this cluster"
        )
    ours = correlation_id(dag_id, run_id)
    bound = record.get("correlation_id", "")
    if bound and bound != ours:
        raise ChangeNotUsable(f"param change_number: {number} already drives {bound}: one change, one PITR; raise a new change")
    used_by = run_using_change(cluster, number, except_run=run_id)
    if used_by:
        raise ChangeNotUsable(
            f"param change_number: {number} was already used by PITR run {used_by}: one change, one PITR; raise a new change"
        )
    return change


def ensure_change(
    client: ServiceNowClient,
    cluster: Cluster,
    request: PitrRequest,
    *,
    dag_id: str,
    run_id: str,
    run_url: str,
    requester: Person | None = None,
    approval_group: str | None = None,
    undo_abandons: int | None = None,
) -> dict:
    """Bind the given change to this run (correlation_id), or find this run's change (a retry), or
    create one of the request's model and ask for its approval. Returns {number, sys_id, created}."""
    ours = correlation_id(dag_id, run_id)
    if request.change_number:
        change = check_given_change(client, cluster, request.change_number, dag_id=dag_id, run_id=run_id)
        client.update_change(
            change.sys_id,
            {
                "correlation_id": ours,
                "work_notes": f"Rewind PITR run {run_id} will implement this change: {request.describe()}.\nAt the target: {request.action_text()}.\n"
                f"Requested by: {requester.describe() if requester else 'unknown'}\n{run_url}",
            },
        )
        return {"number": change.number, "sys_id": change.sys_id, "created": False}
    return open_change(
        client,
        correlation=ours,
        model=request.change_type,
        fields=lambda: change_fields(
            cluster,
            request,
            dag_id=dag_id,
            run_id=run_id,
            run_url=run_url,
            requester=requester,
            approval_group=approval_group,
            undo_abandons=undo_abandons,
        ),
    )


def left_at(
    request: PitrRequest,
    *,
    recovery: RecoveryResult,
    checks: list[CheckResult],
    promoted: PromoteResult | None,
    decision: DecisionResult,
) -> tuple[PitrRequest, RecoveryResult, list[CheckResult], int | None]:
    """The request, recovery, data checks and timeline a run left its cluster at, for the summary:
    where the DBA's answers left it when the run asked (decide_at_target), else the downtime task's
    (stop_restore_promote's `recovery`, `checks` and `promote`)."""
    if decision.asked:
        return decision.request, decision.recovery or recovery, decision.checks or [], decision.timeline
    return request, recovery, checks, (promoted or recovery).timeline


def summary(
    cluster: Cluster,
    request: PitrRequest,
    *,
    run_id: str,
    run_url: str,
    plan: RestorePlan,
    recovery: RecoveryResult,
    checks: list[CheckResult],
    timeline: int | None,
    backup: dict | None,
    timings: dict[str, float],
    requested_by: str | None = None,
    approved_by: str | None = None,
    decisions: list[DecisionRecord] = (),
    undo: str | None = None,
) -> str:
    """`request` and `plan`: the ones the cluster was left at (after the DBA's moves, if any);
    `decisions`: the DBA's answers while paused (rewind.pitr.decision), in order."""
    passed = sum(1 for c in checks if c.passed)
    aborted = bool(decisions) and decisions[-1].answer == ABORT
    on_clone = aborted and bool(decisions[-1].on_clone)
    outcome = (
        "aborted by the DBA on the clone: production was never stopped, the clone was removed, nothing lost."
        if on_clone
        else "aborted by the DBA: restored to the latest archived WAL, nothing lost."
        if aborted
        else "completed."
    )
    lines = [
        f"Rewind PITR of {cluster.name} (stanza {cluster.stanza}) {outcome}",
        f"Run: {run_id}  {run_url}",
        f"Reason: {free_text(request.reason)}",
        f"Requested by: {requested_by or 'unknown'}",
        f"Approved by: {approved_by or 'unknown'}",
        f"Target: {request.describe()}",
        f"At the target: {request.action_text()}",
        f"Restored from backup {plan.backup_set} ({plan.backup_type}, ended {plan.backup_stopped_at}, stop LSN {plan.backup_stop_lsn}) "
        f"along timeline {plan.timeline}",
    ]
    if undo:
        lines.append(f"Undo: {undo}")
    if plan.target_record:
        lines.append(f"Target record in WAL: {plan.target_record} at {plan.target_lsn}")
    lines.extend(f"Decision {number}: {describe_decision(decision)}" for number, decision in enumerate(decisions, 1))
    if on_clone:
        lines.append(f"Production: never stopped, still on timeline {timeline}")
    else:
        lines.append(f"Recovery: {recovery.stop_record or recovery.state}; now on timeline {timeline}")
    lines.append(f"Data checks: {passed}/{len(checks)} passed")
    if backup:
        lines.append(f"New full backup on timeline {backup.get('timeline')}: {backup.get('label')}")
    else:
        lines.append("No new full backup: there is no new timeline")
    lines.append(
        f"The pre-rewind history (its backups and WAL, and the recovery window it had) is held from expiry for {cluster.pitr.hold_days:g} days after this change closes."
    )
    lines.append("Timings: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items()))
    return "\n".join(lines)[:MAX_NOTE_CHARS]


def run_note(number: str, text: str, close_code: str = "successful") -> str:
    """The completed run's note: the change's close summary, cut to what Airflow accepts (the change's
    close notes and close_change's return value keep all of it)."""
    return bounded_note(f"{number} closed {close_code}\n{text}", f"the full summary is in {number}'s close notes")


def reapproval_correlation(dag_id: str, run_id: str, *, question: int, attempt: int) -> str:
    """The follow-on change of a run's question: found again by a retry; a rejected one is not
    asked again (the next Promote at that question opens attempt + 1)."""
    return f"{correlation_id(dag_id, run_id)}:question-{question}:reapproval-{attempt}"


def reapproval_fields(
    cluster: Cluster,
    *,
    approved: list[PitrRequest],
    target: PitrRequest,
    change_number: str,
    asked_by: str,
    run_id: str,
    run_url: str,
    correlation: str,
    requester_sys_id: str | None = None,
    approval_group: str | None = None,
) -> dict:
    """A follow-on change: promoting at a target the run's change did not approve. Its own approval
    is required (the original change, in Implement, cannot go back to approval)."""
    who = {"requested_by": requester_sys_id} if requester_sys_id else {}
    if approval_group:
        who["assignment_group"] = approval_group
    approvals = "; ".join(a.approval_text() for a in approved)
    return {
        **who,
        "short_description": f"Rewind PITR re-approval: promote {cluster.name} at {target.describe()}",
        "description": (
            f"Follow-on to {change_number} (Airflow run {run_id}). {change_number} approved: {approvals}.\n"
            f"The DBA {free_text(asked_by)} moved the target and asks to promote {cluster.name} at {target.describe()}.\n"
            f"Until this change is approved, {cluster.name} stays paused, read-only, at that target; nothing has been written to it.\n{run_url}"
        ),
        "justification": f"Promote at a target outside what {change_number} approved",
        "implementation_plan": f"1. Promote {cluster.name} at {target.describe()} (the data checks there passed).\n2. The rest of {change_number}'s plan.",
        "backout_plan": f"Reject this change: the DBA moves the target back or aborts under {change_number}.",
        "cmdb_ci": cluster.name,
        "correlation_id": correlation,
    }
