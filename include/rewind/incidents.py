"""ServiceNow incidents for Rewind's checks, deduplicated by a stable key per cluster and problem.

One open incident per key: the first failure opens it, later failures add a work note to it, and
the first passing check resolves it with a note. The key travels in `correlation_id`
("rewind:<cluster>:<problem>"), which is how the incident is found again.
"""

from __future__ import annotations

from dataclasses import dataclass

from rewind.servicenow import ServiceNowClient

INCIDENT_TABLE = "incident"
OPEN_STATES = ("1", "2", "3")  # New, In Progress, On Hold
RESOLVED = 6


def correlation_key(cluster: str, problem: str) -> str:
    return f"rewind:{cluster}:{problem}"


@dataclass(frozen=True)
class IncidentAction:
    action: str  # "opened" | "noted" | "resolved" | "none"
    number: str | None = None


def open_incident(client: ServiceNowClient, key: str) -> dict | None:
    records = client.query(INCIDENT_TABLE, f"correlation_id={key}", limit=50)
    open_records = [r for r in records if r.get("state") in OPEN_STATES]
    return max(open_records, key=lambda r: r.get("sys_created_on", ""), default=None)


def report_problem(
    client: ServiceNowClient,
    *,
    cluster: str,
    problem: str,
    summary: str,
    details: str,
    impact: int = 2,
    urgency: int = 2,
) -> IncidentAction:
    key = correlation_key(cluster, problem)
    existing = open_incident(client, key)
    if existing:
        client.add_work_note(INCIDENT_TABLE, existing["sys_id"], f"Still failing: {summary}\n{details}")
        return IncidentAction("noted", existing["number"])
    record = client.create(
        INCIDENT_TABLE,
        {
            "short_description": f"Rewind: {summary}"[:160],
            "description": details,
            "cmdb_ci": cluster,
            "correlation_id": key,
            "impact": impact,
            "urgency": urgency,
            "category": "database",
        },
    )
    return IncidentAction("opened", record["number"])


def report_healthy(client: ServiceNowClient, *, cluster: str, problem: str, note: str) -> IncidentAction:
    existing = open_incident(client, correlation_key(cluster, problem))
    if existing is None:
        return IncidentAction("none")
    client.update(
        INCIDENT_TABLE,
        existing["sys_id"],
        {"state": RESOLVED, "close_code": "Solved (Permanently)", "close_notes": note, "work_notes": f"Resolved by Rewind: {note}"},
    )
    return IncidentAction("resolved", existing["number"])
