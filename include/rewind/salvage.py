"""Salvage what a rewind discarded: the legitimate transactions committed after the target.

A rewind ends the old timeline at its switch point (the new timeline's history names it). Every
transaction whose commit record lies on the old timeline at or after that point was discarded.
Salvage, read-only against production:

1. reads the old timeline's archived WAL from the switch point on (rewind.wal, rewind.finder):
   the discarded transactions, their subtransactions and the tables they wrote;
2. restores the old timeline's latest state (the newest backup on its history, then all its
   archived WAL) into a scratch cluster with archiving off, on its own socket;
3. per table with a primary key: rows of the scratch whose xmin is a discarded transaction not
   marked bad are the rows inserted or updated after the target (inserted when the key is not in
   the rewound cluster, updated when it is); keys present in the rewound cluster and gone from the
   scratch were deleted after the target;
4. writes CSV per table and change, and one SQL file (upserts and deletes in one transaction) for
   the DBA to review and apply. Nothing is applied.

Limits (said in the summary when they apply): a row changed by a bad transaction and later by a
legitimate one carries both changes (listed for review); a deletion cannot be told apart by who
made it when a bad transaction also deleted rows of that table (listed for review, not in the
SQL); the state at the target is read from the rewound cluster, so rows it changed since the
rewind count as changed there; tables without a primary key are not salvaged (generated columns
are left to PostgreSQL to compute, identity columns keep the salvaged values); rows of a discarded transaction that began before the WAL
read (one segment before the switch) may leave its table unlisted.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rewind.errors import RewindError
from rewind.finder import Relation, Transaction, parse_records
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


def scope_of(history: TimelineHistory, old_timeline: int | None) -> Scope:
    """The discarded part of `old_timeline` (default: the one the current timeline branched from)."""
    ancestors = [tli for tli, _end in history.entries[:-1]]
    if not ancestors:
        raise SalvageError(f"timeline {history.timeline} has no ancestor: this cluster was never rewound, there is nothing to salvage")
    old = old_timeline or ancestors[-1]
    switch = history.switch_lsn(old)
    if old not in ancestors or switch is None:
        raise SalvageError(
            f"param timeline: {old} is not an ancestor of the current timeline {history.timeline} (ancestors: {', '.join(map(str, ancestors))})"
        )
    return Scope(old, switch, history.timeline)


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


def newest_backup_on(info, history: TimelineHistory):
    """The newest valid backup that can reach the end of this history (a restore of its latest state)."""
    usable = [b for b in info.backups if not b.error and history.contains(b.timeline, lsn_value(b.lsn.stop))]
    if not usable:
        raise SalvageError(
            f"no backup on timeline {history.timeline}'s history is left in the repository: the pre-rewind history was expired (README, Retention)"
        )
    return max(usable, key=lambda b: lsn_value(b.lsn.stop))


# ---- per table -----------------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


@dataclass(frozen=True)
class Row:
    """One row as the clusters print it: its key (a JSON array) and a JSON object of its columns
    (all of them, or the key's only for a deletion), kept as PostgreSQL's own text."""

    key: str
    record: str

    def values(self) -> dict:
        return json.loads(self.record, parse_float=decimal.Decimal)


@dataclass
class TableSalvage:
    table: str  # schema.name, as people read it (file names, the summary)
    database: str
    key: list[str]
    columns: list[str]
    sequences: dict[str, str] = field(default_factory=dict)  # column -> its sequence (serial, identity)
    relation: str = ""  # the quoted "schema"."name" SQL uses (either part may hold a dot, a quote, a pipe)
    inserted: list[Row] = field(default_factory=list)
    updated: list[Row] = field(default_factory=list)
    deleted: list[Row] = field(default_factory=list)
    deleted_for_review: list[Row] = field(default_factory=list)
    review: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.relation:
            schema, _, name = self.table.partition(".")
            self.relation = qualified(schema, name)

    def upsert_sql(self, row: Row) -> str:
        target = self.relation
        keys = ", ".join(map(quote_ident, self.key))
        others = [c for c in self.columns if c not in self.key]
        action = "do update set " + ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in others) if others else "do nothing"
        columns = ", ".join(map(quote_ident, self.columns))  # generated columns left out: PostgreSQL computes them
        # OVERRIDING SYSTEM VALUE: an identity ALWAYS column takes the salvaged row's value
        return (
            f"insert into {target} ({columns}) overriding system value select {columns} "
            f"from json_populate_record(null::{target}, {quote_literal(row.record)}) on conflict ({keys}) {action};"
        )

    def sequence_sql(self) -> list[str]:
        """Move each column's sequence past the values inserted (never backwards)."""
        target = self.relation
        return [
            f"select setval({quote_literal(seq)}, greatest((select max({quote_ident(col)}) from {target}), (select last_value from {seq})));"
            for col, seq in sorted(self.sequences.items())
        ]

    def delete_sql(self, row: Row) -> str:
        target = self.relation
        keys = ", ".join(map(quote_ident, self.key))
        return (
            f"delete from {target} where ({keys}) = (select {keys} from json_populate_record(null::{target}, {quote_literal(row.record)}));"
        )


def classify(
    table: TableSalvage,
    changed_rows: list[Row],
    target_keys: dict[str, Row],
    latest_keys: set[str],
    *,
    legit_deletes: bool,
    bad_deletes: bool,
    bad_updates: bool,
) -> TableSalvage:
    """Sort the scratch's changed rows into inserted/updated by whether the key existed at the
    target; deletions are keys at the target gone from the latest state."""
    for row in changed_rows:
        (table.updated if row.key in target_keys else table.inserted).append(row)
    gone = [target_keys[k] for k in sorted(set(target_keys) - latest_keys)]
    if gone and legit_deletes and not bad_deletes:
        table.deleted = gone
    elif gone and legit_deletes and bad_deletes:
        table.deleted_for_review = gone
        table.review.append(
            f"{len(gone)} row(s) deleted after the target by legitimate and bad transactions alike: which is which cannot be told; "
            "listed in the .deleted-review.csv, not in the SQL"
        )
    if table.updated and bad_updates:
        table.review.append(
            f"{len(table.updated)} updated row(s): bad transactions also updated this table; a row they changed and a legitimate one changed "
            "later carries both changes: check the values"
        )
    return table


def _key_exprs(key: list[str]) -> tuple[str, str]:
    cols = [quote_ident(k) for k in key]
    array = f"json_build_array({', '.join(cols)})::text"
    obj = "json_build_object(" + ", ".join(f"{quote_literal(k)}, {c}" for k, c in zip(key, cols, strict=True)) + ")::text"
    return array, obj


def key_query(relation: str, key: list[str]) -> str:
    """Each row's key, as a JSON array and as a JSON object, tab-separated, one row per line."""
    array, obj = _key_exprs(key)
    return f"select {array} || E'\\t' || {obj} from {relation}"


def changed_rows_query(relation: str, key: list[str], xids: Iterable[int]) -> str:
    """Rows whose current version a listed transaction wrote: key array, tab, the whole row as JSON.
    The list can be long (thousands of transactions): the SQL goes on psql's standard input."""
    listed = ",".join(str(x) for x in sorted(xids)) or "0"
    array, _obj = _key_exprs(key)
    return (
        f"select {array} || E'\\t' || row_to_json(salvage_row_)::text from {relation} salvage_row_"
        f" where salvage_row_.xmin::text::bigint = any('{{{listed}}}'::bigint[])"
    )


def parse_rows(text: str) -> list[Row]:
    """One row per line. Only a newline ends a line: JSON escapes control characters but not
    U+2028, U+2029 or U+0085, which str.splitlines() would break a row's value at."""
    return [Row(*line.split("\t", 1)) for line in text.split("\n") if line]


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

    def summary(self) -> str:
        lines = [
            f"salvage of {self.scope.describe()}: {len(self.discarded)} transaction(s) discarded by the rewind, "
            f"{len(self.salvaged_xids)} salvaged, bad (excluded): {', '.join(map(str, self.bad_xids)) or 'none'}",
            f"old timeline's latest state restored from backup {self.backup} into a scratch cluster (archiving off)",
        ]
        for t in self.tables:
            lines.append(f"  {t.table}: {len(t.inserted)} inserted, {len(t.updated)} updated, {len(t.deleted)} deleted")
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
            "files": self.files,
            "sql": [str(self.directory / f) for f in self.files if f.endswith(".sql")] if self.directory else [],
            "tables": {
                t.table: {"inserted": len(t.inserted), "updated": len(t.updated), "deleted": len(t.deleted), "review": t.review}
                for t in self.tables
            },
            "skipped": self.skipped,
        }


