"""What one PITR run has done to its cluster, kept on the database host for good.

Airflow forgets a cleared task's XCom; this record is what makes "a PITR run restores at most once"
hold whatever is cleared or re-run. Each destructive step reads it before acting and writes what it
did right after: a retry of the stop, the restore or the start of the same rewind (PostgreSQL
stopped by this run, not yet started on restored data) finishes that rewind; once PostgreSQL was
started on the restored data, no step of the run may stop or restore the cluster again.
It also names the change each run used, so a change drives one PITR only.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.state import file_key, read_json, state_dir, write_json

# The milestones, in order. `started` is the point after which the rewind has happened. Clone mode
# (rewind.pitr.clone) records the clone's first (production untouched), then at_target and checked
# on the clone; its cutover records stopped, clone_promoted (production down, the clone promoted on
# its private socket), swapped (the clone's directory in production's place: the point of no
# return) and started.
CLONE_STEPS = ("clone_restore_started", "clone_restored", "clone_started")
STEPS = (
    *CLONE_STEPS,
    "stopped",
    "clone_promoted",
    "restore_started",
    "restored",
    "swapped",
    "started",
    "at_target",
    "checked",
    "promoted",
    "backup",
    "closed",
)


class AlreadyRewound(RewindError):
    """A destructive step of a run that has already rewound the cluster."""

    opens_incident = False
    retryable = False  # the run has rewound: no retry can change that


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def journal_dir(cluster: Cluster) -> Path:
    return Path(cluster.state_dir) / "pitr-runs"


class RunJournal:
    def __init__(self, cluster: Cluster, run_id: str, data: dict):
        self.cluster = cluster
        self.run_id = run_id
        self.data = data

    @property
    def path(self) -> Path:
        return journal_dir(self.cluster) / f"{file_key(self.run_id)}.json"

    @classmethod
    def load(cls, cluster: Cluster, run_id: str, *, dag_id: str | None = None) -> RunJournal:
        journal = cls(cluster, run_id, {})
        journal.data = read_json(journal.path, what="PITR run journal", fix="restore it from the task logs or remove it deliberately") or {
            "run_id": run_id,
            "dag_id": dag_id,
            "cluster": cluster.name,
            "steps": {},
        }
        return journal

    def _save(self) -> None:
        state_dir(self.cluster, "pitr-runs")
        write_json(self.path, self.data)

    def at(self, step: str) -> str | None:
        """When the step was done (or what it produced, for `backup`), None if not yet."""
        return self.data["steps"].get(step)

    def record(self, step: str, value: str | None = None) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown PITR step {step!r}")
        self.data["steps"][step] = value or _now()
        self._save()

    def forget(self, *steps: str) -> None:
        """A DBA moved the target: being at the old target and its checks passing no longer count."""
        for step in steps:
            if step not in ("at_target", "checked"):
                raise ValueError(f"PITR step {step!r} is never undone")
            self.data["steps"].pop(step, None)
        self._save()

    def set(self, **fields) -> None:
        self.data.update(fields)
        self._save()

    @property
    def change(self) -> str | None:
        return self.data.get("change")

    @property
    def rewound(self) -> bool:
        return self.at("started") is not None or self.at("swapped") is not None

    @property
    def clone_mode(self) -> bool:
        return self.data.get("mode") == "clone"

    def refuse_if_rewound(self, step: str) -> None:
        if self.rewound:
            raise AlreadyRewound(
                f"this run already rewound cluster {self.cluster.name!r} (PostgreSQL started on the restored data at "
                f"{self.at('started')}, change {self.change or '-'}): {step} will not stop or restore it again; "
                "a new rewind needs a new run and a newly approved change"
            )

    def describe(self) -> str:
        """One line for the change: what this run has really done so far."""
        steps = self.data["steps"]
        done = []
        clone = (self.data.get("clone") or {}).get("clone_dir", "a clone")
        if "clone_restored" in steps:
            done.append(f"clone {clone} restored beside production at {steps['clone_restored']}")
        elif "clone_restore_started" in steps:
            done.append(f"restore of clone {clone} started at {steps['clone_restore_started']} and not finished")
        if self.clone_mode and "at_target" in steps:
            done.append(f"the clone reached the target at {steps['at_target']}")
        if self.clone_mode and "stopped" not in steps:
            done.append("production was never stopped")
        if "stopped" in steps:
            done.append(f"PostgreSQL stopped at {steps['stopped']}")
        if "restored" in steps:
            done.append(f"data directory restored at {steps['restored']}")
        elif "restore_started" in steps:
            done.append(f"restore started at {steps['restore_started']} and not finished")
        if "clone_promoted" in steps:
            done.append(f"the clone promoted on its private socket at {steps['clone_promoted']}")
        if "swapped" in steps:
            pre = (self.data.get("clone") or {}).get("pre_rewind_dir", "aside")
            done.append(f"the clone's directory swapped in at {steps['swapped']} (the pre-rewind directory is kept in {pre})")
        if "started" in steps:
            done.append(f"PostgreSQL started on the restored data at {steps['started']}")
        if "promoted" in steps:
            done.append(f"promoted at {steps['promoted']}")
        elif "at_target" in steps and not self.clone_mode:
            done.append(f"recovery reached the target at {steps['at_target']} (not promoted)")
        done.append(f"new full backup {steps['backup']} exists" if "backup" in steps else "no new full backup was taken")
        if "stopped" in steps or self.clone_mode:
            return "; ".join(done)
        return "nothing was touched: PostgreSQL was never stopped; no new full backup was taken"


# The XCom key under which every step of a PITR run publishes its journal as it stood at the end of
# each try. The journal lives on the database host; the audit page reads only Airflow's database,
# and states what happened (stopped, started, promoted, refused) from this, never from task states.
JOURNAL_XCOM_KEY = "rewind_journal"


class JournalSnapshot(BaseModel):
    """A run's journal as one try of one of its steps left it, and how that try ended."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    try_number: int
    at: str  # when the try ended (or parked)
    steps: dict[str, str] = {}
    stop_started_at: str | None = None
    change: str | None = None
    requester: dict | None = None
    decisions: list[dict] = []
    failed: str | None = None  # the try's error, when it failed (a refusal included)


def snapshot(journal: RunJournal, *, task_id: str, try_number: int, failed: str | None) -> JournalSnapshot:
    return JournalSnapshot(
        task_id=task_id,
        try_number=try_number,
        at=_now(),
        steps=dict(journal.data.get("steps") or {}),
        stop_started_at=journal.data.get("stop_started_at"),
        change=journal.change,
        requester=journal.data.get("requester"),
        decisions=list(journal.data.get("decisions") or []),
        failed=failed,
    )


def run_using_change(cluster: Cluster, number: str, *, except_run: str) -> str | None:
    """The run of this cluster that already used change `number`, if any."""
    directory = journal_dir(cluster)
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob("*.json")):
        data = read_json(path, what="PITR run journal", fix="restore it from the task logs or remove it deliberately") or {}
        if data.get("change") == number and data.get("run_id") != except_run:
            return data.get("run_id")
    return None
