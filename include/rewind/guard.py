"""The restore guard: one PITR of a cluster at a time, and no backup while its data directory is
being replaced.

One small JSON file in the cluster's durable state directory on the database host, where every
Rewind task of the cluster runs. A PITR run claims it when its params are valid (a second PITR of
the cluster is refused while the first is active, naming it) and begins its rewind on it right
before it stops PostgreSQL: from then on it blocks every backup, verify and watchdog run of the
cluster, which report "restore in progress" and skip. A run that fails after that leaves it in
phase `failed` on purpose: backups stay blocked and the watchdog raises it until a DBA has looked
at the cluster (`rewind guard clear`), or until the next PITR takes it over.

Where a rewind stands (stopped, restoring, started, at the target, promoted, backed up) is not kept
here: the run's journal (rewind.pitr.journal) is the one record of it, and a guard read while a
rewind is under way takes its phase from there (`progress`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.state import StateFileDamaged, read_json, state_dir, write_json


class Phase(str, Enum):
    """Where a PITR run is with its cluster. Stored by value in the guard file."""

    CLAIMED = "claimed"  # params valid; preflight, change, approval wait: nothing touched yet
    # Stored while a rewind is under way; read, it is one of the phases below (from the run's journal).
    REWINDING = "rewinding"
    # What a rewind goes through once PostgreSQL is to be stopped; each blocks backups.
    CLONING = "cloning"  # clone mode: read only while its cutover has not stopped production
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESTORING = "restoring"
    RESTORED = "restored"
    STARTED = "started"
    AT_TARGET = "at_target"
    PROMOTED = "promoted"
    BACKED_UP = "backed_up"
    FAILED = "failed"  # a step failed after the claim: left up on purpose (see the module's docstring)


CLAIMED, FAILED, REWINDING = Phase.CLAIMED, Phase.FAILED, Phase.REWINDING
ACTIVE_RUN_STATES = ("queued", "running")

RunState = Callable[[str, str], str | None]  # (dag_id, run_id) -> Airflow DagRun state, None if unknown


class RestoreInProgress(RewindError):
    """A PITR is replacing the cluster's data directory: routine work skips, it does not fail."""


class RestoreFailed(RewindError):
    """A PITR failed after stopping PostgreSQL; the cluster needs a DBA before backups resume."""


class PitrAlreadyRunning(RewindError):
    """A second PITR of the cluster while the first is active: refused, no incident."""

    opens_incident = False


@dataclass(frozen=True)
class Guard:
    cluster: str
    run_id: str
    dag_id: str
    phase: Phase
    since: str
    updated: str
    change: str | None = None
    blocks_backups: bool = False
    failed_step: str | None = None
    took_over: str | None = None  # the failed run whose guard this run continued
    predecessors: tuple[str, ...] = ()  # every failed run this guard was taken over from, oldest first
    # The timeline the cluster ran on before the first rewind of this guard stopped it. A cluster
    # left stopped or paused mid-rewind has no "current" timeline of its own (its pg_control names
    # the restored backup's); a run that takes over means this one.
    timeline_before: int | None = None

    def describe(self) -> str:
        step = f" at step {self.failed_step}" if self.failed_step else ""
        return f"PITR run {self.run_id} (change {self.change or '-'}, phase {Phase(self.phase).value}{step}, since {self.since})"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def guard_path(cluster: Cluster) -> Path:
    return Path(cluster.state_dir) / "restore-guard.json"


def read_guard(cluster: Cluster) -> Guard | None:
    data = read_json(
        guard_path(cluster),
        what="restore guard",
        fix=f"look at the cluster, then remove it with `rewind guard clear --cluster {cluster.name}`",
    )
    if data is None:
        return None
    try:
        guard = Guard(**{**data, "phase": Phase(data.get("phase")), "predecessors": tuple(data.get("predecessors", ()))})
    except (TypeError, ValueError) as exc:
        raise StateFileDamaged(
            f"restore guard {guard_path(cluster)} is damaged ({exc}): look at the cluster, then remove it with "
            f"`rewind guard clear --cluster {cluster.name}`"
        ) from None
    if guard.phase not in (CLAIMED, FAILED):  # a rewind under way (or a guard written before the journal said it)
        guard = replace(guard, phase=progress(cluster, guard.run_id))
    return guard


def progress(cluster: Cluster, run_id: str) -> Phase:
    """Where run `run_id`'s rewind stands, from its journal: the last milestone it recorded (a DBA's
    move or abort at the target restores again: restoring, then started, until it is back at a
    target or promoted)."""
    from rewind.pitr.journal import RunJournal  # the journal imports nothing of this module

    data = RunJournal.load(cluster, run_id).data
    steps = data.get("steps") or {}
    pending = data.get("pending_decision") or {}
    if "backup" in steps:
        return Phase.BACKED_UP
    if data.get("mode") == "clone":  # at_target and checked were the clone's, before the cutover
        if "stopped" not in steps:
            return Phase.CLONING  # the clone is built and checked; production serves
        return Phase.PROMOTED if "promoted" in steps else Phase.STARTED if "started" in steps else Phase.STOPPED
    if pending.get("started"):
        return Phase.STARTED
    if pending.get("restore_started"):
        return Phase.RESTORING
    for step, phase in (
        ("promoted", Phase.PROMOTED),
        ("at_target", Phase.AT_TARGET),
        ("started", Phase.STARTED),
        ("restored", Phase.RESTORED),
        ("restore_started", Phase.RESTORING),
        ("stopped", Phase.STOPPED),
    ):
        if step in steps:
            return phase
    return Phase.STOPPING


