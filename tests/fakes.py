"""Fakes at Rewind's boundaries, for the unit tier: ServiceNow without HTTP, pgBackRest without a
repository, and the hooks and task instance the Airflow pieces ask for. The code under test is
always the real one; only what it talks to is replaced. Imports no Airflow."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from devstack.servicenow_sim import PolicyError, SimState
from rewind.pgbackrest.commands import PgBackRestCommands
from rewind.pgbackrest.errors import FileMissingError
from rewind.pgbackrest.info import StanzaInfo, parse_info
from rewind.runner import CommandResult
from rewind.servicenow import CHANGE_TABLE, ServiceNowClient, ServiceNowError, ServiceNowNotFound
from tests.factories import backup_json, info_json


class FakeServiceNow:
    """The ServiceNowClient methods Rewind calls, on the simulator's in-memory tables: every value a
    string, numbers CHG0010001 and INC0010001, work notes in sys_journal_field, closing a change
    needs close_code and close_notes. `fail(method, exc)` makes every later call of `method` raise."""

    def __init__(self) -> None:
        self.state = SimState()
        self.failures: dict[str, Exception] = {}

    def fail(self, method: str, exc: Exception) -> None:
        self.failures[method] = exc

    def _check(self, method: str) -> None:
        if method in self.failures:
            raise self.failures[method]

    def create(self, table: str, fields: dict) -> dict:
        self._check("create")
        return self.state.create(table, fields)

    def get(self, table: str, sys_id: str) -> dict:
        self._check("get")
        record = self.state.records[table].get(sys_id)
        if record is None:
            raise ServiceNowNotFound(f"ServiceNow GET /api/now/table/{table}/{sys_id}: 404 No Record found")
        return dict(record)

    def query(self, table: str, query: str, *, fields: list[str] | None = None, limit: int = 100) -> list[dict]:
        self._check("query")
        records = self.state.query(table, query)[:limit]
        return [{k: r.get(k, "") for k in fields} for r in records] if fields else records

    def get_by_number(self, table: str, number: str) -> dict:
        records = self.query(table, f"number={number}", limit=1)
        if not records:
            raise ServiceNowNotFound(f"ServiceNow: no {table} with number {number}")
        return records[0]

    def update(self, table: str, sys_id: str, fields: dict) -> dict:
        self._check("update")
        if sys_id not in self.state.records[table]:
            raise ServiceNowNotFound(f"ServiceNow PATCH /api/now/table/{table}/{sys_id}: 404 No Record found")
        try:
            return self.state.update(table, sys_id, fields)
        except PolicyError as exc:
            raise ServiceNowError(f"ServiceNow PATCH /api/now/table/{table}/{sys_id}: HTTP 403: Data Policy Exception: {exc}") from None

    def add_work_note(self, table: str, sys_id: str, note: str) -> dict:
        return self.update(table, sys_id, {"work_notes": note})

    def work_notes(self, table: str, sys_id: str) -> list[str]:
        records = self.state.query("sys_journal_field", f"element_id={sys_id}^element=work_notes^name={table}")
        return [r["value"] for r in sorted(records, key=lambda r: r["sys_created_on"])]

    # ---- Change Management API (the simulator's change models) ------------------------------------------
    def _sim_change(self, method: str, call):
        self._check(method)
        try:
            return call()
        except LookupError:  # KeyError, and the unknown standard change template
            raise ServiceNowNotFound(f"ServiceNow {method}: 404 No Record found") from None
        except PolicyError as exc:
            raise ServiceNowError(f"ServiceNow {method}: HTTP 400: {exc}") from None

    def create_change(self, model: str, fields: dict) -> dict:
        return self._sim_change("create_change", lambda: self.state.create_change(model, fields))

    def create_standard_change(self, template_sys_id: str, fields: dict) -> dict:
        return self._sim_change("create_change", lambda: self.state.create_change("standard", fields, template=template_sys_id))

    def get_change(self, sys_id: str) -> dict:
        return self._sim_change("get_change", lambda: dict(self.state.records[CHANGE_TABLE][sys_id]))

    def find_changes(self, query: str, *, limit: int = 100) -> list[dict]:
        self._check("find_changes")
        return self.state.query(CHANGE_TABLE, query)[:limit]

    def get_change_by_number(self, number: str) -> dict:
        found = self.find_changes(f"number={number}", limit=1)
        if not found:
            raise ServiceNowNotFound(f"ServiceNow: no change request with number {number}")
        return found[0]

    def update_change(self, sys_id: str, fields: dict) -> dict:
        return self._sim_change("update_change", lambda: self.state.update_change(sys_id, fields))

    def add_change_note(self, sys_id: str, note: str) -> dict:
        return self.update_change(sys_id, {"work_notes": note})

    def next_states(self, sys_id: str) -> set[int]:
        return set(self._sim_change("next_states", lambda: self.state.next_states(sys_id)))

    def move_change(self, sys_id: str, to, fields: dict | None = None) -> dict:
        return ServiceNowClient.move_change(self, sys_id, to, fields)  # the real client's logic over the simulator's model

    def create_change_task(self, change_sys_id: str, fields: dict) -> dict:
        return self._sim_change("create_change_task", lambda: self.state.create_change_task(change_sys_id, fields))

    def change_tasks(self, change_sys_id: str) -> list[dict]:
        return self._sim_change("change_tasks", lambda: self.state.change_tasks(change_sys_id))

    def get_change_task(self, change_sys_id: str, task_sys_id: str) -> dict:
        def get() -> dict:
            task = self.state.records["change_task"][task_sys_id]
            if task["change_request"] != change_sys_id:
                raise KeyError(task_sys_id)
            return dict(task)

        return self._sim_change("get_change_task", get)

    def update_change_task(self, change_sys_id: str, task_sys_id: str, fields: dict) -> dict:
        return self._sim_change("update_change_task", lambda: self.state.update_change_task(change_sys_id, task_sys_id, fields))

    # ---- for tests -------------------------------------------------------------------------------
    def change(self, **fields) -> dict:
        """A change as a requester raises it in ServiceNow (Authorize, approval requested) with `fields` over it."""
        return self.state.create_change_for_test(**{"short_description": "PITR", "state": -3, "approval": "requested", **fields})

    def records(self, table: str) -> list[dict]:
        return [dict(r) for r in self.state.records[table].values()]


class FakeServiceNowHook:
    """Stands in for ServiceNowHook(servicenow_conn_id=...): get_conn() is the shared fake client."""

    client: FakeServiceNow
    conn_ids: list[str]

    def __init__(self, *, servicenow_conn_id: str = "servicenow_default") -> None:
        type(self).conn_ids.append(servicenow_conn_id)

    def get_conn(self) -> FakeServiceNow:
        return type(self).client


def servicenow_hook_class(client: FakeServiceNow) -> type[FakeServiceNowHook]:
    """A hook class bound to `client`, to monkeypatch in place of ServiceNowHook in a module."""
    return type("FakeServiceNowHook", (FakeServiceNowHook,), {"client": client, "conn_ids": []})


def retention_keeps(backups: list[dict], retention_full: int) -> set[str]:
    """pgBackRest count retention: the newest `retention_full` full backups and what depends on them."""
    fulls = sorted(b["label"] for b in backups if b["type"] == "full")
    kept = set(fulls[-retention_full:])
    return {b["label"] for b in backups if b["label"].split("_")[0] in kept}


class FakePgBackRest:
    """The PgBackRest client of one cluster, answering from JSON as pgBackRest prints it.

    `backups` is the stanza's backup list (`backup_json` entries) and changes as the fake backs up and
    expires; `listing` is what repo-ls answers; `histories` maps a history file name to its text;
    backups of type `promote_to_full` come out as full (pgBackRest does that without a prior full).
    `expire` applies count retention (`retention_keeps`) with the configured or the given count.
    """

    def __init__(
        self,
        cluster,
        backups: list[dict] | None = None,
        *,
        listing: dict | None = None,
        histories: dict[str, str] | None = None,
        lock_held: bool = False,
        promote_to_full: tuple[str, ...] = (),
    ):
        self.cluster = cluster
        self.commands = PgBackRestCommands(cluster)
        self.backups = copy.deepcopy(backups or [])
        self.listing = listing or {}
        self.histories = histories or {}
        self.lock_held = lock_held
        self.promote_to_full = promote_to_full
        self.calls: list = []
        self.clock = 1795545400

    def info(self) -> StanzaInfo:
        return parse_info(json.dumps(info_json(self.backups, stanza=self.cluster.stanza, lock_held=self.lock_held)), self.cluster.stanza)

    def repo_ls(self, path: str) -> dict[str, dict]:
        self.calls.append(("repo-ls", path))
        return self.listing

    def archive_get(self, wal_file: str, destination: str) -> None:
        self.calls.append(("archive-get", wal_file))
        if wal_file not in self.histories:
            raise FileMissingError(f"unable to find {wal_file} in the archive", code=55, command="archive-get")
        Path(destination).write_text(self.histories[wal_file])

    def _retention(self, options: dict) -> int:
        counted = options.get("retention_full_type", "count") == "count" and self.cluster.repo.recovery_window_days is None
        assert counted, "the fake applies count retention only"
        return int(options.get("retention_full", self.cluster.repo.retention_full))

    def run(self, argv: list[str], **_kwargs) -> CommandResult:
        """Only the dry-run expire goes through run(): it prints what the configured retention would remove."""
        self.calls.append(argv)
        assert argv[-1] == "expire" and "--dry-run" in argv, argv
        kept = retention_keeps(self.backups, self._retention({}))
        gone = sorted(b["label"] for b in self.backups if b["label"] not in kept)
        lines = ["2026-11-27 14:54:11.100 P00   INFO: [DRY-RUN] expire command begin 2.55.1: --dry-run --stanza=ledger"]
        for full in sorted({label.split("_")[0] for label in gone}):
            backup_set = [label for label in gone if label.split("_")[0] == full]
            lines.append(
                f"2026-11-27 14:54:11.102 P00   INFO: [DRY-RUN] repo1: expire full backup {'set ' if len(backup_set) > 1 else ''}"
                + ", ".join(backup_set)
            )
        lines += [f"2026-11-27 14:54:11.103 P00   INFO: [DRY-RUN] repo1: remove expired backup {label}" for label in reversed(gone)]
        lines.append("2026-11-27 14:54:11.106 P00   INFO: [DRY-RUN] expire command end: completed successfully (6ms)")
        return CommandResult(argv, 0, "\n".join(lines) + "\n", "", 0.1)

    def expire(self, **options) -> CommandResult:
        self.calls.append(("expire", options))
        kept = retention_keeps(self.backups, self._retention(options))
        self.backups = [b for b in self.backups if b["label"] in kept]
        return CommandResult(["pgbackrest", "expire"], 0, "", "", 0.1)

    def backup(self, backup_type: str, *, annotations: dict[str, str]) -> CommandResult:
        self.calls.append(("backup", backup_type, dict(annotations)))
        self.clock += 3600
        taken = "full" if backup_type in self.promote_to_full or not self.backups else backup_type
        stamp = f"20261127-{len(self.backups):06d}"
        fulls = [b["label"] for b in self.backups if b["type"] == "full"]
        label = f"{stamp}F" if taken == "full" else f"{fulls[-1]}_{stamp}{taken[0].upper()}"
        segno = len(self.backups) + 2
        self.backups.append(
            backup_json(
                label, stop=self.clock, wal_start=f"{1:08X}{0:08X}{segno:08X}", lsn_stop=f"0/{segno:X}000100", annotations=annotations
            )
        )
        return CommandResult(["pgbackrest", "backup"], 0, "", "", 0.1)


@dataclass
class FakePgBackRestHook:
    """What a RewindClusterOperator asks of its PgBackRestHook."""

    cluster: object
    client: FakePgBackRest | None = None
    released: int = 0

    def get_conn(self) -> FakePgBackRest:
        return self.client

    def os_runner(self):
        """Commands as the cluster's OS user: a test replaces what would run them (psql)."""
        return None

    def release(self) -> None:
        self.released += 1

    def terminate(self) -> None:
        pass


@dataclass
class FakeTaskInstance:
    dag_id: str = "rewind_pitr__ledger"
    task_id: str = "restore"
    try_number: int = 1
    run_state: str | None = "running"

    def get_dagrun_state(self, dag_id: str, run_id: str) -> str | None:
        return self.run_state


def stop_soon(simulator) -> None:
    """Stop a loopback simulator without waiting: http.server's shutdown() waits out serve_forever's
    0.5 s poll, which a test need not sit through (its port is never reused: each one gets a free port)."""
    threading.Thread(target=simulator.stop, daemon=True).start()
