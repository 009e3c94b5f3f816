"""What the steps of a PITR return, typed: the downtime task's step results (stop, restore, start,
recovery, checks, promote) and decide_at_target's answers and where they left the cluster.

These travel as XCom, which stays plain JSON: `to_xcom()` gives exactly the keys and value shapes
the steps returned as dicts before they were typed, so a run started before an upgrade, the audit
page (rewind.audit) and close_change's templated `steps` read them unchanged. Consumers validate an
XCom back into its model (`DowntimeResult.model_validate(xcom)`) and read attributes.

A key a step leaves out stays out (`exclude_unset`): the stop's retry never reported `pid_before`,
the recovery of a DBA's move never reported `finished_at`, a run that had nothing to decide
returns only `asked`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rewind.pitr.plan import RestorePlan
from rewind.pitr.request import PitrRequest


class StepResult(BaseModel):
    # forbid: a key no step writes is a mistake in the producer, not something to carry along
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_xcom(self) -> dict[str, Any]:
        """The JSON a task returns: the keys this result was built (or validated) with, nothing added."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class RecoveryResult(StepResult):
    """Where recovery stopped (rewind.pitr.recovery.wait_for_recovery); `finished_at` once the
    downtime's wait_for_target step recorded it."""

    state: str  # "promoted" | "paused"
    replay_lsn: str | None
    stop_record: str | None  # PostgreSQL's "recovery stopping ..." line, when it logged one
    timeline: int | None
    finished_at: str | None = None


class StopResult(StepResult):
    """stop_postgres: the plan it stopped for (re-planned just before), the postmaster it stopped
    (absent when an earlier try had stopped it) and the timeline the cluster ran on."""

    plan: RestorePlan
    pid_before: int | None = None
    timeline_before: int | None = None
    started_at: str
    finished_at: str


class RestoreResult(StepResult):
    backup_set: str
    timeline: int
    started_at: str
    finished_at: str


class StartResult(StepResult):
    log_offset: int  # where PostgreSQL's log stood before the start: recovery's lines are read from here
    started_at: str | None


class CheckResult(StepResult):
    """One data check's outcome, `sql` and `got` masked and bounded (rewind.pitr.recovery.run_data_checks)."""

    sql: str
    expect: str
    got: str
    passed: bool


class PromoteResult(StepResult):
    timeline: int
    finished_at: str


class DowntimeResult(StepResult):
    """stop_restore_promote's return. `stop` and `restore` are None when a retry went on from
    wait_for_target; `promote` is None when the DBA decides (decide_at_target) at the target."""

    stop: StopResult | None
    restore: RestoreResult | None
    start: StartResult
    recovery: RecoveryResult
    checks: list[CheckResult]
    promote: PromoteResult | None
    timings_s: dict[str, float]


class DecisionRecord(StepResult):
    """One answer of the DBA at the target (rewind.pitr.decision), as the journal keeps it: who, when,
    from where to where; `refused` when it was not carried out. While it is being carried out it
    also holds the new request and plan, and the restart's time and log offset."""

    answer: str
    by: str
    at: str
    from_: str = Field(alias="from")
    to: str | None = None
    timeline_before: int | None = None
    refused: str | None = None
    question: int | None = None  # the question it answered (the run's count of targets paused at)
    reapproval: str | None = None  # the follow-on change that approved a promotion outside the approved target
    request: PitrRequest | None = None
    plan: RestorePlan | None = None
    restore_started: str | None = None  # a move or abort stopped the cluster and restores it
    started: str | None = None
    log_offset: int | None = None
    on_clone: bool | None = None  # given in clone mode before the cutover: it acted on the clone only

    def answered(self) -> dict[str, Any]:
        """The answer as the run's decisions keep it once carried out: what was asked and done, not
        the request, plan and restart it carried meanwhile."""
        return self.model_dump(
            mode="json", by_alias=True, exclude_unset=True, exclude={"request", "plan", "restore_started", "started", "log_offset"}
        )


class DecisionResult(StepResult):
    """decide_at_target's return: `asked` False (and nothing else) when the run did not ask the DBA;
    else the answers, the request and plan the cluster was left at, recovery, checks and timeline
    there, and whether the DBA aborted back to latest."""

    asked: bool
    decisions: list[DecisionRecord] = []
    request: PitrRequest | None = None
    plan: RestorePlan | None = None
    recovery: RecoveryResult | None = None
    checks: list[CheckResult] | None = None
    timeline: int | None = None
    aborted: bool = False
