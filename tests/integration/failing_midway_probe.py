"""A test that fails on purpose in the middle of a rewind: its PITR's data check fails, so the run
stops with the demo cluster paused read-only at the target and the restore guard up, and then the
test's own assertion fails. Not collected by the suite (the file name is not test_*.py): it is run
only by tests/integration/test_no_cascade.py, in a pytest of its own, before tests that need the
cluster writable, to show that one failing test fails alone."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from rewind.guard import read_guard
from tests.integration.helpers import VOID_CHECK, fresh_ledger, run_pitr, the_incident, write

pytestmark = pytest.mark.integration


def test_a_rewind_that_fails_midway_on_purpose(demo_stack, pitr, approve_all):
    fresh_ledger(demo_stack)
    write(demo_stack, 1, 50)
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    time.sleep(1.2)
    the_incident(demo_stack)
    # A data check that cannot pass: the run pauses at the target, checks, and does not promote.
    wrong_count = {"sql": "select count(*) from ledger_entry", "expect": 999}
    run_pitr(pitr, target_type="time", target=target.strftime("%Y-%m-%d %H:%M:%S+00"), validation_sql=[VOID_CHECK, wrong_count])
    # Where the rewind stopped: paused read-only at its target, the restore guard up.
    assert demo_stack.psql("select pg_is_in_recovery()") == "t"
    assert read_guard(demo_stack.cluster) is not None
    raise AssertionError("failing on purpose, mid-rewind: the demo cluster is paused read-only and guarded")
