"""Property-based: no inventory value and no PITR param can add a pgBackRest option, a line or
section of pgbackrest.conf, or a second SQL statement. Every value is either refused with a clear
error, or lands as exactly one argv item / one config value, verbatim.

(The same properties against the real PostgreSQL parser and a real process's argv are in
tests/integration/test_injection_real.py.)"""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewind.pgbackrest.commands import PgBackRestCommands
from rewind.pgbackrest.config import render_config
from rewind.pitr.request import DataCheck, PitrParamError, parse_request
from tests.factories import cluster_doc, inventory

# Text an attacker (or a typo) would try: option and section syntax, quotes, shell and SQL
# metacharacters, whitespace, control characters, and ordinary characters between them.
NASTY = [
    "-",
    "--",
    "--repo1-path=/x",
    "=",
    "\n",
    "\r",
    "\t",
    " ",
    "[",
    "]",
    "#",
    ";",
    "'",
    '"',
    "`",
    "$(",
    ")",
    "|",
    "&",
    ">",
    "<",
    "\\",
    "\x00",
    "/",
    ".",
    "..",
    "*",
    "%p",
    "{{",
    "}}",
    "\u2028",
    "é",
]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=4)), max_size=8).map("".join)

BASE = cluster_doc(stanza="ledger", repo={"ca_file": "/etc/ssl/certs/repo-ca.pem"})

# (where in the cluster document, a value to put there)
FIELDS = [
    ("stanza",),
    ("queue",),
    ("description",),
    ("postgres", "data_dir"),
    ("postgres", "socket_dir"),
    ("postgres", "os_user"),
    ("postgres", "bin_dir"),
    ("postgres", "systemd_unit"),
    ("pgbackrest", "log_path"),
    ("pgbackrest", "config_path"),
    ("repo", "bucket"),
    ("repo", "endpoint"),
    ("repo", "region"),
    ("repo", "path"),
    ("repo", "ca_file"),
    ("credentials", "env_prefix"),
    ("schedules", "full"),
]


def _set(doc: dict, where: tuple[str, ...], value: str) -> dict:
    node = doc
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    return doc


def _load(doc: dict):
    loaded = inventory({"ledger": doc})
    return loaded.clusters.get("ledger"), loaded.errors


def _config_keys(text: str) -> list[tuple[str, str]]:
    """(section, key) of every setting line: what pgBackRest would parse."""
    section, keys = "", []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("["):
            section = line
            keys.append((section, "[section]"))
        else:
            keys.append((section, line.split("=", 1)[0]))
    return keys


def _option_names(argv: list[str]) -> list[str]:
    return [item.split("=", 1)[0] for item in argv[1:] if item.startswith("--")]


BASELINE, _ = _load(copy.deepcopy(BASE))
BASELINE_KEYS = _config_keys(render_config(BASELINE, inventory_path="/etc/rewind/inventory.yaml"))


def _argvs(cluster) -> list[list[str]]:
    commands = PgBackRestCommands(cluster)
    return [
        commands.check(),
        commands.info(),
        commands.backup("full", annotations={"airflow_run_id": "r"}),
        commands.restore(restore_type="time", target="2026-11-24 02:13:30+00", target_action="promote"),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(FIELDS), value=nasty_text)
def test_no_inventory_value_adds_a_config_line_or_a_pgbackrest_option(where, value):
    doc = _set(copy.deepcopy(BASE), where, value)
    cluster, errors = _load(doc)
    if cluster is None:  # refused: one line naming file, cluster and field
        [error] = errors.values() if isinstance(errors, dict) else errors
        assert "inventory /etc/rewind/inventory.yaml: cluster 'ledger': field " in str(error)
        assert "\n" not in str(error)
        return
    rendered = render_config(cluster, inventory_path="/etc/rewind/inventory.yaml")
    keys = _config_keys(rendered)
    # the same settings in the same sections (a section is named by the stanza)
    assert [k for _s, k in keys] == [k for _s, k in BASELINE_KEYS]
    assert len({s for s, _k in keys}) == len({s for s, _k in BASELINE_KEYS})
    for argv, baseline in zip(_argvs(cluster), _argvs(BASELINE), strict=True):
        assert _option_names(argv) == _option_names(baseline)
        assert argv[-1] == baseline[-1]  # the command itself
        assert all("\n" not in item and "\x00" not in item for item in argv)


