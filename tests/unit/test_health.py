import datetime as dt
import json
from pathlib import Path

from rewind.health import ArchiverState, check_archiving, check_backup_age, check_backup_lock, parse_archiver_row
from rewind.metrics import as_json, as_prometheus
from rewind.pgbackrest.info import parse_info

NOW = dt.datetime(2026, 11, 24, 3, 0, tzinfo=dt.timezone.utc)
FIXTURES = Path(__file__).parent / "fixtures"


def archiver(**changes) -> ArchiverState:
    base = dict(
        archived_count=10,
        last_archived_wal="000000010000000000000009",
        last_archived_time=NOW - dt.timedelta(minutes=1),
        failed_count=0,
        last_failed_wal=None,
        last_failed_time=None,
        ready_count=0,
        oldest_ready_age_s=None,
        archive_timeout_s=60,
    )
    return ArchiverState(**{**base, **changes})


def test_archiving_ok_and_each_way_it_fails():
    assert check_archiving(archiver(), previous_failed_count=0).ok
    failed_last = check_archiving(
        archiver(failed_count=3, last_failed_wal="00000001000000000000000A", last_failed_time=NOW), previous_failed_count=None
    )
    assert not failed_last.ok and "last attempt failed: 00000001000000000000000A" in failed_last.details
    recovered_between_checks = archiver(failed_count=2, last_failed_time=NOW - dt.timedelta(minutes=5))
    assert not check_archiving(recovered_between_checks, previous_failed_count=1).ok  # previous check was healthy
    assert check_archiving(recovered_between_checks, previous_failed_count=None).ok  # previous check already alerted
    stale = check_archiving(archiver(ready_count=4, oldest_ready_age_s=600), previous_failed_count=0, stale_factor=3)
    assert not stale.ok and "4 WAL segment(s) waiting, oldest for 600s (> 180s)" in stale.details
    assert stale.metrics["archive.ready_segments"] == 4


def test_parse_archiver_row():
    row = ["12", "000000010000000000000009", "1795500000.5", "2", "", "", "0", "", "60"]
    state = parse_archiver_row(row)
    assert state.failed_count == 2 and state.last_failed_time is None and state.archive_timeout_s == 60
    assert state.last_archived_time == dt.datetime.fromtimestamp(1795500000.5, dt.timezone.utc)


def test_backup_age_and_lock():
    info = parse_info((FIXTURES / "info_rotation_2.45.json").read_text(), "demo")
    newest_stop = info.latest().stopped_at
    assert check_backup_age(info, now=newest_stop + dt.timedelta(hours=25), max_age_hours=26).ok
    stale = check_backup_age(info, now=newest_stop + dt.timedelta(hours=27), max_age_hours=26)
    assert not stale.ok and stale.summary == "no good backup for 27.0 h"
    assert stale.metrics["backup.age_seconds.full"] > stale.metrics["backup.age_seconds.incr"]
    held = json.loads((FIXTURES / "info_rotation_2.45.json").read_text())
    held[0]["status"]["lock"]["backup"]["held"] = True
    held_info = parse_info(json.dumps(held), "demo")
    assert check_backup_lock(held_info, held_since=NOW - dt.timedelta(minutes=30), now=NOW).ok
    assert not check_backup_lock(held_info, held_since=NOW - dt.timedelta(hours=2), now=NOW).ok


def test_exports_use_pgbackrest_exporter_names():
    values = {"backup.age_seconds.full": 3600.0, "stanza.status": 0, "archive.failed_count": 2}
    text = as_prometheus("ledger", "ledger", values)
    assert 'pgbackrest_backup_since_last_completion_seconds{cluster="ledger",stanza="ledger",backup_type="full"} 3600' in text
    assert 'pgbackrest_stanza_status{cluster="ledger",stanza="ledger"} 0' in text
    assert "# TYPE rewind_archive_failed_count gauge" in text
    assert json.loads(as_json("ledger", "ledger", values))["metrics"]["archive.failed_count"] == 2


def test_no_backup_yet_is_a_backup_age_problem_not_a_stanza_one():
    from rewind.health import check_stanza

    empty = parse_info(
        json.dumps([{"name": "demo", "status": {"code": 2, "message": "no valid backups"}, "backup": [], "archive": [], "db": []}]), "demo"
    )
    assert check_stanza(empty).ok
    assert check_backup_age(empty, now=NOW).summary == "no good backup at all"
    unreadable = parse_info(
        json.dumps([{"name": "demo", "status": {"code": 99, "message": "other"}, "backup": [], "archive": [], "db": []}]), "demo"
    )
    assert not check_stanza(unreadable).ok