def compare(
    transactions: dict[int, Transaction],
    bad_xids: Iterable[int],
    *,
    scratch_query: Callable[[str, str], str],
    live_query: Callable[[str, str], str],
) -> tuple[list[TableSalvage], list[str], list[int]]:
    """Per table the discarded transactions wrote: rows and keys from the scratch (old timeline's
    latest) and the live rewound cluster (the target's state). Both queries are read-only."""
    bad = set(bad_xids)
    legit = [x for xid, x in transactions.items() if xid not in bad]
    bad_x = [x for xid, x in transactions.items() if xid in bad]
    legit_ids = {i for x in legit for i in (x.xid, *x.subxacts)}

    def kinds(xacts: list[Transaction], relation: Relation, kind: str) -> bool:
        return any(x.rows.get(relation, {}).get(kind, 0) for x in xacts)

    databases = {
        str(oid): name
        for oid, name in map(
            json.loads,
            filter(
                None, scratch_query("select json_build_array(oid, datname) from pg_database where datallowconn", "postgres").split("\n")
            ),
        )
    }
    touched: dict[int, set[Relation]] = {}
    for x in transactions.values():
        for relation in x.rows:
            if relation.node >= 16384:
                touched.setdefault(relation.database, set()).add(relation)
    tables, skipped = [], []
    for db_oid, relations in sorted(touched.items()):
        database = databases.get(str(db_oid))
        if database is None:
            skipped.append(f"database oid {db_oid} (not in the old timeline's latest state)")
            continue
        by_node = {r.node: r for r in relations}
        rows = scratch_query(TABLE_INFO_SQL.format(nodes=",".join(map(str, sorted(by_node)))), database).split("\n")
        info = {}
        for row in filter(None, rows):
            _oid, node, schema, name, key, columns = json.loads(row)
            info[int(node)] = (schema, name, key, columns)
        for node, relation in sorted(by_node.items()):
            if node not in info:
                continue  # not a user table now (toast, a dropped table)
            schema, name, key, columns = info[node]
            if not key:
                skipped.append(f"{schema}.{name} (no primary key)")
                continue
            target = qualified(schema, name)
            table = TableSalvage(f"{schema}.{name}", database, key, columns, sequences_of(scratch_query, target, database), relation=target)
            changed = parse_rows(scratch_query(changed_rows_query(target, key, legit_ids), database))
            target_keys = {row.key: row for row in parse_rows(live_query(key_query(target, key), database))}
            latest_keys = {row.key for row in parse_rows(scratch_query(key_query(target, key), database))}
            classify(
                table,
                changed,
                target_keys,
                latest_keys,
                legit_deletes=kinds(legit, relation, "deleted"),
                bad_deletes=kinds(bad_x, relation, "deleted"),
                bad_updates=kinds(bad_x, relation, "updated"),
            )
            tables.append(table)
    return tables, skipped, sorted(x.xid for x in legit)


