"""Retention, and the holds that keep a rewind reversible.

pgBackRest's retention counts full backups (or days). Every PITR ends with a new full backup on the
new timeline, so a DBA iterating toward the right instant adds a full per try, and count-based
retention then expires the pre-rewind timeline: its backups and its WAL, the only copy of every
transaction the rewind discarded. pgBackRest has no pin, so Rewind holds:

- a PITR's preflight records a hold whose floor is the oldest full backup in the repository at that
  moment: every backup that existed then, and all WAL from the floor's start on every timeline (the
  pre-rewind timeline's end included), stays;
- the hold lasts while the run is active and, once its change is closed, `hold_days` more
  (inventory `pitr.hold_days`, default 14); a run that failed after stopping PostgreSQL keeps its hold
  open until a DBA clears the restore guard; a run that touched nothing drops it at once;
- `expire` first asks pgBackRest what the configured retention would remove (`--dry-run`); when a
  hold covers any of it, it runs with the retention widened just enough to keep the floor
  (count: the number of fulls from the floor on; time: the floor's age in days), never narrower
  than configured, and logs which backups were held and by which run.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.info import StanzaInfo
from rewind.state import StateFileDamaged, file_key, read_json, state_dir, write_json

LABEL_RE = re.compile(r"\b\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?\b")


DRY_RUN_EXPIRE_RE = re.compile(r"\[DRY-RUN\] (?:repo\d+: )?expire (?:full|diff|incr|time-based) backup")


def dry_run_expired(output: str) -> list[str]:
    """Labels on pgBackRest's `[DRY-RUN] repo1: expire full|diff|incr|time-based backup [set] <label>[, ...]` lines."""
    return sorted({label for line in output.splitlines() if DRY_RUN_EXPIRE_RE.search(line) for label in LABEL_RE.findall(line)})


@dataclass(frozen=True)
class Hold:
    run_id: str
    created_at: str
    floor: str  # label of the oldest full backup when the hold was made
    floor_stopped_at: str
    timeline: int  # the timeline the cluster was on (the one a rewind abandons)
    change: str | None = None
    ends_at: str | None = None  # None: open (the run is active, or failed mid-rewind)
    reason: str = ""
    # Clone mode: production's data directory as it was before the cutover, kept stopped on the
    # database host; removed by the first expire after the hold has ended (release_kept_directories).
    kept_dir: str | None = None
    released: str | None = None  # how its kept directory went before the hold ended: when, by whom, why

    def active(self, now: dt.datetime) -> bool:
        return self.ends_at is None or now < dt.datetime.fromisoformat(self.ends_at)

    def describe(self) -> str:
        until = f"until {self.ends_at}" if self.ends_at else "open"
        return f"hold of PITR run {self.run_id} (change {self.change or '-'}, from {self.created_at}, {until}): floor {self.floor}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def holds_dir(cluster: Cluster) -> Path:
    return Path(cluster.state_dir) / "holds"


def _path(cluster: Cluster, run_id: str) -> Path:
    return holds_dir(cluster) / f"{file_key(run_id)}.json"


def _read(path: Path) -> Hold:
    fix = "fix or remove it; while it is unreadable expire refuses to run"
    data = read_json(path, what="retention hold", fix=fix)
    try:
        return Hold(**(data or {}))
    except TypeError as exc:
        raise StateFileDamaged(f"retention hold {path} is damaged ({exc}): {fix}") from None


def _write(cluster: Cluster, hold: Hold) -> Hold:
    state_dir(cluster, "holds")
    write_json(_path(cluster, hold.run_id), asdict(hold))
    return hold


def get_hold(cluster: Cluster, run_id: str) -> Hold | None:
    path = _path(cluster, run_id)
    return _read(path) if path.exists() else None


def all_holds(cluster: Cluster) -> list[Hold]:
    directory = holds_dir(cluster)
    return [_read(path) for path in sorted(directory.glob("*.json"))] if directory.is_dir() else []


def active_holds(cluster: Cluster, now: dt.datetime | None = None) -> list[Hold]:
    now = now or _now()
    return [hold for hold in all_holds(cluster) if hold.active(now)]


