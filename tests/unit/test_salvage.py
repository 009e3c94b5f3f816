"""rewind.salvage without a cluster: the discarded part of a timeline, which transactions it holds,
rows sorted into inserted/updated/deleted with the REVIEW cases, and the SQL and CSV written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewind.salvage import (
    Row,
    SalvageError,
    SalvageResult,
    Scope,
    TableSalvage,
    classify,
    discarded_transactions,
    parse_rows,
    rows_csv,
    scope_of,
    write_files,
)
from rewind.wal import TimelineHistory, lsn_value

DUMP = (Path(__file__).parent / "fixtures" / "waldump_pg15.txt").read_text().splitlines()
HISTORY_3 = "1\t0/3000000\tno recovery target specified\n\n2\t0/15289B8\tbefore transaction 726\n"


def test_scope_is_the_old_timeline_after_the_switch_point():
    history = TimelineHistory.parse(3, HISTORY_3)
    assert scope_of(history, None) == Scope(2, lsn_value("0/15289B8"), 3)  # default: the last rewind
    assert scope_of(history, 1).switch_lsn == lsn_value("0/3000000")
    with pytest.raises(SalvageError, match="param timeline: 4 is not an ancestor of the current timeline 3"):
        scope_of(history, 4)
    with pytest.raises(SalvageError, match="never rewound"):
        scope_of(TimelineHistory.parse(1, None), None)


def test_discarded_transactions_are_those_committed_on_the_old_timeline_at_or_after_the_switch():
    scope = Scope(2, lsn_value("0/15289B8"), 3)  # 725 committed before it, 726 (and the rest) after
    assert sorted(discarded_transactions([(2, DUMP)], scope)) == [726, 728, 729, 730]
    assert discarded_transactions([(1, DUMP)], scope) == {}  # another timeline's records


def rows(*pairs) -> list[Row]:
    return [Row(key, record) for key, record in pairs]


def test_rows_sorted_by_whether_the_key_existed_at_the_target_and_mixed_deletions_left_for_review():
    table = TableSalvage("public.ledger", "app", ["id"], ["id", "amount"])
    target = {f"[{i}]": Row(f"[{i}]", f'{{"id":{i}}}') for i in (1, 2, 3)}
    changed = rows(("[2]", '{"id":2,"amount":9.50}'), ("[7]", '{"id":7,"amount":1.10}'))
    classify(table, changed, target, {"[2]", "[3]", "[7]"}, legit_deletes=True, bad_deletes=False, bad_updates=True)
    assert [r.key for r in table.inserted] == ["[7]"] and [r.key for r in table.updated] == ["[2]"]
    assert [r.key for r in table.deleted] == ["[1]"]
    assert table.review and "carries both changes" in table.review[0]
    mixed = classify(
        TableSalvage("public.ledger", "app", ["id"], ["id"]), [], target, {"[3]"}, legit_deletes=True, bad_deletes=True, bad_updates=False
    )
    assert mixed.deleted == [] and len(mixed.deleted_for_review) == 2 and "cannot be told" in mixed.review[0]
    # only bad transactions deleted: nothing to give back
    only_bad = classify(
        TableSalvage("public.ledger", "app", ["id"], ["id"]), [], target, {"[3]"}, legit_deletes=False, bad_deletes=True, bad_updates=False
    )
    assert only_bad.deleted == [] and only_bad.deleted_for_review == []


def test_sql_upserts_by_key_and_deletes_with_values_quoted_and_csv_keeps_numerics_exact(tmp_path):
    assert parse_rows('[1]\t{"id":1,"note":"tab\\there"}\n') == [Row("[1]", '{"id":1,"note":"tab\\there"}')]
    table = TableSalvage('public.we"ird', "app", ["id", "k"], ["id", "k", "amount"], {"id": 'public."we""ird_id_seq"'})
    table.inserted = rows(('[1,"a"]', '{"id":1,"k":"a","amount":12.50}'), ('[2,"b"]', '{"id":2,"k":"it\'s","amount":null}'))
    table.deleted = rows(('[3,"c"]', '{"id":3,"k":"c"}'))
    result = SalvageResult(Scope(2, 0x15289B8, 3), "20261127-183841F", [726, 728], [728], [726], [table], [], tmp_path)
    files = write_files(result, tmp_path)
    assert files == ['public.we"ird.inserted.csv', 'public.we"ird.deleted.csv', "salvage.app.sql"]
    sql = (tmp_path / "salvage.app.sql").read_text().splitlines()
    assert sql[4] == "begin;" and sql[-1] == "commit;"
    assert (
        'insert into "public"."we""ird" ("id", "k", "amount") overriding system value select "id", "k", "amount" '
        'from json_populate_record(null::"public"."we""ird", '
        '\'{"id":2,"k":"it\'\'s","amount":null}\') on conflict ("id", "k") do update set "amount" = excluded."amount";'
    ) in sql
    assert (
        'delete from "public"."we""ird" where ("id", "k") = (select "id", "k" from json_populate_record(null::"public"."we""ird", '
        '\'{"id":3,"k":"c"}\'));'
    ) in sql
    assert sql[-2] == (
        """select setval('public."we""ird_id_seq"', greatest((select max("id") from "public"."we""ird"), (select last_value from public."we""ird_id_seq")));"""
    )
    assert rows_csv(table, "inserted").splitlines() == ["id,k,amount", "1,a,12.50", "2,it's,"]
    assert rows_csv(table, "deleted").splitlines() == ["id,k", "3,c"]
    assert "salvage.app.sql, then apply it" in result.summary().replace("review ", "")
