import pwd
import stat
from pathlib import Path

import pytest
import yaml

from rewind.errors import ConfigDriftError
from rewind.inventory import parse_inventory
from rewind.pgbackrest.config import config_drift, install_config, render_config, require_no_drift


def cluster_at(tmp_path: Path, **repo_overrides):
    doc = {
        "clusters": {
            "ledger": {
                "postgres": {"data_dir": "/var/lib/postgresql/15/main", "control": "pg_ctl"},
                "pgbackrest": {
                    "config_path": str(tmp_path / "etc" / "ledger.conf"),
                    "log_path": str(tmp_path / "log"),
                    "lock_path": str(tmp_path / "lock"),
                    "spool_path": str(tmp_path / "spool"),
                },
                "repo": {
                    "bucket": "b",
                    "endpoint": "s3.example.com",
                    "region": "eu-west-1",
                    "path": "/pg/ledger",
                    "ca_file": "/etc/ssl/ca.pem",
                    **repo_overrides,
                },
            }
        }
    }
    return parse_inventory(yaml.safe_dump(doc), tmp_path / "inventory.yaml").get("ledger")


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
    for source in ("env", "auto"):
        text = render_config(cluster_at(tmp_path), inventory_path="/x")
        keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
        assert not keys & {"repo1-s3-key", "repo1-s3-key-secret", "repo1-s3-token", "repo1-cipher-pass"}, source


def test_drift_detection_and_atomic_install(tmp_path):
    cluster = cluster_at(tmp_path)
    with pytest.raises(ConfigDriftError, match="does not exist: install it with `rewind conf install --cluster ledger`"):
        require_no_drift(cluster, inventory_path="/x")
    assert install_config(cluster, inventory_path="/x") is True
    assert install_config(cluster, inventory_path="/x") is False  # idempotent
    require_no_drift(cluster, inventory_path="/x")
    installed = Path(cluster.config_path)
    assert stat.S_IMODE(installed.stat().st_mode) == 0o640
    assert installed.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    for directory in ("log", "lock", "spool"):
        assert (tmp_path / directory).is_dir()

    installed.write_text(installed.read_text().replace("repo1-retention-full=4", "repo1-retention-full=1"))
    drift = config_drift(cluster, inventory_path="/x")
    assert drift.drifted and "-repo1-retention-full=1" in drift.diff() and "+repo1-retention-full=4" in drift.diff()
    with pytest.raises(ConfigDriftError, match=r"differs from the inventory \(2 changed lines\)"):
        require_no_drift(cluster, inventory_path="/x")