def place_hold(cluster: Cluster, *, run_id: str, info: StanzaInfo, timeline: int, reason: str = "") -> Hold | None:
    """At a PITR's preflight: keep everything the repository holds now (idempotent per run)."""
    existing = get_hold(cluster, run_id)
    if existing is not None:
        return existing
    fulls = [b for b in info.backups if b.type == "full" and not b.error]
    if not fulls:
        return None
    floor = min(fulls, key=lambda b: b.label)
    return _write(
        cluster,
        Hold(
            run_id=run_id,
            created_at=_now().isoformat(timespec="seconds"),
            floor=floor.label,
            floor_stopped_at=floor.stopped_at.isoformat(),
            timeline=timeline,
            reason=reason[:200],
        ),
    )


def set_hold_change(cluster: Cluster, run_id: str, change: str) -> None:
    hold = get_hold(cluster, run_id)
    if hold is not None:
        _write(cluster, replace(hold, change=change))


def set_hold_kept_dir(cluster: Cluster, run_id: str, kept_dir: str) -> None:
    hold = get_hold(cluster, run_id)
    if hold is not None:
        _write(cluster, replace(hold, kept_dir=kept_dir))


def release_kept_directories(cluster: Cluster, *, now: dt.datetime | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Remove the pre-rewind directories whose hold has ended (each named in the log): the old
    branch is kept as long as its backups and WAL are, and no longer."""
    now = now or _now()
    released = []
    for hold in all_holds(cluster):
        if not hold.kept_dir or hold.active(now):
            continue
        kept = Path(hold.kept_dir)
        why_not = _not_removable(cluster, kept)
        if why_not:  # a salvage reading it is released by the next expire
            log(f"not removing {kept}, kept by {hold.describe()}: {why_not}")
            continue
        if kept.exists():
            shutil.rmtree(kept)
            log(f"released {kept}: the pre-rewind directory of PITR run {hold.run_id}, its {hold.describe()} has ended")
            released.append(str(kept))
        _write(cluster, replace(hold, kept_dir=None))
    return released


def _not_removable(cluster: Cluster, kept: Path) -> str | None:
    """Why a kept directory must not be removed now, None when it may: only ever a sibling named
    as Rewind names it (never the data directory itself), and nothing running on it."""
    data_dir = Path(cluster.postgres.data_dir)
    if kept.parent != data_dir.parent or not kept.name.startswith(f"{data_dir.name}.pre-rewind-") or kept == data_dir:
        return f"it is not a pre-rewind directory beside {data_dir}"
    if (kept / "postmaster.pid").exists():
        return "PostgreSQL runs on it (a salvage reading it)"
    return None


def hold_swapped_back(cluster: Cluster, kept_dir: str, *, by_run: str) -> None:
    """An undo put the directory a hold kept back into production: that hold keeps it no more."""
    for hold in all_holds(cluster):
        if hold.kept_dir == kept_dir:
            _write(
                cluster,
                replace(
                    hold,
                    kept_dir=None,
                    released=f"{_now().isoformat(timespec='seconds')}: swapped back into production by undo run {by_run}",
                ),
            )


class KeptDirectoryRefused(RewindError):
    """A release by hand that names no kept directory, or not the one it means: nothing removed."""

    retryable = False


def release_kept_directory(cluster: Cluster, run_id: str, *, confirm: str, by: str, reason: str, log: Callable[[str], None] = print) -> str:
    """Remove the pre-rewind directory PITR run `run_id` kept, before its hold ends (the DBA needs
    the disk): checked first, one line naming what to fix, nothing removed on a refusal. The hold
    itself stays (its backups and WAL in the repository are the old branch still); its record says
    when, by whom and why the directory went. Returns what was removed."""
    hold = get_hold(cluster, run_id)
    if hold is None:
        known = ", ".join(h.run_id for h in all_holds(cluster) if h.kept_dir) or "none"
        raise KeptDirectoryRefused(
            f"param pitr_run_id: no hold of cluster {cluster.name} is PITR run {run_id!r} (runs with a kept directory: {known})"
        )
    if not hold.kept_dir:
        why = f"released already ({hold.released})" if hold.released else "an in-place rewind keeps none"
        raise KeptDirectoryRefused(f"param pitr_run_id: PITR run {run_id} kept no directory: {why}")
    kept = Path(hold.kept_dir)
    why_not = _not_removable(cluster, kept)
    if why_not:
        raise KeptDirectoryRefused(f"{hold.describe()} names {kept}: {why_not}; nothing removed")
    if confirm != kept.name:
        raise KeptDirectoryRefused(
            f"param confirm: type the directory's name, {kept.name}, to release it (got {confirm!r}): nothing removed"
        )
    if kept.exists():
        shutil.rmtree(kept)
    released = f"{_now().isoformat(timespec='seconds')} by {by}: {reason}"
    _write(cluster, replace(hold, kept_dir=None, released=released))
    log(f"released {kept}, the pre-rewind directory of PITR run {run_id}, {released}; its backups and WAL stay held ({hold.describe()})")
    return str(kept)


def end_hold(cluster: Cluster, run_id: str, *, keep_days: float) -> Hold | None:
    """Start the hold's last period (the change closed, or a DBA cleared a failed rewind's guard)."""
    hold = get_hold(cluster, run_id)
    if hold is None:
        return None
    return _write(cluster, replace(hold, ends_at=(_now() + dt.timedelta(days=keep_days)).isoformat(timespec="seconds")))


# ---- expire ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpirePlan:
    options: dict  # extra expire options (empty: the configured retention as is)
    held: dict[str, list[str]]  # run id -> labels the configured retention would have expired
    would_expire: list[str]

    def describe(self) -> str:
        if not self.held:
            return "no backup held"
        return "; ".join(f"held for PITR run {run}: {', '.join(labels)}" for run, labels in self.held.items())


def plan_expire(
    cluster: Cluster, info: StanzaInfo, would_expire: list[str], holds: list[Hold], now: dt.datetime | None = None
) -> ExpirePlan:
    """The retention that keeps every active hold's floor, never narrower than the configured one."""
    now = now or _now()
    held: dict[str, list[str]] = {}
    for hold in holds:
        labels = [label for label in would_expire if label[:16] >= hold.floor[:16]]
        if labels:
            held[hold.run_id] = labels
    if not held:
        return ExpirePlan({}, {}, would_expire)
    floor_label = min(hold.floor for hold in holds if hold.run_id in held)
    repo = cluster.repo
    if repo.recovery_window_days is not None:
        floor = info.get(floor_label)
        stopped = (
            floor.stopped_at if floor else dt.datetime.fromisoformat(next(h.floor_stopped_at for h in holds if h.floor == floor_label))
        )
        days = max(repo.recovery_window_days, math.ceil((now - stopped).total_seconds() / 86400) + 1)
        options = {"retention_full_type": "time", "retention_full": days}
    else:
        fulls_from_floor = sum(1 for b in info.backups if b.type == "full" and b.label >= floor_label)
        options = {"retention_full_type": "count", "retention_full": max(repo.retention_full, fulls_from_floor)}
    # retention-diff counts differential backups on its own: without widening it too, a held diff
    # (and its incrementals) would still go while the log says it was kept.
    diffs_from_floor = sum(1 for b in info.backups if b.type == "diff" and b.label >= floor_label)
    options["retention_diff"] = max(repo.retention_diff, diffs_from_floor)
    return ExpirePlan(options, held, would_expire)


