"""The watchdog: WAL archiving, backup age, stanza status and backup locks of one cluster."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from rewind import metrics
from rewind.errors import CredentialsError
from rewind.guard import FAILED, read_guard
from rewind.health import (
    ARCHIVER_SQL,
    Finding,
    check_archiving,
    check_backup_age,
    check_backup_lock,
    check_stanza,
    load_watch_state,
    parse_archiver_row,
    save_watch_state,
)
from rewind.pgbackrest.errors import PgBackRestError
from rewind.pgbackrest.info import STATUS_NO_BACKUP
from rewind.retention import held_backups
from rewind.state import StateFileDamaged, state_dir
from rewind_airflow.notifiers.alerts import report_findings
from rewind_airflow.operators.base import RewindClusterOperator


def lock_held_since(lock_path: str, stanza: str) -> dt.datetime | None:
    # pgBackRest 2.45 names the lock <stanza>-backup.lock; newer releases add the repo key.
    for name in (f"{stanza}-backup.lock", f"{stanza}-backup-1.lock"):
        path = Path(lock_path) / name
        if path.exists():
            return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    return None


REPOSITORY_SIDE = ("repository", "credentials", "stanza_status")


def merge_outage(findings: list[Finding]) -> list[Finding]:
    """One outage, one incident: when archiving fails and the repository side fails too (S3 down,
    credentials unobtainable or revoked), those findings go into the archive incident's details and
    are judged again on the next run, instead of paging twice for one cause."""
    archive = next(f for f in findings if f.problem == "archive_failing")
    folded = [f for f in findings if f.problem in REPOSITORY_SIDE and not f.ok]
    if archive.ok or not folded:
        return findings
    merged = replace(
        archive,
        details=archive.details + "".join(f" Also: {f.summary} ({f.details})." if f.details else f" Also: {f.summary}." for f in folded),
        metrics={**archive.metrics, **{k: v for f in folded for k, v in f.metrics.items()}},
    )
    return [merged if f is archive else f for f in findings if f not in folded]


def guard_finding(cluster) -> Finding:
    """A PITR that failed mid-rewind leaves backups blocked: that must page, not wait silently."""
    try:
        guard = read_guard(cluster)
    except StateFileDamaged as exc:
        return Finding("restore_guard", False, "restore guard file damaged: backups are blocked", str(exc))
    if guard is not None and guard.phase == FAILED:
        return Finding(
            "restore_guard",
            False,
            "a PITR failed mid-rewind and backups are blocked",
            f"{guard.describe()}. Look at the cluster, then `rewind guard clear --cluster {cluster.name}` (or run a new PITR).",
        )
    return Finding("restore_guard", True, "no failed rewind holds the cluster")


class HealthCheckOperator(RewindClusterOperator):
    """Runs every check, opens/updates/resolves one incident per failing/passing problem, sends
    metrics, and returns the findings. While a PITR replaces the data directory it skips (restore
    in progress). Checks that need no repository credentials (pg_stat_archiver) run even when the
    credentials cannot be had; that failure is a finding of its own. The task fails only when a
    check cannot run at all."""

    def execute_on_cluster(self, context) -> list[dict[str, Any]]:
        cluster = self.hook.cluster
        findings: list[Finding] = [guard_finding(cluster)]
        hold_metrics: dict[str, float] = {}
        if findings[0].ok:
            self.skip_unless_routine_work_may_run()
        now = dt.datetime.now(dt.timezone.utc)
        state_file = state_dir(cluster) / "watchdog.json"
        last = load_watch_state(state_file)
        previous = last.get("failed_count") if last.get("archive_ok") else None

        row = PostgresHook(postgres_conn_id=cluster.postgres_conn_id).get_first(ARCHIVER_SQL)
        archiver = parse_archiver_row(list(row))
        findings.append(check_archiving(archiver, previous_failed_count=previous, stale_factor=cluster.alerts.stale_archive_factor))
        try:
            client = self.hook.get_conn()  # leases the repository credentials
        except CredentialsError as exc:
            findings.append(Finding("credentials", False, "repository credentials unavailable", str(exc)))
        else:
            findings.append(Finding("credentials", True, "repository credentials obtained"))
            try:
                info = client.info()
            except PgBackRestError as exc:
                findings.append(Finding("repository", False, "repository unreadable", str(exc)))
            else:
                findings.append(Finding("repository", True, "repository readable"))
                findings.append(check_stanza(info))
                # An unreadable stanza (S3 down, wrong passphrase) lists no backups: backup age and
                # locks cannot be judged then, and are neither raised nor cleared.
                if info.ok or info.status.code == STATUS_NO_BACKUP:
                    findings.append(check_backup_age(info, now=now, max_age_hours=cluster.alerts.max_backup_age_hours))
                    held_since = lock_held_since(cluster.pgbackrest.lock_path, cluster.stanza)
                    findings.append(check_backup_lock(info, held_since=held_since, now=now))
                    holds = held_backups(cluster, info, now)
                    hold_metrics = {"holds.active": len(holds), "holds.held_backups": len({b for labels in holds.values() for b in labels})}

        findings = merge_outage(findings)
        report_findings(cluster, findings, log=self.log.info)
        metrics.emit(cluster.name, {**{k: v for f in findings for k, v in f.metrics.items()}, **hold_metrics})
        archive_ok = next(f.ok for f in findings if f.problem == "archive_failing")
        save_watch_state(state_file, {"failed_count": archiver.failed_count, "archive_ok": archive_ok, "at": now.isoformat()})
        return [{"problem": f.problem, "ok": f.ok, "summary": f.summary, "details": f.details} for f in findings]
