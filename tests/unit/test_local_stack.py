"""The local stack's `down` stops every process it started. With --sso Airflow runs as FAB
components (scheduler, DAG processor, triggerer beside the API server), each in its own process
group: `down` must stop those groups too, not only the API server's."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from devstack import local


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_down_stops_the_airflow_components_started_beside_the_api_server(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "STATE", tmp_path / "state.json")
    # stands for the scheduler and a worker it forked, in the group it was started in
    component = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    local.STATE.write_text(json.dumps({"airflow_components": [component.pid]}))
    # reaped as soon as it exits, as init reaps the real components (their `up` has exited long ago)
    threading.Thread(target=component.wait, daemon=True).start()
    try:
        assert local.down(quiet=True) == 0
        deadline = time.monotonic() + 10
        while group_alive(component.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(component.pid)
        assert not local.STATE.exists()
    finally:
        if group_alive(component.pid):
            os.killpg(component.pid, 9)
        component.poll()
