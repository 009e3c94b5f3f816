"""Salvage at the size it exists for, with names and values that break naive code, and with the
rewound cluster written to before the salvage is applied.

A table of 1,000,000 rows in a schema, table and columns named with `.`, `|`, `,` and quotes, and
text values holding every Unicode line separator. The runaway UPDATE flips 999,990 of them; then
25,000 legitimate transactions one each (their xid list alone is larger than the kernel lets one
argument of a command line be: psql refused it with "Argument list too long" when the SQL travelled
in argv), legitimate updates and deletes, and a second bad transaction that changes ten of the
legitimate inserts. After the rewind, people write again: a row with a key salvage wants to insert,
rows salvage wants to update or delete. The salvage (the `rewind salvage` command: its own process,
measured) applied to the rewound cluster gives back exactly the legitimate work, never changes a
row written after the rewind, prints a REVIEW line for each it left alone, and stays within bounded
memory (on main it compared with the rewound cluster's *current* state, proposing to overwrite or
delete the new rows, and held every row in memory).

The rewind is in clone mode, which keeps production's old directory: salvage reads the old
timeline's end there (a standby start, nothing written to it) instead of replaying to it, and gives
the same result as the salvage replayed from the repository (`--from-repository`), run after it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from devstack.demo import PG_BIN
from devstack.peak_memory import run_measured
from rewind.pitr.clone import kept_directory_of
from rewind.postgres import psql_argv
from tests.integration.helpers import assert_success, run_pitr

pytestmark = pytest.mark.integration

SCHEMA, TABLE = '"odd.schema|x"', '"led,ger|""entry"'
RELATION = f"{SCHEMA}.{TABLE}"
NAME = 'odd.schema|x.led,ger|"entry'
ROWS = 1_000_000
LEGIT = 25_000
FIRST_LEGIT = 2_000_000
# U+2028, U+2029, U+0085, a vertical tab, a form feed, a CR and a LF: each ends a line for str.splitlines()
AWKWARD = "E'a\\u2028b\\u2029c\\u0085d\\x0be\\x0cf\\rg\\nh|i,j.k''l\"m'"
AFTER_REWIND = (5, 6, 7, FIRST_LEGIT + 20, 3_000_000)  # the keys people write to after the rewind
PEAK_RSS_MIB = 200


def sql(stack, text: str) -> str:
    """Any SQL, whatever its size, through psql's standard input."""
    return stack.runner().run(psql_argv(stack.cluster, None), timeout=900, log_stdout=False, input_text=text).stdout.strip()


def content(*, undo_bad: bool) -> str:
    """md5 and count of every row but those written after the rewind (with the bad changes undone)."""
    status = (
        f"case when (id > 10 and id <= {ROWS}) or id between {FIRST_LEGIT + 11} and {FIRST_LEGIT + 20} then 'posted' else \"a|b\" end"
        if undo_bad
        else '"a|b"'
    )
    return (
        f"select md5(string_agg(id || '/' || {status} || '/' || coalesce(\"c,d\", '-'), ';' order by id)) || ' ' || count(*) "
        f"from {RELATION} where id not in ({', '.join(map(str, AFTER_REWIND))})"
    )


def kept_state(stack, kept: Path) -> tuple:
    """What reading a kept directory must not change: its WAL (names and contents), where its last
    checkpoint is, and no signal file left behind."""
    wal = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted((kept / "pg_wal").glob("0*"))}
    control = stack.runner().run([str(PG_BIN / "pg_controldata"), "-D", str(kept)], timeout=30, log_stdout=False).stdout
    checkpoint = [
        line for line in control.splitlines() if line.startswith(("Latest checkpoint location", "Latest checkpoint's REDO location"))
    ]
    return wal, checkpoint, (kept / "standby.signal").exists()


def salvage_in_own_process(stack, directory: Path, bad: list[str], *options: str) -> tuple[dict, float]:
    """`rewind salvage` as a DBA runs it on the host, and its peak memory with its children's."""
    argv = [sys.executable, "-m", "rewind.cli", "--inventory", str(stack.inventory_path), "salvage", "--cluster", "demo"]
    argv += ["--directory", str(directory), "--json", *(f"--bad-xid={x}" for x in bad), *options]
    measured = run_measured(argv, env={**os.environ, **stack.worker_env()}, output_dir=stack.base)
    assert measured.returncode == 0, measured.stderr[-3000:]
    return json.loads(measured.stdout), measured.peak_mib


