"""rewind.pitr.plan on a branched repository (two rewinds): which timeline, which backup, and the
whole plan with its WAL check, from pgBackRest's info and repo-ls JSON through a fake client."""

from __future__ import annotations

import datetime as dt

import pytest

from rewind.errors import PreflightError
from rewind.pgbackrest.info import parse_info
from rewind.pitr.plan import TargetNotReachable, check_free_disk, choose_backup, make_plan, on_history, resolve_timeline
from rewind.pitr.request import parse_request
from rewind.wal import ArchiveListing, TimelineHistory
from tests.factories import (
    BRANCHED_SEGMENTS,
    HISTORY_2,
    HISTORY_3,
    backup_json,
    local_cluster,
    repo_ls,
    stanza_info,
)
from tests.fakes import FakePgBackRest
from tests.unit.test_info import FIXTURES

T0 = 1795500000  # 2026-11-24 06:00:00 UTC; labels are start times, as pgBackRest names backups
REASON = "migration 42 voided every ledger entry"

F1 = backup_json("20261124-060130F", stop=T0 + 100, wal_start="000000010000000000000002", lsn_stop="0/2000100")
# taken on timeline 1 after 0/3000000, where the first rewind later branched off: the abandoned branch
I_ABANDONED = backup_json("20261124-060130F_20261124-060310I", stop=T0 + 200, wal_start="000000010000000000000004", lsn_stop="0/4000100")
F2 = backup_json("20261124-060630F", stop=T0 + 400, wal_start="000000020000000000000004", lsn_stop="0/4000100")
D_ABANDONED = backup_json("20261124-060630F_20261124-060810D", stop=T0 + 500, wal_start="000000020000000000000006", lsn_stop="0/6000100")
F3 = backup_json("20261124-061130F", stop=T0 + 700, wal_start="000000030000000000000006", lsn_stop="0/6000100")
F3_ERROR = backup_json("20261124-061310F", stop=T0 + 800, wal_start="000000030000000000000007", lsn_stop="0/7000100", error=True)
BACKUPS = [F1, I_ABANDONED, F2, D_ABANDONED, F3, F3_ERROR]

HISTORY = TimelineHistory.parse(3, HISTORY_3)
LISTING = ArchiveListing.parse(repo_ls(BRANCHED_SEGMENTS, histories=(2, 3)))


