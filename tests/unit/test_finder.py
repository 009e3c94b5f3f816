"""rewind.finder: pg_waldump output (captured from PostgreSQL 15: an INSERT, an UPDATE with a DELETE
in a subtransaction, a COPY, a TRUNCATE and a DROP) turned into transactions, names, DDL, the PITR
params, the window and the segments worth reading."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rewind.finder import (
    FinderError,
    Names,
    Relation,
    Window,
    findings,
    largest,
    parse_records,
    render_table,
    resolve_names,
    segments_to_read,
)
from rewind.wal import ArchiveListing, TimelineHistory
from tests.factories import repo_ls

DUMP = (Path(__file__).parent / "fixtures" / "waldump_pg15.txt").read_text().splitlines()
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 27, 19, 0, tzinfo=UTC)
ALL_DAY = Window(dt.datetime(2026, 11, 27, tzinfo=UTC), NOW)
T = Relation(1663, 5, 16384)  # table t
U = Relation(1663, 5, 16391)  # table u before its TRUNCATE (the file was replaced: unknown now)
CATALOG_ROWS = {"select oid || '|' || datname from pg_database where datallowconn": "5|postgres\n1|template1"}


def live(sql: str, database: str) -> str:
    """What the live cluster answers now: t keeps its file, u was truncated then dropped."""
    if sql in CATALOG_ROWS:
        return CATALOG_ROWS[sql]
    assert database == "postgres" and "pg_filenode_relation" in sql and "16384" in sql
    return "f|1663/16384|public.t|r\nf|1663/1259|pg_catalog.pg_class|r\nf|1663/1249|pg_catalog.pg_attribute|r"


def test_transactions_with_their_rows_subtransactions_and_commit_records():
    xacts = parse_records([(1, DUMP), (1, DUMP)])  # overlapping batches print records twice: counted once
    assert sorted(xacts) == [725, 726, 728, 729, 730]  # 727 is 726's subtransaction
    assert xacts[725].rows == {T: {"inserted": 3, "updated": 0, "deleted": 0}}
    assert xacts[725].committed_at == dt.datetime(2026, 11, 27, 18, 18, 9, 579196, tzinfo=UTC)
    assert xacts[725].lsn == "0/01528990"
    assert xacts[726].rows == {T: {"inserted": 0, "updated": 3, "deleted": 1}}  # the savepoint's DELETE folded in
    assert xacts[728].rows == {U: {"inserted": 5, "updated": 0, "deleted": 0}}  # COPY: one MULTI_INSERT of 5 tuples
    truncate, drop = xacts[729], xacts[730]
    assert truncate.created and truncate.dropped_files == (Relation(1663, 5, 16394), U) and not truncate.dropped_oids
    assert (5, 16391) in truncate.locked
    assert drop.dropped_oids == ((5, 16394), (5, 16391))


def test_findings_name_tables_ddl_and_the_params_that_stop_just_before():
    xacts = parse_records([(1, DUMP)])
    names = resolve_names(xacts.values(), live)
    history = TimelineHistory.parse(1, None)
    found = findings(xacts, names, ALL_DAY, history)
    by_xid = {f.xid: f for f in found}
    assert by_xid[726].tables == {"public.t": {"inserted": 0, "updated": 3, "deleted": 1}}
    # the timeline's number, never "current": it names the cluster's timeline, where xids repeat after a rewind
    assert by_xid[726].pitr_params == {"target_type": "xid", "target": "726", "target_exclusive": True, "target_timeline": "1"}
    assert by_xid[728].tables == {"relfilenode 1663/5/16391 (unknown now)": {"inserted": 5, "updated": 0, "deleted": 0}}
    # u is gone now: its TRUNCATE shows as files replaced, its DROP by OID; catalog rows are not counted
    assert by_xid[729].tables == {} and by_xid[729].ddl == (
        "TRUNCATE or rewrite (new file; old files unlinked at commit: relfilenode 1663/5/16394 (unknown now), relfilenode 1663/5/16391 (unknown now))",
    )
    assert by_xid[730].ddl[0] == "DROP relation oid 16394 (database postgres; its name is gone with it)"
    assert largest(found).xid == 729  # DDL that drops or truncates comes first (the earliest of them)
    table = render_table(found).splitlines()
    assert table[3].split() == ["726", "2026-11-27", "18:18:09.788676", "0/01528AC8", "public.t", "0", "3", "1"]
    assert "relfilenode 1663/5/16391 (unknown now)        5" in table[4]  # a long name is not cut
    assert [f.xid for f in findings(xacts, names, ALL_DAY, history, tables=["t"])] == [725, 726]
    assert [f.xid for f in findings(xacts, names, ALL_DAY, history, tables=["public.t"])] == [725, 726]
    assert findings(xacts, names, Window(ALL_DAY.start, dt.datetime(2026, 11, 27, 18, 18, 9, tzinfo=UTC)), history) == []
    # a transaction on an older timeline than the one read names its timeline
    on_old = findings({726: xacts[726]}, names, ALL_DAY, TimelineHistory.parse(2, "1\t0/9000000\tx\n"))
    assert on_old[0].pitr_params["target_timeline"] == "1"


def test_a_rewrite_of_a_table_that_still_exists_is_named():
    xacts = parse_records([(1, DUMP)])
    names = Names({5: "postgres"}, {}, {(5, 16391): ("public.u", "r"), (5, 16394): ("public.u_pkey", "i")})
    assert (
        "TRUNCATE or rewrite of public.u (new file; old files unlinked at commit)"
        in {f.xid: f for f in findings(xacts, names, ALL_DAY, TimelineHistory.parse(1, None))}[729].ddl
    )


def test_window_needs_a_time_zone_and_an_end_after_its_start():
    window = Window.parse("2026-11-27 18:00:00+00", "", now=NOW)
    assert (window.start, window.end) == (dt.datetime(2026, 11, 27, 18, tzinfo=UTC), NOW)
    assert Window.parse("2026-11-27T19:00:00+01:00", "2026-11-27 18:30Z", now=NOW).start == dt.datetime(2026, 11, 27, 18, tzinfo=UTC)
    with pytest.raises(FinderError, match="has no time zone"):
        Window.parse("2026-11-27 18:00:00", None, now=NOW)
    with pytest.raises(FinderError, match="is not a time like"):
        Window.parse("yesterday", None, now=NOW)
    with pytest.raises(FinderError, match="window_start: give the time"):
        Window.parse("", None, now=NOW)
    with pytest.raises(FinderError, match="is not after window_start"):
        Window.parse("2026-11-27 18:00:00+00", "2026-11-27 17:00:00+00", now=NOW)


def test_segments_read_newest_first_down_to_the_last_uploaded_before_the_window():
    # segments 1..9 uploaded one second apart from t0
    t0 = 1795545400
    listing = ArchiveListing.parse(repo_ls([(1, s) for s in range(1, 10)], uploaded_at=t0))
    history = TimelineHistory.parse(1, None)
    window = Window(dt.datetime.fromtimestamp(t0 + 5.5, UTC), dt.datetime.fromtimestamp(t0 + 100, UTC))
    # segment 6 (index 5) was uploaded at t0+5 < start: read, as the oldest (rows of a window transaction may be there)
    assert [s for s, _ in segments_to_read(listing, history, window, backup_starts=["000000010000000000000002"])] == [9, 8, 7, 6]
    # never older than the oldest backup's first segment
    assert [s for s, _ in segments_to_read(listing, history, window, backup_starts=["000000010000000000000008"])] == [9, 8]


TWO_PHASE = """\
rmgr: Heap        len (rec/tot):     59/    59, tx:        725, lsn: 0/01516700, prev 0/015166C8, desc: INSERT off 1 flags 0x08, blkref #0: rel 1663/5/16384 blk 0
rmgr: Transaction len (rec/tot):    242/   242, tx:        725, lsn: 0/015167A8, prev 0/01516768, desc: PREPARE gid g1: 2026-12-04 02:48:57.871233 UTC
rmgr: Transaction len (rec/tot):     42/    42, tx:          0, lsn: 0/015168A0, prev 0/015167A8, desc: COMMIT_PREPARED 725: 2026-12-04 02:48:57.932949 UTC
rmgr: Heap        len (rec/tot):     59/    59, tx:        726, lsn: 0/015168D0, prev 0/015168A0, desc: INSERT off 2 flags 0x08, blkref #0: rel 1663/5/16384 blk 0
rmgr: Transaction len (rec/tot):    242/   242, tx:        726, lsn: 0/01516910, prev 0/015168D0, desc: PREPARE gid g2: 2026-12-04 02:48:57.978224 UTC
rmgr: Transaction len (rec/tot):     42/    42, tx:          0, lsn: 0/01516A08, prev 0/01516910, desc: ABORT_PREPARED 726: 2026-12-04 02:48:58.020240 UTC
""".splitlines()  # pg_waldump 15, as printed (the end of a two-phase commit is a record of xid 0)


def test_a_two_phase_commit_is_a_transaction_like_any_other():
    from rewind.wal import parse_waldump_line

    xacts = parse_records([(1, TWO_PHASE)])
    assert sorted(xacts) == [725, 726]
    committed, rolled_back = xacts[725], xacts[726]
    assert (committed.lsn, committed.aborted, committed.rows) == ("0/015168A0", False, {T: {"inserted": 1, "updated": 0, "deleted": 0}})
    assert committed.committed_at == dt.datetime(2026, 12, 4, 2, 48, 57, 932949, tzinfo=UTC)
    assert (rolled_back.lsn, rolled_back.aborted) == ("0/01516A08", True)
    # what preflight's xid check and a recovery target read: the prepared xid's commit
    record = parse_waldump_line(TWO_PHASE[2], 1)
    assert (record.kind, record.xid, record.lsn, record.detail) == ("COMMIT", "725", "0/015168A0", "2026-12-04 02:48:57.932949 UTC")


# An ANALYZE as PostgreSQL 15 writes it (captured): rows into pg_statistic, its index, pg_class in place
ANALYZE_DUMP = """\
rmgr: Heap        len (rec/tot):     54/  4862, tx:        731, lsn: 0/0152E798, prev 0/0152E350, desc: INSERT off 14 flags 0x01, blkref #0: rel 1663/5/2619 blk 18 FPW
rmgr: Btree       len (rec/tot):     53/  8193, tx:        731, lsn: 0/0152FA98, prev 0/0152E798, desc: INSERT_LEAF off 405, blkref #0: rel 1663/5/2696 blk 1 FPW
rmgr: Heap        len (rec/tot):    188/   188, tx:        731, lsn: 0/01531BD0, prev 0/0152FA98, desc: INPLACE off 5, blkref #0: rel 1663/5/1259 blk 0
rmgr: Transaction len (rec/tot):    130/   130, tx:        731, lsn: 0/01531C90, prev 0/01531BD0, desc: COMMIT 2026-11-27 18:30:51.257747 UTC; inval msgs: catcache 63 catcache 63 catcache 55 catcache 54 relcache 16384
""".splitlines()


def test_an_analyze_is_not_listed_as_a_catalog_change():
    # autovacuum's ANALYZE lands anywhere in a window; it was listed as "catalog change" among the DBA's transactions
    xacts = parse_records([(1, [*DUMP, *ANALYZE_DUMP])])
    history = TimelineHistory.parse(1, None)
    named = Names({5: "postgres"}, {Relation(1663, 5, 2619): ("pg_catalog.pg_statistic", "r")}, {})
    assert 731 in xacts and 731 not in {f.xid for f in findings(xacts, named, ALL_DAY, history)}
    assert 731 not in {f.xid for f in findings(xacts, Names(), ALL_DAY, history)}  # cluster down: by its initdb file number
    # a catalog change that is not statistics is still listed
    altered = Names({5: "postgres"}, {Relation(1663, 5, 2619): ("pg_catalog.pg_attribute", "r")}, {})
    assert {f.xid: f for f in findings(xacts, altered, ALL_DAY, history)}[731].ddl == (
        "catalog change (ALTER, CREATE or GRANT: DDL without new files)",
    )


def test_a_capped_scan_says_what_it_read_and_from_when_the_listing_is_whole():
    from rewind.finder import Capped, FinderResult, Recoverable

    capped = Capped(16, 260, dt.datetime(2026, 11, 27, 18, 18, 9, tzinfo=UTC))
    result = FinderResult(ALL_DAY, Recoverable(None, None, None, None), [], 16, capped, 1)
    text = result.text()
    assert (
        "CAPPED: read the newest 16 of the 260 archived WAL segments the window needs: transactions of the window "
        "committed before 2026-11-27 18:18:09 UTC are not listed; run again with max_segments=260 or a window that starts later"
    ) in text
    assert result.as_dict()["partial"] is True and result.as_dict()["capped"]["segments_needed"] == 260
    whole = FinderResult(ALL_DAY, Recoverable(None, None, None, None), [], 3, None, 1)
    assert "CAPPED" not in whole.text() and whole.as_dict()["capped"] is None
