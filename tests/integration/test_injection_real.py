"""The injection properties against the real things: PostgreSQL's own parser decides whether an
accepted data check ran a second statement, and a real process reports the argv it received."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rewind.pitr.request import DataCheck
from rewind.postgres import run_sql
from rewind.runner import CommandFailed, CommandRunner
from tests.unit.test_injection_properties import nasty_text, sql_text

pytestmark = pytest.mark.integration

FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


class Probe:
    """The demo cluster with an empty table a smuggled statement would write to or drop. (Its own
    small repr: hypothesis prints the arguments of a failing example.)"""

    def __init__(self, stack):
        self.stack, self.cluster, self.os_user = stack, stack.cluster, stack.os_user

    def rows(self) -> str:
        return self.stack.psql("select count(*) from probe")

    def __repr__(self) -> str:
        return f"Probe(cluster={self.cluster.name!r})"


@pytest.fixture(scope="module")
def probe(demo_stack):
    demo_stack.psql("drop table if exists probe")
    demo_stack.psql("create table probe (x int)")
    yield Probe(demo_stack)
    demo_stack.psql("drop table if exists probe")


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(sql=sql_text)
# An injection the unit property found against an earlier validator that tracked only quotes, not $$:
@example(sql=", $$'$$; insert into probe values (1); select $$'$$")  # dollar quoting hides a quote
def test_an_accepted_data_check_never_runs_a_second_statement_in_postgresql(probe, sql):
    """Every candidate starts with a SELECT, so only a second statement could write. Run each
    accepted check WITHOUT the read-only guard the product adds (so a smuggled INSERT or DROP would
    really happen), through the product's psql argv; the probe table must stay empty and present."""
    try:
        check = DataCheck(sql="select 1 " + sql, expect="1")
    except ValueError:
        return
    runner = CommandRunner(os_user=probe.os_user, line_logger=lambda _line: None)
    try:
        run_sql(runner, probe.cluster, check.sql, timeout=30)
    except CommandFailed:
        pass  # a syntax error is fine; a second statement is not
    assert probe.rows() == "0", check.sql


argv_items = nasty_text.filter(lambda s: "\x00" not in s)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(items=st.lists(argv_items, min_size=1, max_size=4))
def test_every_argv_item_reaches_the_process_as_one_item_with_no_shell(items):
    runner = CommandRunner(os_user="postgres", line_logger=lambda _line: None)
    result = runner.run(
        ["/usr/bin/python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *items], timeout=30, log_stdout=False
    )
    assert json.loads(result.stdout) == items
