"""SalvageOperator: after a rewind, the rows the legitimate discarded transactions wrote, as CSV
and SQL for the DBA to review and apply (rewind.salvage). Read-only against production."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from rewind.salvage import salvage
from rewind.state import file_key, state_dir
from rewind_airflow.operators.base import RewindClusterOperator
from rewind_airflow.run_note import set_run_note


class SalvageOperator(RewindClusterOperator):
    """Restores the old timeline's latest state into a scratch cluster (archiving off, removed
    afterwards) and writes the files under <state_path>/salvage/<run>/, named in the log, the run
    note and the XCom."""

    template_fields: Sequence[str] = ("cluster", "bad_xids", "timeline", "from_repository", "airflow_api_conn_id")

    def __init__(
        self,
        *,
        bad_xids: Any = (),
        timeline: Any = "previous",
        from_repository: Any = False,
        airflow_api_conn_id: str = "airflow_api",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bad_xids = bad_xids
        self.timeline = timeline
        self.from_repository = from_repository
        self.airflow_api_conn_id = airflow_api_conn_id

    def execute_on_cluster(self, context) -> dict[str, Any]:
        bad = [str(x).strip() for x in (self.bad_xids or ())]
        wrong = [x for x in bad if not x.isdigit()]
        if wrong:  # bad input: one line, before anything is read
            raise AirflowFailException(
                f"param bad_xids: {', '.join(map(repr, wrong))} not a transaction id (an integer, as the finder names it)"
            )
        timeline = str(self.timeline or "previous")
        if timeline != "previous" and not timeline.isdigit():
            raise AirflowFailException(f"param timeline: {timeline!r} is neither 'previous' nor a timeline number")
        cluster = self.hook.cluster
        directory = Path(state_dir(cluster, "salvage", file_key(context["run_id"])))
        result = salvage(
            self.hook.get_conn(),
            self.hook.os_runner(),
            directory=directory,
            bad_xids=[int(x) for x in bad],
            old_timeline=None if timeline == "previous" else int(timeline),
            from_repository=self.from_repository in (True, "True", "true"),
            log=self.log.info,
        )
        text = result.summary()
        self.log.info("%s:\n%s", cluster.name, text)
        set_run_note(
            self,
            context,
            text,
            where_the_rest_is="the task log and the XCom have all of it",
        )
        return result.as_dict()