# ---- the files -----------------------------------------------------------------------------------
def sql_file(database: str) -> str:
    return f"salvage.{database}.sql"


def write_files(result: SalvageResult, directory: Path) -> list[str]:
    """<schema.table>.<inserted|updated|deleted|deleted-review>.csv and, per database, salvage.<database>.sql
    (one transaction: upserts by primary key, then deletions)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    by_database: dict[str, list[TableSalvage]] = {}
    for t in result.tables:
        by_database.setdefault(t.database, []).append(t)
        for change in ("inserted", "updated", "deleted", "deleted_for_review"):
            if getattr(t, change):
                name = f"{t.table}.{change.replace('_for_', '-')}.csv"
                (directory / name).write_text(rows_csv(t, change))
                files.append(name)
    for database, tables in sorted(by_database.items()):
        sql = [
            f"-- Rewind salvage: {result.scope.describe()}, database {database}",
            f"-- legitimate transactions re-applied: {', '.join(map(str, result.salvaged_xids)) or 'none'}",
            f"-- excluded as bad: {', '.join(map(str, result.bad_xids)) or 'none'}",
            f"-- review before applying; against the rewound cluster: psql -d {database} -v ON_ERROR_STOP=1 -f {sql_file(database)}",
            "begin;",
        ]
        for t in tables:
            sql.append(f"-- {t.table}: {len(t.inserted)} inserted, {len(t.updated)} updated, {len(t.deleted)} deleted")
            sql += [t.upsert_sql(row) for row in (*t.inserted, *t.updated)]
            sql += [t.delete_sql(row) for row in t.deleted]
            sql += t.sequence_sql() if t.inserted or t.updated else []
            sql += [f"-- REVIEW {t.table}: {note}" for note in t.review]
        sql.append("commit;")
        (directory / sql_file(database)).write_text("\n".join(sql) + "\n")
        files.append(sql_file(database))
    result.directory, result.files = directory, files
    return files


def rows_csv(table: TableSalvage, change: str) -> str:
    """CSV of a change's rows (the key columns for deletions), header first."""
    import csv
    import io

    columns = table.key if change.startswith("deleted") else table.columns
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in getattr(table, change):
        values = row.values()
        writer.writerow([_csv_value(values.get(c)) for c in columns])
    return out.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


