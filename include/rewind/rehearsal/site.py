"""The rehearsal's scratch directory on the rehearsal host, and nothing else.

`rehearsal.scratch_path` (default `<state_path>/rehearsal`) is Rewind's own: it may not hold or lie
inside anything of the production cluster (data directory, sockets, binaries, pgBackRest's paths,
the state directory itself), its name is kept to a shell-inert alphabet (pg_ctl hands the data
directory and options to /bin/sh), and Rewind removes only a directory that carries its marker
file. A run finds a scratch left by an earlier run (a worker that died before its cleanup) by that
marker, stops its PostgreSQL and removes it before restoring.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from rewind.errors import PreflightError
from rewind.inventory import Cluster
from rewind.pgbackrest.client import PgBackRest
from rewind.scratch import ScratchCluster

MARKER = ".rewind-rehearsal.json"
SAFE_PATH_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")


def scratch_directory(cluster: Cluster) -> Path:
    return Path(cluster.rehearsal_path)


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_scratch_path(cluster: Cluster) -> Path:
    """The scratch directory, or a one-line refusal naming rehearsal.scratch_path."""
    path = scratch_directory(cluster)
    text = str(path)
    if not SAFE_PATH_RE.fullmatch(text) or any(part in (".", "..") for part in path.parts) or len(path.parts) < 3:
        raise PreflightError(
            f"rehearsal scratch directory {text!r}: use an absolute path at least two levels deep of letters, digits, '_', '.', '-' "
            "(set rehearsal.scratch_path)"
        )
    production = {
        "postgres.data_dir": cluster.postgres.data_dir,
        "postgres.socket_dir": cluster.postgres.socket_dir,
        "postgres.bin_dir": cluster.postgres.bin_dir,
        "pgbackrest.log_path": cluster.pgbackrest.log_path,
        "pgbackrest.lock_path": cluster.pgbackrest.lock_path,
        "pgbackrest.spool_path": cluster.pgbackrest.spool_path,
        "state_path": cluster.state_dir,
    }
    for field, value in production.items():
        other = Path(value)
        if _inside(other, path) or (field != "state_path" and _inside(path, other)):
            raise PreflightError(
                f"rehearsal scratch directory {text} overlaps {field} {value}: the copy must never touch production (set rehearsal.scratch_path)"
            )
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise PreflightError(f"rehearsal scratch directory {text} is not empty and was not made by Rewind: empty it or choose another path")
    return path


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"run_id": "(damaged marker)"}


def write_marker(cluster: Cluster, path: Path, *, run_id: str, port: int) -> None:
    user = pwd.getpwnam(cluster.postgres.os_user)
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    (path / MARKER).write_text(json.dumps({"cluster": cluster.name, "run_id": run_id, "port": port}))


def remove_scratch(pgbackrest: PgBackRest, path: Path, *, log: Callable[[str], None] = print) -> bool:
    """Stop the copy and remove the directory, when it is Rewind's (its marker). Returns whether
    there was one to remove."""
    marker = read_marker(path)
    if marker is None:
        if path.exists() and any(path.iterdir()):
            log(f"{path} has no Rewind marker: left as it is")
        return False
    scratch = ScratchCluster(pgbackrest, path, int(marker.get("port") or 0))
    scratch.stop()
    shutil.rmtree(path)
    log(f"scratch copy of run {marker.get('run_id')} stopped and {path} removed")
    return True
