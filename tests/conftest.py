"""Test harness: a hermetic Airflow home and the real demo stack.

Airflow reads its configuration when first imported, so the environment is set here, before any
test module imports it: a temporary AIRFLOW_HOME with SQLite, this repo's dags/ and plugins/, no
examples. The real stack (PostgreSQL 15 + pgBackRest + moto behind stunnel4 TLS) is one
session-scoped fixture and is torn down at the end: nothing keeps running.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from devstack.airflow import REPO, hermetic_env  # imports no airflow
from devstack.vault_sim import inventory_credentials  # nor does this

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="rewind-airflow-home-"))
# Who the tests' runs are triggered by: dag.test() runs as "dag_test", the e2e runs as the REST users.
# Each is the on-call DBA of the ServiceNow simulator, as single sign-on records an identity (the
# Airflow Variable rewind_identity__<user>), with a multi-factor claim.
IDENTITY = '{"email": "dba.oncall@example.com", "amr": ["pwd", "otp"], "idp": "test"}'
os.environ.update({f"AIRFLOW_VAR_REWIND_IDENTITY__{user}": IDENTITY for user in ("DAG_TEST", "ADMIN", "DBA")})
os.environ.update({**hermetic_env(_AIRFLOW_HOME), "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
os.environ.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)

# Hypothesis keeps its example database (failing examples are replayed) and caches per user outside
# the repository, which a test run must not write to (and a non-root run cannot).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / f"rewind-hypothesis-{os.geteuid()}"))


# Each tier's wall-clock bound, about three times what it takes on a two-core box. A tier past its
# bound fails each of its remaining tests at once, saying so, instead of running on toward CI's
# limit; one test that hangs is failed alone by pytest-timeout (pyproject.toml), and .ci/run bounds
# the whole run. The bounds add up to an hour, well inside CI's 90 minutes.
TIER_BOUND_S = {"unit": 240, "dags": 240, "integration": 1200, "e2e": 900, "e2e_celery": 600, "browser": 420}
_tier_started: dict[str, float] = {}


def pytest_runtest_setup(item):
    tier = Path(item.path).relative_to(REPO / "tests").parts[0]
    elapsed = time.monotonic() - _tier_started.setdefault(tier, time.monotonic())
    bound = TIER_BOUND_S.get(tier)
    if bound is not None and elapsed > bound:
        pytest.fail(f"tier tests/{tier} has run {elapsed:.0f}s, past its {bound}s bound: not started", pytrace=False)


def airflow_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    airflow_cli("db", "migrate")
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def demo_stack():
    from devstack.demo import DemoStack

    base = Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp"))
    stack = DemoStack(base)
    try:
        stack.start()
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_REWIND_PG_DEMO"] = stack.postgres_connection()
        os.environ.update(stack.worker_env())
        yield stack
    finally:
        if not os.environ.get("KEEPSTACK"):
            stack.remove()
        os.environ.pop("REWIND_INVENTORY", None)


@pytest.fixture(autouse=True)
def demo_cluster_left_writable(request):
    """Every test that uses the shared demo cluster leaves it as the next one expects it (running,
    writable, no restore guard), whatever happened in it: a rewind that fails midway, by design or
    by a defect, must fail alone and not become forty red lines (DemoStack.make_writable). What had
    to be repaired is printed, so the report of the failing test says what it left behind."""
    yield
    if "demo_stack" not in request.fixturenames:
        return
    repaired = request.getfixturevalue("demo_stack").make_writable()
    if repaired:
        print(f"\n[{request.node.nodeid}] left the demo cluster needing repair: " + "; ".join(repaired))


@pytest.fixture
def fresh_stack(tmp_path_factory):
    """A second, independent stack for tests that break things (locks, outages)."""
    from devstack.demo import DemoStack

    base = Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp"))
    stack = DemoStack(base, name="scratch")
    try:
        yield stack.start()
    finally:
        stack.remove()


def load_dags(dag_file: str = "rewind_backup.py"):
    """Import a DAG file the way the DAG processor does and return its DAGs by id."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / dag_file))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


def run_once(dag, **kwargs):
    """dag.test() without retries: dag.test() honours retry delays, and a failure test wants the
    first failure's message, not three of them minutes apart. Retry policy is checked separately
    (tests/dags)."""
    for task in dag.tasks:
        task.retries = 0
    with quick_dag_test_loop():
        return dag.test(**kwargs)


DAG_TEST_LOOP_SLEEP_S = 0.05


@contextlib.contextmanager
def quick_dag_test_loop():
    """dag.test()'s own loop sleeps 1 s whenever no task is schedulable yet ("No tasks to run"),
    and it marks one level of skipped or upstream_failed tasks per turn: a run whose plan skips a
    chain of seven tasks spent 8 s asleep, a failed PITR 2-3 s. Inside this context only that sleep
    (time.sleep called from DAG.test itself) is DAG_TEST_LOOP_SLEEP_S; every other sleep, the
    tasks', the triggers' and other threads', is untouched, and every task runs as before."""
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        caller = sys._getframe(1).f_code
        if caller.co_name == "test" and caller.co_filename.endswith(os.path.join("airflow", "sdk", "definitions", "dag.py")):
            seconds = min(seconds, DAG_TEST_LOOP_SLEEP_S)
        real_sleep(seconds)

    time.sleep = sleep
    try:
        yield
    finally:
        time.sleep = real_sleep


@pytest.fixture(scope="session")
def servicenow():
    """The ServiceNow simulator on loopback, wired as Airflow connection servicenow_default."""
    from devstack.servicenow_sim import ServiceNowSimulator

    simulator = ServiceNowSimulator().start()
    os.environ["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = simulator.airflow_connection()
    try:
        yield simulator
    finally:
        simulator.stop()
        os.environ.pop("AIRFLOW_CONN_SERVICENOW_DEFAULT", None)


@pytest.fixture(scope="session")
def vault(demo_stack):
    """The Vault simulator holding the demo cluster's secrets, as a Vault admin would set it up: KV v2
    secret/rewind/demo {cipher_pass}, AWS engine role rewind-demo (IAM users created in the S3 stack's
    IAM with terraform/'s repository policy: the demo cluster's repository prefix and nothing else),
    a least-privilege policy and an AppRole for the Airflow workers. Wired as the Airflow connection
    vault_default (AppRole auth)."""
    from devstack.vault_sim import VaultSimulator, VaultState, configure_cluster

    state = VaultState(iam=demo_stack.s3.client("iam"))
    policy = configure_cluster(
        state,
        cluster="demo",
        bucket=demo_stack.s3.bucket,
        repo_path=demo_stack.cluster.repo.path,
        cipher_pass=demo_stack.cipher_pass,
        lease_duration_s=600,
    )
    simulator = VaultSimulator(state).start()
    simulator.approle = state.add_approle([policy])
    os.environ["AIRFLOW_CONN_VAULT_DEFAULT"] = simulator.airflow_connection(approle=simulator.approle)
    try:
        yield simulator
    finally:
        simulator.stop()
        os.environ.pop("AIRFLOW_CONN_VAULT_DEFAULT", None)


VAULT_CREDENTIALS = inventory_credentials("demo", "REWIND_DEMO_")


@pytest.fixture
def vault_credentials(demo_stack, vault):
    """The demo cluster takes its repository secrets from Vault for the length of one test."""
    demo_stack.use_credentials(VAULT_CREDENTIALS)
    try:
        yield vault
    finally:
        demo_stack.use_credentials(None)
        vault.set_mode("ok")