# ---- the whole salvage ---------------------------------------------------------------------------
def free_port() -> int:
    """A port number for the scratch cluster's socket file (it listens on no TCP address)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_promoted(scratch, *, timeout_s: float = 600) -> None:
    """pg_ctl -w returns once read-only connections are accepted: the replay of the old timeline's
    WAL must have ended (and the scratch promoted) before its rows are read."""
    import time

    deadline = time.monotonic() + timeout_s
    while scratch.psql("select pg_is_in_recovery()") != "f":
        if time.monotonic() > deadline:
            raise SalvageError(f"the scratch cluster in {scratch.directory} still replays WAL after {timeout_s:.0f} s")
        time.sleep(0.5)


def salvage(
    pgbackrest,
    runner,
    *,
    directory: Path,
    bad_xids: Iterable[int] = (),
    old_timeline: int | None = None,
    log: Callable[[str], None] = print,
) -> SalvageResult:
    """Read-only against production: reads the repository and the live (rewound) cluster, restores
    into `directory`/pg (removed at the end, however it ends), writes the files into `directory`."""
    from rewind.finder import live_query
    from rewind.postgres import live_timeline
    from rewind.scratch import ScratchCluster
    from rewind.wal import ScanStats, read_archive, read_history, waldump_archive

    cluster = pgbackrest.cluster
    bad = sorted(set(bad_xids))
    history = read_history(pgbackrest, live_timeline(runner, cluster))
    scope = scope_of(history, old_timeline)
    log(f"salvaging {scope.describe()}")
    info = pgbackrest.info()
    archive = info.current_archive()
    if archive is None:
        raise SalvageError(f"stanza {info.name!r} has no archived WAL")
    listing = read_archive(pgbackrest, archive.id)
    old_history = read_history(pgbackrest, scope.old_timeline)
    backup = newest_backup_on(info, old_history)
    segments = segments_after_switch(listing, old_history, scope)
    dumps = [dump for batch in waldump_archive(pgbackrest, segments, stats=ScanStats(), log=log) for dump in batch]
    transactions = discarded_transactions(dumps, scope)
    log(f"{len(transactions)} transaction(s) committed on timeline {scope.old_timeline} after the switch point: {sorted(transactions)}")

    scratch = ScratchCluster(pgbackrest, directory / "pg", port=free_port())
    try:
        log(f"restoring timeline {scope.old_timeline}'s latest state from backup {backup.label} into {scratch.data_dir} (archiving off)")
        scratch.restore(backup_set=backup.label, restore_type="default", target_timeline=str(scope.old_timeline))
        scratch.start()
        wait_until_promoted(scratch)
        tables, skipped, salvaged = compare(
            transactions,
            bad,
            scratch_query=lambda sql, database: scratch.psql(sql, database=database, timeout=1800),
            live_query=live_query(runner, cluster),
        )
    finally:
        scratch.remove()
    result = SalvageResult(scope, backup.label, sorted(transactions), salvaged, bad, tables, skipped, directory)
    write_files(result, directory)
    return result
