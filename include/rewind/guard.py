"""The restore guard: while a PITR of a stanza is under way (from stopping PostgreSQL until the
fresh full backup on the new timeline), no backup of that stanza may start.

The guard is a small JSON file in the stanza's pgBackRest lock directory on the database host,
where every Rewind task for that cluster runs. A PITR that fails leaves it in place on purpose:
backups stay blocked until a DBA has looked at the cluster and cleared it (`rewind guard clear`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from rewind.errors import RewindError
from rewind.inventory import Cluster


class RestoreInProgressError(RewindError):
    pass


def guard_path(cluster: Cluster) -> Path:
    return Path(cluster.pgbackrest.lock_path) / f"{cluster.stanza}.rewind-restore.json"


def read_guard(cluster: Cluster) -> dict | None:
    try:
        return json.loads(guard_path(cluster).read_text())
    except FileNotFoundError:
        return None


def set_guard(cluster: Cluster, *, dag_id: str, run_id: str, change: str | None) -> dict:
    existing = read_guard(cluster)
    if existing and existing.get("run_id") != run_id:
        raise RestoreInProgressError(_message(cluster, existing))
    guard = {"dag_id": dag_id, "run_id": run_id, "change": change, "since": dt.datetime.now(dt.timezone.utc).isoformat()}
    path = guard_path(cluster)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(guard))
    return guard


def clear_guard(cluster: Cluster, *, run_id: str | None = None) -> bool:
    existing = read_guard(cluster)
    if existing is None:
        return False
    if run_id is not None and existing.get("run_id") != run_id:
        raise RestoreInProgressError(_message(cluster, existing))
    guard_path(cluster).unlink(missing_ok=True)
    return True


def require_no_restore(cluster: Cluster, *, allowed_run_id: str | None = None) -> None:
    existing = read_guard(cluster)
    if existing and existing.get("run_id") != allowed_run_id:
        raise RestoreInProgressError(_message(cluster, existing))


def _message(cluster: Cluster, guard: dict) -> str:
    return (
        f"stanza {cluster.stanza!r}: a PITR restore is in progress or failed (run {guard.get('run_id')}, change "
        f"{guard.get('change') or '-'}, since {guard.get('since')}): backups wait; when the cluster is verified, "
        f"clear it with `rewind guard clear --cluster {cluster.name}`"
    )
