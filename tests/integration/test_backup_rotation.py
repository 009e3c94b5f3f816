"""The backup rotation DAGs against the real stack: PostgreSQL 15, pgBackRest, S3 over TLS."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from devstack.net import free_port
from rewind.backup import BackupLockHeldError, take_backup
from rewind.pgbackrest.errors import LockAcquireError
from rewind.scratch import ScratchCluster
from tests.conftest import load_dags, quick_dag_test_loop

pytestmark = pytest.mark.integration

SNAPSHOT_SQL = (
    "select count(*) || ' ' || coalesce(md5(string_agg(id || ':' || amount || ':' || status, ',' order by id)), '-') from ledger_entry"
)


def write_batch(stack, first: int, rows: int) -> str:
    stack.psql(
        f"insert into ledger_entry (id, amount, status) select g, g * 1.25, 'posted' from generate_series({first}, {first + rows - 1}) g"
    )
    return stack.psql(SNAPSHOT_SQL)


def run_dag(dag, **kwargs):
    from airflow.utils.state import DagRunState

    with quick_dag_test_loop():
        run = dag.test(**kwargs)
    assert run.state == DagRunState.SUCCESS, f"{dag.dag_id} ended {run.state}"
    return run


@pytest.fixture(scope="module")
def rotation(demo_stack, airflow_db):
    """Full, diff and incr DAG runs with a batch of ledger rows written before each."""
    demo_stack.psql("drop table if exists ledger_entry")
    demo_stack.psql("create table ledger_entry (id bigint primary key, amount numeric(12,2), status text)")
    dags = load_dags()
    snapshots, runs = {}, {}
    for number, backup_type in enumerate(("full", "diff", "incr")):
        snapshots[backup_type] = write_batch(demo_stack, first=number * 1000 + 1, rows=1000)
        runs[backup_type] = run_dag(dags[f"rewind_backup_{backup_type}__demo"])
    return snapshots, runs


def test_three_backups_exist_with_types_references_and_annotations(demo_stack, rotation):
    _snapshots, runs = rotation
    info = demo_stack.pgbackrest().info()
    by_run = {t: info.find_annotated("airflow_run_id", runs[t].run_id) for t in runs}
    full, diff, incr = by_run["full"], by_run["diff"], by_run["incr"]
    assert (full.type, diff.type, incr.type) == ("full", "diff", "incr")
    assert diff.reference == [full.label] and diff.prior == full.label
    assert incr.reference == [full.label, diff.label] and incr.prior == diff.label
    for backup_type, backup in by_run.items():
        assert backup.annotations["airflow_dag_id"] == f"rewind_backup_{backup_type}__demo"
        assert backup.annotations["airflow_try"] == "1"
        assert not backup.error


def test_each_backup_published_an_asset_event_with_label_type_lsn_and_size(demo_stack, rotation):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    _snapshots, runs = rotation
    info = demo_stack.pgbackrest().info()
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "rewind_backup__demo")
            .all()
        )
        extras = {event.source_run_id: event.extra for event in events}
    for backup_type, run in runs.items():
        extra = extras[run.run_id]
        backup = info.get(extra["label"])
        assert backup is not None and backup.type == backup_type == extra["type"]
        assert extra["stop_lsn"] == backup.lsn.stop
        assert extra["size_bytes"] == backup.info.size > 0
        assert extra["repo_size_bytes"] == backup.info.repository.size


def test_restoring_the_latest_backup_gives_back_the_data(demo_stack, rotation):
    snapshots, runs = rotation
    info = demo_stack.pgbackrest().info()
    incr = info.find_annotated("airflow_run_id", runs["incr"].run_id)
    directory = Path(tempfile.mkdtemp(prefix="rewind-scratch-", dir="/tmp"))
    directory.chmod(0o755)  # the postgres user must traverse it
    # as long as a salvage's under a long cluster name and state path: too long for a socket path
    # (107 bytes) in the scratch's own directory, so it gets a short one (PostgreSQL fails to start otherwise)
    long_dir = directory / "salvage-of-a-cluster-named-at-length-ledger-eu-west-primary-01" / "manual__2026-12-04T02_13_30.000000_00_00"
    scratch = ScratchCluster(demo_stack.pgbackrest(), long_dir / "pg", port=free_port())
    assert len(str(long_dir / "pg" / ".s.PGSQL.65535")) > 107 and scratch.socket_dir != long_dir / "pg"
    try:
        scratch.restore(backup_set=incr.label, restore_type="immediate")
        scratch.start()
        assert scratch.psql(SNAPSHOT_SQL) == snapshots["incr"]
        assert snapshots["incr"].startswith("3000 ")
        # The scratch restore never archives into the production repository.
        assert scratch.psql("show archive_mode") == "off"
    finally:
        scratch.remove()
        shutil.rmtree(directory, ignore_errors=True)
    assert not scratch.socket_dir.exists()


def test_a_retry_of_the_same_run_does_not_take_a_second_backup(demo_stack, rotation):
    _snapshots, runs = rotation
    pgbackrest = demo_stack.pgbackrest()
    before = len(pgbackrest.info().backup)
    annotations = {"airflow_run_id": runs["incr"].run_id, "airflow_dag_id": "rewind_backup_incr__demo"}
    record = take_backup(pgbackrest, "incr", annotations=annotations, timeline=timeline(demo_stack), log=lambda _m: None)
    assert record.reused is True
    assert len(pgbackrest.info().backup) == before


def timeline(stack) -> int:
    return int(stack.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)


def test_full_and_incr_runs_with_the_same_logical_date_each_take_their_own_backup(demo_stack, rotation):
    """Scheduled runs of the full, diff and incr DAGs get the same run id at 02:00
    (`scheduled__<logical date>`; dag.test's `manual__<logical date>` collides the same way). The
    incr run must not "reuse" the full run's backup: each DAG takes its own backup of its own type."""
    import datetime as dt

    dags = load_dags()
    logical_date = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    runs = {t: run_dag(dags[f"rewind_backup_{t}__demo"], logical_date=logical_date, run_after=logical_date) for t in ("full", "incr")}
    assert runs["full"].run_id == runs["incr"].run_id  # the collision is real
    info = demo_stack.pgbackrest().info()
    taken = {
        t: [
            b
            for b in info.backups
            if b.annotations.get("airflow_run_id") == runs[t].run_id and b.annotations.get("airflow_dag_id") == f"rewind_backup_{t}__demo"
        ]
        for t in runs
    }
    assert [b.type for b in taken["full"]] == ["full"]
    assert [b.type for b in taken["incr"]] == ["incr"]
    assert taken["incr"][0].prior == taken["full"][0].label


@contextlib.contextmanager
def hold_backup_lock(cluster):
    """Hold the stanza's backup lock as another pgBackRest process would: a flock on a lock file
    owned by the cluster's OS user, holding {"execId", "pid"}. pgBackRest 2.45 names the file
    <stanza>-backup.lock; newer releases add the repo key (<stanza>-backup-1.lock)."""
    user = pwd.getpwnam(cluster.postgres.os_user)
    lock_dir = Path(cluster.pgbackrest.lock_path)
    handles = []
    try:
        for name in (f"{cluster.stanza}-backup.lock", f"{cluster.stanza}-backup-1.lock"):
            path = lock_dir / name
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
            os.fchown(fd, user.pw_uid, user.pw_gid)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"execId": "test-holder", "pid": os.getpid()}).encode())
            handles.append((fd, path))
        yield
    finally:
        for fd, path in handles:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            path.unlink(missing_ok=True)


