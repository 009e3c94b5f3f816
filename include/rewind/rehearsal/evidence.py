"""The rehearsal's evidence as a change's close notes, an incident's details and the run's XCom:
what was restored, how long it took (RTO), how much could have been lost at that moment (RPO), what
each check found, the rows compared, the backup annotated and the copy removed. Whatever part a
failed run did not reach is said to be missing, never left out silently."""

from __future__ import annotations

from rewind.change_control import MAX_NOTE_CHARS, free_text
from rewind.credentials import bounded
from rewind.inventory import Cluster
from rewind.rehearsal.request import RehearsalRequest


def _target(mark: dict | None, request: RehearsalRequest) -> str:
    if mark and mark.get("restore_point"):
        return (
            f"restore point {mark['restore_point']} at {mark['restore_point_lsn']} on timeline {mark['timeline']}, "
            f"made on production at {mark['marked_at']}"
        )
    return request.describe()


def summary(
    cluster: Cluster,
    request: RehearsalRequest,
    *,
    outcome: str,
    run_id: str,
    run_url: str,
    mark: dict | None = None,
    restored: dict | None = None,
    checks: list[dict] | None = None,
    copy_counts: dict[str, int] | None = None,
    annotated: dict | None = None,
    removed: dict | None = None,
) -> str:
    lines = [
        f"Rewind restore rehearsal of {cluster.name} (stanza {cluster.stanza}): {outcome}",
        f"Run: {run_id}  {run_url}",
        f"Reason: {free_text(request.reason)}",
        f"Target: {_target(mark, request)}",
    ]
    if restored:
        backup = restored["backup"]
        lines.append(
            f"Backup proved: {backup['label']} ({backup['type']}, ended {backup['stopped_at']}, {backup['size_bytes']} bytes), "
            f"restored into {restored['scratch']} with --archive-mode=off"
        )
        lines.append(
            f"RTO: {restored['rto_s']:.0f} s (restore started {restored['restore_started_at']}, queries answered {restored['answered_at']})"
        )
        rpo = restored.get("rpo_s")
        lines.append(
            f"RPO at that moment: {rpo:.0f} s (newest archived WAL uploaded {restored['newest_wal_at']})"
            if rpo is not None
            else "RPO at that moment: unknown (no archived WAL listed)"
        )
    else:
        lines.append("Restore: not reached")
    if checks:
        for check in checks:
            lines.append(f"Check {check['name']}: {'ok' if check['ok'] else 'FAILED'}: {bounded(check['summary'], 400)}")
    else:
        lines.append("Checks: not reached")
    if copy_counts:
        lines.append("Rows on the copy: " + ", ".join(f"{table} {rows}" for table, rows in sorted(copy_counts.items())))
    if annotated:
        lines.append(f"Backup {annotated['label']} annotated " + ", ".join(f"{k}={v}" for k, v in annotated["annotations"].items()))
    if removed is not None:
        lines.append(f"Scratch copy {'removed' if removed.get('removed') else 'not present'}: {removed.get('path')}")
    return "\n".join(lines)[:MAX_NOTE_CHARS]
