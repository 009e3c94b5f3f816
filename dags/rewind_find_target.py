"""Which instant is just before the bad transaction? Read from the archived WAL, not guessed.

    find_target: archive the current WAL -> read the archived WAL of the window -> the transactions
                 (xid, commit time, rows per table, DDL), the recoverable window, the PITR params

Triggered by hand with a time window (and optionally table names). Changes nothing but a WAL
switch; the result is in the task log (a table), the run note and the XCom.
"""

from __future__ import annotations

import textwrap

from airflow.sdk import DAG, Param

from rewind.inventory import Cluster, load_inventory
from rewind.roles import DBA_ONLY
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.operators.finder import FindTargetOperator

PARAMS = {
    "window_start": Param(type="string", minLength=1, title="Window start", description="with time zone: 2026-11-24 02:00:00+00"),
    "window_end": Param("", type="string", title="Window end", description="with time zone; empty: now"),
    "tables": Param(
        [],
        type="array",
        items={"type": "string"},
        title="Tables",
        description='only transactions touching these: ["ledger_entry"] (empty: all)',
    ),
    "timeline": Param(
        "current",
        type="string",
        pattern="^(current|[1-9][0-9]*)$",
        title="Timeline",
        description="current: the cluster's; a number reads that timeline's history (e.g. the one before a rewind)",
    ),
    "max_segments": Param(
        256, type="integer", minimum=1, title="Segment limit", description="archived WAL segments read at most (16 MB each)"
    ),
}


def doc_md(cluster: Cluster) -> str:
    return textwrap.dedent(
        f"""
        # Find the rewind target of `{cluster.name}` (stanza `{cluster.stanza}`)

        Lists, from the WAL archived in the repository, the transactions committed in the window:
        xid, commit time and LSN, rows inserted/updated/deleted per table, and DDL (DROP; TRUNCATE
        or another rewrite; CREATE; other catalog changes). Also the recoverable window: the oldest
        point a restore reaches (end of the oldest backup) and the newest archived WAL segment.

        Each transaction comes with the PITR params that stop just before it:
        `target_type=xid target=N target_exclusive=true` (and its timeline). Copy them into
        `rewind_pitr__{cluster.name}`.

        **Changes nothing** but a WAL switch (so that what was committed until now is archived and
        can be read). Tables are named from the live cluster's catalogs (read-only); a table
        truncated, rewritten or dropped since shows as `relfilenode N (unknown now)`. Limits: README,
        "Finding the target". Runs on the worker queue `{cluster.queue}`; DBA only.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    with DAG(
        dag_id=f"rewind_find_target__{cluster.name}",
        description=f"Transactions of a time window in {cluster.name}'s archived WAL, and the PITR params before each",
        doc_md=doc_md(cluster),
        params=PARAMS,
        render_template_as_native_obj=True,
        **cluster_dag_kwargs(cluster, workflow="find_target", access_control=DBA_ONLY, schedule=None),
    ):
        FindTargetOperator(
            task_id="find_target",
            cluster=cluster.name,
            window_start="{{ params.window_start }}",
            window_end="{{ params.window_end }}",
            tables="{{ params.tables }}",
            timeline="{{ params.timeline }}",
            max_segments="{{ params.max_segments }}",
        )
