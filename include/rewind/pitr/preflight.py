"""Everything that can be checked before PostgreSQL is stopped, in one place.

Repository reachable, decryptable and its stanza ok; config not drifted; no other restore of the
stanza under way; the target not in the future; all WAL up to now archived (a WAL switch on the
live cluster); the target inside the archived WAL and after the chosen backup's stop; enough disk.
The result is the restore plan every later step follows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from rewind.errors import PreflightError
from rewind.guard import require_no_restore
from rewind.pgbackrest.client import PgBackRest
from rewind.pitr.plan import (
    SEGMENT_SIZE,
    RestorePlan,
    TargetLocation,
    archive_listing,
    check_free_disk,
    check_target_time,
    choose_backup,
    current_timeline,
    locate_in_wal,
    make_plan,
    newest_segment_upload,
    read_history,
    segment_parts,
)
from rewind.pitr.recovery import archive_current_wal
from rewind.pitr.request import PitrRequest, lsn_text, lsn_value
from rewind.preflight import run_repository_preflight


def pitr_preflight(
    pgbackrest: PgBackRest,
    request: PitrRequest,
    *,
    inventory_path: Path | str,
    now: dt.datetime | None = None,
    log: Callable[[str], None] = print,
) -> RestorePlan:
    cluster = pgbackrest.cluster
    now = now or dt.datetime.now(dt.timezone.utc)
    check_target_time(request, now)
    run_repository_preflight(cluster, inventory_path=inventory_path, pgbackrest=pgbackrest, allow_no_backup=False)
    require_no_restore(cluster)
    archive_current_wal(pgbackrest.runner, cluster, log=log)
    info = pgbackrest.info()  # after the switch: the archive range now includes everything up to now
    timeline = current_timeline(info, request)
    history = read_history(pgbackrest, timeline)
    archive = info.current_archive()

    location: TargetLocation | None = None
    if request.target_type in ("xid", "name"):
        location = locate_in_wal(pgbackrest, info, history, request)
        log(f"target found in archived WAL: {location.description} at {location.lsn} (timeline {location.timeline})")
    elif request.target_type == "lsn":
        end_of_archive = (segment_parts(archive.max)[1] + 1) * SEGMENT_SIZE
        if lsn_value(request.target) >= end_of_archive:
            raise PreflightError(
                f"param target: LSN {request.target} is beyond the archived WAL (archive ends before {lsn_text(end_of_archive)})"
            )
        location = TargetLocation(lsn=request.pgbackrest_target, timeline=timeline, description=f"LSN {request.pgbackrest_target}")
    elif request.target_type == "time":
        newest = newest_segment_upload(archive_listing(pgbackrest, archive.id))
        if newest is None or request.target_time > newest:
            newest_text = f"{newest:%Y-%m-%d %H:%M:%S} UTC" if newest else "none"
            raise PreflightError(
                f"param target: {request.target_time:%Y-%m-%d %H:%M:%S} UTC is after the newest archived WAL "
                f"({newest_text}): the WAL to reach it is not in the repository"
            )

    backup = choose_backup(info, history, request, target_lsn=location.lsn if location else None)
    log(f"restore from backup {backup.label} ({backup.type}, ended {backup.stopped_at:%Y-%m-%d %H:%M:%S} UTC at {backup.lsn.stop})")
    check_free_disk(cluster.postgres.data_dir, backup.info.size or 0)
    return make_plan(backup, history, info, location)
