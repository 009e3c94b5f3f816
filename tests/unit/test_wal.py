"""rewind.wal: LSN and segment arithmetic, timeline histories, the archive as repo-ls lists it, gaps
along a branched history, and pg_waldump lines (captured from PostgreSQL 15's pg_waldump)."""

from __future__ import annotations

import datetime as dt

import pytest

from rewind.wal import (
    SEGMENT_SIZE,
    ArchiveListing,
    TimelineHistory,
    is_segment_file,
    lsn_text,
    lsn_value,
    oldest_start_segment,
    parse_waldump_line,
    segment_name,
    segment_of,
    segment_parts,
)
from tests.factories import BRANCHED_SEGMENTS as BRANCHED
from tests.factories import HISTORY_2, HISTORY_3, repo_ls


def test_lsn_text_and_value_round_trip():
    assert lsn_value("0/3000060") == 0x3000060
    assert lsn_value("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert lsn_value("0/03000060") == 0x3000060  # pg_waldump pads the low half
    for value in (0, 0x3000060, 0xFFFFFFFF, 0x1_00000000, (0x16 << 32) | 0xB374D848):
        assert lsn_value(lsn_text(value)) == value
    assert lsn_text(0x1_00000000) == "1/0"


def test_segment_names_and_numbers_roll_over_to_the_next_log_id():
    assert SEGMENT_SIZE == 16 * 1024 * 1024
    assert segment_parts("000000010000000000000003") == (1, 3)
    assert segment_name(1, 3) == "000000010000000000000003"
    assert segment_name(2, 0xFF) == "0000000200000000000000FF"
    assert segment_name(2, 0x100) == "000000020000000100000000"  # segment 0xFF is the last of log 0
    assert segment_parts("000000020000000100000000") == (2, 0x100)
    assert segment_parts("0000000A00000016000000B3") == (10, 0x16 * 0x100 + 0xB3)
    assert segment_of(lsn_value("0/FFFFFFF")) == 0xF
    assert segment_of(lsn_value("0/FFFFFFFF")) == 0xFF
    assert segment_of(lsn_value("1/0")) == 0x100
    with pytest.raises(ValueError, match="is not a WAL segment name"):
        segment_parts("00000001.history")


def test_is_segment_file_takes_stored_segments_only():
    assert is_segment_file("000000010000000000000003-5c1d0e9f0b0a7f3a8f0e2c7d9a1b2c3d4e5f6a7b.zst")
    assert is_segment_file("000000010000000000000003-5c1d0e9f0b0a7f3a8f0e2c7d9a1b2c3d4e5f6a7b")
    assert not is_segment_file("00000002.history")
    assert not is_segment_file("000000010000000000000002.00000028.backup")
    assert not is_segment_file("000000010000000000000003.partial")
    assert not is_segment_file("00000001000000000000000g-5c1d0e9f.zst")


def test_history_parse_of_a_real_history_file():
    history = TimelineHistory.parse(3, HISTORY_3)
    assert history.entries == ((1, 0x3000000), (2, 0x5000100), (3, None))
    assert history.timeline == 3 and history.timelines == (1, 2, 3)
    assert history.switch_lsn(1) == 0x3000000 and history.switch_lsn(2) == 0x5000100
    assert history.switch_lsn(3) is None and history.switch_lsn(4) is None
    assert TimelineHistory.parse(1, None).entries == ((1, None),)


def test_history_contains_what_lies_on_its_path():
    history = TimelineHistory.parse(3, HISTORY_3)
    assert history.contains(1, lsn_value("0/2000100"))
    assert history.contains(1, lsn_value("0/3000000"))  # ended exactly at the switch: replays into timeline 2
    assert not history.contains(1, lsn_value("0/3000001"))  # timeline 1 after the switch: the abandoned branch
    assert history.contains(2, lsn_value("0/4000100"))
    assert not history.contains(2, lsn_value("0/6000100"))
    assert history.contains(3, lsn_value("7/0"))
    assert not history.contains(4, 0)


def test_timeline_of_segment_at_and_around_the_switch_points():
    history = TimelineHistory.parse(3, HISTORY_3)
    # 0/3000000 is the first byte of segment 3: segment 2 is wholly timeline 1's, segment 3 is timeline 2's
    assert [history.timeline_of_segment(segno) for segno in (1, 2, 3, 4)] == [1, 1, 2, 2]
    # 0/5000100 lies inside segment 5: the switch segment is read from the newer timeline
    assert [history.timeline_of_segment(segno) for segno in (5, 6, 0x100)] == [3, 3, 3]
    assert history.path(1, 6) == [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000020000000000000003",
        "000000020000000000000004",
        "000000030000000000000005",
        "000000030000000000000006",
    ]
    assert TimelineHistory.parse(1, None).path(0xFE, 0x100) == [
        "0000000100000000000000FE",
        "0000000100000000000000FF",
        "000000010000000100000000",
    ]


def test_archive_listing_parses_repo_ls_json():
    listing = ArchiveListing.parse(
        {
            **repo_ls(BRANCHED, histories=(2, 3), uploaded_at=1795545400),
            "0000000100000000/000000010000000000000002.00000028.backup": {"type": "file", "size": 370, "time": 1795549999},
            "0000000300000000/000000030000000000000009.partial": {"type": "file", "size": 1, "time": 1795549999},
            "0000000400000000": {"type": "path"},
        }
    )
    assert sorted(listing.segments) == list(range(1, 10))
    assert set(listing.segments[5]) == {1, 2, 3} and set(listing.segments[9]) == {3}
    assert listing.histories == frozenset({2, 3})
    assert listing.has("000000020000000000000004") and not listing.has("000000030000000000000004")
    assert listing.highest_timeline() == 3
    # the newest upload is the newest segment's, not the .backup or .partial file's
    assert listing.newest_upload() == dt.datetime.fromtimestamp(1795545400 + len(BRANCHED) - 1, dt.timezone.utc)


def test_highest_timeline_counts_history_files_and_segments():
    assert ArchiveListing.parse(repo_ls([(1, 1)], histories=(2,))).highest_timeline() == 2  # promoted, nothing archived yet on 2
    assert ArchiveListing.parse(repo_ls([(1, 1), (4, 2)])).highest_timeline() == 4
    empty = ArchiveListing.parse({".": {"type": "path"}})
    assert empty.highest_timeline() == 1 and empty.newest_upload() is None


def test_gaps_follow_the_branched_history_not_the_abandoned_copies():
    history = TimelineHistory.parse(3, HISTORY_3)
    complete = ArchiveListing.parse(repo_ls(BRANCHED, histories=(2, 3)))
    assert complete.gaps(history, 1, 9) == []
    assert complete.last_segment_on(history) == 9
    # timeline 2's segment 4 lost: timeline 1's segment 4 (the abandoned branch) cannot stand in for it
    lost = ArchiveListing.parse(repo_ls([pair for pair in BRANCHED if pair != (2, 4)], histories=(2, 3)))
    assert lost.has("000000010000000000000004")
    assert lost.gaps(history, 1, 9) == ["000000020000000000000004"]
    assert lost.gaps(history, 5, 9) == []  # a backup that started after the gap does not need it
    # timeline 2's own history ends where it stops being archived, its segment 7
    history_2 = TimelineHistory.parse(2, HISTORY_2)
    assert complete.last_segment_on(history_2) == 7
    assert complete.gaps(history_2, 1, 8) == ["000000020000000000000008"]


def test_oldest_start_segment():
    assert oldest_start_segment(["000000030000000000000006", None, "000000010000000000000002"]) == 2
    assert oldest_start_segment([]) == 0


# Lines pg_waldump (PostgreSQL 15) printed for: an insert and its commit, a rollback, a restore point, a
# commit with a subtransaction, a checkpoint, running xacts (long lines continued with a backslash).
WALDUMP = """\
rmgr: Heap        len (rec/tot):     59/    59, tx:        725, lsn: 0/01516730, prev 0/01516598, \
desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16384 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/01516770, prev 0/01516730, \
desc: COMMIT 2026-11-27 15:53:35.551685 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/015167D8, prev 0/01516798, \
desc: ABORT 2026-11-27 15:53:35.567797 UTC
rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/01516800, prev 0/015167D8, \
desc: RESTORE_POINT before migration 42
rmgr: Transaction len (rec/tot):     46/    46, tx:        727, lsn: 0/015168E8, prev 0/015168A8, \
desc: COMMIT 2026-11-27 15:53:35.599646 UTC; subxacts: 728
rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/015167D0, prev 0/01516798, \
desc: CHECKPOINT_ONLINE redo 0/1516798; tli 1; prev tli 1; fpw true; xid 0:726; oid 24576; multi 1; offset 0; \
oldest xid 716 in DB 1; oldest multi 1 in DB 1; oldest/newest commit timestamp xid: 0/0; oldest running xid 726; online
rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/01516798, prev 0/01516770, \
desc: RUNNING_XACTS nextXid 726 latestCompletedXid 725 oldestRunningXid 726
"""


def test_parse_waldump_line_on_real_pg_waldump_output():
    records = [parse_waldump_line(line, 3) for line in WALDUMP.splitlines()]
    assert records[0] is None and records[5] is None and records[6] is None  # heap, checkpoint, running xacts
    commit, abort, point, with_subxact = records[1:5]
    assert (commit.kind, commit.xid, commit.lsn, commit.timeline) == ("COMMIT", "725", "0/01516770", 3)
    assert commit.detail == "2026-11-27 15:53:35.551685 UTC"
    assert (abort.kind, abort.xid, abort.detail) == ("ABORT", "726", "2026-11-27 15:53:35.567797 UTC")
    assert (point.kind, point.xid, point.detail, point.lsn) == ("RESTORE_POINT", None, "before migration 42", "0/01516800")
    assert point.description == "RESTORE_POINT before migration 42"
    assert (with_subxact.xid, with_subxact.detail) == ("727", "2026-11-27 15:53:35.599646 UTC")
    assert lsn_value(with_subxact.lsn) == 0x15168E8
    assert parse_waldump_line('pg_waldump: error: could not find file "000000010000000000000009"', 1) is None
