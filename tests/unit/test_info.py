"""info --output=json parsing, on JSON captured from the real stack (pgBackRest 2.45)."""

import json
from pathlib import Path

import pytest

from rewind.pgbackrest.info import STATUS_MISSING_STANZA_PATH, parse_info

FIXTURES = Path(__file__).parent / "fixtures"


def rotation():
    return parse_info((FIXTURES / "info_rotation_2.45.json").read_text(), "demo")


def test_full_diff_incr_chain_with_references_and_annotations():
    info = rotation()
    assert info.ok and not info.backup_lock_held and info.cipher == "aes-256-cbc"
    full, diff, incr = info.backups
    assert (full.type, diff.type, incr.type) == ("full", "diff", "incr")
    assert full.prior is None and full.reference is None
    assert diff.prior == full.label and diff.reference == [full.label]
    assert incr.prior == diff.label and incr.reference == [full.label, diff.label]
    assert incr.annotations == {"airflow_dag_id": "rewind_backup_incr__demo", "airflow_run_id": "r3"}
    assert info.find_annotated("airflow_run_id", "r2") == diff
    assert info.latest() == incr and info.latest("full") == full
    assert incr.lsn.stop == "0/6000100" and incr.archive.start == "000000010000000000000006"
    assert incr.timeline == 1
    assert incr.stopped_at >= incr.started_at
    assert full.info.size and full.info.repository.size and full.info.repository.size < full.info.size  # zst


def test_archive_range_and_db():
    info = rotation()
    archive = info.current_archive()
    assert (archive.id, archive.min, archive.max) == ("15-1", "000000010000000000000001", "000000010000000000000006")
    assert info.db[0].version == "15"


def test_error_backups_are_skipped_by_latest():
    data = json.loads((FIXTURES / "info_rotation_2.45.json").read_text())
    data[0]["backup"][-1]["error"] = True
    info = parse_info(json.dumps(data), "demo")
    assert info.latest().type == "diff"
    assert info.latest(include_errors=True).type == "incr"


def test_missing_stanza_and_lock_held_shapes():
    missing = [{"name": "demo", "status": {"code": 1, "message": "missing stanza path"}, "backup": [], "archive": [], "db": []}]
    info = parse_info(json.dumps(missing), "demo")
    assert info.status.code == STATUS_MISSING_STANZA_PATH and info.latest() is None and info.current_archive() is None
    data = json.loads((FIXTURES / "info_full_2.45.json").read_text())
    data[0]["status"]["lock"]["backup"]["held"] = True
    assert parse_info(json.dumps(data), "demo").backup_lock_held


def test_unknown_stanza():
    with pytest.raises(ValueError, match="no stanza 'other'"):
        parse_info((FIXTURES / "info_full_2.45.json").read_text(), "other")
