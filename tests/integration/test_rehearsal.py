"""The monthly restore rehearsal on the real stack (PostgreSQL + pgBackRest + S3 over TLS + the
ServiceNow simulator + StatsD), on one cluster of its own, in this order:

- bad input (a target the form cannot mean), a standard change template ServiceNow has retired,
  and a standard change someone cancelled are refused before anything is restored;
- a rehearsal proves the newest backup: the standard change and its change task are closed with
  the evidence, the copy holds exactly production's rows at the restore point, the metrics reach
  StatsD, the backup is annotated last_verified, the incident the retired template opened is
  resolved, the copy is gone, production's postmaster is the same and nothing of the copy's
  timeline reached the repository;
- last, because it damages production: a backup of the cluster whose primary key index page was
  damaged (its checksum re-stamped, so pg_checksums and `pgbackrest verify` both pass) is caught by
  pg_amcheck --heapallindexed, rehearsed to a time target: incident, change task closed
  unsuccessful, change closed unsuccessful, no annotation, the copy removed all the same.
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.demo import DemoStack
from rewind.postgres import postmaster_pid
from rewind.wal import read_archive
from tests.conftest import load_dags, run_once
from tests.integration.helpers import client, fresh_ledger, states, write

pytestmark = pytest.mark.integration

TEMPLATE = uuid.uuid4().hex
REASON = "monthly proof that the ledger's backups restore"


@pytest.fixture(scope="module")
def rehearsed(airflow_db, servicenow):
    """Cluster 'rehearsed' with a ledger, a table in a tablespace, a full backup, and rows written
    after it (replayed from WAL), among them a table created in the tablespace after the backup."""
    servicenow.state.templates[TEMPLATE] = {"short_description": "Monthly restore rehearsal (standard change)", "category": "database"}
    saved = dict(os.environ)
    stack = DemoStack(
        Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp")),
        name="rehearsed",
        rehearsal={"change_template": TEMPLATE, "tables": ["public.ledger_entry", "public.ts_rows"]},
    )
    try:
        stack.start()
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_REWIND_PG_REHEARSED"] = stack.postgres_connection()
        os.environ.update(stack.worker_env())
        fresh_ledger(stack)
        write(stack, 1, 500)
        tablespace = stack.base / "tablespace"
        tablespace.mkdir()
        owner = pwd.getpwnam(stack.os_user)
        os.chown(tablespace, owner.pw_uid, owner.pw_gid)
        stack.psql(f"create tablespace rehearsal_ts location '{tablespace}'")
        stack.psql("create table ts_rows tablespace rehearsal_ts as select g as id from generate_series(1, 10) g")
        stack.pgbackrest().backup("full", annotations={"airflow_run_id": "rehearsal-base"})
        write(stack, 501, 100)
        # a file in production's tablespace the backup does not have: a restore that wrote there
        # (instead of under the scratch directory) with --delta would remove it
        stack.psql("create table ts_after tablespace rehearsal_ts as select g as id from generate_series(1, 7) g")
        yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.remove()


def rehearse(stack: DemoStack, **conf):
    os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
    dag = load_dags("rewind_rehearsal.py")[f"rewind_rehearsal__{stack.name}"]
    return run_once(dag, run_conf={"target": "", "reason": REASON, **conf})


def change_and_task(servicenow, run) -> tuple[dict | None, dict | None]:
    changes = client(servicenow).query("change_request", f"correlation_id=rewind:{run.dag_id}:{run.run_id}")
    if not changes:
        return None, None
    tasks = client(servicenow).query("change_task", f"change_request={changes[0]['sys_id']}")
    return changes[0], (tasks[0] if tasks else None)


def open_incidents(servicenow, cluster: str) -> list[dict]:
    return client(servicenow).query("incident", f"correlation_id=rewind:{cluster}:rehearsal^state!=6^state!=7")


def timelines_in_archive(stack: DemoStack) -> set[int]:
    pgbackrest = stack.pgbackrest()
    listing = read_archive(pgbackrest, pgbackrest.info().current_archive().id)
    return set(listing.histories) | {tli for by_tli in listing.segments.values() for tli in by_tli}


@pytest.fixture
def statsd_listener(monkeypatch):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    monkeypatch.setenv("REWIND_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("REWIND_STATSD_PORT", str(sock.getsockname()[1]))

    def received() -> dict[str, float]:
        values = {}
        while True:
            try:
                data = sock.recv(65535).decode()
            except TimeoutError:
                return values
            for line in data.splitlines():
                name, _, rest = line.partition(":")
                values[name] = float(rest.partition("|")[0])

    yield received
    sock.close()


def test_bad_input_a_retired_template_and_a_cancelled_change_are_refused_before_anything(rehearsed, servicenow, capfd):
    stack = rehearsed
    pid = postmaster_pid(stack.cluster)
    scratch = Path(stack.cluster.rehearsal_path)

    run = rehearse(stack, target="yesterday")
    assert states(run)["validate"] == "failed" and states(run)["open_change"] == "upstream_failed", states(run)
    assert "param target: 'yesterday' is neither latest, an age nor a time" in capfd.readouterr().out
    assert change_and_task(servicenow, run) == (None, None) and not open_incidents(servicenow, "rehearsed")  # a typo: no incident

    # A standard change is pre-approved by its template: "rejected" is a template the CAB retired.
    servicenow.state.templates[TEMPLATE]["active"] = "false"
    try:
        run = rehearse(stack)
    finally:
        servicenow.state.templates[TEMPLATE]["active"] = "true"
    assert states(run)["open_change"] == "failed" and states(run)["mark_production"] == "upstream_failed", states(run)
    assert f"rehearsal.change_template {TEMPLATE}: ServiceNow refused a change from it" in capfd.readouterr().out
    assert change_and_task(servicenow, run) == (None, None)
    # every scheduled rehearsal would fail the same way until someone acts: an incident
    [incident] = open_incidents(servicenow, "rehearsed")
    assert "restore rehearsal failed at open_change" in incident["short_description"]

    def someone_cancels(table: str, record: dict) -> None:
        if table == "change_task":  # the last thing open_change does
            servicenow.state.update_change(record["change_request"], {"state": "4", "work_notes": "not this month"})

    servicenow.state.after_create.append(someone_cancels)
    try:
        run = rehearse(stack)
    finally:
        servicenow.state.after_create.remove(someone_cancels)
    assert states(run)["mark_production"] == "failed" and states(run)["restore_scratch"] == "upstream_failed", states(run)
    assert states(run)["remove_scratch"] == "success"
    change, task = change_and_task(servicenow, run)
    assert (change["type"], change["state"]) == ("standard", "4")  # left as the person left it
    assert (task["state"], task["close_code"]) == ("3", "unsuccessful")
    assert "mark_production refused" in task["close_notes"] and "nothing was done by this step" in task["close_notes"]
    assert open_incidents(servicenow, "rehearsed") == [incident]  # a person's decision: no new incident
    assert postmaster_pid(stack.cluster) == pid and not scratch.exists()


def test_a_rehearsal_proves_the_newest_backup_and_leaves_production_as_it_was(rehearsed, servicenow, statsd_listener):
    stack = rehearsed
    pid = postmaster_pid(stack.cluster)
    timelines = timelines_in_archive(stack)
    run = rehearse(stack)
    assert run.state == "success", states(run)

    change, task = change_and_task(servicenow, run)
    assert (change["type"], change["std_change_producer_version"], change["state"], change["close_code"]) == (
        "standard",
        TEMPLATE,
        "3",
        "successful",
    )
    assert (task["state"], task["close_code"]) == ("3", "successful")
    label = stack.pgbackrest().info().find_annotated("airflow_run_id", "rehearsal-base").label
    for evidence in (change["close_notes"], task["close_notes"]):
        assert "Rewind restore rehearsal of rehearsed (stanza rehearsed): PASSED" in evidence
        assert f"Backup proved: {label} (full" in evidence and "--archive-mode=off" in evidence
        assert "restore point rewind-rehearsal-" in evidence and "RTO: " in evidence and "RPO at that moment: " in evidence
        # production's 600 rows at the restore point, the last 100 of them only in WAL after the backup
        assert (
            "row counts: ok: equal to production at the restore point (production/copy): public.ledger_entry 600/600, public.ts_rows 10/10"
            in evidence
        )
        for check in ("pg_amcheck: ok", "pg_dump postgres: ok", "pg_checksums: ok: every page checksum is valid", "archive untouched: ok"):
            assert f"Check {check}" in evidence, check

    annotations = stack.pgbackrest().info().get(label).annotations
    assert annotations["rewind_verified_by"] == change["number"] and annotations["rewind_last_verified"].startswith("20")
    metrics = statsd_listener()
    assert metrics["rewind.rehearsed.rehearsal.ok"] == 1
    assert 0 < metrics["rewind.rehearsed.rehearsal.rto_seconds"] < metrics["rewind.rehearsed.rehearsal.duration_seconds"]
    assert 0 <= metrics["rewind.rehearsed.rehearsal.rpo_seconds"] < 300

    assert not open_incidents(servicenow, "rehearsed")  # the retired template's incident: resolved by a rehearsal that passed
    assert not Path(stack.cluster.rehearsal_path).exists()  # the copy is removed
    assert postmaster_pid(stack.cluster) == pid  # production never stopped
    assert timelines_in_archive(stack) == timelines  # the promoted copy's timeline never reached the repository
    assert stack.psql("select count(*) from ledger_entry") == "600"
    # the copy's tablespace was under the scratch directory: production's is as it was
    assert stack.psql("select (select count(*) from ts_rows) || ' ' || (select count(*) from ts_after)") == "10 7"


# ---- a damaged index that only pg_amcheck --heapallindexed sees ---------------------------------------
BLCKSZ = 8192
BTP_LEAF = 1


def corrupt_index(path: Path) -> tuple[int, int]:
    """In the first B-tree leaf page of a bigint index, give the 11th tuple its left neighbour's key:
    the order stays valid (duplicates may repeat), but the heap row of the old key is no longer in
    the index. Returns (old key, new key)."""
    data = bytearray(path.read_bytes())
    for block in range(1, len(data) // BLCKSZ):
        page = memoryview(data)[block * BLCKSZ : (block + 1) * BLCKSZ]
        lower, _upper, special = struct.unpack_from("<HHH", page, 12)
        _prev, right, _level, flags = struct.unpack_from("<IIIH", page, special)
        if not flags & BTP_LEAF:
            continue
        offsets = [struct.unpack_from("<I", page, 24 + 4 * i)[0] & 0x7FFF for i in range((lower - 24) // 4)]
        first = 0 if right == 0 else 1  # a page with a right sibling starts with its high key
        target, left = offsets[first + 10], offsets[first + 9]
        old, new = struct.unpack_from("<q", page, target + 8)[0], struct.unpack_from("<q", page, left + 8)[0]
        struct.pack_into("<q", page, target + 8, new)  # the key follows the 8-byte tuple header
        path.write_bytes(data)
        return old, new
    raise AssertionError(f"no B-tree leaf page in {path}")


@pytest.fixture
def corrupted(rehearsed):
    """The cluster's ledger primary key index damaged on disk with valid checksums, then a full
    backup of it, the only one kept (so verify reads only it). Production is damaged: this runs last."""
    stack = rehearsed
    write(stack, 1001, 1000)
    index = stack.data_dir / stack.psql("select pg_relation_filepath('ledger_entry_pkey')")
    stack.psql("checkpoint")
    stack.stop_postgres()
    checksums = [str(Path(stack.cluster.postgres.bin_dir) / "pg_checksums"), "-D", str(stack.data_dir)]
    stack.runner().run([*checksums, "--disable"], timeout=120, log_stdout=False)
    old, _new = corrupt_index(index)
    stack.runner().run([*checksums, "--enable"], timeout=120, log_stdout=False)  # every page checksum valid again
    stack.start_postgres()
    assert stack.psql(f"select count(*) from ledger_entry where id + 0 = {old}") == "1"  # the heap still has the row
    index_scan = f"set enable_seqscan = off; select count(*) from ledger_entry where id = {old}"
    assert stack.psql(index_scan) == "0"  # the index no longer finds it
    stack.pgbackrest().backup("full", annotations={"airflow_run_id": "corrupt-base"})
    stack.pgbackrest().expire(retention_full=1, retention_full_type="count")  # verify reads only the damaged one
    return stack


def test_a_corrupted_backup_that_verify_passes_is_caught(corrupted, servicenow, capfd):
    stack = corrupted
    rows = int(stack.psql("select count(*) from ledger_entry"))
    moment = stack.psql("select to_char(now() at time zone 'utc', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    write(stack, 10_001, 50)  # committed after the target: the copy stops before it
    with ThreadPoolExecutor(1) as pool:  # pgbackrest verify takes as long as the rehearsal here: side by side
        verified = pool.submit(stack.pgbackrest().verify)
        run = rehearse(stack, target=moment)
        verified.result(timeout=600)  # verify passes: the repository holds exactly what was backed up
    assert states(run)["check_scratch"] == "failed", states(run)
    assert states(run)["annotate_backup"] == "upstream_failed" and states(run)["remove_scratch"] == "success", states(run)
    assert "lacks matching index tuple within index" in capfd.readouterr().out

    change, task = change_and_task(servicenow, run)
    assert (task["state"], task["close_code"], change["state"], change["close_code"]) == ("3", "unsuccessful", "3", "unsuccessful")
    label = stack.pgbackrest().info().find_annotated("airflow_run_id", "corrupt-base").label
    for evidence in (task["close_notes"], change["close_notes"]):
        # with what the run had proved and measured before the check failed
        assert "Rewind restore rehearsal of rehearsed (stanza rehearsed): FAILED at check_scratch" in evidence
        assert f"Target: {moment[:19]}" in evidence and f"Backup proved: {label} (full" in evidence and "RTO: " in evidence
        assert "Check pg_amcheck: FAILED" in evidence
        assert "Check pg_checksums: ok" in evidence  # the re-stamped checksums pass: only amcheck sees the damage
        assert f"Rows on the copy: public.ledger_entry {rows}" in evidence  # the time target, not the 50 rows after it
    [incident] = open_incidents(servicenow, "rehearsed")
    assert "restore rehearsal failed at check_scratch" in incident["short_description"]
    assert "pg_amcheck" in incident["description"] and f"change {change['number']} closed unsuccessful" in incident["description"]
    assert "rewind_last_verified" not in stack.pgbackrest().info().get(label).annotations  # not proved
    assert not Path(stack.cluster.rehearsal_path).exists()
