"""`airflow standalone` as a child process: the real scheduler, DAG processor, triggerer and API
server on 127.0.0.1, plus a tiny REST client for it. Used by the local stack and the end-to-end
tests; nothing here imports Airflow (it talks to it over HTTP like a person's browser would).

With `executor="celery"` it runs the production shape instead (docker-compose.yaml): the API server,
scheduler, DAG processor and triggerer with the CeleryExecutor, a PostgreSQL metadata database and a
Redis broker given by the caller, and one `airflow celery worker --queues <queue>` per database
host, each started on its host (devstack.netns) with an Airflow home of its own (its logs, served to
the API server by the worker's log server, as on a separate machine). The settings that decide how
fast a crash is recovered are read from docker-compose.yaml, so the e2e runs what is deployed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from devstack.net import free_port, wait_for_port
from devstack.netns import DatabaseHost, kill_tree
from rewind.airflow_rest import AirflowRestClient
from rewind.runner import kill_process_group

REPO = Path(__file__).resolve().parents[1]
SERVICE_USER = "airflow_api"  # the `airflow_api` connection's account (role RewindService)
COMPOSE_FILE = REPO / "docker-compose.yaml"
CELERY_EXECUTOR = "CeleryExecutor"
# What the production shape takes from docker-compose.yaml verbatim: these keys, and every
# [scheduler] and [workers] option there (heartbeats, timeouts: how fast a crash is recovered).
# Everything else there names a container or a secret, and is this stack's own here.
COMPOSE_KEYS = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__AUTH_MANAGER")
COMPOSE_SECTIONS = ("AIRFLOW__SCHEDULER__", "AIRFLOW__WORKERS__")


def compose_airflow_settings(path: Path = COMPOSE_FILE) -> dict[str, str]:
    """The Airflow settings docker-compose.yaml gives every Airflow component (its `x-airflow`
    environment) that the Celery e2e runs with too: COMPOSE_KEYS and the COMPOSE_SECTIONS options."""
    env = yaml.safe_load(path.read_text())["x-airflow"]["environment"]
    return {
        key: str(value)
        for key, value in env.items()
        if key in COMPOSE_KEYS or (key.startswith(COMPOSE_SECTIONS) and "${" not in str(value))
    }


def _clean_env() -> dict[str, str]:
    """What a service manager gives a process: no variable of the shell or the test that started it."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return f"{path} ends:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"{path} unreadable"


