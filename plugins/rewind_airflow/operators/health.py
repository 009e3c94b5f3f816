"""The watchdog: WAL archiving, backup age, stanza status and backup locks of one cluster."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from rewind import metrics
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
from rewind_airflow.notifiers.alerts import report_findings
from rewind_airflow.operators.pgbackrest import _ClusterOperator


def lock_held_since(lock_path: str, stanza: str) -> dt.datetime | None:
    # pgBackRest 2.45 names the lock <stanza>-backup.lock; newer releases add the repo key.
    for name in (f"{stanza}-backup.lock", f"{stanza}-backup-1.lock"):
        path = Path(lock_path) / name
        if path.exists():
            return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    return None


def merge_outage(findings: list[Finding]) -> list[Finding]:
    """One outage, one incident: when archiving fails and the stanza is unreadable too (S3 down,
    credentials revoked), the stanza problem goes into the archive incident's details and is judged
    again on the next run, instead of paging twice for one cause."""
    archive = next(f for f in findings if f.problem == "archive_failing")
    stanza = next((f for f in findings if f.problem == "stanza_status"), None)
    if archive.ok or stanza is None or stanza.ok:
        return findings
    merged = replace(archive, details=f"{archive.details} The repository is unreadable too: {stanza.summary}.",
                     metrics={**archive.metrics, **stanza.metrics})
    return [merged if f is archive else f for f in findings if f is not stanza]


class HealthCheckOperator(_ClusterOperator):
    """Runs every check, opens/updates/resolves one incident per failing/passing problem, sends
    metrics, and returns the findings. The task fails only when a check cannot run at all."""

    def execute_on_cluster(self, context) -> list[dict[str, Any]]:
        cluster = self.hook.cluster
        now = dt.datetime.now(dt.timezone.utc)
        state_file = Path(cluster.pgbackrest.lock_path) / f"{cluster.stanza}.rewind-health.json"
        last = load_watch_state(state_file)
        previous = last.get("failed_count") if last.get("archive_ok") else None

        row = PostgresHook(postgres_conn_id=cluster.postgres_conn_id).get_first(ARCHIVER_SQL)
        archiver = parse_archiver_row(list(row))
        findings: list[Finding] = [check_archiving(archiver, previous_failed_count=previous, stale_factor=cluster.alerts.stale_archive_factor)]
        try:
            info = self.hook.get_conn().info()
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

        findings = merge_outage(findings)
        report_findings(cluster, findings, log=self.log.info)
        values = {k: v for f in findings for k, v in f.metrics.items()}
        metrics.emit(cluster.name, values)
        archive_ok = next(f.ok for f in findings if f.problem == "archive_failing")
        save_watch_state(state_file, {"failed_count": archiver.failed_count, "archive_ok": archive_ok, "at": now.isoformat()})
        return [{"problem": f.problem, "ok": f.ok, "summary": f.summary, "details": f.details} for f in findings]
