"""Salvage where the discarded work is large and its names and values are awkward: 25,000
legitimate transactions after the runaway UPDATE (their xid list alone is larger than the kernel
lets one argument of a command line be: psql refused it with "Argument list too long" when the SQL
travelled in argv), a schema, table and columns named with `.`, `|`, `,` and quotes, and text
values holding every Unicode line separator. The SQL salvage writes, applied to the rewound
cluster, gives back exactly the legitimate rows, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewind.postgres import psql_argv
from tests.conftest import load_dags, run_once
from tests.integration.helpers import assert_success, run_pitr

pytestmark = pytest.mark.integration

SCHEMA, TABLE = '"odd.schema|x"', '"led,ger|""entry"'
RELATION = f"{SCHEMA}.{TABLE}"
LEGIT = 25_000
# U+2028, U+2029, U+0085, a vertical tab, a form feed, a CR and a LF: each ends a line for str.splitlines()
AWKWARD = "E'a\\u2028b\\u2029c\\u0085d\\x0be\\x0cf\\rg\\nh|i,j.k''l\"m'"
CONTENT = f"select md5(string_agg(id || '/' || \"a|b\" || '/' || \"c,d\", ';' order by id)) || ' ' || count(*) from {RELATION}"


def sql(stack, text: str) -> str:
    """Any SQL, whatever its size, through psql's standard input."""
    return stack.runner().run(psql_argv(stack.cluster, None), timeout=600, log_stdout=False, input_text=text).stdout.strip()


def test_salvage_of_25000_transactions_with_awkward_names_and_values_is_exact(demo_stack, pitr, approve_all):
    from airflow.utils.state import DagRunState

    sql(
        demo_stack,
        f"drop schema if exists {SCHEMA} cascade; create schema {SCHEMA}; "
        f'create table {RELATION} (id bigint primary key, "a|b" text not null, "c,d" text); '
        f"insert into {RELATION} select g, 'posted', {AWKWARD} from generate_series(1, 1000) g;",
    )
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "salvage-at-size-base"})
    bad = sql(demo_stack, f"begin; update {RELATION} set \"a|b\" = 'void'; select pg_current_xact_id(); commit;").split()[-1]
    # the legitimate work after it, one transaction each (a procedure commits in its loop)
    sql(
        demo_stack,
        "create or replace procedure pg_temp.legit() language plpgsql as $$ begin "
        f"for i in 1..{LEGIT} loop insert into {RELATION} values (100000 + i, 'posted', "
        f"case when i % 2 = 0 then {AWKWARD} else 'plain ' || i end); commit; end loop; end $$; call pg_temp.legit();",
    )
    sql(demo_stack, f"update {RELATION} set \"c,d\" = {AWKWARD} || '!' where id = 100001")  # a legitimate update of a new row
    expected = sql(
        demo_stack,
        CONTENT.replace(
            f"from {RELATION}", f'from (select id, case when id <= 1000 then \'posted\' else "a|b" end "a|b", "c,d" from {RELATION}) t'
        ),
    )
    assert expected.endswith(f" {1000 + LEGIT}")

    assert_success(run_pitr(pitr, target_type="xid", target=bad, target_exclusive=True))
    assert sql(demo_stack, f"select count(*) || ' ' || count(*) filter (where \"a|b\" = 'void') from {RELATION}") == "1000 0"

    salvage = load_dags("rewind_salvage.py")["rewind_salvage__demo"]
    run = run_once(salvage, run_conf={"bad_xids": [int(bad)], "timeline": "previous"})
    assert run.state == DagRunState.SUCCESS
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == "salvage"]
    result = ti.xcom_pull(task_ids="salvage", key="return_value")
    assert result["tables"] == {'odd.schema|x.led,ger|"entry': {"inserted": LEGIT, "updated": 0, "deleted": 0, "review": []}}
    assert len(result["salvaged_xids"]) >= LEGIT + 1
    [script] = result["sql"]
    sql(demo_stack, Path(script).read_text())
    assert sql(demo_stack, CONTENT) == expected
    sql(demo_stack, f"drop schema {SCHEMA} cascade")