def at(offset: int) -> str:
    return dt.datetime.fromtimestamp(T0 + offset, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


def request(target_type: str = "time", target: str = "", **params):
    return parse_request({"target_type": target_type, "target": target, "reason": REASON, **params})


# ---- the timeline ----------------------------------------------------------------------------------
def test_resolve_timeline_current_latest_and_a_number():
    assert resolve_timeline(request(target=at(600)), cluster_timeline=2, listing=LISTING) == 2
    assert resolve_timeline(request(target=at(600), target_timeline="latest"), cluster_timeline=2, listing=LISTING) == 3
    assert resolve_timeline(request(target=at(600), target_timeline="2"), cluster_timeline=3, listing=LISTING) == 2
    assert resolve_timeline(request(target=at(600), target_timeline="1"), cluster_timeline=3, listing=LISTING) == 1


def test_resolve_timeline_refuses_what_it_cannot_know():
    with pytest.raises(TargetNotReachable, match=r"param target_timeline: timeline 4 is not in the archive \(highest is 3\)"):
        resolve_timeline(request(target=at(600), target_timeline="4"), cluster_timeline=3, listing=LISTING)
    with pytest.raises(TargetNotReachable, match="param target_timeline: 'current' needs the cluster's pg_control"):
        resolve_timeline(request(target=at(600)), cluster_timeline=None, listing=LISTING)
    assert TargetNotReachable.opens_incident is False


# ---- the backup -------------------------------------------------------------------------------------
def test_on_history_takes_valid_backups_that_end_on_the_path():
    info = stanza_info(BACKUPS)
    assert [b.label for b in info.backups if on_history(b, HISTORY)] == [F1["label"], F2["label"], F3["label"]]
    history_2 = TimelineHistory.parse(2, HISTORY_2)
    assert [b.label for b in info.backups if on_history(b, history_2)] == [F1["label"], F2["label"], D_ABANDONED["label"]]
    no_stop = stanza_info([{**F1, "lsn": {"start": "0/2000028", "stop": None}}]).backups[0]
    assert not on_history(no_stop, HISTORY)


@pytest.mark.parametrize(
    "offset, expected",
    [
        (600, F2),  # the diff at +500 is newer but on timeline 2's abandoned branch
        (300, F1),  # the incr at +200 is newer but on timeline 1's abandoned branch
        (700, F2),  # a backup that ended at the target instant does not precede it
        (701, F3),
        (5000, F3),  # the newer full has pgBackRest's error flag
    ],
)
def test_choose_backup_newest_on_the_history_before_a_time(offset, expected):
    assert choose_backup(stanza_info(BACKUPS), HISTORY, request(target=at(offset))).label == expected["label"]


def test_choose_backup_follows_the_requested_history():
    history_2 = TimelineHistory.parse(2, HISTORY_2)
    assert choose_backup(stanza_info(BACKUPS), history_2, request(target=at(600))).label == D_ABANDONED["label"]


def test_choose_backup_before_an_lsn_and_for_immediate():
    info = stanza_info(BACKUPS)
    assert choose_backup(info, HISTORY, request("lsn", "0/5000000"), target_lsn="0/5000000").label == F2["label"]
    assert choose_backup(info, HISTORY, request("lsn", "0/6000100"), target_lsn="0/6000100").label == F3["label"]  # ends at it
    assert choose_backup(info, HISTORY, request("xid", "731"), target_lsn="0/60000FF").label == F2["label"]
    assert choose_backup(info, HISTORY, request("immediate")).label == F3["label"]


def test_a_target_before_every_usable_backup_is_not_reachable():
    with pytest.raises(TargetNotReachable, match=rf"target time {at(50)[:-3]}.* is before the oldest usable backup \({F1['label']} ended"):
        choose_backup(stanza_info(BACKUPS), HISTORY, request(target=at(50)))


def test_no_backup_on_the_history_at_all_is_a_preflight_failure_that_opens_an_incident():
    with pytest.raises(PreflightError, match="stanza 'ledger' has no valid backup on timeline 3's history") as raised:
        choose_backup(stanza_info([I_ABANDONED, D_ABANDONED, F3_ERROR]), HISTORY, request(target=at(600)))
    assert type(raised.value) is PreflightError and raised.value.opens_incident


def test_a_given_backup_set_is_checked():
    info = stanza_info(BACKUPS)
    assert choose_backup(info, HISTORY, request(target=at(600), backup_set=F1["label"])).label == F1["label"]
    with pytest.raises(TargetNotReachable, match="param backup_set: 20261120-020000F is not in the repository"):
        choose_backup(info, HISTORY, request(target=at(600), backup_set="20261120-020000F"))
    with pytest.raises(TargetNotReachable, match=f"param backup_set: {F3_ERROR['label']} has pgBackRest's error flag"):
        choose_backup(info, HISTORY, request(target=at(5000), backup_set=F3_ERROR["label"]))
    with pytest.raises(
        TargetNotReachable,
        match=(
            rf"param backup_set: {D_ABANDONED['label']} \(timeline 2, stop LSN 0/6000100\) does not lead to timeline 3: "
            "it lies on a branch that timeline 3 does not come from"
        ),
    ):
        choose_backup(info, HISTORY, request(target=at(600), backup_set=D_ABANDONED["label"]))
    with pytest.raises(TargetNotReachable, match=f"param backup_set: {F3['label']} ended at .* / 0/6000100, after the target time"):
        choose_backup(info, HISTORY, request(target=at(600), backup_set=F3["label"]))
    with pytest.raises(TargetNotReachable, match="after the target lsn 0/5000000"):
        choose_backup(info, HISTORY, request("lsn", "0/5000000", backup_set=F3["label"]), target_lsn="0/5000000")


def test_choose_backup_on_captured_pgbackrest_output():
    info = parse_info((FIXTURES / "info_rotation_2.45.json").read_text(), "demo")
    timeline_1 = TimelineHistory.parse(1, None)
    full, diff, incr = info.backups
    assert choose_backup(info, timeline_1, request("immediate")) == incr
    assert choose_backup(info, timeline_1, request("lsn", "0/5000000"), target_lsn="0/5000000") == diff
    between = dt.datetime.fromtimestamp(full.timestamp.stop + 1, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")
    assert choose_backup(info, timeline_1, request(target=between)) == full


# ---- the whole plan ---------------------------------------------------------------------------------
@pytest.fixture
def repository(tmp_path):
    def make(segments=BRANCHED_SEGMENTS, backups=BACKUPS, uploaded_at=T0 + 900):
        cluster = local_cluster(tmp_path)
        return FakePgBackRest(
            cluster,
            backups,
            listing=repo_ls(segments, histories=(2, 3), uploaded_at=uploaded_at),
            histories={"00000002.history": HISTORY_2, "00000003.history": HISTORY_3},
        )

    return make


def plan_for(pgbackrest, req, *, cluster_timeline=3, **kwargs):
    lines: list[str] = []
    plan = make_plan(pgbackrest, req, pgbackrest.info(), cluster_timeline=cluster_timeline, in_use_bytes=0, log=lines.append, **kwargs)
    assert lines[-1] == f"restore plan: {plan.describe()}"
    return plan


def test_plan_for_a_time_on_the_current_timeline(repository):
    pgbackrest = repository()
    plan = plan_for(pgbackrest, request(target=at(600)))
    assert (plan.backup_set, plan.backup_type, plan.timeline, plan.timeline_requested) == (F2["label"], "full", 3, "current")
    # from the backup's first segment (timeline 2's copy) to the end of the archive on timeline 3
    assert (plan.wal_first, plan.wal_last) == ("000000020000000000000004", "000000030000000000000009")
    assert plan.backup_stop_lsn == "0/4000100" and plan.target_lsn is None
    assert ("archive-get", "00000003.history") in pgbackrest.calls
    assert ("repo-ls", "archive/ledger/15-1") in pgbackrest.calls


def test_plan_for_latest_an_lsn_and_immediate(repository):
    latest = plan_for(repository(), request("latest", target_timeline="latest"), cluster_timeline=1)
    assert (latest.timeline, latest.backup_set, latest.wal_last) == (3, F3["label"], "000000030000000000000009")
    lsn = plan_for(repository(), request("lsn", "0/05000000"))
    assert (lsn.target_lsn, lsn.backup_set, lsn.wal_last) == ("0/5000000", F2["label"], "000000030000000000000005")
    immediate = plan_for(repository(), request("immediate"))
    assert immediate.backup_set == F3["label"]
    assert (immediate.wal_first, immediate.wal_last) == ("000000030000000000000006", "000000030000000000000006")  # its own WAL only


def test_a_replan_keeps_the_timeline_it_replaces(repository):
    plan = plan_for(repository(), request(target=at(600), target_timeline="latest"), timeline=2)
    assert (plan.timeline, plan.backup_set, plan.wal_last) == (2, D_ABANDONED["label"], "000000020000000000000007")


def test_a_segment_lost_on_the_path_refuses_the_plan(repository):
    lost = [pair for pair in BRANCHED_SEGMENTS if pair != (2, 4)]
    with pytest.raises(
        PreflightError,
        match=(
            f"WAL needed to recover from backup {F2['label']} along timeline 3 is missing from the archive: 000000020000000000000004; "
            "choose a later target or backup"
        ),
    ):
        plan_for(repository(segments=lost), request(target=at(600)))
    # a later backup does not need the lost segment
    assert plan_for(repository(segments=lost), request(target=at(750))).backup_set == F3["label"]


def test_targets_beyond_the_archive_are_not_reachable(repository):
    beyond = r"param target: LSN 0/A000000 is beyond the archived WAL of timeline 3 \(it ends before 0/A000000\)"
    with pytest.raises(TargetNotReachable, match=beyond):
        plan_for(repository(), request("lsn", "0/A000000"))
    with pytest.raises(TargetNotReachable, match="is after the newest archived WAL"):
        plan_for(repository(uploaded_at=T0 + 300), request(target=at(600)))
    with pytest.raises(TargetNotReachable, match="timeline 4 is not in the archive"):
        plan_for(repository(), request(target=at(600), target_timeline="4"))


# ---- free disk -------------------------------------------------------------------------------------
@pytest.fixture
def disk(monkeypatch):
    """The file system's free space, as statvfs reports it, set by the test."""
    import shutil

    free = {"bytes": 0}
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - free["bytes"], free["bytes"]))
    return free


