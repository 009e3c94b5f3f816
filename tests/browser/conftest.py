"""One real Airflow signing people in through the OIDC simulator (devstack/oidc_sim.py) with the
unchanged config/webserver_config.py, and Debian's chromium driven by playwright.

Lean on purpose: the API server and the DAG processor only (it serializes the DAGs and applies
their access_control); no scheduler, so a triggered run is created and never starts, and no
database cluster: the demo cluster is an inventory entry only."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from devstack.airflow import AirflowStandalone
from devstack.net import free_port
from devstack.oidc_sim import DEMO_USERS, OidcSimulator, OidcState
from tests.factories import cluster_doc

CHROMIUM = "/usr/bin/chromium"
# The local stack's people (the ServiceNow simulator's seeded users as the IdP knows them):
# dba.oncall in rewind-dba, ops.outsider in rewind-auditors.
PEOPLE = {name: DEMO_USERS[name] for name in ("dba.oncall", "ops.outsider")}


ARTIFACTS: list[Path] = []


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots of every step, kept after the run: the directory is named in pytest's summary."""
    path = Path(tempfile.mkdtemp(prefix="rewind-browser-"))
    ARTIFACTS.append(path)
    return path


def pytest_terminal_summary(terminalreporter):
    for path in ARTIFACTS:
        terminalreporter.write_line(f"browser test artifacts (screenshots of every step): {path}")


@pytest.fixture(scope="session")
def oidc():
    sim = OidcSimulator(state=OidcState()).start()
    for username, person in PEOPLE.items():
        sim.add_user(username, **person)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def sso_airflow(oidc):
    home = Path(tempfile.mkdtemp(prefix="rewind-sso-"))
    inventory = home / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"clusters": {"demo": cluster_doc()}}))
    port = free_port()
    oidc.state.redirect_uris = [f"http://127.0.0.1:{port}/auth/oauth-authorized/oidc"]
    airflow = AirflowStandalone(
        home=home,
        port=port,
        env={"REWIND_INVENTORY": str(inventory), **oidc.airflow_env()},
        paused_at_creation=True,
        auth_manager="fab",
        components=("dag-processor",),
        apply_roles=False,  # the roles exist; nobody clears or marks here
    )
    try:
        airflow.start()
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="module")
def browser():
    # Module scope, not session: playwright's sync API runs an asyncio loop in this thread until it
    # stops, and every later test that calls asyncio.run() (the triggers' tests) would fail.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()