def expire_with_holds(pgbackrest: PgBackRest, *, log: Callable[[str], None] = print) -> dict:
    """Run expire so that no active hold loses anything; returns what happened for the task's XCom."""
    cluster = pgbackrest.cluster
    released = release_kept_directories(cluster, log=log)
    holds = active_holds(cluster)
    before = pgbackrest.info()
    would_expire: list[str] = []
    if holds:
        dry = pgbackrest.run(pgbackrest.commands.expire(dry_run=True))
        would_expire = dry_run_expired(dry.output)
    plan = plan_expire(cluster, before, would_expire, holds)
    for hold in holds:
        log(f"active {hold.describe()}")
    if plan.held:
        log(f"retention widened for this run ({plan.options}): {plan.describe()}")
    pgbackrest.expire(**plan.options)
    after = pgbackrest.info()
    expired = sorted({b.label for b in before.backup} - {b.label for b in after.backup})
    retained = [b.label for b in after.backups]
    log(f"expired {len(expired)} backup(s): {expired or 'none'}; retained: {retained}")
    return {
        "expired": expired,
        "retained": retained,
        "held": plan.held,
        "options": plan.options,
        "holds": [hold.run_id for hold in holds],
        "released_directories": released,
    }


def held_backups(cluster: Cluster, info: StanzaInfo, now: dt.datetime | None = None) -> dict[str, list[str]]:
    """Per active hold, the retained backups it covers (for `rewind holds` and the metrics)."""
    return {hold.run_id: [b.label for b in info.backups if b.label[:16] >= hold.floor[:16]] for hold in active_holds(cluster, now)}
