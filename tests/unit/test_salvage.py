"""rewind.salvage without a cluster: the discarded part of a timeline, which transactions it holds,
the points the scratch cluster pauses at, the one-pass comparison of sorted row files (with the
REVIEW cases), and the guarded SQL and the CSV written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewind.finder import Transaction
from rewind.salvage import (
    SalvageError,
    SalvageFiles,
    SalvageResult,
    Scope,
    Stage,
    TableSalvage,
    discarded_transactions,
    outer_join,
    read_rows,
    salvage_table,
    scope_of,
    stages_of,
)
from rewind.wal import TimelineHistory, lsn_value

DUMP = (Path(__file__).parent / "fixtures" / "waldump_pg15.txt").read_text().splitlines()
HISTORY_3 = "1\t0/3000000\tno recovery target specified\n\n2\t0/15289B8\tbefore transaction 726\n"


def test_scope_is_the_old_timeline_after_the_switch_point():
    history = TimelineHistory.parse(3, HISTORY_3)
    assert scope_of(history, None) == Scope(2, lsn_value("0/15289B8"), 3)  # default: the last rewind
    assert scope_of(history, 1).switch_lsn == lsn_value("0/3000000")
    with pytest.raises(SalvageError, match="param timeline: 4 is neither an ancestor of the current timeline 3"):
        scope_of(history, 4)
    with pytest.raises(SalvageError, match="never rewound"):
        scope_of(TimelineHistory.parse(1, None), None)


def test_the_timeline_an_undo_set_aside_is_all_of_its_own_wal():
    """Timeline 1 rewound at 0/3000000 made 2; the undo put 1's directory back, recovered to 1's end
    (0/5000000) and promoted 3. Timeline 2 is not an ancestor of 3: its discarded part is all of it."""
    histories = {
        2: TimelineHistory.parse(2, "1\t0/3000000\tbefore 2026-12-04 02:13:30+00\n"),
        4: TimelineHistory.parse(4, "1\t0/6000000\tafter 3 left 1\n"),
        5: TimelineHistory.parse(5, "3\t0/7000000\toff the current timeline\n"),
    }

    def history_of(timeline: int) -> TimelineHistory:
        if timeline not in histories:
            raise SalvageError(f"no {timeline:08X}.history in the repository")
        return histories[timeline]

    current = TimelineHistory.parse(3, "1\t0/5000000\tno recovery target specified\n")
    assert scope_of(current, 2, history_of=history_of) == Scope(2, lsn_value("0/3000000"), 3)
    assert scope_of(current, 5, history_of=history_of) == Scope(5, lsn_value("0/7000000"), 3)
    assert scope_of(current, 1, history_of=history_of) == Scope(1, lsn_value("0/5000000"), 3)  # an ancestor, as before
    # branched off 1 after the current timeline left it: part of 1 would be discarded too, not all its own
    with pytest.raises(SalvageError, match="param timeline: 4 is neither an ancestor"):
        scope_of(current, 4, history_of=history_of)
    with pytest.raises(SalvageError, match="param timeline: 9 is neither an ancestor"):
        scope_of(current, 9, history_of=history_of)
    with pytest.raises(SalvageError, match="param timeline: 2 is neither an ancestor"):
        scope_of(current, 2)  # without the repository's histories, only ancestors


def test_discarded_transactions_are_those_committed_on_the_old_timeline_at_or_after_the_switch():
    scope = Scope(2, lsn_value("0/15289B8"), 3)  # 725 committed before it, 726 (and the rest) after
    assert sorted(discarded_transactions([(2, DUMP)], scope)) == [726, 728, 729, 730]
    assert discarded_transactions([(1, DUMP)], scope) == {}  # another timeline's records


SCOPE = Scope(2, 0x15289B8, 3)


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_the_scratch_pauses_at_the_target_before_each_later_bad_commit_and_runs_to_the_end():
    transactions = {
        726: Transaction(726, 2, "0/1528A00"),
        728: Transaction(728, 2, "0/1530000"),
        731: Transaction(731, 2, "0/1540000"),
    }
    assert stages_of(SCOPE, transactions, [731, 726, 999]) == [
        Stage("the state at the target", 0x15289B8),
        Stage("just before bad transaction 726", 0x1528A00),
        Stage("just before bad transaction 731", 0x1540000),
        Stage("the old timeline's latest state", None),
    ]
    at_switch = {726: Transaction(726, 2, "0/15289B8")}  # the bad commit is the switch point: nothing between
    assert [s.lsn for s in stages_of(SCOPE, at_switch, [726])] == [0x15289B8, None]


def test_rows_files_are_read_by_newline_only_and_must_be_in_key_order(tmp_path):
    # U+2028, U+2029, U+0085 and a CR inside a value: only "\n" ends a row (JSON escapes the rest)
    value = '{"id":1,"note":"a\u2028b\u2029c\u0085d\re"}'
    assert list(read_rows(write(tmp_path / "a", f"[1]\t{value}", '[2]\t{"id":2}'), 2)) == [("[1]", value), ("[2]", '{"id":2}')]
    with pytest.raises(SalvageError, match="rows not in key order"):
        list(read_rows(write(tmp_path / "b", "[2]\t{}", "[1]\t{}"), 2))
    joined = list(outer_join(iter([("[1]", "t1"), ("[3]", "t3")]), iter([("[2]", "B", "e2"), ("[3]", "L", "e3")])))
    assert joined == [("[1]", [("[1]", "t1"), None]), ("[2]", [None, ("[2]", "B", "e2")]), ("[3]", [("[3]", "t3"), ("[3]", "L", "e3")])]


def ledger(tmp_path: Path) -> tuple[TableSalvage, SalvageFiles]:
    table = TableSalvage('public.we"ird', "app", ["id"], ["id", "amount"], {"id": 'public."we""ird_id_seq"'})
    return table, SalvageFiles(tmp_path, SCOPE, [728], [726])


def row(i: int, amount) -> str:
    return f'{{"id":{i},"amount":{amount}}}'


def test_each_key_is_salvaged_from_the_target_the_legitimate_version_or_not_at_all(tmp_path):
    table, files = ledger(tmp_path)
    target = write(tmp_path / "t", *(f"[{i}]\t{row(i, '1.00')}" for i in (1, 2, 3, 4, 6)))
    before_bad = write(tmp_path / "b", f"[8]\t{row(8, '8.00')}", f"[9]\t{row(9, '9.00')}")  # legitimate inserts, later hit by the bad one
    end = write(
        tmp_path / "e",
        "[1]\t-\t",  # untouched since the target
        f"[2]\tL\t{row(2, '9.50')}",  # updated by a legitimate transaction
        "[3]\tB\t",  # changed by the bad transaction only: the rewind undid it
        # 4 deleted after the target; 6 too
        f"[6]\tL\t{row(6, '1.00')}",  # rewritten to what it was: nothing to do
        f"[7]\tL\t{row(7, '1.10')}",  # inserted by a legitimate transaction
        "[8]\tB\t",  # a legitimate insert the bad one changed: its version before
        # 9: a legitimate insert the bad one deleted
    )
    salvage_table(
        table, files, at_target=target, before_bad=[before_bad], at_end=end, legit_deletes=True, bad_deletes=False, bad_updates=True
    )
    assert (table.inserted, table.updated, table.deleted, table.before_bad) == (3, 1, 1, 2)
    assert any("carries both changes" in note for note in table.review) and any("version before" in note for note in table.review)
    assert files.close() == [
        'public.we"ird.deleted.csv',
        'public.we"ird.inserted.csv',
        'public.we"ird.review.csv',
        'public.we"ird.updated.csv',
        "salvage.app.sql",
    ]
    sql = (tmp_path / "salvage.app.sql").read_text().splitlines()
    assert sql[6] == "begin;" and sql[-1] == "commit;" and "set local timezone = 'UTC';" in sql
    statements = [line for line in sql if line.startswith("with applied_")]
    assert [s.split(" ")[3].strip("(") for s in statements] == ["update", "delete", "insert", "insert", "insert"]  # keys 2, 4, 7, 8, 9
    update, delete = statements[0], statements[1]
    # changed only if the row is still as the rewind left it; else a conflict for the REVIEW lines
    assert f"row_to_json(cur_)::text = '{row(2, '1.00')}'" in update and 'set "amount" = new_."amount"' in update
    assert "'[2]', 'the row is not as the rewind left it" in update
    assert f"row_to_json(cur_)::text = '{row(4, '1.00')}'" in delete
    assert "on conflict do nothing returning 1" in statements[2] and "'[7]', 'a row with this key" in statements[2]
    assert sql[-2].startswith("select 'REVIEW ' || table_name") and "pg_temp.rewind_salvage_conflicts" in sql[-2]
    assert any(line.startswith("select 'sequence ' || 'public.\"we\"\"ird_id_seq\"'") for line in sql)
    assert (tmp_path / 'public.we"ird.inserted.csv').read_text().splitlines() == ["id,amount", "7,1.10", "8,8.00", "9,9.00"]
    assert (tmp_path / 'public.we"ird.deleted.csv').read_text().splitlines() == ["id", "4"]
    review = (tmp_path / 'public.we"ird.review.csv').read_text().splitlines()
    assert review[0] == "id,reason" and review[1].startswith('8,"written by a legitimate transaction, then changed by a bad one')
    assert review[2].startswith('9,"written by a legitimate transaction, then deleted by a bad one')


def test_deletions_by_legitimate_and_bad_transactions_alike_are_left_for_review(tmp_path):
    target = write(tmp_path / "t", f"[1]\t{row(1, '1.00')}", f"[2]\t{row(2, '1.00')}")
    end = write(tmp_path / "e", "[2]\t-\t")
    mixed, files = ledger(tmp_path)
    salvage_table(mixed, files, at_target=target, before_bad=[], at_end=end, legit_deletes=True, bad_deletes=True, bad_updates=False)
    assert (mixed.deleted, mixed.deleted_for_review) == (0, 1) and "cannot be told" in mixed.review[0]
    only_bad, files = ledger(tmp_path / "only-bad")
    salvage_table(only_bad, files, at_target=target, before_bad=[], at_end=end, legit_deletes=False, bad_deletes=True, bad_updates=False)
    assert (only_bad.deleted, only_bad.deleted_for_review, files.close()) == (0, 0, [])  # only bad ones deleted: nothing to give back


def test_the_summary_says_how_to_apply_and_what_the_script_does(tmp_path):
    table, files = ledger(tmp_path)
    result = SalvageResult(SCOPE, "20261127-183841F", [726, 728], [728], [726], [table], ["public.nokey (no primary key)"], tmp_path)
    result.files = ["salvage.app.sql"]
    summary = result.summary()
    assert "salvage.app.sql, then apply it to the rewound cluster" in summary and "prints a REVIEW line" in summary
    assert "not salvaged: public.nokey (no primary key)" in summary
    assert result.as_dict()["tables"] == {'public.we"ird': {"inserted": 0, "updated": 0, "deleted": 0, "review": []}}
