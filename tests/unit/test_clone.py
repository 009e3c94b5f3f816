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
