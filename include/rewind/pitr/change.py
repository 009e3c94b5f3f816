"""The change request a PITR runs under: what it says, how it is found again, how it is closed."""

from __future__ import annotations

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pitr.request import PitrRequest
from rewind.servicenow import ChangeStatus, ServiceNowClient

TABLE = "change_request"


class ChangeNotUsable(RewindError):
    pass


def correlation_id(dag_id: str, run_id: str) -> str:
    return f"rewind:{dag_id}:{run_id}"


def change_fields(cluster: Cluster, request: PitrRequest, *, dag_id: str, run_id: str, run_url: str) -> dict:
    target = request.describe()
    return {
        "type": "normal",
        "short_description": f"Rewind PITR: restore {cluster.name} (stanza {cluster.stanza}) to {target}",
        "description": (
            f"Point-in-time recovery of PostgreSQL cluster {cluster.name} ({cluster.postgres.data_dir}, port {cluster.postgres.port}) "
            f"to {target}, with pgBackRest from s3://{cluster.repo.bucket}{cluster.repo.path}.\nReason: {request.reason}\n"
            f"Airflow run: {run_id}\n{run_url}"
        ),
        "justification": request.reason,
        "implementation_plan": (
            "1. Archive current WAL and stop PostgreSQL.\n2. pgbackrest restore --delta to the target.\n"
            "3. Start PostgreSQL and wait until recovery reaches the target.\n4. Run the data checks.\n"
            "5. Promote.\n6. Take a full backup on the new timeline.\n7. Close this change with the run summary."
        ),
        "backout_plan": (
            "Before promotion: stop PostgreSQL and restore again with another target (the repository is unchanged). "
            "After promotion the old timeline stays in the repository: a new PITR with target_timeline set to it returns there."
        ),
        "test_plan": "Data checks run against the restored cluster before promotion: "
        + ("; ".join(c.sql for c in request.validation_sql) or "none given"),
        "cmdb_ci": cluster.name,
        "correlation_id": correlation_id(dag_id, run_id),
        "state": -3,
        "approval": "requested",
    }


def ensure_change(client: ServiceNowClient, cluster: Cluster, request: PitrRequest, *, dag_id: str, run_id: str, run_url: str) -> dict:
    """Use the given change (it must be open and not rejected), or find this run's change by
    correlation id (a retry), or create one. Returns {number, sys_id, created}."""
    if request.change_number:
        record = client.get_by_number(TABLE, request.change_number)
        change = ChangeStatus.from_record(record)
        if change.state in (3, 4) or change.approval == "rejected":
            raise ChangeNotUsable(
                f"param change_number: {change.number} is {change.state_name} (approval {change.approval}): use an open change"
            )
        client.add_work_note(TABLE, change.sys_id, f"Rewind PITR run {run_id} will implement this change: {request.describe()}.\n{run_url}")
        return {"number": change.number, "sys_id": change.sys_id, "created": False}
    existing = client.query(TABLE, f"correlation_id={correlation_id(dag_id, run_id)}", limit=1)
    if existing:
        return {"number": existing[0]["number"], "sys_id": existing[0]["sys_id"], "created": False}
    record = client.create(TABLE, change_fields(cluster, request, dag_id=dag_id, run_id=run_id, run_url=run_url))
    return {"number": record["number"], "sys_id": record["sys_id"], "created": True}


def summary(cluster: Cluster, request: PitrRequest, *, run_id: str, run_url: str, plan: dict, recovery: dict,
            checks: list[dict], timeline: int | None, backup: dict, timings: dict[str, float]) -> str:
    passed = sum(1 for c in checks if c["passed"])
    lines = [
        f"Rewind PITR of {cluster.name} (stanza {cluster.stanza}) completed.",
        f"Run: {run_id}  {run_url}",
        f"Reason: {request.reason}",
        f"Target: {request.describe()}",
        f"Restored from backup {plan['backup_set']} ({plan['backup_type']}, ended {plan['backup_stopped_at']}, stop LSN {plan['backup_stop_lsn']})",
    ]
    if plan.get("target_record"):
        lines.append(f"Target record in WAL: {plan['target_record']} at {plan['target_lsn']}")
    lines.append(f"Recovery: {recovery.get('stop_record') or recovery.get('state')}; now on timeline {timeline}")
    lines.append(f"Data checks: {passed}/{len(checks)} passed")
    lines.append(f"New full backup on timeline {backup.get('timeline')}: {backup.get('label')}")
    lines.append("Timings: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items()))
    return "\n".join(lines)
