"""pgbackrest.conf rendered from the inventory: deterministic, secret-free, installable, diffable."""

from __future__ import annotations

import difflib
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from rewind.errors import ConfigDriftError
from rewind.inventory import Cluster

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("rewind.pgbackrest", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def render_config(cluster: Cluster, *, inventory_path: Path | str) -> str:
    """The pgbackrest.conf for one cluster. Same inventory in, same bytes out."""
    return _env.get_template("pgbackrest.conf.j2").render(
        cluster=cluster,
        pg=cluster.postgres,
        pgb=cluster.pgbackrest,
        repo=cluster.repo,
        credentials=cluster.credentials,
        inventory_path=str(inventory_path),
    )


@dataclass(frozen=True)
class ConfigDrift:
    path: Path
    installed: str | None
    rendered: str

    @property
    def drifted(self) -> bool:
        return self.installed != self.rendered

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                (self.installed or "").splitlines(keepends=True),
                self.rendered.splitlines(keepends=True),
                fromfile=f"{self.path} (installed)",
                tofile=f"{self.path} (inventory)",
            )
        )


def config_drift(cluster: Cluster, *, inventory_path: Path | str) -> ConfigDrift:
    path = Path(cluster.config_path)
    try:
        installed = path.read_text()
    except FileNotFoundError:
        installed = None
    return ConfigDrift(path=path, installed=installed, rendered=render_config(cluster, inventory_path=inventory_path))


def require_no_drift(cluster: Cluster, *, inventory_path: Path | str) -> None:
    drift = config_drift(cluster, inventory_path=inventory_path)
    if drift.installed is None:
        raise ConfigDriftError(f"{drift.path} does not exist: install it with `rewind conf install --cluster {cluster.name}`")
    if drift.drifted:
        changed = sum(1 for line in drift.diff().splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))
        raise ConfigDriftError(
            f"{drift.path} differs from the inventory ({changed} changed lines): review with "
            f"`rewind conf diff --cluster {cluster.name}`, then `rewind conf install --cluster {cluster.name}`"
        )


def install_config(cluster: Cluster, *, inventory_path: Path | str) -> bool:
    """Write the rendered file atomically, owned by the cluster's OS user, mode 0640.

    Returns True when the file changed. Creates pgBackRest's log, lock and spool directories too.
    """
    drift = config_drift(cluster, inventory_path=inventory_path)
    user = pwd.getpwnam(cluster.postgres.os_user)
    for directory in (cluster.pgbackrest.log_path, cluster.pgbackrest.lock_path, cluster.pgbackrest.spool_path):
        Path(directory).mkdir(parents=True, exist_ok=True)
        _chown(directory, user)
    if not drift.drifted:
        return False
    drift.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=drift.path.parent, prefix=f".{drift.path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(drift.rendered)
        os.chmod(tmp, 0o640)
        _chown(tmp, user)
        os.replace(tmp, drift.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _chown(path: str | Path, user: pwd.struct_passwd) -> None:
    if os.geteuid() == 0:
        os.chown(path, user.pw_uid, user.pw_gid)
