"""Retention holds (rewind.retention): what a dry-run expire says it would remove, how far a hold
widens the retention (never narrower than configured), which holds are active, and expire run
through a fake pgBackRest client that applies count retention."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rewind.retention import (
    Hold,
    active_holds,
    all_holds,
    dry_run_expired,
    end_hold,
    expire_with_holds,
    get_hold,
    held_backups,
    place_hold,
    plan_expire,
    set_hold_change,
)
from tests.factories import backup_json, local_cluster, stanza_info
from tests.fakes import FakePgBackRest

NOW = dt.datetime(2026, 11, 27, 15, 0, tzinfo=dt.timezone.utc)


def stop_of(day: int) -> int:
    return int(dt.datetime(2026, 11, day, 2, 30, tzinfo=dt.timezone.utc).timestamp())


# Four weekly fulls, a diff on the oldest; the configured count retention 2 keeps F3 and F4.
F1, F1_D = "20261101-020000F", "20261101-020000F_20261102-020000D"
F2, F3, F4, F4_I = "20261108-020000F", "20261115-020000F", "20261122-020000F", "20261122-020000F_20261122-030000I"
BACKUPS = [
    backup_json(F1, stop=stop_of(1), wal_start="000000010000000000000002", lsn_stop="0/2000100"),
    backup_json(F1_D, stop=stop_of(2), wal_start="000000010000000000000004", lsn_stop="0/4000100"),
    backup_json(F2, stop=stop_of(8), wal_start="000000010000000000000006", lsn_stop="0/6000100"),
    backup_json(F3, stop=stop_of(15), wal_start="000000010000000000000008", lsn_stop="0/8000100"),
    backup_json(F4, stop=stop_of(22), wal_start="00000001000000000000000A", lsn_stop="0/A000100"),
    backup_json(F4_I, stop=stop_of(22) + 3600, wal_start="00000001000000000000000C", lsn_stop="0/C000100"),
]
INFO = stanza_info(BACKUPS)


def hold(run_id: str, floor: str, *, ends_at: dt.datetime | None = None, floor_stopped_at: str | None = None) -> Hold:
    stopped = floor_stopped_at or INFO.get(floor).stopped_at.isoformat()
    return Hold(
        run_id=run_id,
        created_at="2026-11-24T02:20:00+00:00",
        floor=floor,
        floor_stopped_at=stopped,
        timeline=1,
        ends_at=ends_at.isoformat(timespec="seconds") if ends_at else None,
    )


# ---- what the dry run would remove ---------------------------------------------------------------------
DRY_RUN_2_55 = """\
2026-11-27 14:54:11.100 P00   INFO: [DRY-RUN] expire command begin 2.55.1: --dry-run --exec-id=4242-5f2c1a7b \
--log-level-console=info --stanza=ledger
2026-11-27 14:54:11.102 P00   INFO: [DRY-RUN] repo1: expire full backup 20261127-145401F
2026-11-27 14:54:11.102 P00   INFO: [DRY-RUN] repo1: expire full backup set 20261101-020000F, 20261101-020000F_20261102-020000D
2026-11-27 14:54:11.103 P00   INFO: [DRY-RUN] repo1: expire diff backup set 20261108-020000F_20261109-020000D, \
20261108-020000F_20261109-030000I
2026-11-27 14:54:11.104 P00   INFO: [DRY-RUN] repo1: remove expired backup 20261101-020000F_20261102-020000D
2026-11-27 14:54:11.104 P00   INFO: [DRY-RUN] repo1: remove expired backup 20261127-145401F
2026-11-27 14:54:11.105 P00   INFO: [DRY-RUN] repo1: 15-1 remove archive, start = 000000010000000000000001, stop = 000000010000000000000004
2026-11-27 14:54:11.106 P00   INFO: [DRY-RUN] expire command end: completed successfully (6ms)
"""


def test_dry_run_expired_reads_pgbackrests_expire_lines():
    assert dry_run_expired(DRY_RUN_2_55) == [
        "20261101-020000F",
        "20261101-020000F_20261102-020000D",
        "20261108-020000F_20261109-020000D",
        "20261108-020000F_20261109-030000I",
        "20261127-145401F",
    ]


def test_dry_run_expired_takes_only_dry_run_expire_lines():
    assert dry_run_expired("P00   INFO: [DRY-RUN] expire full backup 20181119-152138F") == ["20181119-152138F"]  # before repoN: prefixes
    assert dry_run_expired("2026-11-27 14:54:11.102 P00   INFO: repo1: expire full backup 20261101-020000F") == []  # a real expire
    assert dry_run_expired("P00   INFO: [DRY-RUN] repo1: remove expired backup 20261101-020000F") == []
    archive = "P00   INFO: [DRY-RUN] repo1: 15-1 remove archive, start = 000000010000000000000001, stop = 000000010000000000000004"
    assert dry_run_expired(archive) == []
    assert dry_run_expired("") == []


def test_dry_run_expired_reads_time_based_expire_lines():
    """With recovery_window_days pgBackRest 2.45-2.59 logs 'expire time-based backup [set ]...'
    (src/command/expire/expire.c); a hold must see those too."""
    line = (
        "2026-11-27 14:54:11.102 P00   INFO: [DRY-RUN] repo1: expire time-based backup set 20261101-020000F, "
        "20261101-020000F_20261102-020000D"
    )
    assert dry_run_expired(line) == ["20261101-020000F", "20261101-020000F_20261102-020000D"]


# ---- how far a hold widens the retention -------------------------------------------------------------
@pytest.fixture
def count_cluster(tmp_path):
    return local_cluster(tmp_path, repo={"retention_full": 2})


@pytest.fixture
def window_cluster(tmp_path):
    return local_cluster(tmp_path, repo={"recovery_window_days": 7})


WOULD_EXPIRE = [F1, F1_D, F2]  # what count retention 2 removes


def test_no_hold_covering_what_would_go_leaves_the_configured_retention(count_cluster):
    plan = plan_expire(count_cluster, INFO, WOULD_EXPIRE, [hold("run-a", F3)], now=NOW)
    assert (plan.options, plan.held, plan.would_expire) == ({}, {}, WOULD_EXPIRE)
    assert plan.describe() == "no backup held"
    assert plan_expire(count_cluster, INFO, WOULD_EXPIRE, [], now=NOW).options == {}


def test_a_count_retention_is_widened_to_keep_the_floor(count_cluster):
    plan = plan_expire(count_cluster, INFO, WOULD_EXPIRE, [hold("run-a", F2)], now=NOW)
    assert plan.options == {"retention_full_type": "count", "retention_full": 3, "retention_diff": 6}  # F2, F3, F4
    assert plan.held == {"run-a": [F2]}  # F1 and its diff are older than the floor: they may go
    assert plan.describe() == f"held for PITR run run-a: {F2}"
    both = plan_expire(count_cluster, INFO, WOULD_EXPIRE, [hold("run-a", F2), hold("run-b", F1)], now=NOW)
    assert both.options == {"retention_full_type": "count", "retention_full": 4, "retention_diff": 6}  # the older floor wins
    assert both.held == {"run-a": [F2], "run-b": [F1, F1_D, F2]}


def test_differential_retention_is_widened_too_so_a_held_diff_stays(tmp_path):
    """retention-diff counts differential backups on its own: a hold that reports F1's diff as held
    must keep it, not only its full."""
    cluster = local_cluster(tmp_path, repo={"retention_full": 2, "retention_diff": 1})
    info = stanza_info(
        [
            *BACKUPS,
            backup_json("20261108-020000F_20261109-020000D", stop=stop_of(9), wal_start="000000010000000000000007", lsn_stop="0/7000100"),
        ]
    )
    plan = plan_expire(cluster, info, [F1, F1_D], [hold("run-a", F1)], now=NOW)
    assert plan.options == {"retention_full_type": "count", "retention_full": 4, "retention_diff": 2}


def test_a_count_retention_is_never_narrowed(count_cluster):
    # only F4's incr would go (diff/incr retention): the fulls from the floor on are 1, the configured count stays 2
    plan = plan_expire(count_cluster, INFO, [F4_I], [hold("run-a", F4)], now=NOW)
    assert plan.options == {"retention_full_type": "count", "retention_full": 2, "retention_diff": 6}


def test_a_time_retention_is_widened_to_the_floors_age(window_cluster):
    plan = plan_expire(window_cluster, INFO, [F1, F1_D], [hold("run-a", F1)], now=NOW)
    # F1 ended 2026-11-01 02:30, 26 days and 12.5 hours before NOW: 27 days, and one more
    assert plan.options == {"retention_full_type": "time", "retention_full": 28, "retention_diff": 6}
    recent = plan_expire(window_cluster, INFO, [F4_I], [hold("run-a", F4)], now=NOW)
    assert recent.options == {
        "retention_full_type": "time",
        "retention_full": 7,
        "retention_diff": 6,
    }  # 6 days old: the configured window stays


def test_a_floor_already_gone_from_the_repository_uses_the_holds_record(window_cluster):
    gone = hold("run-a", "20261025-020000F", floor_stopped_at="2026-10-25T02:30:00+00:00")
    plan = plan_expire(window_cluster, INFO, [F1], [gone], now=NOW)
    assert plan.options == {"retention_full_type": "time", "retention_full": 35, "retention_diff": 6}


# ---- the holds on disk ---------------------------------------------------------------------------------
def test_place_hold_keeps_everything_from_the_oldest_valid_full_once_per_run(ledger):
    with_error = stanza_info([{**BACKUPS[0], "error": True}, *BACKUPS[1:]])
    placed = place_hold(ledger, run_id="run-a", info=with_error, timeline=1, reason="r" * 300)
    assert (placed.floor, placed.floor_stopped_at, placed.timeline, placed.ends_at, len(placed.reason)) == (
        F2,
        "2026-11-08T02:30:00+00:00",
        1,
        None,
        200,
    )
    assert place_hold(ledger, run_id="run-a", info=INFO, timeline=2) == placed  # idempotent: the first floor stays
    assert place_hold(ledger, run_id="run-b", info=stanza_info([]), timeline=1) is None  # nothing to keep
    set_hold_change(ledger, "run-a", "CHG0010001")
    assert get_hold(ledger, "run-a").change == "CHG0010001"
    assert [h.run_id for h in all_holds(ledger)] == ["run-a"]


def test_a_hold_is_active_until_its_end(ledger):
    place_hold(ledger, run_id="run-a", info=INFO, timeline=1)
    place_hold(ledger, run_id="run-b", info=INFO, timeline=1)
    assert [h.run_id for h in active_holds(ledger, NOW)] == ["run-a", "run-b"]
    ended = end_hold(ledger, "run-a", keep_days=0)
    assert not ended.active(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1))
    kept = end_hold(ledger, "run-b", keep_days=14)
    assert kept.active(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=13))
    assert not kept.active(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=14, seconds=1))
    assert [h.run_id for h in active_holds(ledger)] == ["run-b"]
    assert end_hold(ledger, "run-none", keep_days=1) is None
    assert "open" in hold("x", F1).describe() and "until 2026-11-28" in hold("x", F1, ends_at=NOW + dt.timedelta(days=1)).describe()


def test_held_backups_lists_what_each_active_hold_covers(ledger):
    place_hold(ledger, run_id="run-a", info=stanza_info(BACKUPS[2:]), timeline=1)  # floor F2
    assert held_backups(ledger, INFO) == {"run-a": [F2, F3, F4, F4_I]}
    end_hold(ledger, "run-a", keep_days=0)
    assert held_backups(ledger, INFO, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)) == {}


# ---- expire ---------------------------------------------------------------------------------------------
def test_expire_without_holds_applies_the_configured_retention(count_cluster):
    pgbackrest = FakePgBackRest(count_cluster, BACKUPS)
    result = expire_with_holds(pgbackrest, log=lambda _line: None)
    assert result == {
        "expired": [F1, F1_D, F2],
        "retained": [F3, F4, F4_I],
        "held": {},
        "options": {},
        "holds": [],
        "released_directories": [],
    }
    assert pgbackrest.calls == [("expire", {})]  # no dry run needed


def test_expire_keeps_what_an_active_hold_covers(count_cluster):
    place_hold(count_cluster, run_id="run-a", info=stanza_info(BACKUPS[2:]), timeline=1)  # floor F2
    pgbackrest = FakePgBackRest(count_cluster, BACKUPS)
    lines: list[str] = []
    result = expire_with_holds(pgbackrest, log=lines.append)
    assert result["expired"] == [F1, F1_D] and result["retained"] == [F2, F3, F4, F4_I]
    assert result["held"] == {"run-a": [F2]} and result["holds"] == ["run-a"]
    assert result["options"] == {"retention_full_type": "count", "retention_full": 3, "retention_diff": 6}
    dry_run, expire = pgbackrest.calls
    assert dry_run[-3:] == ["--dry-run", "--log-level-console=info", "expire"]
    assert expire == ("expire", {"retention_full_type": "count", "retention_full": 3, "retention_diff": 6})
    assert any(line.startswith("retention widened for this run") and f"held for PITR run run-a: {F2}" in line for line in lines)


def test_a_kept_pre_rewind_directory_goes_with_its_hold_and_nothing_else_ever_does(count_cluster, tmp_path):
    """Clone mode keeps production's directory from before the cutover as long as the hold keeps the
    pre-rewind backups and WAL; the first expire after the hold ended removes it, and only a
    directory named as Rewind names it beside the data directory."""
    import datetime as dt

    from rewind.retention import end_hold, get_hold, release_kept_directories, set_hold_kept_dir

    data_dir = Path(count_cluster.postgres.data_dir)
    kept = data_dir.with_name(f"{data_dir.name}.pre-rewind-run-a")
    (kept / "base").mkdir(parents=True)
    place_hold(count_cluster, run_id="run-a", info=stanza_info(BACKUPS), timeline=1)
    set_hold_kept_dir(count_cluster, "run-a", str(kept))
    lines: list[str] = []
    assert release_kept_directories(count_cluster, log=lines.append) == [] and kept.is_dir()  # open hold
    end_hold(count_cluster, "run-a", keep_days=1)
    assert release_kept_directories(count_cluster, log=lines.append) == [] and kept.is_dir()  # its last day
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    (kept / "postmaster.pid").write_text("4242\n")  # a salvage reads it right now: left for the next expire
    assert release_kept_directories(count_cluster, now=later, log=lines.append) == [] and kept.is_dir()
    assert "PostgreSQL runs on it (a salvage reading it)" in lines[-1] and get_hold(count_cluster, "run-a").kept_dir == str(kept)
    (kept / "postmaster.pid").unlink()
    assert release_kept_directories(count_cluster, now=later, log=lines.append) == [str(kept)]
    assert not kept.exists() and get_hold(count_cluster, "run-a").kept_dir is None
    assert lines[-1].startswith(f"released {kept}: the pre-rewind directory of PITR run run-a")
    # a hold naming anything else (the data directory, a path elsewhere) never removes it
    for elsewhere in (data_dir, tmp_path / "precious"):
        elsewhere.mkdir(parents=True, exist_ok=True)
        place_hold(count_cluster, run_id="run-b", info=stanza_info(BACKUPS), timeline=1)
        set_hold_kept_dir(count_cluster, "run-b", str(elsewhere))
        end_hold(count_cluster, "run-b", keep_days=0)
        assert release_kept_directories(count_cluster, now=later, log=lines.append) == [] and elsewhere.is_dir()
        assert "not removing" in lines[-1]


def test_a_kept_directory_released_by_hand_is_checked_first_and_recorded(count_cluster, tmp_path):
    """rewind_release_kept__<cluster>: one line naming what to fix, nothing removed, until the run,
    its kept directory and the name typed out all match; then removed, the hold kept and told who and why."""
    from rewind.retention import KeptDirectoryRefused, get_hold, release_kept_directory, set_hold_kept_dir

    data_dir = Path(count_cluster.postgres.data_dir)
    kept = data_dir.with_name(f"{data_dir.name}.pre-rewind-run-a")
    (kept / "base").mkdir(parents=True)
    place_hold(count_cluster, run_id="run-a", info=stanza_info(BACKUPS), timeline=1)
    place_hold(count_cluster, run_id="in-place", info=stanza_info(BACKUPS), timeline=2)
    set_hold_kept_dir(count_cluster, "run-a", str(kept))
    release = lambda run_id, confirm: release_kept_directory(  # noqa: E731
        count_cluster, run_id, confirm=confirm, by="Airflow user dba", reason="the disk is needed for the WAL"
    )
    for run_id, confirm, refused in (
        ("run-x", kept.name, r"^param pitr_run_id: no hold of cluster ledger is PITR run 'run-x' \(runs with a kept directory: run-a\)$"),
        ("in-place", kept.name, r"^param pitr_run_id: PITR run in-place kept no directory: an in-place rewind keeps none$"),
        ("run-a", "data", rf"^param confirm: type the directory's name, {kept.name}, to release it \(got 'data'\): nothing removed$"),
    ):
        with pytest.raises(KeptDirectoryRefused, match=refused):
            release(run_id, confirm)
        assert kept.is_dir()
    (kept / "postmaster.pid").write_text("4242\n")
    with pytest.raises(KeptDirectoryRefused, match="PostgreSQL runs on it"):
        release("run-a", kept.name)
    (kept / "postmaster.pid").unlink()
    assert release("run-a", kept.name) == str(kept) and not kept.exists()
    hold = get_hold(count_cluster, "run-a")
    assert hold.kept_dir is None and hold.released.endswith("by Airflow user dba: the disk is needed for the WAL")
    assert hold.ends_at is None  # the backups and WAL stay held as long as they were
    with pytest.raises(KeptDirectoryRefused, match=r"kept no directory: released already \(20"):
        release("run-a", kept.name)
