"""Clone mode: rewind onto a clone beside production first, prove it there, then cut over.

The runbook's rule: never overwrite a live primary blind. The target state is built in a sibling of
the data directory, on the same file system (so that a rename swaps it in atomically), while
production keeps serving; the data checks run on the clone; only the cutover stops production, and
it takes seconds whatever the size of the database or of the WAL replayed:

    checkpoints on the clone and production (both still up) -> archive production's WAL -> stop
    production -> promote the clone on its private socket (paused at the target: nothing to
    replay) -> stop it -> rename <data_dir> to <data_dir>.pre-rewind-<run> -> rename the clone to
    <data_dir> -> start (a primary at once)

The renames are journaled and idempotent (`swap`): whatever instant a cutover was killed at, the
next try finds which of the two directories is where and finishes the swap, so the cluster ends
with exactly one data directory in place, never none. The pre-rewind directory is kept, stopped.

The clone is the restore executor (rewind.restore) on a sibling instance that is not disposable:
nothing clone-only is written into its configuration files (archive_mode=off, the private socket,
no TCP listener all go on its command line), so the directory is production's as it stands.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rewind.errors import PreflightError, RewindError
from rewind.inventory import Cluster
from rewind.restore import Instance, run_root
from rewind.state import file_key
from rewind.wal import SEGMENT_SIZE, segment_parts

# The clone's socket, log and authentication files go under rewind.restore.run_root(): a short
# path (a socket path is capped at 107 bytes), private to the OS user.


class CloneError(RewindError):
    pass


@dataclass(frozen=True)
class ClonePaths:
    """Where one run's clone lives, and where production's directory goes at the cutover."""

    data_dir: Path  # production's
    clone_dir: Path  # beside it, same file system
    pre_rewind_dir: Path  # production's directory after the cutover, kept stopped
    run_dir: Path  # the clone's socket, log, pg_hba.conf

    def as_dict(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.__dict__.items()}


def _run_key(run_id: str) -> str:
    return file_key(run_id)[:48]


def clone_paths(cluster: Cluster, run_id: str) -> ClonePaths:
    data_dir = Path(cluster.postgres.data_dir)
    key = _run_key(run_id)
    return ClonePaths(
        data_dir=data_dir,
        clone_dir=data_dir.with_name(f"{data_dir.name}.rewind-clone-{key}"),
        pre_rewind_dir=data_dir.with_name(f"{data_dir.name}.pre-rewind-{key}"),
        run_dir=run_root() / f"{cluster.name}-{key}"[:60],
    )


def clone_instance(cluster: Cluster, paths: ClonePaths, *, port: int) -> Instance:
    """The clone: production's definition on the clone directory, a private socket, its own port."""
    return Instance.sibling(cluster, run_dir=paths.run_dir, port=port, data_dir=paths.clone_dir, disposable=False)


def refuse_tablespaces(cluster: Cluster) -> None:
    """A tablespace lives outside the data directory: a clone would need its own copy beside it and
    a second swap. Refused, naming the way on."""
    tablespaces = Path(cluster.postgres.data_dir) / "pg_tblspc"
    try:
        links = sorted(entry.name for entry in os.scandir(tablespaces))
    except FileNotFoundError:
        return
    if links:
        raise PreflightError(
            f"clone mode: cluster {cluster.name} has tablespaces (pg_tblspc: {', '.join(links)}), which a clone cannot be "
            "swapped in with: use mode in_place (pitr.mode in the inventory, or the params' mode)"
        )


def replay_bytes(plan) -> int:
    """The WAL a plan (rewind.pitr.plan.RestorePlan) replays, at most: its segments' size."""
    (_, first), (_, last) = segment_parts(plan.wal_first), segment_parts(plan.wal_last)
    return (last - first + 1) * SEGMENT_SIZE


def check_clone_possible(cluster: Cluster, paths: ClonePaths, plan) -> None:
    """Everything that refuses clone mode for this plan, before anything is written."""
    refuse_tablespaces(cluster)
    check_room(cluster, paths, backup_bytes=plan.backup_size_bytes, wal_bytes=replay_bytes(plan))


def check_room(cluster: Cluster, paths: ClonePaths, *, backup_bytes: int, wal_bytes: int, margin: float = 1.10) -> None:
    """The clone needs the backup's size plus the WAL it replays beside production, on the data
    directory's file system, above the reserve left to production; the current directory's space
    is not reused (it keeps serving)."""
    free = shutil.disk_usage(paths.data_dir.parent).free
    existing = _allocated(paths.clone_dir) if paths.clone_dir.exists() else 0  # a retry's clone is reused by --delta
    needed = int((backup_bytes + wal_bytes) * margin)
    reserve = reserve_bytes(cluster, paths)
    if free + existing < needed + reserve:
        raise PreflightError(
            f"clone mode: not enough disk beside {paths.data_dir} for the clone: needs {needed / 2**30:.1f} GiB "
            f"(backup {backup_bytes / 2**30:.1f} GiB + WAL {wal_bytes / 2**30:.1f} GiB, +10%) above the "
            f"{reserve / 2**30:.1f} GiB kept for production (pitr.clone_free_reserve_pct), {free / 2**30:.1f} GiB free: "
            "free space, or use mode in_place (pitr.mode in the inventory, or the params' mode)"
        )


