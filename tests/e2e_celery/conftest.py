"""The production shape, run for real on one machine (README "Production deployment"), shared by
every test of this package:

  root namespace, on the bridge address (devstack.netns):
    Redis (broker) · PostgreSQL (Airflow's metadata database) · the API server, scheduler, DAG
    processor and triggerer with the CeleryExecutor and the FAB auth manager · S3 over TLS · the
    Vault simulator · the ServiceNow simulator (approving every change as it is raised)
  database host pg-ledger-01 (its own network namespace, address and host name):
    PostgreSQL cluster `ledger` · `airflow celery worker --queues pg-ledger-01`
  database host pg-crm-01: PostgreSQL cluster `crm` · `airflow celery worker --queues pg-crm-01`

The two clusters, and so the two hosts and their queues, are those of config/inventory.example.yaml
(docker-compose.yaml has a worker service for each). Each worker holds only its own cluster's
secrets (an AppRole whose Vault policy reads its cluster's S3 lease and passphrase, and the static
key PostgreSQL's archive_command uses), and has an Airflow home of its own. The crash-recovery
settings come from docker-compose.yaml (devstack.airflow.compose_airflow_settings).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack.airflow import REPO, AirflowStandalone, CeleryWorker
from devstack.demo import DemoStack
from devstack.metadata_db import MetadataDatabase
from devstack.net import free_port
from devstack.netns import HostNetwork
from devstack.redis_server import RedisServer
from devstack.s3tls import S3OverTLS
from devstack.servicenow_sim import ServiceNowSimulator, SimState
from devstack.vault_sim import VaultSimulator, VaultState, configure_cluster, inventory_credentials
from rewind.cli import pools_json
from rewind.inventory import load_inventory
from rewind_airflow.identity import identity_key
from tests.conftest import IDENTITY

EXAMPLE_INVENTORY = REPO / "config" / "inventory.example.yaml"


def example_queues() -> dict[str, str]:
    """cluster -> worker queue, as config/inventory.example.yaml routes them."""
    return {name: cluster.queue for name, cluster in load_inventory(EXAMPLE_INVENTORY).clusters.items()}


@dataclass
class CeleryShape:
    root: Path
    network: HostNetwork
    airflow: AirflowStandalone
    clusters: dict[str, DemoStack]
    servicenow: ServiceNowSimulator
    vault: VaultSimulator
    redis: RedisServer
    metadata_db: MetadataDatabase
    queues: dict[str, str] = field(default_factory=dict)

    def host(self, cluster: str):
        return self.clusters[cluster].host

    # ---- REST helpers --------------------------------------------------------------------------
    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        response = self.airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return {ti["task_id"]: ti for ti in response.json()["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict]:
        """Every try of a task instance, the current one last."""
        response = self.airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        response.raise_for_status()
        return sorted(response.json()["task_instances"], key=lambda ti: ti["try_number"])

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> str:
        if try_number is None:
            try_number = self.airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}").json()["try_number"]
        return self.airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}").text

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.airflow.wait_for_dag(dag_id)
        response = self.airflow.trigger(dag_id, conf=conf)
        assert response.status_code == 200, response.text
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        run = self.airflow.wait_for_run(dag_id, run_id, timeout=timeout)
        if run["state"] != "success":
            tis = self.task_instances(dag_id, run_id)
            failed = [t for t, ti in tis.items() if ti["state"] in ("failed", "up_for_retry")]
            logs = {t: self.task_log(dag_id, run_id, t)[-3000:] for t in failed}
            raise AssertionError(f"{dag_id} {run_id} ended {run['state']}: { {t: ti['state'] for t, ti in tis.items()} }; logs: {logs}")
        return run

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, predicate, *, timeout: float = 300, poll: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.airflow.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
            if response.status_code == 200 and predicate(response.json()):
                return response.json()
            time.sleep(poll)
        raise AssertionError(f"{dag_id} {run_id} {task_id} never got there: {self.task_instances(dag_id, run_id).get(task_id)}")


def utc(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def pgbackrest_pids(stanza: str, command: str, *, containing: str = "") -> list[int]:
    """Running `pgbackrest ... --stanza=<stanza> ... <command>` main processes (not their local
    workers, whose command is `<command>:local`), optionally with an argv item containing `containing`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[0].endswith("pgbackrest") and f"--stanza={stanza}" in argv and command in argv and any(containing in a for a in argv):
            found.append(int(entry))
    return found


