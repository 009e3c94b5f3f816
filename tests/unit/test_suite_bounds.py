"""The suite's own bounds: a test that hangs fails alone and named while the session goes on, and a
tier past its wall-clock bound fails its remaining tests at once, saying so (issue: a suite that
passes on any clean two-core box, and a hang that fails with the name of what hung)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from devstack.airflow import REPO
from tests import conftest


def test_a_hanging_test_fails_alone_with_its_name_and_the_session_goes_on(tmp_path):
    (tmp_path / "test_probe.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(60)\n\ndef test_after_it():\n    assert True\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-p", "no:cacheprovider"]
        + ["--timeout=2", "-q", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 50, result.stdout[-2000:]
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-2000:]
    assert "FAILED" in result.stdout and "test_hangs" in result.stdout and "Timeout" in result.stdout, result.stdout[-2000:]


def test_a_tier_past_its_bound_fails_its_next_test_naming_the_tier(monkeypatch):
    monkeypatch.setitem(conftest.TIER_BOUND_S, "slowtier", 60)
    monkeypatch.setitem(conftest._tier_started, "slowtier", time.monotonic() - 61)
    item = SimpleNamespace(path=Path(REPO / "tests" / "slowtier" / "test_x.py"))
    with pytest.raises(pytest.fail.Exception, match=r"tier tests/slowtier has run 6\ds, past its 60s bound"):
        conftest.pytest_runtest_setup(item)
    monkeypatch.setitem(conftest._tier_started, "slowtier", time.monotonic())
    conftest.pytest_runtest_setup(item)  # inside its bound: nothing happens


def test_the_whole_suite_command_runs_every_tier():
    """scripts/test.sh without arguments names its tiers (two pytest processes side by side): a new
    tier directory that neither names would silently not run."""
    script = (REPO / "scripts" / "test.sh").read_text()
    named = set()
    for line in script.splitlines():
        if "-m pytest tests/" in line:
            named |= {word.removeprefix("tests/") for word in line.split() if word.startswith("tests/")}
    tiers = {path.name for path in (REPO / "tests").iterdir() if path.is_dir() and any(path.glob("test_*.py"))}
    assert named == tiers == set(conftest.TIER_BOUND_S), (named, tiers)
