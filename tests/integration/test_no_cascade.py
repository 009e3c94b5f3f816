"""One failing test fails alone: a test that fails in the middle of a rewind (the demo cluster
paused read-only at its target, the restore guard up), followed in the same pytest session by
tests that need the cluster writable and unguarded (two rewinds), leaves those green. Before
the suite put the shared cluster back after every test, each of them failed with "cannot execute
... in a read-only transaction" or "unable to find primary cluster"."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from devstack.airflow import REPO

pytestmark = pytest.mark.integration

# Two rewinds: each needs the cluster writable (its ledger is dropped and rewritten), unguarded, and a
# primary (the module's full backup): after the probe, each failed or errored before.
FOLLOWERS = [
    "tests/integration/test_pitr.py::test_the_guides_incident_rewound_by_time",
    "tests/integration/test_pitr.py::test_rewind_by_xid_exclusive_of_the_bad_transaction",
]


def test_a_test_failing_mid_rewind_fails_alone():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REWIND_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "tests/integration/failing_midway_probe.py", *FOLLOWERS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-3000:]
    failed = re.findall(r"^FAILED (\S+)", result.stdout, re.M)
    report = f"{summary}\n{result.stdout[result.stdout.find('short test summary') :][:3000]}"
    assert failed == ["tests/integration/failing_midway_probe.py::test_a_rewind_that_fails_midway_on_purpose"], report
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == len(FOLLOWERS) and "error" not in summary, report
    # The probe's report names what it left behind, and that it was put back.
    assert "left the demo cluster needing repair" in result.stdout and "promoted PostgreSQL" in result.stdout, result.stdout[-6000:]