PARAMS = {"target_type": "name", "target": "before_migration_42", "reason": "rewind after the bad migration 42"}


@settings(max_examples=400, deadline=None)
@given(
    target_type=st.sampled_from(["time", "xid", "name", "lsn"]),
    target=nasty_text,
    field=st.sampled_from(["target", "target_timeline", "backup_set", "change_number"]),
)
def test_no_pitr_param_adds_a_pgbackrest_option(target_type, target, field):
    params = {**PARAMS, "target_type": target_type, field: target}
    try:
        request = parse_request(params)
    except PitrParamError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("param ")
        return
    argv = PgBackRestCommands(BASELINE).restore(
        restore_type=request.pgbackrest_type,
        target=request.pgbackrest_target,
        target_exclusive=request.target_exclusive,
        target_action=request.target_action,
        target_timeline=request.target_timeline,
        backup_set=request.backup_set,
    )
    names = _option_names(argv)
    assert len(names) == len(set(names)), argv  # no option twice
    assert set(names) <= {"--config", "--stanza", "--delta", "--set", "--type", "--target", "--target-action", "--target-timeline"}
    assert argv[-1] == "restore"
    if request.target_type == "name":
        # pgBackRest writes it into postgresql.auto.conf as recovery_target_name = '<name>'
        assert not re.search(r"['\\\n\r]", request.target)
    if request.target_type in ("xid", "name"):
        assert f"--target={request.target}" in argv  # verbatim, one item


SQL_TOKENS = [
    "select 1",
    " ",
    ";",
    "'",
    '"',
    "''",
    "--",
    "/*",
    "*/",
    "$$",
    "$q$",
    "E'",
    "\\",
    "\\;",
    "\n",
    "insert into probe values (1)",
    "drop table probe",
    "(",
    ")",
    "x",
    "as",
    "\\g",
    "\\!",
    "begin",
    ", ",
    "select ",
    "$$'$$",
    "E'\\''",
]
sql_text = st.lists(st.sampled_from(SQL_TOKENS), min_size=1, max_size=10).map("".join)


def _statements_outside_quotes(sql: str) -> int:
    """An independent count: ';' outside '...', "..." and $tag$...$tag$ quoting, plus one."""
    count, index, quote = 1, 0, None
    while index < len(sql):
        if quote:
            if sql.startswith(quote, index):
                index += len(quote)
                quote = None
                continue
        elif sql[index] in "'\"":
            quote = sql[index]
        elif sql[index] == "$" and (match := re.match(r"\$[A-Za-z_]*\$", sql[index:])):
            quote = match.group(0)
            index += len(quote)
            continue
        elif sql[index] == ";" and sql[index + 1 :].strip():
            count += 1
        index += 1
    return count


@settings(max_examples=500, deadline=None)
@given(sql=sql_text)
def test_a_data_check_is_one_statement_or_refused(sql):
    try:
        check = DataCheck(sql=sql, expect="1")
    except ValueError:
        return
    assert _statements_outside_quotes(check.sql) == 1
    assert "\\" not in check.sql  # no psql meta-command
    assert not check.sql.rstrip().endswith(";")


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; insert into probe values (1)",
        "select 1 \\; select 2",
        "select $$;$$; drop table probe",
        "select 1 -- ; drop table probe",
        "select 1 /* */; drop table probe",
    ],
)
def test_known_injections_are_refused(sql):
    with pytest.raises(ValueError):
        DataCheck(sql=sql, expect="1")
