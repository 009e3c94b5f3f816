"""A small client for Airflow's public REST API (v2), over HTTP only: no Airflow import.

Used where a task must change what the execution API does not cover (a DAG run's note), and by
the local stack and end-to-end tests to drive a real Airflow as a person's browser would.
"""

from __future__ import annotations

import requests


class AirflowRestClient:
    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            response = requests.post(
                f"{self.base_url}/auth/token", json={"username": self.username, "password": self.password}, timeout=self.timeout
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return requests.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=self.timeout, **kwargs)

    def set_run_note(self, dag_id: str, run_id: str, note: str) -> None:
        """`note` must fit AIRFLOW_NOTE_MAX_CHARS (bounded_note)."""
        response = self.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", params={"update_mask": "note"}, json={"note": note})
        response.raise_for_status()

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str) -> dict:
        """The human-in-the-loop question of a task and its response, as Airflow recorded them."""
        response = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails")
        response.raise_for_status()
        return response.json()


# Airflow's REST API refuses a longer DAG run note (422).
AIRFLOW_NOTE_MAX_CHARS = 1000


def bounded_note(note: str, where_the_rest_is: str) -> str:
    """`note` cut at a line end to what Airflow accepts, saying where the whole text is."""
    if len(note) <= AIRFLOW_NOTE_MAX_CHARS:
        return note
    tail = f"\n… ({where_the_rest_is})"
    cut = note[: AIRFLOW_NOTE_MAX_CHARS - len(tail)]
    head, _, _ = cut.rpartition("\n")
    return (head or cut) + tail
