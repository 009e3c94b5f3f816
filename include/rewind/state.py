"""Rewind's durable state on the database host: small JSON files under the cluster's state
directory (`state_path` in the inventory, default /var/lib/rewind/<cluster>).

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the directory):
a crash leaves the old file or the new one, never half of one. A file that still cannot be read
is reported with its path and what to do, never silently taken as absent.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import tempfile
from pathlib import Path

from rewind.errors import RewindError
from rewind.inventory import Cluster


class StateFileDamaged(RewindError):
    pass


def state_dir(cluster: Cluster, *parts: str) -> Path:
    """The cluster's state directory (or a subdirectory), created owned by its OS user."""
    path = Path(cluster.state_dir, *parts)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwnam(cluster.postgres.os_user) if os.geteuid() == 0 else None
        # mkdir's mode reaches only the last level: set it (and the owner) on each level that is Rewind's
        for directory in (Path(cluster.state_dir), *(Path(cluster.state_dir, *parts[: i + 1]) for i in range(len(parts)))):
            directory.chmod(0o750)
            if user:
                os.chown(directory, user.pw_uid, user.pw_gid)
    return path


def file_key(text: str) -> str:
    """A file name for an Airflow run id (which holds ':' and '+'), still readable."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:200]


def read_json(path: Path, *, what: str, fix: str) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except ValueError as exc:
        raise StateFileDamaged(f"{what} {path} is damaged ({exc}): {fix}") from None


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