def test_salvage_of_a_million_row_incident_is_exact_leaves_new_writes_alone_and_stays_bounded(demo_stack, pitr, approve_all):
    sql(
        demo_stack,
        f"drop schema if exists {SCHEMA} cascade; create schema {SCHEMA}; "
        f'create table {RELATION} (id bigint primary key, "a|b" text not null, "c,d" text); '
        f"insert into {RELATION} select g, 'posted', case when g % 1000 = 0 then {AWKWARD} else 'v' || g end from generate_series(1, {ROWS}) g;",
    )
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "salvage-at-size-base"})
    bad = sql(demo_stack, f"begin; update {RELATION} set \"a|b\" = 'void' where id > 10; select pg_current_xact_id(); commit;").split()[-1]
    # the legitimate work after it: inserts one transaction each (a procedure commits in its loop)
    sql(
        demo_stack,
        "create or replace procedure pg_temp.legit() language plpgsql as $$ begin "
        f"for i in 1..{LEGIT} loop insert into {RELATION} values ({FIRST_LEGIT} + i, 'posted', "
        f"case when i % 2 = 0 then {AWKWARD} else 'plain ' || i end); commit; end loop; end $$; call pg_temp.legit();",
    )
    sql(demo_stack, f"update {RELATION} set \"c,d\" = 'L5' where id = 5")
    sql(demo_stack, f"update {RELATION} set \"c,d\" = 'L6' where id = 6")
    sql(demo_stack, f"delete from {RELATION} where id in (3, 7)")
    sql(demo_stack, f"update {RELATION} set \"c,d\" = {AWKWARD} || '!' where id = {FIRST_LEGIT + 1}")
    # a second bad transaction changes ten legitimate inserts: their version before it is salvaged
    bad_2 = sql(
        demo_stack,
        f"begin; update {RELATION} set \"a|b\" = 'void' where id between {FIRST_LEGIT + 11} and {FIRST_LEGIT + 20}; "
        "select pg_current_xact_id(); commit;",
    ).split()[-1]
    sql(demo_stack, f"insert into {RELATION} values (2100000, 'posted', 'after the second bad one')")
    expected = sql(demo_stack, content(undo_bad=True))
    assert expected.endswith(f" {ROWS + LEGIT - 4}")  # 3 and 7 deleted; 5, 6 and the 20th insert not counted; one more insert

    timeline_before = int(sql(demo_stack, "select timeline_id from pg_control_checkpoint()"))
    assert_success(run_pitr(pitr, target_type="xid", target=bad, target_exclusive=True, mode="clone"))
    assert sql(demo_stack, f"select count(*) || ' ' || count(*) filter (where \"a|b\" = 'void') from {RELATION}") == f"{ROWS} 0"
    # people write again before the salvage is applied
    sql(
        demo_stack,
        f"insert into {RELATION} values ({FIRST_LEGIT + 20}, 'new', 'written after the rewind'), (3000000, 'new', 'after'); "
        f"update {RELATION} set \"c,d\" = 'P5' where id = 5; delete from {RELATION} where id = 6; "
        f"update {RELATION} set \"c,d\" = 'P7' where id = 7;",
    )

    directory = demo_stack.base / "salvage-at-size"  # where the OS user reaches the scratch cluster
    shutil.rmtree(directory.parent / directory.name, ignore_errors=True)
    kept = kept_directory_of(demo_stack.cluster, timeline_before)
    assert kept is not None and kept.name.startswith("data.pre-rewind-")
    kept_before = kept_state(demo_stack, kept)
    began = time.monotonic()
    result, peak_mib = salvage_in_own_process(demo_stack, directory, [bad, bad_2])
    from_kept_s = time.monotonic() - began
    assert result["kept_dir"] == str(kept), result["kept_dir"]
    assert kept_state(demo_stack, kept) == kept_before  # read, never changed: no WAL written, no signal file left
    table = result["tables"][NAME]
    assert (table["inserted"], table["updated"], table["deleted"]) == (LEGIT + 1, 2, 2)
    assert any("their version before the bad transaction is salvaged" in note for note in table["review"])
    assert len(result["salvaged_xids"]) >= LEGIT + 5
    assert peak_mib <= PEAK_RSS_MIB, f"salvage peaked at {peak_mib:.0f} MiB RSS"
    [script] = result["sql"]
    # the same salvage with the old timeline's end replayed from the repository: the same result
    began = time.monotonic()
    replayed, _ = salvage_in_own_process(demo_stack, directory.with_name("salvage-at-size-replayed"), [bad, bad_2], "--from-repository")
    replayed_s = time.monotonic() - began
    assert replayed["kept_dir"] is None
    assert (replayed["tables"], replayed["salvaged_xids"], replayed["files"]) == (
        result["tables"],
        result["salvaged_xids"],
        result["files"],
    )
    assert Path(replayed["sql"][0]).read_text() == Path(script).read_text()
    print(f"salvage at {ROWS:,} rows: {from_kept_s:.1f}s reading the kept directory, {replayed_s:.1f}s replaying from the repository")
    printed = sql(demo_stack, Path(script).read_text()).splitlines()
    # every row written after the rewind that salvage would have changed is left alone and named
    assert [line.split(":")[0] for line in printed] == [
        f"REVIEW {NAME} key [{FIRST_LEGIT + 20}]",
        f"REVIEW {NAME} key [5]",
        f"REVIEW {NAME} key [6]",
        f"REVIEW {NAME} key [7]",
    ], printed
    after = "select string_agg(id || '/' || \"a|b\" || '/' || \"c,d\", ';' order by id) from " + RELATION
    assert sql(demo_stack, f"{after} where id in ({', '.join(map(str, AFTER_REWIND))})") == (
        f"5/posted/P5;7/posted/P7;{FIRST_LEGIT + 20}/new/written after the rewind;3000000/new/after"
    )
    assert sql(demo_stack, content(undo_bad=False)) == expected  # and everything else is exactly the legitimate work
    sql(demo_stack, f"drop schema {SCHEMA} cascade")
    shutil.rmtree(directory)
    shutil.rmtree(directory.with_name("salvage-at-size-replayed"))
    shutil.rmtree(kept)  # its hold would release it at the first expire after it ends
