"""After a rewind: salvage the legitimate transactions it discarded, for the DBA to review and apply.

    salvage: read the old timeline's WAL after the switch point (the discarded transactions)
             -> restore its latest state into a scratch cluster (archiving off)
             -> per table, by primary key: rows inserted, updated, deleted by the transactions not
                marked bad -> CSV per table and change + SQL per database -> scratch removed

Triggered by hand by a DBA. Changes nothing in production: the SQL is applied by the DBA.
"""

from __future__ import annotations

import textwrap

from airflow.sdk import DAG, Param

from rewind.inventory import Cluster, load_inventory
from rewind.roles import DBA_ONLY
from rewind_airflow.defaults import cluster_dag_kwargs
from rewind_airflow.operators.salvage import SalvageOperator

PARAMS = {
    "bad_xids": Param(
        [],
        type="array",
        items={"type": ["integer", "string"]},
        title="Bad transactions",
        description="xids to leave out, e.g. the finder's (rewind_find_target): [741]",
    ),
    "timeline": Param(
        "previous",
        type="string",
        pattern="^(previous|[1-9][0-9]*)$",
        title="Old timeline",
        description="previous: the timeline the current one branched from (the last rewind); or its number: an older "
        "ancestor, or the timeline an undo set aside (the writes made between a rewind and its undo)",
    ),
    "from_repository": Param(
        False,
        type="boolean",
        title="Replay from the repository",
        description="after a clone-mode rewind the old timeline's end is read from the directory it kept (faster, "
        "unchanged by the read); on: replay it from the repository all the same",
    ),
}


def doc_md(cluster: Cluster) -> str:
    return textwrap.dedent(
        f"""
        # Salvage after a rewind of `{cluster.name}` (stanza `{cluster.stanza}`)

        A rewind discards every transaction committed after its target, the legitimate ones too.
        This DAG finds them in the old timeline's archived WAL (after the switch point the new
        timeline's history names), restores the old timeline's latest state into a scratch cluster
        on this host (`--archive-mode=off`, own socket, removed afterwards) and writes, per table
        with a primary key, the rows inserted, updated and deleted by those transactions minus the
        `bad_xids`: `<schema.table>.<inserted|updated|deleted>.csv` and `salvage.<database>.sql`
        (upserts by primary key and deletions in one transaction) under
        `{cluster.state_dir}/salvage/<run>/`. The directory and files are in the task log, the run
        note and the XCom.

        **Changes nothing in production** (reads its repository and, read-only, the rewound
        cluster); the DBA reviews the SQL and applies it. After a clone-mode rewind, the old
        timeline's latest state is read from the pre-rewind directory it kept (started as a standby
        on a private socket: nothing is written to it) instead of replayed from the repository.
        After an undo, `timeline` set to the timeline the undo set aside salvages the writes made
        between the rewind and the undo the same way (from the directory the undo kept). Needs the
        pre-rewind history in the repository (held by the PITR, README "Retention") and disk for a
        restore of one backup.
        Limits and REVIEW notes: README, "Salvage after a rewind". Runs on `{cluster.queue}`; DBA only.
        """
    )


inventory = load_inventory()

for cluster in inventory.clusters.values():
    with DAG(
        dag_id=f"rewind_salvage__{cluster.name}",
        description=f"Rows the last rewind of {cluster.name} discarded, minus the bad transactions, as CSV and SQL to review",
        doc_md=doc_md(cluster),
        params=PARAMS,
        render_template_as_native_obj=True,
        **cluster_dag_kwargs(cluster, workflow="salvage", access_control=DBA_ONLY, schedule=None),
    ):
        SalvageOperator(
            task_id="salvage",
            cluster=cluster.name,
            bad_xids="{{ params.bad_xids }}",
            timeline="{{ params.timeline }}",
            from_repository="{{ params.from_repository }}",
        )