def test_a_held_backup_lock_is_waited_for_and_never_raced(demo_stack, rotation):
    pgbackrest = demo_stack.pgbackrest()
    before = len(pgbackrest.info().backup)
    with hold_backup_lock(demo_stack.cluster):
        assert pgbackrest.info().backup_lock_held
        with pytest.raises(BackupLockHeldError, match="a backup is still running .* not starting a second one"):
            take_backup(pgbackrest, "incr", annotations={"airflow_run_id": "other"}, lock_wait_s=2, lock_poll_s=0.5, log=lambda _m: None)
        # pgBackRest's own lock is the second line of defence.
        with pytest.raises(LockAcquireError):
            pgbackrest.backup("incr", annotations={})
    assert len(pgbackrest.info().backup) == before


def test_expire_applies_retention(demo_stack, rotation):
    """With retention_full=1 rendered into a copy of the config, expire removes the older chain."""
    pgbackrest = demo_stack.pgbackrest()
    take_backup(pgbackrest, "full", annotations={"airflow_run_id": "second-full"}, log=lambda _m: None)
    info = pgbackrest.info()
    fulls = [b for b in info.backups if b.type == "full"]
    assert len(fulls) >= 2
    argv = pgbackrest.commands.expire()
    argv.insert(-1, "--repo1-retention-full=1")
    pgbackrest.run(argv)
    remaining = pgbackrest.info()
    assert [b.type for b in remaining.backups] == ["full"]
    assert remaining.backups[0].label == fulls[-1].label
