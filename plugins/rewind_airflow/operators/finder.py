"""FindTargetOperator: the transactions of a time window, read from the archived WAL, and the PITR
params that stop just before each (rewind.finder)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from rewind.finder import FinderError, Window, find_transactions
from rewind.pitr.recovery import archive_current_wal
from rewind_airflow.operators.base import RewindClusterOperator
from rewind_airflow.run_note import set_run_note


class FindTargetOperator(RewindClusterOperator):
    """Lists the committed transactions of the window (xid, commit time, rows per table, DDL) in the
    task log, the run note and the XCom, with the recoverable window. Changes nothing but a WAL
    switch (`archive_wal`), so that what was committed until now is in the repository to be read."""

    template_fields: Sequence[str] = ("cluster", "window_start", "window_end", "tables", "timeline", "max_segments", "airflow_api_conn_id")

    def __init__(
        self,
        *,
        window_start: str,
        window_end: str | None = None,
        tables: Any = (),
        timeline: str = "current",
        max_segments: Any = 256,
        archive_wal: bool = True,
        airflow_api_conn_id: str = "airflow_api",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_start = window_start
        self.window_end = window_end
        self.tables = tables
        self.timeline = timeline
        self.max_segments = max_segments
        self.archive_wal = archive_wal
        self.airflow_api_conn_id = airflow_api_conn_id

    def execute_on_cluster(self, context) -> dict[str, Any]:
        try:  # bad input: one line, before anything is read
            window = Window.parse(self.window_start, self.window_end, now=dt.datetime.now(dt.timezone.utc))
        except FinderError as exc:
            raise AirflowFailException(str(exc)) from None
        timeline = str(self.timeline or "current")
        if timeline != "current" and not timeline.isdigit():
            raise AirflowFailException(f"param timeline: {timeline!r} is neither 'current' nor a timeline number")
        cluster, client = self.hook.cluster, self.hook.get_conn()
        if self.archive_wal:
            archive_current_wal(self.hook.os_runner(), cluster, log=self.log.info)
        result = find_transactions(
            client,
            self.hook.os_runner(),
            window=window,
            tables=list(self.tables or ()),
            timeline=None if timeline == "current" else int(timeline),
            max_segments=int(self.max_segments),
            log=self.log.info,
        )
        text = result.text()
        self.log.info("%s (stanza %s):\n%s", cluster.name, cluster.stanza, text)
        set_run_note(
            self,
            context,
            text,
            where_the_rest_is="the whole list is in the task log and the XCom",
        )
        return result.as_dict()
