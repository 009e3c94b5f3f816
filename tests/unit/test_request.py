"""The PITR form (rewind.pitr.request): rules across fields, what each field turns into for pgBackRest
and the change, and one-line errors naming the param to fix."""

from __future__ import annotations

import datetime as dt

import pytest

from rewind.pitr.request import PitrParamError, parse_request

REASON = "migration 42 voided every ledger entry"


def request(**params):
    return parse_request({"reason": REASON, **params})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"target_type": "immediate", "target": "0/3000060"}, "param target: must be empty for target_type immediate"),
        ({"target_type": "latest", "target": "x"}, "param target: must be empty for target_type latest"),
        ({"target_type": "latest", "target_exclusive": True}, "param target_exclusive: has no meaning for target_type latest"),
        ({"target_type": "time"}, "param target: required for target_type time"),
        ({"target_type": "xid", "target": "   "}, "param target: required for target_type xid"),
        (
            {"target_type": "time", "target": "2026-11-24 02:13:30"},
            "param target: '2026-11-24 02:13:30' has no time zone: add one, e.g. 2026-11-24 02:13:30+00",
        ),
        ({"target_type": "time", "target": "yesterday"}, "param target: 'yesterday' is not a timestamp: use e.g. 2026-11-24 02:13:30+00"),
        ({"target_type": "xid", "target": "0"}, "param target: '0' is not a transaction id (a positive integer)"),
        ({"target_type": "xid", "target": "-5"}, "param target: '-5' is not a transaction id (a positive integer)"),
        ({"target_type": "xid", "target": str(2**63)}, f"param target: '{2**63}' is not a transaction id (a positive integer)"),
        ({"target_type": "lsn", "target": "3000060"}, "param target: '3000060' is not an LSN like 0/3000060"),
        ({"target_type": "name", "target": "-before"}, "param target: '-before' is not a restore point name Rewind accepts"),
        (
            {"target_type": "name", "target": "before", "target_exclusive": True},
            "param target_exclusive: not supported for restore point names",
        ),
        (
            {"target_type": "time", "target": "2026-11-24 02:13:30+00", "target_timeline": "0"},
            "param target_timeline: '0' must be current, latest or a timeline number",
        ),
        (
            {"target_type": "immediate", "backup_set": "20261124-0200F"},
            "param backup_set: '20261124-0200F' is not a pgBackRest backup label",
        ),
        ({"target_type": "immediate", "change_number": "CHG12"}, "param change_number: 'CHG12' is not a change number like CHG0010001"),
        (
            {"target_type": "immediate", "validation_database": "ledger; drop"},
            "param validation_database: 'ledger; drop' is not a database name Rewind accepts (letters, digits, _ $ -)",
        ),
        ({"target_type": "immediate", "validation_database": "-ledger"}, "param validation_database: '-ledger' is not a database name"),
        ({"target_type": "immediate", "reason": "oops"}, "param reason: String should have at least 10 characters"),
        ({"target_type": "immediate", "reason": "bad \x1b[31m migration"}, "param reason: must not contain control characters"),
        (
            {"target_type": "immediate", "validation_sql": [{"sql": "select 1; drop table t", "expect": 1}]},
            "param validation_sql.0.sql: must be a single SQL statement (found ';' before the end)",
        ),
        ({"target_type": "immediate", "validation_sql": [{"sql": "select 1"}]}, "param validation_sql.0.expect: Field required"),
        ({"target_type": "immediate", "target_action": "shutdown"}, "param target_action: Input should be 'promote', 'pause' or 'decide'"),
        ({"target_type": "tomorrow"}, "param target_type: Input should be 'time', 'xid', 'name', 'lsn', 'immediate' or 'latest'"),
        ({"target_type": "immediate", "approver": "me"}, "param approver: Extra inputs are not permitted"),
        ({"target_type": "latest", "mode": "clone"}, "param mode: clone needs a target to pause the clone at"),
        ({"target_type": "immediate", "mode": "elsewhere"}, "param mode: Input should be 'inventory', 'in_place', 'clone' or 'undo'"),
        (
            {"target_type": "time", "target": "2026-11-24 02:13:30+00", "mode": "undo"},
            "param mode: undo goes back to the end of the timeline a clone-mode rewind left: target_type latest and target_timeline "
            "that timeline's number (`rewind holds` names it)",
        ),
        (
            {"target_type": "latest", "target_timeline": "current", "mode": "undo"},
            "param mode: undo goes back to the end of the timeline a clone-mode rewind left",
        ),
    ],
)
def test_each_error_is_one_line_naming_the_param(params, message):
    with pytest.raises(PitrParamError) as raised:
        parse_request({"reason": REASON, **params})
    text = str(raised.value)
    assert text.startswith(message), text
    assert "\n" not in text and "Value error" not in text
    assert raised.value.opens_incident is False


