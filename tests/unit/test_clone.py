"""Clone mode's plain parts (rewind.pitr.clone): where the clone lives, the room it needs, the
tablespaces it refuses, and the swap that converges from wherever a killed cutover left it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rewind.errors import PreflightError
from rewind.pitr.clone import CloneError, check_room, clone_paths, refuse_tablespaces, swap
from tests.factories import local_cluster

RUN = "manual__2026-11-24T02:20:00+00:00"


def directories(tmp_path):
    cluster = local_cluster(tmp_path)
    paths = clone_paths(cluster, RUN)
    paths.data_dir.mkdir()
    (paths.data_dir / "PG_VERSION").write_text("production\n")
    paths.clone_dir.mkdir()
    (paths.clone_dir / "PG_VERSION").write_text("clone\n")
    return cluster, paths


def test_the_clone_is_a_sibling_of_the_data_directory_on_its_file_system(tmp_path):
    paths = clone_paths(local_cluster(tmp_path), RUN)
    assert paths.clone_dir.parent == paths.data_dir.parent == paths.pre_rewind_dir.parent
    assert paths.clone_dir.name.startswith("pgdata.rewind-clone-") and paths.pre_rewind_dir.name.startswith("pgdata.pre-rewind-")
    assert len(str(paths.run_dir / ".s.PGSQL.65535")) < 107  # a socket path's limit
    assert clone_paths(local_cluster(tmp_path), "manual__other") != paths


@pytest.mark.parametrize("killed_after", ["nothing", "the first rename", "both renames"])
def test_swap_converges_from_wherever_a_killed_cutover_left_the_directories(tmp_path, killed_after):
    _cluster, paths = directories(tmp_path)
    if killed_after in ("the first rename", "both renames"):
        paths.data_dir.rename(paths.pre_rewind_dir)
    if killed_after == "both renames":
        paths.clone_dir.rename(paths.data_dir)
    lines: list[str] = []
    assert swap(paths, log=lines.append) == ("swapped already" if killed_after == "both renames" else "swapped")
    assert (paths.data_dir / "PG_VERSION").read_text() == "clone\n"
    assert (paths.pre_rewind_dir / "PG_VERSION").read_text() == "production\n"
    assert not paths.clone_dir.exists()
    assert swap(paths, log=lines.append) == "swapped already"  # and again: nothing more


def test_swap_renames_nothing_when_it_cannot_tell_where_the_directories_are(tmp_path):
    _cluster, paths = directories(tmp_path)
    shutil.rmtree(paths.clone_dir)
    with pytest.raises(CloneError, match=r"cannot tell where the directories are .*: nothing was renamed"):
        swap(paths, log=print)
    assert (paths.data_dir / "PG_VERSION").read_text() == "production\n"


def test_room_for_the_clone_is_the_backup_and_its_wal_beside_production(tmp_path):
    cluster = local_cluster(tmp_path)
    paths = clone_paths(cluster, RUN)
    check_room(cluster, paths, backup_bytes=1024, wal_bytes=16 * 2**20)
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(PreflightError, match=r"clone mode: not enough disk beside .* use mode in_place"):
        check_room(cluster, paths, backup_bytes=free, wal_bytes=0)


def test_tablespaces_are_refused_naming_in_place(tmp_path):
    cluster = local_cluster(tmp_path)
    tablespaces = Path(cluster.postgres.data_dir) / "pg_tblspc"
    tablespaces.mkdir(parents=True)
    refuse_tablespaces(cluster)
    (tablespaces / "16390").symlink_to(tmp_path)
    with pytest.raises(PreflightError, match=r"has tablespaces \(pg_tblspc: 16390\).*use mode in_place"):
        refuse_tablespaces(cluster)


def test_a_cleared_run_finishes_only_the_unambiguous_half_swap(tmp_path):
    from rewind.pitr.clone import finish_interrupted_swap

    _cluster, paths = directories(tmp_path)
    assert finish_interrupted_swap(paths, log=print) == "nothing to finish"  # both in place: the cutover decides
    assert (paths.data_dir / "PG_VERSION").read_text() == "production\n"
    paths.data_dir.rename(paths.pre_rewind_dir)  # killed between the renames
    assert finish_interrupted_swap(paths, log=print) == "swapped"
    assert (paths.data_dir / "PG_VERSION").read_text() == "clone\n"


def test_the_kept_directory_of_a_timeline_is_the_one_its_rewinds_hold_names_while_it_is_there(tmp_path):
    from rewind.pitr.clone import kept_directory_of
    from rewind.retention import place_hold, set_hold_kept_dir
    from tests.unit.test_retention import BACKUPS, stanza_info

    cluster, paths = directories(tmp_path)
    assert kept_directory_of(cluster, 1) is None  # no rewind kept anything
    place_hold(cluster, run_id="in-place", info=stanza_info(BACKUPS), timeline=1)  # an in-place rewind keeps no directory
    place_hold(cluster, run_id=RUN, info=stanza_info(BACKUPS), timeline=2)
    set_hold_kept_dir(cluster, RUN, str(paths.pre_rewind_dir))
    assert kept_directory_of(cluster, 2) is None  # named, but gone (released, removed by hand)
    paths.pre_rewind_dir.mkdir()
    assert (kept_directory_of(cluster, 2), kept_directory_of(cluster, 1)) == (paths.pre_rewind_dir, None)


class ControlData:
    """pg_controldata as the runner returns it (rewind.postgres.control_timeline / control_state)."""

    def __init__(self, timeline: int, state: str = "shut down") -> None:
        self.text = f"Database cluster state:               {state}\nLatest checkpoint's TimeLineID:       {timeline}\n"

    def run(self, argv, **_kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(stdout=self.text, returncode=0)


def test_undo_goes_back_over_the_last_clone_mode_rewind_only_and_says_the_way_on_otherwise(tmp_path):
    from rewind.pitr.clone import check_undo_possible
    from rewind.retention import place_hold, set_hold_kept_dir
    from tests.unit.test_retention import BACKUPS, stanza_info

    cluster, paths = directories(tmp_path)

    def check(runner, **where):
        return check_undo_possible(cluster, runner, **{"timeline": 2, "live_timeline": 3, "parent_of_live": 2, **where})

    with pytest.raises(
        PreflightError, match=r"^mode undo: no directory of timeline 2 is kept .*target_timeline 2 and mode in_place instead$"
    ):
        check(ControlData(2))
    place_hold(cluster, run_id=RUN, info=stanza_info(BACKUPS), timeline=2)
    set_hold_kept_dir(cluster, RUN, str(paths.pre_rewind_dir))
    paths.pre_rewind_dir.mkdir()
    assert check(ControlData(2)) == paths.pre_rewind_dir
    assert check(ControlData(2, "shut down in recovery")) == paths.pre_rewind_dir  # read by a salvage since: a standby's stop
    with pytest.raises(
        PreflightError,
        match=r"runs on timeline 4, which did not branch from 2 \(it branched from 3\): undo goes back over the last rewind only",
    ):
        check(ControlData(2), live_timeline=4, parent_of_live=3)
    with pytest.raises(PreflightError, match=r"is not the end of timeline 2 its hold says \(pg_control: timeline 5, shut down\)"):
        check(ControlData(5))
    with pytest.raises(PreflightError, match=r"\(pg_control: timeline 2, in production\)"):
        check(ControlData(2, "in production"))  # crashed, or started by hand: not what the cutover left


def test_undo_writes_what_a_restore_would_recovery_to_its_timelines_end_once(tmp_path):
    from rewind.pitr.clone import write_undo_recovery

    cluster, paths = directories(tmp_path)
    auto = paths.data_dir / "postgresql.auto.conf"
    auto.write_text(
        "archive_mode = 'on'\n# Recovery settings generated by pgBackRest restore\nrestore_command = 'old'\n"
        "recovery_target_time = '2026-11-24 02:13:30+00'\nrecovery_target_action = 'pause'\n"
    )
    command = '/usr/bin/pgbackrest --config=/etc/pgbackrest/rewind/ledger.conf --stanza=ledger archive-get %f "%p"'
    assert write_undo_recovery(cluster, paths.data_dir, timeline=2, run_id=RUN, restore_command=command)
    text = auto.read_text()
    assert "archive_mode = 'on'" in text.splitlines()
    assert [line for line in text.splitlines() if not line.startswith("#") and line.startswith(("restore_command", "recovery_target"))] == [
        f"restore_command = '{command}'",
        "recovery_target_timeline = '2'",
    ]
    assert "# Removed by Rewind undo on " in text and (paths.data_dir / "recovery.signal").exists()
    assert not write_undo_recovery(cluster, paths.data_dir, timeline=2, run_id=RUN, restore_command=command)  # a retry
    assert auto.read_text() == text


def test_the_clone_restore_is_stopped_once_when_free_space_falls_below_production_reserve(tmp_path, monkeypatch):
    import time
    from collections import namedtuple

    from rewind.pitr.clone import CloneOutOfRoom, free_space_watch, out_of_room

    usage = namedtuple("usage", "total used free")
    free = iter([900, 700, 400, 90, 50, 10])
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(1000, 0, next(free, 10)))
    stops: list[str] = []
    with free_space_watch(tmp_path, 100, lambda: stops.append("killed"), poll_s=0.01) as fell:
        deadline = time.monotonic() + 5
        while not fell and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the watch stops at the first fall: one kill
    assert (stops, fell) == (["killed"], {"free": 90})
    with free_space_watch(tmp_path, 5, lambda: stops.append("again"), poll_s=0.01) as fell:
        time.sleep(0.05)  # above the reserve throughout: nothing stopped
    assert (stops, fell) == (["killed"], {})

    cluster = local_cluster(tmp_path)
    error = out_of_room(cluster, clone_paths(cluster, RUN), reserve=2**30, free=2**29)
    assert isinstance(error, CloneOutOfRoom) and not error.retryable and "\n" not in str(error)
    assert str(error).startswith(f"clone mode: the file system of {cluster.postgres.data_dir} fell to 0.50 GiB free while the clone")
