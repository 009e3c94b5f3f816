"""Salvage what a rewind discarded: the legitimate transactions committed after the target.

A rewind ends the old timeline at its switch point (the new timeline's history names it). Every
transaction whose commit record lies on the old timeline at or after that point was discarded.
Salvage, read-only against production:

1. reads the old timeline's archived WAL from the switch point on, streamed (rewind.wal,
   rewind.finder): the discarded transactions, their subtransactions and the tables they wrote;
2. restores one scratch cluster (archiving off, its own socket) from the newest backup before the
   switch point and stops it, in turn, at the target (the state the rewind left), just before each
   bad transaction's commit, and at the old timeline's end; at each stop, each written table's rows
   go to a file sorted by key (psql through a cursor, straight to the file);
3. one pass over those files per table compares, key by key: a row a legitimate transaction wrote
   last is salvaged (inserted when its key was free at the target, else updated from the target's
   version); a row a legitimate transaction wrote and a bad one changed or deleted later is
   salvaged in its version before the bad one, marked REVIEW; a row at the target and gone at the
   end is deleted when only legitimate transactions deleted rows of its table;
4. writes CSV per table and change, and one SQL script per database. Every statement is guarded: an
   insert does nothing when its key (or another unique value) was taken since the rewind, an
   update or a delete acts only on a row still exactly as the rewind left it (its whole row as
   JSON); each statement that did nothing is printed as a REVIEW line at the end. Rows written
   after the rewind are never changed. Nothing is applied.

Memory stays bounded whatever the tables' size: rows live in files, never in lists.

Limits (said in the summary when they apply): a row changed by a bad transaction and later by a
legitimate one carries both changes (listed for review); a deletion cannot be told apart by who
made it when a bad transaction also deleted rows of that table (listed for review, not in the
SQL); tables without a primary key are not salvaged (generated columns are left to PostgreSQL to
compute, identity columns keep the salvaged values); a table created after the target has no rows
at the target, so its rows are inserts into a table the rewound cluster does not have (the script
stops there: create it first); rows of a discarded transaction that began before the WAL read (one
segment before the switch) may leave its table unlisted.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rewind.errors import RewindError
from rewind.finder import Transaction, parse_records
from rewind.wal import TimelineHistory, lsn_text, lsn_value, segment_of, segments_on_path


class SalvageError(RewindError):
    opens_incident = False


# ---- what was discarded --------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    old_timeline: int
    switch_lsn: int
    current_timeline: int

    def describe(self) -> str:
        return f"timeline {self.old_timeline} after {lsn_text(self.switch_lsn)} (where timeline {self.current_timeline}'s history left it)"


def scope_of(history: TimelineHistory, old_timeline: int | None, *, history_of: Callable[[int], TimelineHistory] | None = None) -> Scope:
    """The discarded part of `old_timeline` (default: the one the current timeline branched from).

    A rewind discards its ancestor's WAL after the switch point. An undo (rewind.pitr.clone)
    discards a timeline that is not an ancestor: the one the rewind made, branched off this
    history's path where the rewind's target was; all of its own WAL is what the undo set aside
    (`history_of` reads a timeline's history, to find where it branched)."""
    ancestors = [tli for tli, _end in history.entries[:-1]]
    if old_timeline is None and not ancestors:
        raise SalvageError(f"timeline {history.timeline} has no ancestor: this cluster was never rewound, there is nothing to salvage")
    old = old_timeline or ancestors[-1]
    switch = history.switch_lsn(old)
    if old in ancestors and switch is not None:
        return Scope(old, switch, history.timeline)
    if history_of is not None and old != history.timeline:
        try:
            entries = history_of(old).entries
        except RewindError:  # no such timeline in the repository: named by the refusal below
            entries = ()
        if len(entries) >= 2:
            parent, start = entries[-2]
            left_parent_at = history.switch_lsn(parent)
            if start is not None and (
                parent == history.timeline or (parent in ancestors and left_parent_at is not None and start <= left_parent_at)
            ):
                return Scope(old, start, history.timeline)
    raise SalvageError(
        f"param timeline: {old} is neither an ancestor of the current timeline {history.timeline} "
        f"(ancestors: {', '.join(map(str, ancestors)) or 'none'}) nor a timeline an undo set aside (branched off its history)"
    )


def discarded_transactions(dumps: Iterable[tuple[int, Iterable[str]]], scope: Scope) -> dict[int, Transaction]:
    """Transactions committed on the old timeline at or after the switch point."""
    return {
        xid: x
        for xid, x in parse_records(dumps).items()
        if not x.aborted and x.timeline == scope.old_timeline and lsn_value(x.lsn) >= scope.switch_lsn
    }


def segments_after_switch(listing, old_history: TimelineHistory, scope: Scope) -> list[tuple[int, int]]:
    """The old timeline's segments from one before the switch point's to its newest archived one."""
    return segments_on_path(listing, old_history, oldest_segno=max(segment_of(scope.switch_lsn) - 1, 0))


# ---- per table -----------------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


# The settings every row's text is read and compared under: row_to_json's output of a timestamptz,
# an interval, a float or a bytea depends on them, and the guards compare that text.
OUTPUT_SETTINGS = {
    "timezone": "UTC",
    "datestyle": "ISO, MDY",
    "intervalstyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}
CONFLICTS = "pg_temp.rewind_salvage_conflicts"


def settings_sql(*, local: bool) -> str:
    scope = "set local" if local else "set"
    return "".join(f"{scope} {name} = {quote_literal(value)};\n" for name, value in OUTPUT_SETTINGS.items())


@dataclass
class TableSalvage:
    """One table's salvage: its shape, its counts, and the SQL statements for one row each. Every
    statement only acts on a row still as the rewind left it (or, for an insert, on a key still
    free); anything else is recorded in the conflicts table the script prints at its end."""

    table: str  # schema.name, as people read it (file names, the summary)
    database: str
    key: list[str]
    columns: list[str]
    sequences: dict[str, str] = field(default_factory=dict)  # column -> its sequence (serial, identity)
    relation: str = ""  # the quoted "schema"."name" SQL uses (either part may hold a dot, a quote, a pipe)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    deleted_for_review: int = 0
    before_bad: int = 0  # rows a bad transaction changed or deleted after a legitimate one wrote them
    review: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.relation:
            schema, _, name = self.table.partition(".")
            self.relation = qualified(schema, name)

    def _conflict(self, key: str, reason: str) -> str:
        return (
            f"insert into {CONFLICTS} select {quote_literal(self.table)}, {quote_literal(key)}, {quote_literal(reason)} "
            "where not exists (select from applied_);"
        )

    def _key_match(self, row: str, source: str) -> str:
        """The current row (cur_) with the key of `source`, a record populated from the JSON `row`."""
        keys = ", ".join(f"cur_.{quote_ident(k)}" for k in self.key)
        theirs = ", ".join(f"{source}.{quote_ident(k)}" for k in self.key)
        return f"({keys}) = ({theirs})"

    def insert_sql(self, key: str, row: str) -> str:
        columns = ", ".join(map(quote_ident, self.columns))  # generated columns left out: PostgreSQL computes them
        # OVERRIDING SYSTEM VALUE: an identity ALWAYS column takes the salvaged row's value.
        # ON CONFLICT DO NOTHING: a row written since the rewind with this key (or any unique value) stays.
        return (
            f"with applied_ as (insert into {self.relation} ({columns}) overriding system value select {columns} "
            f"from json_populate_record(null::{self.relation}, {quote_literal(row)}) on conflict do nothing returning 1) "
            + self._conflict(key, "a row with this key or another unique value was written after the rewind: not inserted")
        )

    def update_sql(self, key: str, was: str, row: str) -> str | None:
        others = [c for c in self.columns if c not in self.key]
        if not others:
            return None
        assignments = ", ".join(f"{quote_ident(c)} = new_.{quote_ident(c)}" for c in others)
        return (
            f"with applied_ as (update {self.relation} cur_ set {assignments} "
            f"from json_populate_record(null::{self.relation}, {quote_literal(row)}) new_ "
            f"where {self._key_match(row, 'new_')} and row_to_json(cur_)::text = {quote_literal(was)} returning 1) "
            + self._conflict(key, "the row is not as the rewind left it (changed or deleted since): not updated")
        )

    def delete_sql(self, key: str, was: str) -> str:
        return (
            f"with applied_ as (delete from {self.relation} cur_ using json_populate_record(null::{self.relation}, {quote_literal(was)}) was_ "
            f"where {self._key_match(was, 'was_')} and row_to_json(cur_)::text = {quote_literal(was)} returning 1) "
            + self._conflict(key, "the row is not as the rewind left it (changed since): not deleted")
        )

    def sequence_sql(self) -> list[str]:
        """Move each column's sequence past the values inserted (never backwards)."""
        target = self.relation
        return [
            f"select 'sequence ' || {quote_literal(seq)} || ' at ' || setval({quote_literal(seq)}, "
            f"greatest((select max({quote_ident(col)}) from {target}), (select last_value from {seq})));"
            for col, seq in sorted(self.sequences.items())
        ]

    def notes(self, *, legit_deletes: bool, bad_deletes: bool, bad_updates: bool) -> None:
        if self.deleted_for_review:
            self.review.append(
                f"{self.deleted_for_review} row(s) deleted after the target by legitimate and bad transactions alike: which is which "
                "cannot be told; listed in the .deleted-review.csv, not in the SQL"
            )
        if self.updated and bad_updates:
            self.review.append(
                f"{self.updated} updated row(s): bad transactions also updated this table; a row they changed and a legitimate one "
                "changed later carries both changes: check the values"
            )
        if self.before_bad:
            self.review.append(
                f"{self.before_bad} row(s) a legitimate transaction wrote and a bad one changed or deleted later: their version before "
                "the bad transaction is salvaged; listed in the .review.csv"
            )


def _key_exprs(key: list[str]) -> str:
    return f"json_build_array({', '.join(quote_ident(k) for k in key)})::text"


def _xids(xids: Iterable[int]) -> str:
    return "'{" + (",".join(str(x) for x in sorted(xids)) or "0") + "}'::bigint[]"


def rows_query(relation: str, key: list[str], *, written_by: Iterable[int] | None = None) -> str:
    """Each row (or each a listed transaction wrote last): key as a JSON array, tab, the row as
    JSON; in the key's byte order (collation "C"), which Python's string order is too."""
    where = f" where salvage_row_.xmin::text::bigint = any({_xids(written_by)})" if written_by is not None else ""
    return (
        settings_sql(local=False) + f"select k || E'\\t' || v from (select {_key_exprs(key)} as k, row_to_json(salvage_row_)::text as v "
        f'from {relation} salvage_row_{where}) s order by k collate "C"'
    )


def end_rows_query(relation: str, key: list[str], *, legit: Iterable[int], bad: Iterable[int]) -> str:
    """Every row's key, tab, who wrote it last (L legitimate, B bad, - before the target), tab,
    the row as JSON when a legitimate transaction wrote it (else empty); in the key's byte order."""
    xmin = "salvage_row_.xmin::text::bigint"
    legit_list = _xids(legit)
    return (
        settings_sql(local=False) + f"select k || E'\\t' || c || E'\\t' || v from (select {_key_exprs(key)} as k, "
        f"case when {xmin} = any({legit_list}) then 'L' when {xmin} = any({_xids(bad)}) then 'B' else '-' end as c, "
        f"case when {xmin} = any({legit_list}) then row_to_json(salvage_row_)::text else '' end as v "
        f'from {relation} salvage_row_) s order by k collate "C"'
    )


def read_rows(path: Path, fields: int) -> Iterator[tuple[str, ...]]:
    """A file of rows_query / end_rows_query, one row per line. Only a newline ends a line: JSON
    escapes control characters but not U+2028, U+2029 or U+0085, which str.splitlines() (and a
    file read with universal newlines) would break a value at. Refuses rows out of key order."""
    previous = None
    with open(path, encoding="utf-8", newline="\n") as rows:
        for line in rows:
            parts = tuple(line.rstrip("\n").split("\t", fields - 1))
            if len(parts) != fields:
                continue
            if previous is not None and parts[0] <= previous:
                raise SalvageError(f"{path.name}: rows not in key order at {parts[0][:80]}: the comparison would be wrong")
            previous = parts[0]
            yield parts


def outer_join(*streams: Iterator[tuple[str, ...]]) -> Iterator[tuple[str, list[tuple[str, ...] | None]]]:
    """Streams sorted by key (unique in each) merged: each key once, with its row in each stream or None."""
    heads = [next(stream, None) for stream in streams]
    while any(head is not None for head in heads):
        key = min(head[0] for head in heads if head is not None)
        found: list[tuple[str, ...] | None] = []
        for i, head in enumerate(heads):
            if head is not None and head[0] == key:
                found.append(head)
                heads[i] = next(streams[i], None)
            else:
                found.append(None)
        yield key, found


# One JSON array per table (oid, schema, name, primary key columns, columns): names may hold any
# character, a separator included.
TABLE_INFO_SQL = (
    "select json_build_array(c.oid, pg_relation_filenode(c.oid), n.nspname, c.relname, "
    "coalesce((select json_agg(a.attname order by array_position(i.indkey::int2[], a.attnum)) from pg_index i "
    "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[]) where i.indrelid = c.oid and i.indisprimary), '[]'), "
    "(select json_agg(a.attname order by a.attnum) from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 "
    "and not a.attisdropped and a.attgenerated = '')) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
    "where c.relkind in ('r', 'p') and pg_relation_filenode(c.oid) = any('{{{nodes}}}'::oid[])"
)


def sequences_of(query: Callable[[str, str], str], relation: str, database: str) -> dict[str, str]:
    """The sequences behind the table's serial and identity columns."""
    table = quote_literal(relation)
    rows = query(
        f"select json_build_array(a.attname, pg_get_serial_sequence({table}, a.attname)) from pg_attribute a "
        f"where a.attrelid = {table}::regclass and a.attnum > 0 and not a.attisdropped "
        f"and pg_get_serial_sequence({table}, a.attname) is not null",
        database,
    )
    return dict(json.loads(row) for row in rows.split("\n") if row)


@dataclass
class SalvageResult:
    scope: Scope
    backup: str
    discarded: list[int]
    salvaged_xids: list[int]
    bad_xids: list[int]
    tables: list[TableSalvage]
    skipped: list[str]
    directory: Path | None = None
    files: list[str] = field(default_factory=list)
    kept_dir: Path | None = None  # the old timeline's latest state read from the pre-rewind directory clone mode kept

    def summary(self) -> str:
        latest = (
            f"the old timeline's latest state from the pre-rewind directory {self.kept_dir} (read as a standby, unchanged)"
            if self.kept_dir
            else "the old timeline's latest state replayed there"
        )
        lines = [
            f"salvage of {self.scope.describe()}: {len(self.discarded)} transaction(s) discarded by the rewind, "
            f"{len(self.salvaged_xids)} salvaged, bad (excluded): {', '.join(map(str, self.bad_xids)) or 'none'}",
            f"the state at the target from backup {self.backup} in a scratch cluster (archiving off); {latest}",
        ]
        for t in self.tables:
            lines.append(f"  {t.table}: {t.inserted} inserted, {t.updated} updated, {t.deleted} deleted")
            lines += [f"    REVIEW: {note}" for note in t.review]
        lines += [f"  not salvaged: {s}" for s in self.skipped]
        unknown_bad = sorted(set(self.bad_xids) - set(self.discarded))
        if unknown_bad:
            lines.append(f"  note: bad xid(s) {', '.join(map(str, unknown_bad))} were not discarded by the rewind (not after the target)")
        if self.directory:
            lines.append(f"files in {self.directory}: {', '.join(self.files)}")
            for name in self.files:
                if name.endswith(".sql"):
                    lines.append(
                        f"review {name}, then apply it to the rewound cluster: psql -d <database> -v ON_ERROR_STOP=1 -f {self.directory / name}"
                        " (it changes only rows still as the rewind left them and prints a REVIEW line for each one it left alone)"
                    )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "old_timeline": self.scope.old_timeline,
            "switch_lsn": lsn_text(self.scope.switch_lsn),
            "backup": self.backup,
            "discarded_xids": self.discarded,
            "salvaged_xids": self.salvaged_xids,
            "bad_xids": self.bad_xids,
            "directory": str(self.directory) if self.directory else None,
            "kept_dir": str(self.kept_dir) if self.kept_dir else None,
            "files": self.files,
            "sql": [str(self.directory / f) for f in self.files if f.endswith(".sql")] if self.directory else [],
            "tables": {
                t.table: {"inserted": t.inserted, "updated": t.updated, "deleted": t.deleted, "review": t.review} for t in self.tables
            },
            "skipped": self.skipped,
        }


# ---- the files -----------------------------------------------------------------------------------
def sql_file(database: str) -> str:
    return f"salvage.{database}.sql"


class SalvageFiles:
    """The CSV per table and change and one SQL script per database, written row by row as the
    comparison finds them (never all rows in memory)."""

    def __init__(self, directory: Path, scope: Scope, salvaged_xids: list[int], bad_xids: list[int]):
        self.directory = directory
        self.scope = scope
        self.salvaged_xids = salvaged_xids
        self.bad_xids = bad_xids
        self.files: list[str] = []
        self._csv: dict[str, tuple] = {}
        self._sql: dict[str, object] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def sql(self, database: str, line: str) -> None:
        if database not in self._sql:
            out = open(self.directory / sql_file(database), "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            out.write(
                "\n".join(
                    [
                        f"-- Rewind salvage: {self.scope.describe()}, database {database}",
                        f"-- legitimate transactions re-applied: {', '.join(map(str, self.salvaged_xids)) or 'none'}",
                        f"-- excluded as bad: {', '.join(map(str, self.bad_xids)) or 'none'}",
                        f"-- review before applying; against the rewound cluster: psql -d {database} -v ON_ERROR_STOP=1 -f {sql_file(database)}",
                        "-- every statement changes a row only if it is still as the rewind left it (an insert only into a free key);",
                        "-- the rows it left alone are printed at the end as REVIEW lines",
                        "begin;",
                        settings_sql(local=True).rstrip("\n"),
                        f"create temporary table {CONFLICTS.split('.')[1]} (table_name text, key text, reason text) on commit drop;",
                        "",
                    ]
                )
            )
            self._sql[database] = out
            self.files.append(sql_file(database))
        self._sql[database].write(line + "\n")

    def csv_row(self, table: TableSalvage, change: str, values: list[str]) -> None:
        import csv

        name = f"{table.table}.{change}.csv"
        if name not in self._csv:
            out = open(self.directory / name, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            writer = csv.writer(out)
            columns = table.key if change.startswith("deleted") or change == "review" else table.columns
            writer.writerow([*columns, "reason"] if change == "review" else columns)
            self._csv[name] = (out, writer)
            self.files.append(name)
        self._csv[name][1].writerow(values)

    def row_csv(self, table: TableSalvage, change: str, row: str, reason: str | None = None) -> None:
        values = json.loads(row, parse_float=decimal.Decimal)
        columns = table.key if change.startswith("deleted") or change == "review" else table.columns
        cells = [_csv_value(values.get(c)) for c in columns]
        self.csv_row(table, change, [*cells, reason] if reason is not None else cells)

    def close(self) -> list[str]:
        for out in self._sql.values():
            out.write(
                f"select 'REVIEW ' || table_name || ' key ' || key || ': ' || reason from {CONFLICTS} order by table_name, key;\ncommit;\n"
            )
            out.close()
        for out, _writer in self._csv.values():
            out.close()
        return sorted(self.files)


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def salvage_table(
    table: TableSalvage,
    files: SalvageFiles,
    *,
    at_target: Path | None,
    before_bad: list[Path],
    at_end: Path,
    legit_deletes: bool,
    bad_deletes: bool,
    bad_updates: bool,
) -> TableSalvage:
    """One pass over the table's sorted row files: the state at the target, the legitimate rows
    just before each bad transaction, and the old timeline's end. Per key:
    - written last by a legitimate transaction: salvaged (inserted when the key was free at the
      target, else updated from the target's version);
    - written last by a bad one, or gone, after a legitimate one wrote it: its last legitimate
      version is salvaged, marked REVIEW;
    - at the target and gone at the end: deleted when only legitimate transactions deleted rows of
      the table; listed for review when bad ones did too; left alone when only bad ones did."""
    streams = [
        read_rows(at_target, 2) if at_target else iter(()),
        *(read_rows(path, 2) for path in before_bad),
        read_rows(at_end, 3),
    ]
    for key, found in outer_join(*streams):
        target, earlier, end = found[0], found[1:-1], found[-1]
        was = target[1] if target else None
        row, reason = None, None
        if end is not None and end[1] == "L":
            row = end[2]
        elif end is None or end[1] == "B":
            legit_before = [f for f in earlier if f is not None]
            if legit_before:
                row = legit_before[-1][1]
                reason = (
                    "written by a legitimate transaction, then " + ("changed" if end else "deleted") + " by a bad one: its version before"
                )
        if row is not None:
            if was is None:
                files.sql(table.database, table.insert_sql(key, row))
                files.row_csv(table, "inserted", row)
                table.inserted += 1
            elif row != was and (statement := table.update_sql(key, was, row)):
                files.sql(table.database, statement)
                files.row_csv(table, "updated", row)
                table.updated += 1
            if reason:
                files.row_csv(table, "review", row, reason)
                table.before_bad += 1
        elif end is None and was is not None and legit_deletes:
            if bad_deletes:
                files.row_csv(table, "deleted-review", was)
                table.deleted_for_review += 1
            else:
                files.sql(table.database, table.delete_sql(key, was))
                files.row_csv(table, "deleted", was)
                table.deleted += 1
    if table.inserted or table.updated:
        for line in table.sequence_sql():
            files.sql(table.database, line)
    table.notes(legit_deletes=legit_deletes, bad_deletes=bad_deletes, bad_updates=bad_updates)
    for note in table.review:
        files.sql(table.database, f"-- REVIEW {table.table}: {note}")
    return table


# ---- the whole salvage ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """A point of the old timeline the scratch cluster pauses at (`lsn` None: its end, promoted)."""

    name: str
    lsn: int | None


def stages_of(scope: Scope, transactions: dict[int, Transaction], bad: Iterable[int]) -> list[Stage]:
    """The target (the switch point), just before each discarded bad transaction's commit (what
    legitimate transactions wrote before it changed it), and the old timeline's end."""
    stages = [Stage("the state at the target", scope.switch_lsn)]
    for xact in sorted((transactions[x] for x in set(bad) if x in transactions), key=lambda x: lsn_value(x.lsn)):
        if lsn_value(xact.lsn) > (stages[-1].lsn or 0):
            stages.append(Stage(f"just before bad transaction {xact.xid}", lsn_value(xact.lsn)))
    return [*stages, Stage("the old timeline's latest state", None)]


def backup_before(info, history: TimelineHistory, lsn: int):
    """The newest valid backup on the history that ended at or before `lsn` (a restore can stop there)."""
    usable = [
        b for b in info.backups if not b.error and history.contains(b.timeline, lsn_value(b.lsn.stop)) and lsn_value(b.lsn.stop) <= lsn
    ]
    if not usable:
        raise SalvageError(
            f"no backup of timeline {history.timeline}'s history before {lsn_text(lsn)} is left in the repository: "
            "the pre-rewind history was expired (README, Retention)"
        )
    return max(usable, key=lambda b: lsn_value(b.lsn.stop))


def table_info(query: Callable[[str], str], nodes: Iterable[int]) -> dict[int, tuple]:
    """oid -> (relation file, schema, name, key, columns) of the user tables stored in these relation files now."""
    listed = ",".join(map(str, sorted(nodes))) or "0"
    info = {}
    for row in filter(None, query(TABLE_INFO_SQL.format(nodes=listed)).split("\n")):
        oid, node, schema, name, key, columns = json.loads(row)
        info[int(oid)] = (int(node), schema, name, key, columns)
    return info


@dataclass
class StageRows:
    """What the scratch's stops wrote: each table's sorted rows per stop, and its shape at the end."""

    files: dict[tuple[int, int, int], Path] = field(default_factory=dict)  # (stop, database oid, table oid) -> sorted rows
    tables: dict[tuple[int, int], tuple] = field(
        default_factory=dict
    )  # (database oid, table oid) -> (database, schema, name, key, columns)
    sequences: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)
    nodes_of: dict[tuple[int, int], set[int]] = field(default_factory=dict)  # its relation files at each stop (TRUNCATE gives a new one)
    skipped: list[str] = field(default_factory=list)
    end_from: Path | None = None  # the kept directory the old timeline's end was read from, if it was


def read_stages(
    scratch,
    stages: list[Stage],
    touched: dict[int, set[int]],
    *,
    legit_ids: set[int],
    bad_ids: set[int],
    rows_dir: Path,
    timeout_s: float,
    log: Callable[[str], None],
    kept=None,
) -> StageRows:
    """Start the restored scratch paused at each stage in turn (recovery settings on its command
    line only) and write each touched table's rows there to a sorted file. `kept` (a
    KeptDirectoryReader): the old timeline's end is read there instead of replayed to."""
    read = StageRows()
    for number, stage in enumerate(stages):
        at_end = stage.lsn is None
        if number:
            scratch.stop()
        source = None
        if at_end and kept is not None:
            log(f"reading {stage.name} from the pre-rewind directory {kept.data_dir}")
            try:
                kept.start()
                source, read.end_from = kept, kept.data_dir
            except RewindError as exc:  # replayed from the repository instead: the same state, slower
                log(f"the pre-rewind directory could not be read ({exc}): replaying {stage.name} from the repository")
                kept.stop()
        if source is None:
            if number:
                log(f"replaying on to {stage.name}" + (f" ({lsn_text(stage.lsn)})" if stage.lsn else ""))
            recovery = (
                {"recovery_target_lsn": "''", "recovery_target_action": "promote"}
                if at_end
                else {"recovery_target_lsn": lsn_text(stage.lsn), "recovery_target_inclusive": "off", "recovery_target_action": "pause"}
            )
            scratch.start(wait=False, recovery=recovery)
            (scratch.wait_until_promoted if at_end else scratch.wait_until_paused)(timeout_s=timeout_s, log=log)
            source = scratch
        databases = {
            int(oid): name  # JSON prints an oid as a string
            for oid, name in map(
                json.loads,
                filter(None, source.psql("select json_build_array(oid, datname) from pg_database where datallowconn").split("\n")),
            )
        }
        for db_oid, nodes in sorted(touched.items()):
            database = databases.get(db_oid)
            if database is None:
                if at_end:
                    read.skipped.append(f"database oid {db_oid} (not in the old timeline's latest state)")
                continue

            def query(sql: str, database: str = database, source=source) -> str:
                return source.psql(sql, database=database, timeout=600)

            found = table_info(query, nodes)
            log(
                f"{stage.name}: {', '.join(f'{v[1]}.{v[2]}' for v in found.values()) or 'none'} of the tables written after the target in {database}"
            )
            for table_oid, (node, schema, name, key, columns) in sorted(found.items()):
                read.nodes_of.setdefault((db_oid, table_oid), set()).add(node)
                if not key:
                    if at_end:
                        read.skipped.append(f"{schema}.{name} (no primary key)")
                    continue
                relation = qualified(schema, name)
                if number == 0:
                    sql = rows_query(relation, key)
                elif not at_end:
                    sql = rows_query(relation, key, written_by=legit_ids)
                else:
                    sql = end_rows_query(relation, key, legit=legit_ids, bad=bad_ids)
                    read.tables[(db_oid, table_oid)] = (database, schema, name, key, columns)
                    read.sequences[(db_oid, table_oid)] = sequences_of(
                        lambda sql, database, source=source: source.psql(sql, database=database, timeout=600), relation, database
                    )
                path = rows_dir / f"{number}.{db_oid}.{table_oid}"
                source.copy_out(sql, path, database=database)
                read.files[(number, db_oid, table_oid)] = path
    scratch.stop()
    if kept is not None:
        kept.stop()
    return read


def salvage(
    pgbackrest,
    runner,
    *,
    directory: Path,
    bad_xids: Iterable[int] = (),
    old_timeline: int | None = None,
    from_repository: bool = False,
    log: Callable[[str], None] = print,
) -> SalvageResult:
    """Read-only against production: reads the repository, restores into `directory`/pg (removed
    at the end, however it ends) and writes the files into `directory`. One scratch restore
    pauses at the target (the switch point), just before each bad transaction, and runs to the
    old timeline's end, each table's rows written to sorted files at each stop; one pass over
    those files per table makes the salvage, in bounded memory whatever the tables' size.

    When a clone-mode rewind kept the old timeline's directory (rewind.pitr.clone), its end is
    read there (a standby start on a private socket, writing nothing) instead of replayed to:
    exact to the last transaction committed before the cutover, and no replay of the WAL after
    the last bad transaction. `from_repository`: replay to the end all the same."""
    import os
    import pwd

    from rewind.pitr.clone import kept_directory_of, kept_directory_problem
    from rewind.postgres import live_timeline
    from rewind.scratch import KeptDirectoryReader, ScratchCluster, free_port
    from rewind.wal import ScanStats, read_archive, read_history, waldump_archive

    cluster = pgbackrest.cluster
    bad = sorted(set(bad_xids))
    history = read_history(pgbackrest, live_timeline(runner, cluster))
    scope = scope_of(history, old_timeline, history_of=lambda timeline: read_history(pgbackrest, timeline))
    log(f"salvaging {scope.describe()}")
    info = pgbackrest.info()
    archive = info.current_archive()
    if archive is None:
        raise SalvageError(f"stanza {info.name!r} has no archived WAL")
    listing = read_archive(pgbackrest, archive.id)
    old_history = read_history(pgbackrest, scope.old_timeline)
    backup = backup_before(info, old_history, scope.switch_lsn)
    segments = segments_after_switch(listing, old_history, scope)
    transactions = discarded_transactions(waldump_archive(pgbackrest, segments, stats=ScanStats(), log=log), scope)
    log(f"{len(transactions)} transaction(s) committed on timeline {scope.old_timeline} after the switch point")
    legit = [x for xid, x in transactions.items() if xid not in bad]
    bad_x = [x for xid, x in transactions.items() if xid in bad]
    touched: dict[int, set[int]] = {}
    for x in transactions.values():
        for relation in x.rows:
            if relation.node >= 16384:
                touched.setdefault(relation.database, set()).add(relation.node)
    stages = stages_of(scope, transactions, bad)

    kept = None
    kept_dir = None if from_repository else kept_directory_of(cluster, scope.old_timeline)
    if kept_dir is not None:
        port = free_port()
        # its run files beside the scratch's; a socket path too long there gets a short directory
        # of its own (rewind.restore.socket_dir_for), as every sibling's does
        kept = KeptDirectoryReader(pgbackrest, directory / "kept", port=port, data_dir=kept_dir, log=log)
        problem = kept_directory_problem(cluster, runner, kept_dir, timeline=scope.old_timeline)
        if problem:
            log(f"not reading the pre-rewind directory ({problem}): the old timeline's end is replayed from the repository")
            kept = None
        else:
            log(f"the old timeline's end: the pre-rewind directory {kept_dir}, kept by the clone-mode rewind (read, never changed)")
    scratch = ScratchCluster(pgbackrest, directory / "pg", port=free_port())
    try:
        first = stages[0]
        log(f"restoring backup {backup.label} into {scratch.data_dir} (archiving off), paused at {first.name} ({lsn_text(first.lsn)})")
        scratch.restore(
            backup_set=backup.label,
            restore_type="lsn",
            target=lsn_text(first.lsn),
            target_exclusive=True,
            target_timeline=str(scope.old_timeline),
            target_action="pause",
        )
        rows_dir = directory / "pg" / "rows"
        rows_dir.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwnam(cluster.postgres.os_user)
        os.chown(rows_dir, user.pw_uid, user.pw_gid)  # psql writes there as the OS user
        read = read_stages(
            scratch,
            stages,
            touched,
            legit_ids={i for x in legit for i in (x.xid, *x.subxacts)},
            bad_ids={i for x in bad_x for i in (x.xid, *x.subxacts)},
            rows_dir=rows_dir,
            timeout_s=cluster.rehearsal.recovery_timeout_s,
            log=log,
            kept=kept,
        )
        out = SalvageFiles(directory, scope, sorted(x.xid for x in legit), bad)
        result_tables = []
        end = len(stages) - 1
        try:
            for (db_oid, table_oid), (database, schema, name, key, columns) in sorted(read.tables.items()):
                nodes = read.nodes_of[(db_oid, table_oid)]
                mine = {r for x in transactions.values() for r in x.rows if r.database == db_oid and r.node in nodes}
                table = TableSalvage(
                    f"{schema}.{name}", database, key, columns, read.sequences[(db_oid, table_oid)], relation=qualified(schema, name)
                )
                log(f"comparing {table.table}")
                result_tables.append(
                    salvage_table(
                        table,
                        out,
                        at_target=read.files.get((0, db_oid, table_oid)),
                        before_bad=[read.files[(n, db_oid, table_oid)] for n in range(1, end) if (n, db_oid, table_oid) in read.files],
                        at_end=read.files[(end, db_oid, table_oid)],
                        legit_deletes=any(x.rows.get(r, {}).get("deleted", 0) for x in legit for r in mine),
                        bad_deletes=any(x.rows.get(r, {}).get("deleted", 0) for x in bad_x for r in mine),
                        bad_updates=any(x.rows.get(r, {}).get("updated", 0) for x in bad_x for r in mine),
                    )
                )
        finally:
            written = out.close()
    finally:
        try:
            scratch.remove()
        finally:
            if kept is not None:
                kept.remove()  # stopped, its socket directory gone; the kept directory stays as it was
    result = SalvageResult(
        scope,
        backup.label,
        sorted(transactions),
        sorted(x.xid for x in legit),
        bad,
        result_tables,
        read.skipped,
        directory,
        kept_dir=read.end_from,
    )
    result.files = written
    return result
