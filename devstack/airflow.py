"""`airflow standalone` as a child process: the real scheduler, DAG processor, triggerer and API
server on 127.0.0.1, plus a tiny REST client for it. Used by the local stack and the end-to-end
tests; nothing here imports Airflow (it talks to it over HTTP like a person's browser would).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devstack.net import wait_for_port
from rewind.airflow_rest import AirflowRestClient
from rewind.runner import kill_process_group

REPO = Path(__file__).resolve().parents[1]


def hermetic_env(home: Path) -> dict[str, str]:
    """An Airflow of its own: home and SQLite database under `home`, this repo's DAGs and plugins,
    no examples. Must be in os.environ before anything imports airflow."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }


def airflow_bin() -> str:
    candidate = Path(sys.executable).parent / "airflow"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("airflow")
    if not found:
        raise RuntimeError("airflow is not installed in this environment: run scripts/install.sh")
    return found


def rewind_bin() -> str:
    """The `rewind` CLI installed beside this Python (scripts/install.sh installs the repo editable)."""
    candidate = Path(sys.executable).parent / "rewind"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("rewind")
    if not found:
        raise RuntimeError("the rewind CLI is not installed in this environment: run scripts/install.sh")
    return found


@dataclass
class AirflowStandalone:
    home: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)  # REWIND_INVENTORY, worker secrets, ...
    username: str = "admin"
    # Tests want only the runs they trigger; the local stack wants schedules live.
    paused_at_creation: bool = False
    # "simple" (Airflow's SimpleAuthManager: one admin) or "fab" (FAB auth manager: roles and DAG
    # access_control, what a production deployment uses; see include/rewind/roles.py).
    auth_manager: str = "simple"
    # FAB only: more people, name -> roles (each gets a generated password, see password(name)).
    users: dict[str, list[str]] = field(default_factory=dict)
    # FAB only: the components besides the API server (a test that runs no task needs only the DAG
    # processor, which serializes the DAGs and applies their access_control).
    components: tuple[str, ...] = ("scheduler", "dag-processor", "triggerer")
    # FAB only: False creates Rewind's roles without `rewind roles --apply`'s global grants (clearing
    # and marking). Their DAG rights, triggering included, come from each DAG's access_control all
    # the same; it saves four Airflow starts for a test that never clears or marks.
    apply_roles: bool = True
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _components: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _rest: AirflowRestClient | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        bin_dir = str(Path(airflow_bin()).parent)
        return {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",  # standalone runs `airflow ...`
            **hermetic_env(self.home),
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(self.paused_at_creation),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            **self._auth_manager_env(),
            # Lets a task set its own run's note through the REST API (the execution API cannot).
            "AIRFLOW_CONN_AIRFLOW_API": json.dumps(
                {
                    "conn_type": "http",
                    "host": "127.0.0.1",
                    "port": self.port,
                    "schema": "http",
                    "login": self.username,
                    "password": self.password(),
                }
            ),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            **self.env,
        }

    FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

    def _auth_manager_env(self) -> dict[str, str]:
        if self.auth_manager == "fab":
            return {"AIRFLOW__CORE__AUTH_MANAGER": self.FAB_AUTH_MANAGER}
        return {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
        }

    BUILTIN_ROLES = {"Admin", "Op", "User", "Viewer", "Public"}

    def _create_fab_users(self) -> None:
        """Rewind's roles as a deployment gets them (README "Who may do what"): `rewind roles --apply`,
        which creates DBA and BackupOperator with their global permissions; then any other custom role
        named in `users`, then every user. The password goes to `airflow users create` on its stdin
        (no controlling terminal, so getpass reads stdin): on a command line it would be readable in
        /proc by anyone on the machine."""
        from rewind.roles import ROLES  # plain data, no Airflow

        if self.apply_roles:
            applied = subprocess.run(
                [rewind_bin(), "roles", "--apply"], env=self.environment(), capture_output=True, text=True, timeout=600
            )
            if applied.returncode != 0:
                raise RuntimeError(f"rewind roles --apply exited {applied.returncode}: {applied.stderr.strip()[-2000:]}")
        else:
            self.cli("roles", "create", *ROLES)
        custom = sorted({r for roles in self.users.values() for r in roles} - self.BUILTIN_ROLES - set(ROLES))
        if custom:
            self.cli("roles", "create", *custom)
        for name, roles in {self.username: ["Admin"], **self.users}.items():
            password = self.password(name)
            subprocess.run(
                [
                    airflow_bin(),
                    "users",
                    "create",
                    "--username",
                    name,
                    "--firstname",
                    name,
                    "--lastname",
                    "rewind",
                    "--email",
                    f"{name}@rewind.invalid",
                    "--role",
                    roles[0],
                ],
                input=f"{password}\n{password}\n",
                env=self.environment(),
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
                start_new_session=True,
            )
            for role in roles[1:]:
                self.cli("users", "add-role", "--username", name, "--role", role)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([airflow_bin(), *args], env=self.environment(), capture_output=True, text=True, timeout=timeout, check=True)

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def start(self, *, pools: dict | None = None, timeout: float = 180) -> AirflowStandalone:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.passwords_file.exists():  # known before start, so connections can carry it
            self.passwords_file.touch(mode=0o600)
            self.passwords_file.write_text(json.dumps({name: secrets.token_urlsafe(12) for name in [self.username, *self.users]}))
        self.cli("db", "migrate")
        if self.auth_manager == "fab":
            self._create_fab_users()
        if pools:
            pools_file = self.home / "rewind-pools.json"
            pools_file.write_text(json.dumps(pools))
            self.cli("pools", "import", str(pools_file))
        log = open(self.home / "standalone.log", "ab")
        if self.auth_manager == "fab":
            # `airflow standalone` always switches to the simple auth manager, so with FAB the
            # components run as a deployment runs them: API server, scheduler, DAG processor, triggerer.
            env = {**self.environment(), "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
            self._components = [
                subprocess.Popen(
                    [airflow_bin(), component], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.home)
                )
                for component in self.components
            ]
            command = [airflow_bin(), "api-server"]
        else:
            env, command = self.environment(), [airflow_bin(), "standalone"]
        self._proc = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(self.home),
        )
        wait_for_port(self.port, timeout=timeout, process=self._proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).ok and self.password():
                    return self
            except requests.RequestException:
                pass
            if self._proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited with {self._proc.returncode}: see {self.home}/standalone.log")
            time.sleep(1)
        raise TimeoutError(f"airflow standalone not healthy within {timeout:.0f}s: see {self.home}/standalone.log")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def component_pids(self) -> list[int]:
        """FAB only: the scheduler, DAG processor and triggerer, each the leader of its process group."""
        return [component.pid for component in self._components]

    def password(self, username: str | None = None) -> str | None:
        try:
            return json.loads(self.passwords_file.read_text()).get(username or self.username)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @property
    def rest(self) -> AirflowRestClient:
        if self._rest is None:
            self._rest = AirflowRestClient(self.url, self.username, self.password())
        return self._rest

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.rest.api(method, path, **kwargs)

    def rest_as(self, username: str) -> AirflowRestClient:
        """The REST API as another user (FAB), to see what their roles allow."""
        return AirflowRestClient(self.url, username, self.password(username))

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api("GET", f"/dags/{dag_id}").status_code == 200:
                return
            time.sleep(2)
        errors = self.api("GET", "/importErrors").json()
        raise TimeoutError(f"DAG {dag_id} did not appear within {timeout:.0f}s; import errors: {errors}")

    def trigger(self, dag_id: str, *, conf: dict | None = None, note: str | None = None) -> requests.Response:
        """Unpause (a paused DAG's run never starts) and trigger a manual run."""
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        body = {"logical_date": None, "conf": conf or {}}
        if note:
            body["note"] = note
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run.get("state") in ("success", "failed"):
                return run
            time.sleep(2)
        raise TimeoutError(f"run {run_id} of {dag_id} not finished within {timeout:.0f}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        items = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        return {item["task_id"]: item["state"] for item in items}

    def stop(self) -> None:
        for component in self._components:
            kill_process_group(component, grace=30)
        self._components = []
        kill_process_group(self._proc, grace=30)
        self._proc = None
