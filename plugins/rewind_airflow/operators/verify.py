"""VerifyRepositoryOperator: trust nothing not tested. check, verify, stanza status, WAL continuity."""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from rewind import metrics
from rewind.health import Finding, check_stanza
from rewind.pgbackrest.errors import PgBackRestError
from rewind.verify import continuity_finding, wal_gaps
from rewind_airflow.notifiers.alerts import report_findings
from rewind_airflow.operators.base import RewindClusterOperator


class VerifyRepositoryOperator(RewindClusterOperator):
    """Each result is a finding with its own deduplicated incident; the task fails when any does,
    so the run history shows red where the repository could not be trusted."""

    def execute_on_cluster(self, context) -> list[dict[str, Any]]:
        self.skip_unless_routine_work_may_run()
        cluster, client = self.hook.cluster, self.hook.get_conn()
        findings: list[Finding] = []
        for problem, run in (("check", client.check), ("verify", client.verify)):
            try:
                run()
                findings.append(Finding(problem, True, f"pgbackrest {problem} ok", metrics={f"{problem}.ok": 1}))
            except PgBackRestError as exc:
                findings.append(Finding(problem, False, f"pgbackrest {problem} failed", str(exc), {f"{problem}.ok": 0}))
        info = client.info()
        findings.append(check_stanza(info))
        if info.ok:
            findings.append(continuity_finding(wal_gaps(client, info)))
            findings[-1].metrics["repo.size_bytes"] = sum(b.info.repository.size or 0 for b in info.backup)

        self.log.info("verification of %s (stanza %s):", cluster.name, cluster.stanza)
        report_findings(cluster, findings, log=self.log.info)
        metrics.emit(cluster.name, {k: v for f in findings for k, v in f.metrics.items()})
        failed = [f for f in findings if not f.ok]
        if failed:
            raise AirflowFailException("; ".join(f"{f.summary}: {f.details}" if f.details else f.summary for f in failed)[:2000])
        return [{"problem": f.problem, "ok": f.ok, "summary": f.summary} for f in findings]