def data_directory(tmp_path, files: int, size: int):
    base = tmp_path / "data" / "base" / "5"
    base.mkdir(parents=True)
    for number in range(files):
        (base / str(16384 + number)).write_bytes(b"x" * size)
    return tmp_path / "data"


def test_free_space_that_covers_the_backup_is_all_the_check_looks_at(tmp_path, disk):
    disk["bytes"] = 2 * 2**30
    data = data_directory(tmp_path, 3, 4096)
    check_free_disk(str(data), 2**30, in_use_bytes=lambda: pytest.fail("the live cluster was asked"))
    check_free_disk(str(data), 2**30, in_use_bytes=None)  # PostgreSQL down: no walk either


def test_short_free_space_counts_what_the_data_directory_occupies_and_no_more(tmp_path, disk, monkeypatch):
    from rewind.pitr import plan as plan_module

    data = data_directory(tmp_path, 40, 64 * 1024)
    disk["bytes"] = 1024 * 1024
    check_free_disk(str(data), 1024 * 1024, in_use_bytes=lambda: 200 * 1024)  # the live cluster's figure covers the shortfall
    with pytest.raises(PreflightError, match=r"not enough disk for the restore under .*: needs 0\.0 GiB"):
        check_free_disk(str(data), 2 * 1024 * 1024, in_use_bytes=lambda: 0)
    # PostgreSQL down: the files are counted only until the shortfall (about 2 of the 40 files) is covered
    counted = []
    real = plan_module.allocated_bytes_until
    monkeypatch.setattr(plan_module, "allocated_bytes_until", lambda path, enough: counted.append(real(path, enough)) or counted[-1])
    check_free_disk(str(data), 1024 * 1024, in_use_bytes=None)
    shortfall = int(1024 * 1024 * 1.10) - 1024 * 1024
    assert shortfall <= counted[0] <= 2 * 64 * 1024  # two of the forty files
    with pytest.raises(PreflightError, match="free \\+ current data directory"):
        check_free_disk(str(data), 5 * 1024 * 1024, in_use_bytes=None)  # does not fit: the whole directory was counted
    assert counted[-1] >= 40 * 64 * 1024