def _write(cluster: Cluster, guard: Guard) -> Guard:
    state_dir(cluster)
    stored = guard.phase if guard.phase in (CLAIMED, FAILED) else REWINDING  # progress is the journal's
    write_json(guard_path(cluster), {**asdict(guard), "phase": stored.value, "predecessors": list(guard.predecessors)})
    return guard


def _active(run_state: RunState, guard: Guard) -> bool:
    try:
        state = run_state(guard.dag_id, guard.run_id)
    except Exception:  # unknown: assume it is still running rather than run two rewinds at once
        return True
    return state is None or state in ACTIVE_RUN_STATES


def claim(cluster: Cluster, *, dag_id: str, run_id: str, run_state: RunState, log: Callable[[str], None] = print) -> Guard:
    """Claim the cluster for this PITR run, or refuse: another run is active, or one ended in the
    middle of a rewind without saying so (a killed worker)."""
    now = _now()
    existing = read_guard(cluster)
    if existing is not None and existing.run_id == run_id:
        return existing
    inherited = False
    took_over = timeline_before = None
    predecessors: tuple[str, ...] = ()
    if existing is not None:
        if existing.phase == FAILED:
            inherited, took_over, timeline_before = True, existing.run_id, existing.timeline_before
            predecessors = (*existing.predecessors, existing.run_id)
            log(f"taking over the restore guard of failed {existing.describe()}: backups stay blocked until this run's new full backup")
        elif _active(run_state, existing):
            raise PitrAlreadyRunning(
                f"cluster {cluster.name!r}: {existing.describe()} is still active: this run does nothing; "
                f"wait for that run to end (or mark it failed), then trigger again"
            )
        elif existing.phase == CLAIMED:
            log(f"taking over a stale claim of ended {existing.describe()}")
        else:
            raise RestoreFailed(
                f"cluster {cluster.name!r}: {existing.describe()} ended in the middle of a rewind without recording a failure: "
                f"look at the cluster, then `rewind guard clear --cluster {cluster.name}` and trigger again"
            )
    return _write(
        cluster,
        Guard(
            cluster=cluster.name,
            run_id=run_id,
            dag_id=dag_id,
            phase=CLAIMED,
            since=now,
            updated=now,
            blocks_backups=inherited,
            took_over=took_over,
            timeline_before=timeline_before,
            predecessors=predecessors,
        ),
    )


def held_by(cluster: Cluster, run_id: str) -> Guard:
    """This run's guard, or RestoreFailed: a step about to act on the cluster checks it still holds it."""
    return _own(cluster, run_id)


def _own(cluster: Cluster, run_id: str) -> Guard:
    existing = read_guard(cluster)
    if existing is None or existing.run_id != run_id:
        held = existing.describe() if existing else "nobody"
        raise RestoreFailed(f"cluster {cluster.name!r}: the restore guard is not held by this run (held by {held}): refusing to go on")
    return existing


def begin_rewind(cluster: Cluster, run_id: str, *, change: str | None = None, timeline_before: int | None = None) -> Guard:
    """This run is about to stop PostgreSQL: backups are blocked from now on. Keeps the first
    timeline a run of this guard stopped (a run that takes over a failed one means that one's)."""
    guard = _own(cluster, run_id)
    _write(
        cluster,
        replace(
            guard,
            phase=REWINDING,
            updated=_now(),
            blocks_backups=True,
            failed_step=None,
            change=change or guard.change,
            timeline_before=guard.timeline_before or timeline_before,
        ),
    )
    return _own(cluster, run_id)


def set_change(cluster: Cluster, run_id: str, change: str) -> Guard:
    return _write(cluster, replace(_own(cluster, run_id), change=change, updated=_now()))


def fail(cluster: Cluster, run_id: str, step: str) -> Guard | None:
    """A step of this run failed. Before anything was touched the claim is simply released; after,
    the guard stays up in phase `failed` (backups blocked) until a DBA or the next PITR deals with it."""
    existing = read_guard(cluster)
    if existing is None or existing.run_id != run_id:
        return existing
    if existing.phase == CLAIMED and not existing.blocks_backups:
        guard_path(cluster).unlink(missing_ok=True)
        return None
    return _write(cluster, replace(existing, phase=FAILED, failed_step=step, updated=_now()))


def release(cluster: Cluster, run_id: str) -> bool:
    """The run is done (the new timeline has its full backup): backups may resume."""
    existing = read_guard(cluster)
    if existing is None:
        return False
    if existing.run_id != run_id:
        raise RestoreFailed(f"cluster {cluster.name!r}: the restore guard belongs to {existing.describe()}, not this run")
    guard_path(cluster).unlink(missing_ok=True)
    return True


def clear(cluster: Cluster) -> str:
    """`rewind guard clear`: remove the guard whatever it holds, a damaged file included."""
    path = guard_path(cluster)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return f"no restore guard for cluster {cluster.name}"
    path.unlink()
    return f"restore guard of cluster {cluster.name} cleared (was: {text.strip()[:300]})"


def require_no_restore(cluster: Cluster, *, allowed_run_id: str | None = None) -> None:
    """Routine work (backup, verify, watchdog) may touch the cluster: no rewind holds it."""
    guard = read_guard(cluster)
    if guard is None or not guard.blocks_backups or guard.run_id == allowed_run_id:
        return
    if guard.phase == FAILED:
        raise RestoreFailed(
            f"cluster {cluster.name!r}: {guard.describe()} failed and left backups blocked: when the cluster is verified, "
            f"clear it with `rewind guard clear --cluster {cluster.name}`"
        )
    raise RestoreInProgress(f"cluster {cluster.name!r}: restore in progress ({guard.describe()}): backups wait for its new full backup")
