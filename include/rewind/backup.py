"""One backup of one stanza, safe to retry.

A retry finds the backup its earlier try already took and does not take a second one. "Its" means
all of: taken by this DAG, in this run, of the requested type, on the timeline the cluster is on
now. Scheduled runs of the full, diff and incr DAGs share run ids (`scheduled__<logical date>`), and
a PITR run's new-timeline full backup must not be mistaken for one from before a rewind. A backup
lock held by another process (an earlier try still running, a manual backup) is waited out for a
bounded time and never raced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from rewind.errors import RewindError
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.commands import BackupType
from rewind.pgbackrest.info import Backup, StanzaInfo

RUN_ID_ANNOTATION = "airflow_run_id"
DAG_ID_ANNOTATION = "airflow_dag_id"
REQUESTED_TYPE_ANNOTATION = "rewind_requested_type"  # pgBackRest may take a full when a diff was asked for


class BackupLockHeldError(RewindError):
    pass


@dataclass(frozen=True)
class BackupRecord:
    stanza: str
    label: str
    type: str
    timeline: int
    start_lsn: str | None
    stop_lsn: str | None
    wal_start: str | None
    wal_stop: str | None
    size_bytes: int | None
    repo_size_bytes: int | None
    started_at: str
    stopped_at: str
    duration_s: int
    reference: list[str]
    annotations: dict[str, str]
    reused: bool = False  # True when a retry found this run's backup already done

    @classmethod
    def from_backup(cls, stanza: str, backup: Backup, *, reused: bool = False) -> BackupRecord:
        return cls(
            stanza=stanza,
            label=backup.label,
            type=backup.type,
            timeline=backup.timeline,
            start_lsn=backup.lsn.start,
            stop_lsn=backup.lsn.stop,
            wal_start=backup.archive.start,
            wal_stop=backup.archive.stop,
            size_bytes=backup.info.size,
            repo_size_bytes=backup.info.repository.size,
            started_at=backup.started_at.isoformat(),
            stopped_at=backup.stopped_at.isoformat(),
            duration_s=backup.timestamp.stop - backup.timestamp.start,
            reference=list(backup.reference or []),
            annotations=backup.annotations,
            reused=reused,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def wait_for_backup_lock(pgbackrest: PgBackRest, *, timeout_s: float, poll_s: float = 10.0, log: Callable[[str], None] = print) -> None:
    deadline = time.monotonic() + timeout_s
    while pgbackrest.info().backup_lock_held:
        if time.monotonic() >= deadline:
            raise BackupLockHeldError(
                f"stanza {pgbackrest.cluster.stanza!r}: a backup is still running (pgBackRest backup lock held "
                f"for more than {timeout_s:.0f}s); not starting a second one: check `pgbackrest info` on the host"
            )
        log(f"stanza {pgbackrest.cluster.stanza!r}: backup lock held by another process; waiting")
        time.sleep(poll_s)


def earlier_try(info: StanzaInfo, *, dag_id: str, run_id: str, backup_type: str, timeline: int) -> Backup | None:
    """The backup an earlier try of this very task took: same DAG, run, requested type, timeline."""
    for backup in reversed(info.backups):
        notes = backup.annotations
        requested = notes.get(REQUESTED_TYPE_ANNOTATION, backup.type)
        if (notes.get(DAG_ID_ANNOTATION), notes.get(RUN_ID_ANNOTATION), requested, backup.timeline) == (
            dag_id,
            run_id,
            backup_type,
            timeline,
        ):
            return None if backup.error else backup
    return None


def take_backup(
    pgbackrest: PgBackRest,
    backup_type: BackupType,
    *,
    annotations: dict[str, str],
    timeline: int | None = None,
    lock_wait_s: float = 300.0,
    lock_poll_s: float = 10.0,
    log: Callable[[str], None] = print,
) -> BackupRecord:
    """`timeline`: the one the cluster is on now (a retry reuses only a backup taken on it)."""
    run_id, dag_id = annotations.get(RUN_ID_ANNOTATION), annotations.get(DAG_ID_ANNOTATION)
    annotations = {**annotations, REQUESTED_TYPE_ANNOTATION: backup_type}
    wait_for_backup_lock(pgbackrest, timeout_s=lock_wait_s, poll_s=lock_poll_s, log=log)
    before = pgbackrest.info()
    if run_id and dag_id and timeline is not None:
        done = earlier_try(before, dag_id=dag_id, run_id=run_id, backup_type=backup_type, timeline=timeline)
        if done is not None:
            log(
                f"backup {done.label} ({done.type}, timeline {done.timeline}) of this DAG run already exists (earlier try); not taking another"
            )
            return BackupRecord.from_backup(pgbackrest.cluster.stanza, done, reused=True)
    known = {b.label for b in before.backup}
    pgbackrest.backup(backup_type, annotations=annotations)
    new = [b for b in pgbackrest.info().backups if b.label not in known and b.annotations.get(RUN_ID_ANNOTATION) == run_id]
    backup = new[-1] if new else None
    if backup is None:
        raise RewindError(f"stanza {pgbackrest.cluster.stanza!r}: pgbackrest backup succeeded but info shows no matching backup")
    # pgBackRest promotes diff/incr to full when no prior full exists: report what was really taken.
    if backup.type != backup_type:
        log(f"requested {backup_type}, pgBackRest took {backup.type} (no suitable prior backup)")
    return BackupRecord.from_backup(pgbackrest.cluster.stanza, backup)