# ---- the target in the WAL: what is read, and what a re-plan reads again ---------------------------
def test_wal_windows_start_small_grow_and_share_a_segment():
    from rewind.wal import scan_windows

    newest_first = [(segno, 3) for segno in range(20, 0, -1)]
    windows = scan_windows(newest_first, first=2, largest=8)
    assert [[segno for segno, _tli in window] for window in windows] == [
        [20, 19],
        [19, 18, 17, 16],
        [16, 15, 14, 13, 12, 11, 10, 9],
        [9, 8, 7, 6, 5, 4, 3, 2],
        [2, 1],
    ]
    assert scan_windows([], first=2, largest=8) == []
    assert scan_windows([(5, 1)], first=2, largest=8) == [[(5, 1)]]
    # a first window of one would share no segment with the next: windows are two segments at least
    assert [[segno for segno, _tli in window] for window in scan_windows(newest_first[:5], first=1, largest=1)] == [
        [20, 19],
        [19, 18],
        [18, 17],
        [17, 16],
    ]


def test_a_replan_reads_only_the_wal_archived_since_the_plan_it_replaces(repository, monkeypatch):
    from rewind.pitr import plan as plan_module
    from rewind.wal import ScanResult, WalRecord

    scans = []
    found = {"record": WalRecord("RESTORE_POINT", "0/7000028", 3, None, "before-migration-42")}

    def scan(pgbackrest, listing, history, wanted, *, oldest_segno, newer_than=None, log, **filters):
        scans.append((oldest_segno, newer_than, filters))
        record = found["record"]
        return ScanResult([record] if record and wanted(record) else [], 1, 0.1)

    monkeypatch.setattr(plan_module, "scan_archive", scan)
    first = plan_for(repository(), request("name", "before-migration-42"))
    assert (first.target_lsn, first.target_record, first.wal_scanned_to) == (
        "0/7000028",
        "RESTORE_POINT before-migration-42",
        "000000030000000000000009",
    )
    assert scans[-1] == (2, None, {"rmgr": "XLOG"})  # since the oldest backup's first segment; XLOG records only

    # Nothing archived since: nothing is read again, and the record found before stands.
    found["record"] = None
    again = plan_for(repository(), request("name", "before-migration-42"), timeline=3, previous=first)
    assert scans[-1][1] == 9 and (again.target_lsn, again.target_record) == (first.target_lsn, first.target_record)
    # A plan of another archive (a stanza upgrade since): its finding does not stand, all is read again.
    with pytest.raises(TargetNotReachable):  # nothing names it in the whole archive now
        plan_for(repository(), request("name", "before-migration-42"), timeline=3, previous=first.model_copy(update={"archive_id": "17-2"}))
    assert scans[-1][1] is None
    # WAL archived since: read from the last segment read before (a record may span into the next).
    more = [*BRANCHED_SEGMENTS, (3, 10), (3, 11)]
    later = plan_for(repository(segments=more), request("name", "before-migration-42"), timeline=3, previous=first)
    assert scans[-1][1] == 8 and later.target_lsn == first.target_lsn and later.wal_scanned_to == "00000003000000000000000B"
    # An xid: Transaction records (not filtered by xid: a two-phase commit's end is a record of xid 0).
    found["record"] = WalRecord("COMMIT", "0/7000100", 3, "1234", "2026-11-24 06:10:00 UTC")
    xid = plan_for(repository(), request("xid", "1234"))
    assert scans[-1][2] == {"rmgr": "Transaction"} and xid.target_lsn == "0/7000100"
