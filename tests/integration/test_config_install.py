"""Installing pgbackrest.conf as root: the file is given to the cluster's OS user (postgres), who
must read it and nobody else may. Needs root and a postgres OS user; the same drift and atomic
install logic as the worker's own user is in tests/unit/test_config.py."""

import pwd
import stat
from pathlib import Path

import pytest

from rewind.errors import ConfigDriftError
from rewind.pgbackrest.config import config_drift, install_config, require_no_drift
from tests.unit.test_config import cluster_at

pytestmark = pytest.mark.integration


def test_drift_detection_and_atomic_install_owned_by_postgres(tmp_path):
    cluster = cluster_at(tmp_path)
    assert cluster.postgres.os_user == "postgres"
    with pytest.raises(ConfigDriftError, match="does not exist: install it with `rewind conf install --cluster ledger`"):
        require_no_drift(cluster, inventory_path="/x")
    assert install_config(cluster, inventory_path="/x") is True
    assert install_config(cluster, inventory_path="/x") is False  # idempotent
    require_no_drift(cluster, inventory_path="/x")
    installed = Path(cluster.config_path)
    postgres = pwd.getpwnam("postgres")
    assert stat.S_IMODE(installed.stat().st_mode) == 0o640
    assert (installed.stat().st_uid, installed.stat().st_gid) == (postgres.pw_uid, postgres.pw_gid)
    for directory in ("log", "lock", "spool"):
        assert (tmp_path / directory).is_dir()
        assert (tmp_path / directory).stat().st_uid == postgres.pw_uid

    installed.write_text(installed.read_text().replace("repo1-retention-full=4", "repo1-retention-full=1"))
    drift = config_drift(cluster, inventory_path="/x")
    assert drift.drifted and "-repo1-retention-full=1" in drift.diff() and "+repo1-retention-full=4" in drift.diff()
    with pytest.raises(ConfigDriftError, match=r"differs from the inventory \(2 changed lines\)"):
        require_no_drift(cluster, inventory_path="/x")
