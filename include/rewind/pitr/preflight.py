"""Everything that can be checked before PostgreSQL is stopped, in one place.

Repository reachable, decryptable and its stanza ok; config not drifted; the target not in the
future; all WAL up to now archived (a WAL switch on the live cluster); the plan (rewind.pitr.plan):
timeline, target inside the archived WAL, a backup on the timeline's history before the target,
every WAL segment between them archived, enough disk; the data-check role safe to use. Read-only
apart from the WAL switch.

`replan` runs the same checks again from the repository as it is at the moment of stopping: a
backup expired or a segment lost during a long approval wait is found there, before anything is
stopped, and either a new plan reaches the same target or the run fails.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rewind.errors import PreflightError
from rewind.pgbackrest.client import PgBackRest
from rewind.pitr.plan import RestorePlan, check_target_time, make_plan
from rewind.pitr.recovery import archive_current_wal, is_running
from rewind.pitr.request import PitrRequest
from rewind.postgres import check_role_problem, control_timeline, run_sql
from rewind.preflight import run_repository_preflight
from rewind.runner import CommandRunner
from rewind.wal import read_archive, read_history


def _in_use_bytes(runner: CommandRunner, pgbackrest: PgBackRest) -> Callable[[], int | None]:
    """What the live cluster's databases occupy, if it runs: asked by the free-disk check only when
    the free space alone does not cover the restore."""

    def ask() -> int | None:
        if not is_running(pgbackrest.cluster):
            return None
        return int(run_sql(runner, pgbackrest.cluster, "select sum(pg_database_size(oid))::bigint from pg_database"))

    return ask


def pitr_preflight(
    pgbackrest: PgBackRest,
    request: PitrRequest,
    *,
    runner: CommandRunner,
    inventory_path: Path | str,
    timeline_before: int | None = None,
    now: dt.datetime | None = None,
    log: Callable[[str], None] = print,
) -> RestorePlan:
    """`timeline_before`: set when the cluster is mid-rewind (stopped or paused by a failed PITR this
    run takes over): what `current` means then, since its pg_control names the restored backup's."""
    cluster = pgbackrest.cluster
    check_target_time(request, now or dt.datetime.now(dt.timezone.utc))
    run_repository_preflight(cluster, inventory_path=inventory_path, pgbackrest=pgbackrest, allow_no_backup=False)
    if request.validation_sql and is_running(cluster):
        problem = check_role_problem(runner, cluster)
        if problem:
            raise PreflightError(f"postgres.check_role: {problem}; the data checks cannot run safely")
    archive_current_wal(runner, cluster, log=log)
    info = pgbackrest.info()  # after the switch: the archive range now includes everything up to now
    return make_plan(
        pgbackrest,
        request,
        info,
        cluster_timeline=timeline_before or control_timeline(runner, cluster),
        in_use_bytes=_in_use_bytes(runner, pgbackrest),
        log=log,
    )


def replan(
    pgbackrest: PgBackRest,
    request: PitrRequest,
    previous: RestorePlan,
    *,
    runner: CommandRunner,
    log: Callable[[str], None] = print,
) -> RestorePlan:
    """The plan again, on the same timeline, from the repository as it is now. The archive listing
    and the timeline's history are read alongside `info` (the plan names both), not after it."""
    if previous.archive_id:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rewind-replan") as pool:
            listing = pool.submit(read_archive, PgBackRest(pgbackrest.cluster, pgbackrest.runner.sibling()), previous.archive_id)
            history = pool.submit(read_history, PgBackRest(pgbackrest.cluster, pgbackrest.runner.sibling()), previous.timeline)
            info = pgbackrest.info()
            read_ahead = (previous.archive_id, listing.result(), history.result())
    else:
        info, read_ahead = pgbackrest.info(), None
    if not info.ok:
        raise PreflightError(f"stanza {info.name!r} status is not ok now: [{info.status.code}] {info.status.message}")
    plan = make_plan(
        pgbackrest,
        request,
        info,
        cluster_timeline=previous.timeline,
        timeline=previous.timeline,
        previous=previous,
        read_ahead=read_ahead,
        in_use_bytes=_in_use_bytes(runner, pgbackrest),
        log=log,
    )
    if plan.backup_set != previous.backup_set:
        log(f"re-planned: backup {previous.backup_set} of the preflight plan is no longer the one to use; now {plan.backup_set}")
    return plan


def plan_while_paused(
    pgbackrest: PgBackRest,
    request: PitrRequest,
    *,
    timeline: int,
    runner: CommandRunner,
    now: dt.datetime | None = None,
    log: Callable[[str], None] = print,
) -> RestorePlan:
    """The plan for another restore of a cluster this run has paused at its target (a DBA's move of
    the target, or the abort back to latest): the same checks as preflight (target not in the future,
    found in the archived WAL, a backup before it on the timeline's history, every segment between
    archived, free disk), on the given timeline. No WAL switch: a paused cluster cannot switch, and
    every WAL of the timeline it ran on was archived when this run stopped it."""
    check_target_time(request, now or dt.datetime.now(dt.timezone.utc))
    info = pgbackrest.info()
    if not info.ok:
        raise PreflightError(f"stanza {info.name!r} status is not ok now: [{info.status.code}] {info.status.message}")
    return make_plan(
        pgbackrest, request, info, cluster_timeline=timeline, timeline=timeline, in_use_bytes=_in_use_bytes(runner, pgbackrest), log=log
    )
