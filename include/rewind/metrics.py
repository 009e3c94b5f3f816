"""Rewind's metrics: sent to StatsD (the Datadog agent's DogStatsD accepts it) and exported per
cluster as JSON or Prometheus text.

StatsD names: `rewind.<cluster>.<metric>`, gauges, e.g. rewind.ledger.backup.age_seconds.full.
The target is $REWIND_STATSD_HOST:$REWIND_STATSD_PORT (default port 8125); without a host,
metrics are only logged and exported.
"""

from __future__ import annotations

import json
import os
import re

import statsd

# metric -> (Prometheus name, labels). Names follow pgbackrest_exporter where the meaning matches.
PROMETHEUS = {
    "backup.age_seconds.full": ("pgbackrest_backup_since_last_completion_seconds", {"backup_type": "full"}),
    "backup.age_seconds.diff": ("pgbackrest_backup_since_last_completion_seconds", {"backup_type": "diff"}),
    "backup.age_seconds.incr": ("pgbackrest_backup_since_last_completion_seconds", {"backup_type": "incr"}),
    "backup.last_duration_seconds": ("pgbackrest_backup_duration_seconds", {}),
    "backup.last_size_bytes": ("pgbackrest_backup_size_bytes", {}),
    "backup.last_repo_size_bytes": ("pgbackrest_backup_repo_size_bytes", {}),
    "stanza.status": ("pgbackrest_stanza_status", {}),
    "repo.size_bytes": ("rewind_repo_size_bytes", {}),
    "archive.failed_count": ("rewind_archive_failed_count", {}),
    "archive.ready_segments": ("rewind_archive_ready_segments", {}),
    "archive.last_archived_age_seconds": ("rewind_archive_last_archived_age_seconds", {}),
    "check.ok": ("rewind_check_ok", {}),
    "verify.ok": ("rewind_verify_ok", {}),
    "wal.gaps": ("rewind_wal_gaps", {}),
    "pitr.duration_seconds": ("rewind_pitr_duration_seconds", {}),
    "pitr.downtime_seconds": ("rewind_pitr_downtime_seconds", {}),
    "rehearsal.duration_seconds": ("rewind_rehearsal_duration_seconds", {}),
    "rehearsal.rto_seconds": ("rewind_rehearsal_rto_seconds", {}),
    "rehearsal.rpo_seconds": ("rewind_rehearsal_rpo_seconds", {}),
    "rehearsal.ok": ("rewind_rehearsal_ok", {}),
    "holds.active": ("rewind_retention_holds", {}),
    "holds.held_backups": ("rewind_retention_held_backups", {}),
}

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def statsd_client() -> statsd.StatsClient | None:
    host = os.environ.get("REWIND_STATSD_HOST")
    if not host:
        return None
    return statsd.StatsClient(host, int(os.environ.get("REWIND_STATSD_PORT", "8125")), prefix="rewind")


def emit(cluster: str, metrics: dict[str, float], client: statsd.StatsClient | None = None) -> None:
    client = client or statsd_client()
    if client is None:
        return
    cluster_part = _SAFE.sub("_", cluster)
    with client.pipeline() as pipe:
        for name, value in sorted(metrics.items()):
            pipe.gauge(f"{cluster_part}.{name}", float(value))


def as_json(cluster: str, stanza: str, metrics: dict[str, float]) -> str:
    return json.dumps({"cluster": cluster, "stanza": stanza, "metrics": dict(sorted(metrics.items()))}, indent=2)


def as_prometheus(cluster: str, stanza: str, metrics: dict[str, float]) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for name, value in sorted(metrics.items()):
        prom, extra = PROMETHEUS.get(name, ("rewind_" + _SAFE.sub("_", name).replace(".", "_"), {}))
        if prom not in seen:
            lines.append(f"# TYPE {prom} gauge")
            seen.add(prom)
        labels = {"cluster": cluster, "stanza": stanza, **extra}
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{prom}{{{label_text}}} {float(value):g}")
    return "\n".join(lines) + "\n"