def reserve_bytes(cluster: Cluster, paths: ClonePaths) -> int:
    """What the clone leaves free on the data directory's file system for production."""
    return int(shutil.disk_usage(paths.data_dir.parent).total * cluster.pitr.clone_free_reserve_pct / 100)


class CloneOutOfRoom(CloneError):
    """The file system fell below production's reserve while the clone restored: the restore was
    stopped and the clone removed. Not retried: each try would fill it again."""

    retryable = False


@contextmanager
def free_space_watch(path: Path, reserve: int, stop: Callable[[], None], *, poll_s: float = 0.2) -> Iterator[dict]:
    """While the body runs, `path`'s file system is watched: below `reserve` bytes free, `stop()`
    is called once (the restore's process group killed) and the yielded dict gets the free bytes
    seen ("free"), so the caller can name why its command died."""
    fell: dict = {}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            free = shutil.disk_usage(path).free
            if free < reserve:
                fell["free"] = free
                stop()
                return

    watcher = threading.Thread(target=watch, name="clone-free-space-watch", daemon=True)
    watcher.start()
    try:
        yield fell
    finally:
        done.set()
        watcher.join(timeout=10)


def out_of_room(cluster: Cluster, paths: ClonePaths, *, reserve: int, free: int | None) -> CloneOutOfRoom:
    seen = f"fell to {free / 2**30:.2f} GiB free" if free is not None else "ran out of space"
    return CloneOutOfRoom(
        f"clone mode: the file system of {paths.data_dir} {seen} while the clone restored, under the {reserve / 2**30:.2f} GiB "
        "kept for production (pitr.clone_free_reserve_pct): the restore was stopped and the clone removed, production was not "
        "touched; free space and trigger again, or use mode in_place"
    )