def wait_for_command(stanza: str, command: str, *, containing: str = "", timeout: float = 300, poll: float = 0.02) -> int:
    """The pid of `pgbackrest <command>` of the stanza as soon as it runs (see pgbackrest_pids)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = pgbackrest_pids(stanza, command, containing=containing)
        if pids:
            return pids[0]
        time.sleep(poll)
    raise AssertionError(f"no pgbackrest {command} of stanza {stanza} ({containing}) started within {timeout:.0f}s")


def flock_holders(path: Path) -> list[int]:
    """Pids holding a flock() on `path` (pgBackRest's locks are flocks on files in its lock path)."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return []
    holders = []
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        # 1: FLOCK  ADVISORY  WRITE 12345 00:2a:67890 0 EOF
        if len(parts) >= 6 and parts[1] == "FLOCK" and int(parts[5].split(":")[2]) == inode:
            holders.append(int(parts[4]))
    return holders


def backup_lock_file(stack) -> Path:
    return Path(stack.cluster.pgbackrest.lock_path) / f"{stack.cluster.stanza}-backup.lock"


def netns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def host_netns(host) -> int:
    return os.stat(f"/run/netns/{host.netns}").st_ino


LEDGER_SQL = """
drop table if exists ledger_entry;
create table ledger_entry (id bigint primary key, status text, padding text);
insert into ledger_entry select g, 'posted', repeat(md5(g::text), 8) from generate_series(1, {rows}) g;
"""


def _leftover_processes(root: Path) -> list[str]:
    """Processes of this run still alive: started under `root` or running something from it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().decode(errors="replace").replace("\0", " ").strip()
        except OSError:
            continue
        if cwd.startswith(str(root)) or str(root) in argv:
            found.append(f"{entry}: {argv[:200]}")
    return found


@pytest.fixture(scope="package")
def shape():
    if os.geteuid() != 0:
        pytest.fail("the production-shape e2e needs root (network namespaces, PostgreSQL as postgres): run scripts/test.sh as root")
    queues = example_queues()
    root = Path(tempfile.mkdtemp(prefix="rewind-celery-", dir="/tmp"))
    root.chmod(0o755)  # the postgres user must reach its clusters' directories
    network = HostNetwork()
    started: list = []  # what to stop, in reverse
    clusters_ready: concurrent.futures.Future | None = None
    began, marks = time.monotonic(), []  # setup's phases, printed (-s) to see where CI's time goes

    def mark(what: str) -> None:
        marks.append(f"{what} {time.monotonic() - began:.0f}s")

    try:
        network.create()
        hosts = {name: network.add_host(queue) for name, queue in queues.items()}
        s3 = S3OverTLS(root / "s3", host=network.address).start()
        started.append(s3.stop)
        (root / "s3").chmod(0o755)
        inventory = root / "inventory.yaml"
        clusters = {
            name: DemoStack(
                root / name,
                name=name,
                s3=s3,
                host=hosts[name],
                queue=queue,
                pg_port=5432,  # each host its own PostgreSQL on the standard port
                inventory_file=inventory,
                pitr_settings={"approval_poll_s": 2},
            )
            for name, queue in queues.items()
        }
        servicenow = ServiceNowSimulator(host=network.address, state=SimState(auto_approve=True)).start()
        started.append(servicenow.stop)
        state = VaultState(iam=s3.client("iam"))
        approles = {}
        for name, stack in clusters.items():
            policy = configure_cluster(state, cluster=name, bucket=s3.bucket, cipher_pass=stack.cipher_pass, lease_duration_s=600)
            approles[name] = state.add_approle([policy])  # a host's worker may read its own cluster's secrets only
            stack.base.mkdir(parents=True, exist_ok=True)
            stack.use_credentials(inventory_credentials(name, stack.env_prefix))  # writes its inventory entry
            started.append(stack.stop)
        vault = VaultSimulator(state, host=network.address).start()
        started.append(vault.stop)
        mark("hosts, S3, simulators")

        # The clusters come up on their hosts while Airflow migrates its database and starts (its
        # DAGs are paused and nothing is scheduled: no task needs a cluster before the tests).
        def start_clusters() -> None:
            for stack in clusters.values():
                stack.start()
                stack.psql(LEDGER_SQL.format(rows=20000))
            mark("clusters")

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        clusters_ready = pool.submit(start_clusters)
        pool.shutdown(wait=False)

        metadata_db = MetadataDatabase(root / "metadata-db", host=network.address).start()
        started.append(metadata_db.stop)
        redis = RedisServer(root / "redis", host=network.address).start()
        started.append(redis.stop)
        mark("metadata DB, Redis")

        workers = [
            CeleryWorker(
                queue=queues[name],  # the host's queue; the cluster's inventory `queue` routes its tasks
                home=root / f"{stack.host.name}-airflow",
                host=stack.host,
                env={
                    "AIRFLOW_CONN_VAULT_DEFAULT": vault.airflow_connection(approle=approles[name]),
                    f"AIRFLOW_CONN_REWIND_PG_{name.upper()}": stack.postgres_connection(),
                    **stack.worker_env(),  # what PostgreSQL's archive_command gets when a task starts it
                },
            )
            for name, stack in clusters.items()
        ]
        airflow = AirflowStandalone(
            home=root / "airflow",
            port=free_port(),
            host=network.address,
            env={
                "REWIND_INVENTORY": str(inventory),
                "AIRFLOW_CONN_SERVICENOW_DEFAULT": servicenow.airflow_connection(),
                # Only the runs the tests trigger: unpausing a DAG would otherwise also start a run
                # for its schedule's latest time (catchup=False), a backup nobody asked for.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            },
            paused_at_creation=True,
            auth_manager="fab",
            # Rewind's roles without `rewind roles --apply`'s clear/mark grants (four Airflow starts):
            # only the admin acts here; tests/e2e tests the roles.
            apply_roles=False,
            executor="celery",
            database_url=metadata_db.sqlalchemy_url(),
            broker_url=redis.url,
            result_backend=metadata_db.celery_result_backend(),
            workers=workers,
        )
        started.append(airflow.stop)
        airflow.start(pools=pools_json(load_inventory(inventory)))
        # Who triggers the runs: the admin, registered by an administrator as the ServiceNow
        # simulator's on-call DBA (README "Who asked"), an Airflow Variable in the metadata database
        # that the workers read through the execution API as production's do.
        registered = airflow.api("POST", "/variables", json={"key": identity_key(airflow.username), "value": IDENTITY})
        assert registered.status_code == 201, registered.text
        mark("Airflow")
        clusters_ready.result(timeout=600)
        print(f"\ne2e_celery setup: {', '.join(marks)}")
        yield CeleryShape(root, network, airflow, clusters, servicenow, vault, redis, metadata_db, queues)
    finally:
        errors = []
        if clusters_ready is not None:
            try:
                clusters_ready.result(timeout=600)  # never tear down under a cluster still starting
            except Exception as exc:
                errors.append(repr(exc))
        for stop in reversed(started):
            try:
                stop()
            except Exception as exc:  # keep tearing down: nothing may keep running
                errors.append(repr(exc))
        network.remove()
        # Nothing of this run may outlive it, whether its tests passed or failed.
        deadline = time.monotonic() + 15  # SIGKILLed processes take a moment to be gone
        while (leftovers := network.leftovers() + _leftover_processes(root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if os.environ.get("REWIND_KEEP_E2E_FILES"):
            print(f"e2e_celery files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        assert not errors, errors
        assert not leftovers, f"left running after the Celery e2e: {leftovers}"
