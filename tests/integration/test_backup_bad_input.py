"""Bad input to the backup DAGs fails in preflight, with one clear line, touching nothing."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from devstack.net import free_port
from rewind.inventory import load_inventory
from rewind.pgbackrest.config import install_config
from rewind.postgres import postmaster_pid
from tests.conftest import load_dags, run_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def variant_inventory(demo_stack, airflow_db):
    """The demo cluster plus variants that are each wrong in one way."""
    base = demo_stack.inventory()["clusters"]["demo"]
    workdir = Path(tempfile.mkdtemp(prefix="rewind-variants-", dir="/tmp"))
    workdir.chmod(0o755)  # the postgres user reads the configs here
    unreadable_ca = workdir / "root-only-ca.pem"
    shutil.copy(demo_stack.s3.ca_file, unreadable_ca)
    unreadable_ca.chmod(0o600)

    def variant(name: str, **changes) -> dict:
        cluster = copy.deepcopy(base)
        cluster["stanza"] = changes.pop("stanza", "demo")
        cluster["pgbackrest"]["config_path"] = str(workdir / f"{name}.conf")
        for section, values in changes.items():
            cluster[section].update(values)
        return cluster

    clusters = {
        "nostanza": variant("nostanza", stanza="never_created"),
        "badca": variant("badca", repo={"ca_file": str(unreadable_ca), "path": "/rewind/badca"}),
        "nos3": variant("nos3", repo={"port": free_port(), "path": "/rewind/nos3"}),
        "drift": variant("drift", repo={"path": "/rewind/drift"}),
    }
    path = workdir / "inventory.yaml"
    path.write_text(yaml.safe_dump({"clusters": clusters}))
    inventory = load_inventory(path)
    assert inventory.errors == {}
    for name in ("nostanza", "badca", "nos3"):
        install_config(inventory.get(name), inventory_path=path)
    yield path
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    "cluster, message",
    [
        ("nostanza", "stanza 'never_created' does not exist in s3://rewind-repo/rewind/demo: create it with the onboarding DAG"),
        ("badca", "root-only-ca.pem is not readable by OS user 'postgres': fix its permissions"),
        ("nos3", "is unreachable (Connection refused): check repo.endpoint/repo.port and the network"),
        ("drift", "drift.conf does not exist: install it with `rewind conf install --cluster drift`"),
    ],
)
def test_preflight_fails_with_one_clear_line_and_nothing_is_touched(demo_stack, variant_inventory, monkeypatch, capfd, cluster, message):
    from airflow.utils.state import DagRunState, TaskInstanceState

    monkeypatch.setenv("REWIND_INVENTORY", str(variant_inventory))
    for key, value in demo_stack.worker_env().items():
        monkeypatch.setenv(key.replace("REWIND_DEMO_", f"REWIND_{cluster.upper()}_"), value)
    pgbackrest = demo_stack.pgbackrest()
    backups_before = [b.label for b in pgbackrest.info().backup]
    pid_before = postmaster_pid(demo_stack.cluster)
    objects_before = _object_count(demo_stack)

    dag = load_dags()[f"rewind_backup_full__{cluster}"]
    run = run_once(dag)

    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["preflight"] == TaskInstanceState.FAILED
    assert states["backup"] == TaskInstanceState.UPSTREAM_FAILED
    output = capfd.readouterr()
    errors = [line for line in (output.out + output.err).splitlines() if "Error: " in line]
    assert any(message in line for line in errors), errors
    assert [b.label for b in pgbackrest.info().backup] == backups_before
    assert postmaster_pid(demo_stack.cluster) == pid_before
    assert _object_count(demo_stack) == objects_before


def _object_count(stack) -> int:
    client = stack.s3.client()
    return sum(page.get("KeyCount", 0) for page in client.get_paginator("list_objects_v2").paginate(Bucket=stack.s3.bucket))


def test_missing_credentials_fail_preflight_naming_the_variables(demo_stack, airflow_db, monkeypatch, capfd):
    from airflow.utils.state import DagRunState

    monkeypatch.setenv("REWIND_INVENTORY", str(demo_stack.inventory_path))
    monkeypatch.delenv("REWIND_DEMO_CIPHER_PASS")
    run = run_once(load_dags()["rewind_backup_incr__demo"])
    assert run.state == DagRunState.FAILED
    assert "repository credentials missing from the worker environment: set REWIND_DEMO_CIPHER_PASS" in capfd.readouterr().out
    assert os.environ.get("REWIND_DEMO_S3_KEY")  # the others were untouched
