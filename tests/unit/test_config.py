import os
import stat
from pathlib import Path

import pytest

from rewind.errors import ConfigDriftError
from rewind.pgbackrest.config import config_drift, install_config, render_config, require_no_drift
from tests.factories import cluster, worker_user

SECRET_OPTIONS = {"repo1-s3-key", "repo1-s3-key-secret", "repo1-s3-token", "repo1-cipher-pass"}


def cluster_at(tmp_path: Path, *, os_user: str = "postgres", credentials: dict | None = None, **repo_overrides):
    return cluster(
        postgres={"control": "pg_ctl", "os_user": os_user},
        pgbackrest={
            "config_path": str(tmp_path / "etc" / "ledger.conf"),
            "log_path": str(tmp_path / "log"),
            "lock_path": str(tmp_path / "lock"),
            "spool_path": str(tmp_path / "spool"),
        },
        repo={"path": "/pg/ledger", "ca_file": "/etc/ssl/ca.pem", **repo_overrides},
        credentials=credentials or {},
    )


def settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_render_is_byte_identical_and_carries_the_rotation_settings(tmp_path):
    cluster = cluster_at(tmp_path)
    first = render_config(cluster, inventory_path="/etc/rewind/inventory.yaml")
    assert first == render_config(cluster_at(tmp_path), inventory_path="/etc/rewind/inventory.yaml")
    for line in (
        "[ledger]",
        "repo1-type=s3",
        "repo1-cipher-type=aes-256-cbc",
        "compress-type=zst",
        "compress-level=3",
        "repo1-bundle=y",
        "repo1-retention-full=4",
        "repo1-retention-diff=6",
        "start-fast=y",
        "repo1-storage-ca-file=/etc/ssl/ca.pem",
        "expire-auto=n",
    ):
        assert line in first.splitlines(), line


def test_no_secret_option_is_ever_rendered(tmp_path):
    vault = {"source": "vault", "vault": {"aws_role": "rewind-ledger", "kv_path": "rewind/ledger"}}
    for credentials in ({"source": "env"}, {"source": "auto"}, vault):
        rendered = settings(render_config(cluster_at(tmp_path, credentials=credentials), inventory_path="/x"))
        assert not rendered.keys() & SECRET_OPTIONS, credentials
        # the S3 keys come from the instance role only with source auto; otherwise from the environment
        assert rendered.get("repo1-s3-key-type") == ("auto" if credentials["source"] == "auto" else None), credentials


def test_retention_is_a_count_of_fulls_or_a_recovery_window_in_days(tmp_path):
    count = settings(render_config(cluster_at(tmp_path, retention_full=2), inventory_path="/x"))
    assert (count["repo1-retention-full-type"], count["repo1-retention-full"]) == ("count", "2")
    window = settings(render_config(cluster_at(tmp_path, recovery_window_days=35), inventory_path="/x"))
    assert (window["repo1-retention-full-type"], window["repo1-retention-full"]) == ("time", "35")
    assert window["repo1-retention-diff"] == "6"  # diff retention stays a count either way


def test_drift_detection_and_atomic_install(tmp_path):
    """As the worker's own user (the install as root, owned by postgres: tests/integration/test_config_install.py)."""
    cluster = cluster_at(tmp_path, os_user=worker_user())
    with pytest.raises(ConfigDriftError, match="does not exist: install it with `rewind conf install --cluster ledger`"):
        require_no_drift(cluster, inventory_path="/x")
    assert install_config(cluster, inventory_path="/x") is True
    assert install_config(cluster, inventory_path="/x") is False  # idempotent
    require_no_drift(cluster, inventory_path="/x")
    installed = Path(cluster.config_path)
    assert stat.S_IMODE(installed.stat().st_mode) == 0o640
    assert installed.stat().st_uid == os.geteuid()
    assert [p.name for p in installed.parent.iterdir()] == ["ledger.conf"]  # no temporary file left behind
    for directory in ("log", "lock", "spool"):
        assert (tmp_path / directory).is_dir()

    installed.write_text(installed.read_text().replace("repo1-retention-full=4", "repo1-retention-full=1"))
    drift = config_drift(cluster, inventory_path="/x")
    assert drift.drifted and "-repo1-retention-full=1" in drift.diff() and "+repo1-retention-full=4" in drift.diff()
    with pytest.raises(ConfigDriftError, match=r"differs from the inventory \(2 changed lines\)"):
        require_no_drift(cluster, inventory_path="/x")