def test_empty_fields_are_absent_and_text_is_trimmed():
    req = request(target_type="xid", target=" 731 ", backup_set=" ", change_number="", validation_database=None, reason=f"  {REASON}  ")
    assert (req.target, req.backup_set, req.change_number, req.validation_database, req.reason) == ("731", None, None, None, REASON)


def test_latest_always_promotes_the_others_do_as_asked():
    assert request(target_type="latest").action == "promote"
    assert request(target_type="latest", target_action="pause").action == "promote"  # nothing to pause at
    assert request(target_type="time", target="2026-11-24 02:13:30+00").action == "pause"  # the default
    assert request(target_type="xid", target="731", target_action="promote").action == "promote"
    assert request(target_type="immediate").target_action == "pause"


def test_action_text_says_when_the_checks_run():
    paused = request(target_type="name", target="before 42").action_text()
    assert paused.startswith("recovery pauses read-only at the target; the data checks run there")
    assert "promotes by itself (nothing is lost)" in request(target_type="latest").action_text()
    promote = request(target_type="lsn", target="0/3000060", target_action="promote").action_text()
    assert promote.startswith("PostgreSQL promotes itself at the target (target_action=promote") and "after promotion" in promote


@pytest.mark.parametrize(
    "target, expected",
    [
        ("2026-11-24 02:13:30+00", "2026-11-24 02:13:30.000000+00"),
        ("2026-11-24 03:13:30.25+01", "2026-11-24 02:13:30.250000+00"),
        ("2026-11-24T03:13:30+01:00", "2026-11-24 02:13:30.000000+00"),
        ("2026-11-24 02:13:30 UTC", "2026-11-24 02:13:30.000000+00"),
        ("2026-11-23 21:13:30-05", "2026-11-24 02:13:30.000000+00"),
    ],
)
def test_a_time_target_reaches_pgbackrest_in_utc(target, expected):
    req = request(target_type="time", target=target)
    assert req.pgbackrest_target == expected
    assert req.target_time == dt.datetime(2026, 11, 24, 2, 13, 30, int(expected[20:26]), tzinfo=dt.timezone.utc)
    assert req.pgbackrest_type == "time"


def test_pgbackrest_type_and_target_for_every_kind():
    assert (request(target_type="lsn", target="0/03000060").pgbackrest_target) == "0/3000060"  # pg_waldump's padding dropped
    assert (request(target_type="lsn", target="16/b374d848").pgbackrest_target) == "16/B374D848"
    xid = request(target_type="xid", target="731")
    assert (xid.pgbackrest_type, xid.pgbackrest_target, xid.target_time) == ("xid", "731", None)
    assert request(target_type="name", target="before migration 42").pgbackrest_target == "before migration 42"
    assert request(target_type="immediate").pgbackrest_target is None
    latest = request(target_type="latest")
    assert (latest.pgbackrest_type, latest.pgbackrest_target) == ("default", None)


def test_describe():
    assert request(target_type="latest").describe() == "latest (action promote, timeline current)"
    assert request(target_type="xid", target="731", target_exclusive=True, target_timeline="2").describe() == (
        "xid 731 (exclusive, action pause, timeline 2)"
    )


def test_data_checks_keep_their_expectation_as_psql_prints_it():
    checks = request(
        target_type="immediate",
        validation_sql=[
            {"sql": "select count(*) from ledger_entry where status = 'void';", "expect": 0},
            {"sql": "select exists (select 1 from ledger_entry)", "expect": True},
        ],
    ).validation_sql
    assert [(c.sql, c.expect) for c in checks] == [
        ("select count(*) from ledger_entry where status = 'void'", "0"),
        ("select exists (select 1 from ledger_entry)", "t"),
    ]
    assert request(target_type="immediate", validation_database="ledger_main$2").validation_database == "ledger_main$2"
