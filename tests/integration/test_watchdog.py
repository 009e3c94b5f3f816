"""The watchdog on its own real stack: an S3 outage opens exactly one incident and resolves it when
archiving catches up; a stale backup opens one and a good backup resolves it; metrics reach a
StatsD listener with the documented names."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from devstack.demo import DemoStack
from rewind.servicenow import Auth, ServiceNowClient
from tests.conftest import load_dags, run_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def watched(airflow_db, servicenow):
    """A separate cluster 'watched' (the outage must not disturb other tests), with a full backup."""
    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp")), name="watched")
    saved = dict(os.environ)
    try:
        stack.start()
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_REWIND_PG_WATCHED"] = stack.postgres_connection()
        os.environ.update(stack.worker_env())
        stack.pgbackrest().backup("full", annotations={})
        yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.remove()


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
                value, _, kind = rest.partition("|")
                assert kind == "g", line
                values[name] = float(value)

    yield received
    sock.close()


def sn(servicenow) -> ServiceNowClient:
    return ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))


def incidents(servicenow, problem: str) -> list[dict]:
    return sn(servicenow).query("incident", f"correlation_id=rewind:watched:{problem}")


def new_incidents(servicenow, problem: str, before: list[dict]) -> list[dict]:
    known = {i["sys_id"] for i in before}
    return [i for i in incidents(servicenow, problem) if i["sys_id"] not in known]


def health(stack):
    run = run_once(load_dags("rewind_health.py")["rewind_health__watched"])
    assert run.state == "success", run.state
    return run


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_s3_outage_opens_one_incident_keeps_wal_and_resolves_when_archiving_catches_up(watched, servicenow, statsd_listener):
    health(watched)
    assert incidents(servicenow, "archive_failing") == []
    failed_before = int(watched.psql("select failed_count from pg_stat_archiver"))

    watched.s3.stop_tls()
    # While S3 is down every pgBackRest command retries the refused connection until io-timeout
    # runs out: 1 s instead of the stack's 5 s makes each failing archive-push and `info` 4-5 times
    # shorter (pgBackRest 2.55: 47 s -> 10 s per `info`). Nothing runs with it while S3 is up.
    watched.use_pgbackrest_settings({"io_timeout_s": 1})
    try:
        watched.psql("create table during_outage as select g from generate_series(1, 10000) g")
        segment = watched.psql("select pg_walfile_name(pg_switch_wal())")
        wait_until(lambda: int(watched.psql("select failed_count from pg_stat_archiver")) > failed_before, 120, "archive-push to fail")
        # nothing lost: PostgreSQL keeps the segment and marks it ready for a later attempt
        assert (watched.data_dir / "pg_wal" / segment).exists()
        assert watched.psql(f"select count(*) from pg_ls_archive_statusdir() where name = '{segment}.ready'") == "1"

        health(watched)
        health(watched)
        [incident] = incidents(servicenow, "archive_failing")
        assert incident["state"] == "1" and incident["cmdb_ci"] == "watched"
        # one outage, one incident: the unreadable repository is in its details, not a second page
        open_for_cluster = [i for i in sn(servicenow).query("incident", "cmdb_ci=watched") if i["state"] == "1"]
        assert [i["number"] for i in open_for_cluster] == [incident["number"]]
        notes = sn(servicenow).work_notes("incident", incident["sys_id"])
        assert len([n for n in notes if n.startswith("Still failing")]) == 1
        sent = statsd_listener()
        assert sent["rewind.watched.archive.failed_count"] > failed_before
        assert sent["rewind.watched.archive.ready_segments"] >= 1
    finally:
        watched.use_pgbackrest_settings(None)
        watched.s3.start_tls()

    watched.psql("select pg_switch_wal()")  # wakes the archiver, which retries everything waiting
    wait_until(
        lambda: watched.psql(f"select count(*) from pg_ls_archive_statusdir() where name = '{segment}.ready'") == "0",
        180,
        "archiving to catch up",
    )
    health(watched)
    [incident] = incidents(servicenow, "archive_failing")
    assert incident["state"] == "6" and "WAL archiving ok" in incident["close_notes"]
    assert all(i["state"] == "6" for p in ("stanza_status", "repository") for i in incidents(servicenow, p))
    assert incidents(servicenow, "backup_age") == []  # not judged while the repository was unreadable
    sent = statsd_listener()
    assert 0 <= sent["rewind.watched.backup.age_seconds.full"] < 3600
    assert sent["rewind.watched.stanza.status"] == 0


def test_metrics_export_as_prometheus_and_json(watched, capsys):
    import json

    from rewind.cli import main

    assert main(["--inventory", str(watched.inventory_path), "metrics", "--cluster", "watched"]) == 0
    text = capsys.readouterr().out
    assert 'pgbackrest_backup_since_last_completion_seconds{cluster="watched",stanza="watched",backup_type="full"}' in text
    assert 'pgbackrest_stanza_status{cluster="watched",stanza="watched"} 0' in text
    assert "rewind_archive_failed_count{" in text and "rewind_repo_size_bytes{" in text
    assert main(["--inventory", str(watched.inventory_path), "metrics", "--cluster", "watched", "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)["metrics"]
    assert exported["archive.ready_segments"] == 0 and exported["repo.size_bytes"] > 0


def test_stale_backup_opens_an_incident_and_a_good_backup_resolves_it(watched, servicenow):
    inventory = yaml.safe_load(watched.inventory_path.read_text())
    inventory["clusters"]["watched"]["alerts"] = {"max_backup_age_hours": 0.001}  # 3.6 s
    watched.inventory_path.write_text(yaml.safe_dump(inventory))
    before = incidents(servicenow, "backup_age")
    # until the newest good backup is older than the threshold (stop times are whole seconds)
    newest = watched.pgbackrest().info().latest().stopped_at.timestamp()
    time.sleep(max(0.0, newest + 0.001 * 3600 + 1 - time.time()))
    health(watched)
    [incident] = new_incidents(servicenow, "backup_age", before)
    assert incident["state"] == "1" and "no good backup for" in incident["short_description"]

    watched.pgbackrest().backup("incr", annotations={})
    health(watched)
    [incident] = new_incidents(servicenow, "backup_age", before)
    assert incident["state"] == "6"


def test_verify_passes_then_a_corrupted_backup_file_fails_it_and_alerts(watched, servicenow, statsd_listener, capfd):
    from airflow.utils.state import DagRunState

    dag = load_dags("rewind_verify.py")["rewind_verify__watched"]
    assert run_once(dag).state == DagRunState.SUCCESS
    sent = statsd_listener()
    assert sent["rewind.watched.verify.ok"] == 1 and sent["rewind.watched.check.ok"] == 1
    assert sent["rewind.watched.wal.gaps"] == 0

    s3 = watched.s3.client()
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=watched.s3.bucket, Prefix="rewind/watched/backup/watched/")
        for obj in page.get("Contents", [])
        if "/bundle/" in obj["Key"] or "/pg_data/" in obj["Key"]
    ]
    assert keys, "no backup file found to corrupt"
    victim = keys[0]
    size = s3.head_object(Bucket=watched.s3.bucket, Key=victim)["ContentLength"]
    s3.put_object(Bucket=watched.s3.bucket, Key=victim, Body=os.urandom(max(size, 64)))

    capfd.readouterr()
    assert run_once(dag).state == DagRunState.FAILED
    assert "pgbackrest verify failed" in capfd.readouterr().out
    [incident] = [i for i in incidents(servicenow, "verify") if i["state"] == "1"]
    assert "verify failed" in incident["short_description"]
    assert statsd_listener()["rewind.watched.verify.ok"] == 0
