"""Monthly restore rehearsal of one cluster, on a scratch copy, under a standard change.

    validate -> open_change -> mark_production -> restore_scratch -> check_scratch -> compare
      -> annotate_backup -> remove_scratch (always) -> close_change

Proves each month that the newest backup restores, recovers to production's rows, passes pg_amcheck
--heapallindexed, pg_dump and pg_checksums, and how long that takes (RTO) and how much WAL was not
yet in the repository then (RPO). Production is never stopped; its one write is a restore point.
The scratch copy never archives (--archive-mode=off) and is removed whatever happened. Scheduled by
the inventory (rehearsal.schedule, once rehearsal.change_template is set), or triggered by hand.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta

from airflow.sdk import DAG, Param

from rewind.inventory import Cluster, load_inventory
from rewind.roles import DBA_ONLY
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.notifiers.rehearsal import RehearsalFailureNotifier
from rewind_airflow.operators.rehearsal import (
    AnnotateVerifiedBackupOperator,
    CheckScratchOperator,
    CloseRehearsalChangeOperator,
    CompareRowCountsOperator,
    MarkProductionOperator,
    OpenRehearsalChangeOperator,
    RehearsalValidateOperator,
    RemoveScratchOperator,
    RestoreScratchOperator,
)

REQUEST = "{{ ti.xcom_pull(task_ids='validate') }}"
MARK = "{{ ti.xcom_pull(task_ids='mark_production') }}"
RESTORED = "{{ ti.xcom_pull(task_ids='restore_scratch') }}"
CHECKED = "{{ ti.xcom_pull(task_ids='check_scratch') }}"

PARAMS = {
    "target": Param(
        "",
        type="string",
        maxLength=64,
        title="Target",
        description="empty: the inventory's rehearsal.target · latest: a restore point made on production now (row counts compared "
        "exactly) · an age like 1h · a time with time zone, 2026-11-24 02:13:30+00 (row counts reported)",
    ),
    "reason": Param(
        "Monthly restore rehearsal",
        type="string",
        minLength=10,
        title="Reason",
        description="why this rehearsal runs (goes into the change)",
    ),
}


def doc_md(cluster: Cluster) -> str:
    settings = cluster.rehearsal
    schedule = (
        f"`{settings.schedule}` (UTC)"
        if settings.change_template
        else "**not scheduled**: set `rehearsal.change_template` (a standard change template's sys_id) in the inventory; until then "
        "every run is refused before anything is touched"
    )
    tables = ", ".join(f"`{t}`" for t in settings.tables) or "none declared (`rehearsal.tables`)"
    return textwrap.dedent(
        f"""
        # Restore rehearsal of `{cluster.name}` (stanza `{cluster.stanza}`)

        Restores a backup from `s3://{cluster.repo.bucket}{cluster.repo.path}` into the scratch directory
        `{cluster.rehearsal_path}` on the worker queue `{cluster.rehearsal_queue}`, proves it and removes it.
        **Production is not stopped or changed**: its one write is a restore point (one WAL record) and a WAL switch.

        **Schedule:** {schedule}; triggered by hand with the form (target, reason). **Target by default:**
        `{settings.target}`. **Tables compared:** {tables} in database `{cluster.rehearsal_database}`.
        **Who may run it:** the DBA role (auditors read every run).

        | step | what it does | touches |
        |---|---|---|
        | `validate` | target and reason; a change template set; scratch path safe (never overlapping production); no PITR holds the cluster (else skipped); production is the primary and has every declared table; repository ready with a backup before the target | nothing |
        | `open_change` | a standard change from the template (pre-approved) and a change task for this run; found again on a retry | ServiceNow |
        | `mark_production` | change re-read (a cancelled one stops here), Implement, task In Progress; the declared tables counted and a restore point made as one moment (writers of those tables wait for one WAL record); WAL switched and archived | one restore point |
        | `restore_scratch` | the newest backup before the target restored with `--archive-mode=off`, started on its own socket, recovered and promoted; RTO (restore start to first query) and RPO (age of the newest archived WAL then) | scratch only |
        | `check_scratch` | row counts; `pg_amcheck --heapallindexed` on every database; `pg_dump` of every database to /dev/null; stopped: `pg_checksums --check`; nothing of the copy's timeline in the repository | scratch only |
        | `compare` | row counts equal to production's at the restore point (a time target: reported) | nothing |
        | `annotate_backup` | `pgbackrest annotate` the proved backup `rewind_last_verified=<time>`, `rewind_verified_by=<change>` (stanza pool) | backup annotation |
        | `remove_scratch` | the copy stopped and its directory removed, **also after a failure** | scratch only |
        | `close_change` | task Closed `successful` and change closed `successful` with the evidence; metrics `rewind.{cluster.name}.rehearsal.*`; an open `rehearsal` incident resolved | ServiceNow |

        **On failure:** the change task Closed `unsuccessful` with the reason, the change closed `unsuccessful`
        (canceled if the rehearsal had not begun), `rehearsal.ok` 0, and an incident (problem `rehearsal`)
        unless it was a refusal (a typo in the form, no template, a change someone cancelled).
        Never two rehearsals of `{cluster.name}` at once; backups keep running during one.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    sn = {"servicenow_conn_id": cluster.connections.servicenow}
    on_rehearsal_host = {"queue": cluster.rehearsal_queue}
    with DAG(
        dag_id=f"rewind_rehearsal__{cluster.name}",
        description=f"Monthly restore rehearsal of {cluster.name} on a scratch copy, under a standard change",
        doc_md=doc_md(cluster),
        params=PARAMS,
        render_template_as_native_obj=True,
        **cluster_dag_kwargs(
            cluster,
            workflow="rehearsal",
            access_control=DBA_ONLY,
            schedule=cluster.rehearsal.schedule if cluster.rehearsal.change_template else None,
            retry_delay=timedelta(minutes=2),
            default_args={"on_failure_callback": RehearsalFailureNotifier.for_cluster(cluster)},
        ),
    ):
        validate = RehearsalValidateOperator(task_id="validate", cluster=cluster.name, retries=0, **sn)
        open_change = OpenRehearsalChangeOperator(task_id="open_change", cluster=cluster.name, request=REQUEST, **sn)
        mark = MarkProductionOperator(task_id="mark_production", cluster=cluster.name, request=REQUEST, **sn)
        restore_scratch = RestoreScratchOperator(
            task_id="restore_scratch",
            cluster=cluster.name,
            request=REQUEST,
            mark=MARK,
            execution_timeout=timedelta(seconds=cluster.pgbackrest.backup_timeout_s + cluster.rehearsal.recovery_timeout_s),
            **on_rehearsal_host,
            **sn,
        )
        check_scratch = CheckScratchOperator(
            task_id="check_scratch",
            cluster=cluster.name,
            request=REQUEST,
            mark=MARK,
            restored=RESTORED,
            retries=0,
            **on_rehearsal_host,
            **sn,
        )
        compare = CompareRowCountsOperator(
            task_id="compare", cluster=cluster.name, request=REQUEST, mark=MARK, checked=CHECKED, retries=0, **sn
        )
        annotate = AnnotateVerifiedBackupOperator(
            task_id="annotate_backup",
            cluster=cluster.name,
            request=REQUEST,
            restored=RESTORED,
            pool=cluster.pool,
            **on_rehearsal_host,
            **sn,
        )
        remove_scratch = RemoveScratchOperator(
            task_id="remove_scratch", cluster=cluster.name, trigger_rule="all_done", retries=2, **on_rehearsal_host, **sn
        )
        close_change = CloseRehearsalChangeOperator(
            task_id="close_change",
            cluster=cluster.name,
            request=REQUEST,
            steps={
                "mark": MARK,
                "restored": RESTORED,
                "checked": CHECKED,
                "compared": "{{ ti.xcom_pull(task_ids='compare') }}",
                "annotated": "{{ ti.xcom_pull(task_ids='annotate_backup') }}",
                "removed": "{{ ti.xcom_pull(task_ids='remove_scratch') }}",
            },
            **sn,
        )

        validate >> open_change >> mark >> restore_scratch >> check_scratch >> compare >> annotate >> remove_scratch >> close_change
        # closed successful only when the backup was annotated, whatever remove_scratch's trigger rule lets through
        annotate >> close_change