def _allocated(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def swap(paths: ClonePaths, *, log: Callable[[str], None] = print) -> str:
    """Put the clone in production's place, production's directory aside; idempotent: each call
    finds where the directories are and does only what is left. Production must be stopped.
    Returns what it found (for the log)."""
    data, clone, pre = paths.data_dir.exists(), paths.clone_dir.exists(), paths.pre_rewind_dir.exists()
    if data and not clone and pre:
        return "swapped already"
    if data and clone and not pre:
        os.rename(paths.data_dir, paths.pre_rewind_dir)
        log(f"renamed {paths.data_dir} to {paths.pre_rewind_dir}")
        data, pre = False, True
    if not data and clone and pre:
        os.rename(paths.clone_dir, paths.data_dir)
        log(f"renamed {paths.clone_dir} to {paths.data_dir}")
        _fsync_dir(paths.data_dir.parent)
        return "swapped"
    raise CloneError(
        f"cutover: cannot tell where the directories are ({paths.data_dir}: {_exists(data)}, {paths.clone_dir}: {_exists(clone)}, "
        f"{paths.pre_rewind_dir}: {_exists(pre)}): nothing was renamed; look at them, then clear this task"
    )


def finish_interrupted_swap(paths: ClonePaths, *, log: Callable[[str], None] = print) -> str:
    """Only the one unambiguous half-swap: production's directory already aside and the clone not
    yet in its place (no data directory at all). Anything else is left to the cutover."""
    if not paths.data_dir.exists() and paths.clone_dir.exists() and paths.pre_rewind_dir.exists():
        return swap(paths, log=log)
    return "nothing to finish"


def _exists(flag: bool) -> str:
    return "present" if flag else "absent"


def _fsync_dir(directory: Path) -> None:
    """The renames reach the disk before PostgreSQL starts on the new directory."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_history_for_archiving(clone_dir: Path, timeline: int) -> None:
    """The clone was promoted with archiving off, so PostgreSQL did not mark the new timeline's
    history file for the archiver: marked here, production (archiving on) pushes it once it starts,
    as it would have had it promoted itself. Idempotent."""
    status = clone_dir / "pg_wal" / "archive_status"
    name = f"{timeline:08X}.history"
    if (clone_dir / "pg_wal" / name).is_file() and not (status / f"{name}.done").exists():
        ready = status / f"{name}.ready"
        ready.touch()
        owner = (clone_dir / "pg_wal").stat()
        os.chown(ready, owner.st_uid, owner.st_gid)


def remove_clone(paths: ClonePaths) -> None:
    """A clone that will not be swapped in (refused, failed before the cutover): its directory and
    run directory go; production's is never touched here."""
    if paths.clone_dir.exists() and paths.clone_dir != paths.data_dir:
        shutil.rmtree(paths.clone_dir)
    shutil.rmtree(paths.run_dir, ignore_errors=True)


def compare_text(cluster: Cluster, paths: ClonePaths, *, port: int, database: str) -> str:
    """How a DBA looks at the clone and production side by side, on the database host as the
    cluster's OS user (the clone listens on its private socket only)."""
    postgres = cluster.postgres
    return (
        f"**Compare side by side** on the database host, as `{postgres.os_user}`: the clone (read-only, paused at the target) "
        f"`psql -h {paths.run_dir} -p {port} -d {database}`; production `psql -h {postgres.socket_dir} -p {postgres.port} -d {database}`."
    )


def kept_directory_of(cluster: Cluster, timeline: int) -> Path | None:
    """The pre-rewind directory a clone-mode rewind kept of `timeline` (its hold names it: the
    timeline the cluster ran on before that rewind), while it is still there."""
    from rewind.retention import all_holds  # retention reads holds only; nothing of this module

    for hold in all_holds(cluster):
        if hold.kept_dir and hold.timeline == timeline and Path(hold.kept_dir).is_dir():
            return Path(hold.kept_dir)
    return None


# ---- undo: the kept directory swapped back in ------------------------------------------------------
def check_undo_possible(cluster: Cluster, runner, *, timeline: int, live_timeline: int | None, parent_of_live: int | None) -> Path:
    """Undo goes back over the last rewind: to the end of `timeline`, the one a clone-mode rewind
    left, whose directory it kept. Returns that directory; refuses, in one line naming the way on,
    when there is none, it is not what its hold says, or the cluster is no longer on the timeline
    that rewind made."""
    kept = kept_directory_of(cluster, timeline)
    if kept is None:
        raise PreflightError(
            f"mode undo: no directory of timeline {timeline} is kept (a clone-mode rewind keeps production's until its hold ends "
            f"or a DBA releases it): rewind with target_type latest, target_timeline {timeline} and mode in_place instead"
        )
    if live_timeline is not None and parent_of_live != timeline:
        raise PreflightError(
            f"mode undo: the cluster runs on timeline {live_timeline}, which did not branch from {timeline} (it branched from "
            f"{parent_of_live}): undo goes back over the last rewind only; use mode in_place to reach timeline {timeline}"
        )
    problem = kept_directory_problem(cluster, runner, kept, timeline=timeline)
    if problem:
        raise PreflightError(f"mode undo: {problem}: nothing was touched; use mode in_place to reach timeline {timeline}")
    return kept


def kept_directory_problem(cluster: Cluster, runner, kept: Path, *, timeline: int) -> str | None:
    """Why `kept` is not (now) the end of `timeline` as the cutover left it, None when it is:
    something runs on it (a salvage reading it), or its pg_control names another timeline or no
    clean stop. What salvage reads and what undo swaps back in."""
    from rewind.postgres import control_state, control_timeline, postmaster_pid

    kept_cluster = cluster.model_copy(update={"postgres": cluster.postgres.model_copy(update={"data_dir": str(kept)})})
    if postmaster_pid(kept_cluster):
        return f"PostgreSQL runs on {kept} (a salvage reading it)"
    found, state = control_timeline(runner, kept_cluster), control_state(runner, kept_cluster)
    if found != timeline or state not in ("shut down", "shut down in recovery"):
        return f"{kept} is not the end of timeline {timeline} its hold says (pg_control: timeline {found}, {state})"
    return None


def undo_paths(cluster: Cluster, run_id: str, kept: Path) -> ClonePaths:
    """The swap of an undo: the kept directory takes the data directory's place, which goes aside
    as this run's pre-rewind directory (kept in turn, under this run's hold)."""
    own = clone_paths(cluster, run_id)
    return ClonePaths(data_dir=own.data_dir, clone_dir=kept, pre_rewind_dir=own.pre_rewind_dir, run_dir=own.run_dir)


UNDO_MARK = "# Recovery settings written by Rewind undo"


def write_undo_recovery(cluster: Cluster, data_dir: Path, *, timeline: int, run_id: str, restore_command: str) -> bool:
    """What pgBackRest's restore writes, for a directory that was not restored: recovery.signal, and
    in postgresql.auto.conf the repository's restore_command and the timeline to recover along
    (to its end, then promote onto a new timeline, chosen past every one the repository knows).
    Earlier recovery settings are commented out, as pgBackRest does. Idempotent: False when this
    run wrote them already."""
    import datetime as dt
    import pwd

    auto = data_dir / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    mark = f"{UNDO_MARK} (run {run_id})"
    user = pwd.getpwnam(cluster.postgres.os_user)
    signal = data_dir / "recovery.signal"
    if mark not in text:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines = [
            f"# Removed by Rewind undo on {now} # {line}"
            if line.split("=", 1)[0].strip().startswith(("restore_command", "recovery_target"))
            else line
            for line in text.splitlines()
        ]
        escaped = restore_command.replace("'", "''")
        lines += ["", f"{mark} on {now}", f"restore_command = '{escaped}'", f"recovery_target_timeline = '{timeline}'", ""]
        partial = auto.with_name(f".{auto.name}.rewind-undo")
        partial.write_text("\n".join(lines))
        os.chown(partial, user.pw_uid, user.pw_gid)
        partial.chmod(0o600)
        os.replace(partial, auto)
    signal.touch()
    os.chown(signal, user.pw_uid, user.pw_gid)
    return mark not in text
