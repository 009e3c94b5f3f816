"""Rewind's durable state files (rewind.state): written atomically, a damaged one reported with its
path and the fix, never taken as absent; the state directory private to the cluster's OS user."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from rewind.state import StateFileDamaged, read_json, state_dir, write_json


def test_state_dir_is_created_private_and_owned_by_the_worker_as_the_os_user(ledger):
    assert state_dir(ledger) == Path(ledger.state_dir)  # the guard and the watchdog create it first
    holds = state_dir(ledger, "holds")
    assert holds == Path(ledger.state_dir) / "holds"
    for directory in (Path(ledger.state_dir), holds):
        info = os.stat(directory)
        assert stat.S_IMODE(info.st_mode) == 0o750 and info.st_uid == os.geteuid()
    assert state_dir(ledger, "holds") == holds  # already there: left as it is


def test_write_json_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "state" / "restore-guard.json"
    write_json(path, {"run_id": "a", "phase": "claimed"})
    write_json(path, {"run_id": "a", "phase": "stopping"})
    assert json.loads(path.read_text()) == {"phase": "stopping", "run_id": "a"}
    assert [p.name for p in path.parent.iterdir()] == ["restore-guard.json"]


def test_write_json_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "journal.json"
    write_json(path, {"steps": {"stopped": "t1"}})
    with pytest.raises(TypeError):
        write_json(path, {"steps": {"stopped": object()}})  # not JSON: fails half way through writing
    assert json.loads(path.read_text()) == {"steps": {"stopped": "t1"}}
    assert [p.name for p in tmp_path.iterdir()] == ["journal.json"]


@pytest.mark.parametrize("content, reason", [("", "Expecting value"), ('{"a": ', "Expecting value"), ("[]", "not a JSON object")])
def test_a_damaged_file_names_itself_and_the_fix(tmp_path, content, reason):
    path = tmp_path / "hold.json"
    path.write_text(content)
    with pytest.raises(StateFileDamaged, match=f"retention hold {path} is damaged \\({reason}.*\\): fix or remove it"):
        read_json(path, what="retention hold", fix="fix or remove it")
    assert read_json(tmp_path / "missing.json", what="retention hold", fix="x") is None