@dataclass
class CeleryWorker:
    """`airflow celery worker --queues <queue>` on its database host (when given), named after it."""

    queue: str
    home: Path  # the host's own Airflow home: its task logs live here, served by its log server
    host: DatabaseHost | None = None
    env: dict[str, str] = field(default_factory=dict)  # this host's own secrets and connections
    concurrency: int = 2
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def hostname(self) -> str:
        return self.host.name if self.host else self.queue

    @property
    def celery_hostname(self) -> str:
        return f"{self.queue}@{self.hostname}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def arguments(self) -> list[str]:
        """`airflow ...` arguments, as docker-compose.yaml's worker services run them."""
        return [
            "celery",
            "worker",
            "--queues",
            self.queue,
            "--celery-hostname",
            self.celery_hostname,
            "--concurrency",
            str(self.concurrency),
        ]

    @property
    def log_file(self) -> Path:
        return self.home / "worker.log"


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
    # "local" (LocalExecutor: `airflow standalone`, or the components with FAB) or "celery" (the
    # production shape: CeleryExecutor, `database_url`, `broker_url`, `result_backend`, `workers`).
    executor: str = "local"
    host: str = "127.0.0.1"  # where the API server listens: the workers' execution API too
    database_url: str | None = None  # [database] sql_alchemy_conn; default SQLite in home
    broker_url: str | None = None
    result_backend: str | None = None
    workers: list[CeleryWorker] = field(default_factory=list)
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
        return f"http://{self.host}:{self.port}"

    @property
    def celery(self) -> bool:
        return self.executor == "celery"

    def environment(self) -> dict[str, str]:
        bin_dir = str(Path(airflow_bin()).parent)
        base = _clean_env() if self.celery else os.environ
        return {
            **base,
            "PATH": f"{bin_dir}:{base.get('PATH', '/usr/bin:/bin')}",  # standalone runs `airflow ...`
            **hermetic_env(self.home),
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(self.paused_at_creation),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            **self._auth_manager_env(),
            **self._celery_env(),
            # Lets a task set its own run's note through the REST API (the execution API cannot). With
            # FAB, as a deployment does it: its own account, role RewindService (no person's, not a DBA).
            "AIRFLOW_CONN_AIRFLOW_API": json.dumps(
                {
                    "conn_type": "http",
                    "host": self.host,
                    "port": self.port,
                    "schema": "http",
                    "login": self.rest_service_user,
                    "password": self.password(self.rest_service_user),
                }
            ),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            **self.env,
        }

    FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

    @property
    def rest_service_user(self) -> str:
        """Who the `airflow_api` connection signs in as: the service account under FAB (the simple
        auth manager of the local stack knows only its admin)."""
        return SERVICE_USER if self.auth_manager == "fab" else self.username

    def _celery_env(self) -> dict[str, str]:
        """The production shape's settings, the same in every component and worker: docker-compose's
        (compose_airflow_settings), this stack's database and broker, and the secrets every component
        must share (the workers' JWTs, the log server's signature, the Fernet key)."""
        if not self.celery:
            return {}
        if not (self.database_url and self.broker_url and self.result_backend):
            raise ValueError("executor='celery' needs database_url, broker_url and result_backend")
        shared = self.home / "shared-secrets.json"
        if not shared.exists():  # generated once per stack, kept for a restart
            from cryptography.fernet import Fernet

            shared.touch(mode=0o600)
            shared.write_text(
                json.dumps(
                    {
                        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                    }
                )
            )
        return {
            **compose_airflow_settings(),
            "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
            **json.loads(shared.read_text()),
            "AIRFLOW__API__WORKERS": "1",  # two CPUs here
            # Not Airflow's default 8794: another stack's triggerer on this machine may hold it.
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._trigger_log_port()),
        }

    def _trigger_log_port(self) -> int:
        path = self.home / "trigger-log-port"
        if not path.exists():
            path.write_text(str(free_port()))
        return int(path.read_text())

    def worker_environment(self, worker: CeleryWorker) -> dict[str, str]:
        """A worker's: the components' settings, its own Airflow home, its host's secrets. Its task
        instances' `hostname` is its host's address (get_host_ip_address): the API server fetches a
        running task's log from there, and nothing here has DNS."""
        return {
            **self.environment(),
            "AIRFLOW_HOME": str(worker.home),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow.utils.net.get_host_ip_address",
            **worker.env,
        }

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
        named in `users`, then every user (`airflow users create`, `airflow users add-role` for each
        further role). Those commands run in one process (devstack.airflow_cli_batch: one Airflow
        import instead of one per command, ~5 s each), their arguments, passwords included, on its
        stdin: on a command line a password would be readable in /proc by anyone on the machine."""
        from rewind.roles import ALL_ROLES, SERVICE_ROLE, role_commands  # plain data, no Airflow

        commands: list[list[str]] = []
        if self.apply_roles:
            applied = subprocess.run(
                [rewind_bin(), "roles", "--apply"], env=self.environment(), capture_output=True, text=True, timeout=600
            )
            if applied.returncode != 0:
                raise RuntimeError(f"rewind roles --apply exited {applied.returncode}: {applied.stderr.strip()[-2000:]}")
        else:  # the same roles and grants, inside the batch (no `rewind roles --apply` and its four Airflow starts)
            commands += [argv[1:] for argv in role_commands()]
        custom = sorted({r for roles in self.users.values() for r in roles} - self.BUILTIN_ROLES - set(ALL_ROLES))
        if custom:
            commands.append(["roles", "create", *custom])
        for name, roles in {self.username: ["Admin"], SERVICE_USER: [SERVICE_ROLE], **self.users}.items():
            commands.append(
                [
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
                    f"--password={self.password(name)}",  # one argument: a password may start with "-"
                ]
            )
            commands += [["users", "add-role", "--username", name, "--role", role] for role in roles[1:]]
        batch = subprocess.run(
            [sys.executable, "-m", "devstack.airflow_cli_batch"],
            input=json.dumps(commands),
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=600,
            start_new_session=True,
            cwd=str(REPO),
        )
        if batch.returncode != 0:
            raise RuntimeError(f"creating roles and users exited {batch.returncode}: {batch.stderr.strip()[-2000:]}")

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([airflow_bin(), *args], env=self.environment(), capture_output=True, text=True, timeout=timeout, check=True)

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def start(self, *, pools: dict | None = None, timeout: float = 180) -> AirflowStandalone:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.passwords_file.exists():  # known before start, so connections can carry it
            self.passwords_file.touch(mode=0o600)
            self.passwords_file.write_text(
                json.dumps({name: secrets.token_urlsafe(12) for name in [self.username, SERVICE_USER, *self.users]})
            )
        self.cli("db", "migrate")
        importing = None
        if pools:  # meanwhile the users are created: each `airflow` command takes seconds to start
            pools_file = self.home / "rewind-pools.json"
            pools_file.write_text(json.dumps(pools))
            importing = subprocess.Popen(
                [airflow_bin(), "pools", "import", str(pools_file)],
                env=self.environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        try:
            if self.auth_manager == "fab":
                self._create_fab_users()
        finally:
            if importing is not None:
                try:
                    output, _ = importing.communicate(timeout=300)
                except subprocess.TimeoutExpired:
                    kill_process_group(importing, grace=5)
                    raise
        if importing is not None and importing.returncode != 0:
            raise RuntimeError(f"airflow pools import exited {importing.returncode}: {output.strip()[-2000:]}")
        self._start_everything(timeout)
        return self

    def _start_everything(self, timeout: float) -> None:
        """The components and every worker at once, as a service manager starts them (a worker does
        not wait for the API server: it takes tasks from the broker as soon as it is up)."""
        self._start_components()
        offsets = {worker.queue: self._spawn_worker(worker) for worker in self.workers}
        deadline = time.monotonic() + timeout
        self._wait_healthy(timeout)
        for worker in self.workers:
            self._wait_worker_ready(worker, offsets[worker.queue], deadline)

    def _start_components(self, *, api_server: bool = True) -> None:
        if self.auth_manager == "fab" or self.celery:
            # `airflow standalone` always switches to the simple auth manager (and the LocalExecutor),
            # so with FAB or Celery the components run as a deployment runs them: API server,
            # scheduler, DAG processor, triggerer.
            self._components = [self._spawn_component(component) for component in self.components]
            if api_server:
                self._proc = self._spawn_component("api-server")
        else:
            self._proc = self._spawn_component("standalone")

    def _spawn_component(self, component: str) -> subprocess.Popen:
        env = self.environment()
        if self.auth_manager == "fab" or self.celery:
            env["AIRFLOW__CORE__EXECUTOR"] = CELERY_EXECUTOR if self.celery else "LocalExecutor"
        return subprocess.Popen(
            [airflow_bin(), component],
            env=env,
            stdout=open(self.home / "standalone.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(self.home),
        )

    def _wait_healthy(self, timeout: float) -> None:
        wait_for_port(self.port, timeout=timeout, host=self.host, process=self._proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).ok and self.password():
                    return
            except requests.RequestException:
                pass
            if self._proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited with {self._proc.returncode}: see {self.home}/standalone.log")
            time.sleep(1)
        raise TimeoutError(f"airflow standalone not healthy within {timeout:.0f}s: see {self.home}/standalone.log")

    def log_lines(self, needle: str, *, last: int = 40) -> str:
        """The components' own log lines (scheduler, API server, ...) that mention `needle`: what a
        failing test shows of how Airflow saw a task."""
        try:
            lines = (self.home / "standalone.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no standalone.log)"
        return "\n".join(line[:400] for line in lines if needle in line)[-last * 400 :]

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
            time.sleep(0.5)
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
            time.sleep(0.5)  # a GET; at 2 s a wait lost 1 s on average
        raise TimeoutError(f"run {run_id} of {dag_id} not finished within {timeout:.0f}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        items = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        return {item["task_id"]: item["state"] for item in items}

    def end_unfinished_runs(self, *, timeout: float = 90) -> list[str]:
        """Mark every run that is still queued or running failed, as an operator ends a run that went
        wrong, and wait until none of their tasks runs any more (the scheduler tells each running
        task process to stop). A test that failed midway leaves its run asking, waiting or running:
        this is how the next test gets an Airflow with nothing of it still acting on the cluster.
        Returns the runs it ended."""
        ended = []
        for state in ("running", "queued"):
            runs = self.api("GET", "/dags/~/dagRuns", params={"state": state, "limit": 100}).json().get("dag_runs", [])
            for run in runs:
                self.api("PATCH", f"/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}", json={"state": "failed"}).raise_for_status()
                ended.append(f"{run['dag_id']}/{run['dag_run_id']} ({state})")
        deadline = time.monotonic() + timeout
        while ended:
            active = [
                f"{ti['dag_id']}.{ti['task_id']}"
                for state in ("running", "queued", "restarting", "deferred", "awaiting_input")
                for ti in self.api("GET", "/dags/~/dagRuns/~/taskInstances", params={"state": state}).json().get("task_instances", [])
            ]
            if not active:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"tasks still active {timeout:.0f}s after their runs were marked failed: {active}")
            time.sleep(1)
        return ended

    # ---- the production shape: workers, and crashes ---------------------------------------------
    def worker(self, queue: str) -> CeleryWorker:
        return next(w for w in self.workers if w.queue == queue)

    def start_worker(self, worker: CeleryWorker, *, timeout: float = 120) -> None:
        """Start the worker on its host and wait until Celery says it is ready to take tasks."""
        offset = self._spawn_worker(worker)
        self._wait_worker_ready(worker, offset, time.monotonic() + timeout)

    def _spawn_worker(self, worker: CeleryWorker) -> int:
        """Start the worker on its host; returns where its log stood (its `ready.` line comes after)."""
        worker.home.mkdir(parents=True, exist_ok=True)
        argv = [airflow_bin(), *worker.arguments()]
        offset = worker.log_file.stat().st_size if worker.log_file.exists() else 0
        worker._proc = subprocess.Popen(
            worker.host.argv(argv) if worker.host else argv,
            env=self.worker_environment(worker),
            stdout=open(worker.log_file, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(worker.home),
        )
        return offset

    def _wait_worker_ready(self, worker: CeleryWorker, offset: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            with open(worker.log_file, "rb") as log:
                log.seek(offset)
                if f"{worker.celery_hostname} ready.".encode() in log.read():
                    return
            if worker._proc.poll() is not None:
                raise RuntimeError(
                    f"celery worker {worker.celery_hostname} exited with {worker._proc.returncode}: {_tail(worker.log_file)}"
                )
            time.sleep(0.5)
        raise TimeoutError(f"celery worker {worker.celery_hostname} not ready in time: {_tail(worker.log_file)}")

    def kill_worker(self, queue: str) -> list[int]:
        """SIGKILL the worker and everything it started (kill_tree); returns the pids."""
        worker = self.worker(queue)
        killed = kill_tree(worker._proc)
        worker._proc = None
        return killed

    def crash(self) -> list[int]:
        """SIGKILL every Airflow process of the stack at once, workers and what they run included,
        as a power loss would; the metadata database and the broker keep running."""
        killed: list[int] = []
        for proc in [*(w._proc for w in self.workers), *self._components, self._proc]:
            killed += kill_tree(proc)
        for worker in self.workers:
            worker._proc = None
        self._components, self._proc = [], None
        return killed

    def restart(self, *, api_server_after: Callable[[], object] | None = None, timeout: float = 180) -> None:
        """Start every component and worker again, as after a crash (no migration, no users): all at
        once, or with `api_server_after` the API server last, once that returns (the workers, the
        scheduler, DAG processor and triggerer up and working meanwhile: tasks are scheduled and
        sent to workers whose task runners cannot reach the API server)."""
        if api_server_after is None:
            self._start_everything(timeout)
            return
        if not (self.auth_manager == "fab" or self.celery):
            raise ValueError("the API server starts on its own only when the components run separately (FAB or Celery)")
        offsets = {worker.queue: self._spawn_worker(worker) for worker in self.workers}
        self._start_components(api_server=False)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            self._wait_worker_ready(worker, offsets[worker.queue], deadline)
        api_server_after()
        self._proc = self._spawn_component("api-server")
        self._wait_healthy(timeout)

    def stop(self) -> None:
        # Workers first: nothing of theirs may outlive the stack (their task processes and commands
        # run in process groups and sessions of their own, so the whole tree is killed).
        for worker in self.workers:
            kill_tree(worker._proc)
            worker._proc = None
        if self.celery:  # nothing of the production shape needs a graceful stop: all is thrown away
            self.crash()
            return
        for component in self._components:
            kill_process_group(component, grace=30)
        self._components = []
        kill_process_group(self._proc, grace=30)
        self._proc = None
