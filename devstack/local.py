"""The local stack: `python -m devstack.local up [--sso]|down|status`.

up:   a demo PostgreSQL cluster with a ledger table, archiving into an S3 API over TLS, and Airflow
      (standalone) with Rewind's DAGs on http://127.0.0.1:8080. Prints how to log in.
      --sso: Airflow as production runs it, the FAB auth manager with config/webserver_config.py,
      people signing in through the OIDC simulator (devstack/oidc_sim.py) on :8095 by their groups.
down: stops every process the stack started (files stay in $REWIND_LOCAL_HOME for inspection).

The demo's S3 admin key and cipher passphrase are generated at `up` and exist only in the
environments of the processes that need them (PostgreSQL's archive_command, the Vault simulator),
never in a file. Airflow's tasks lease their S3 keys from the Vault simulator (AppRole), as in
production. moto keeps the repository in memory, so every `up` starts a fresh stack.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devstack import vault_sim
from devstack.airflow import AirflowStandalone
from devstack.demo import DemoStack
from devstack.net import wait_for_port
from rewind.cli import pools_json
from rewind.inventory import load_inventory
from rewind.postgres import postmaster_pid, stop_argv
from rewind.runner import CommandRunner

HOME = Path(os.environ.get("REWIND_LOCAL_HOME", "/var/lib/rewind-local"))
PORT = int(os.environ.get("REWIND_LOCAL_PORT", "8080"))
SERVICENOW_PORT = int(os.environ.get("REWIND_LOCAL_SERVICENOW_PORT", "8091"))
VAULT_PORT = int(os.environ.get("REWIND_LOCAL_VAULT_PORT", "8200"))
OIDC_PORT = int(os.environ.get("REWIND_LOCAL_OIDC_PORT", "8095"))
STATE = HOME / "state.json"
AUDIT_PAGE = "/rewind-audit/"  # plugins/rewind_airflow/audit (the product's plugin; a URL, nothing imported)
# The demo's standard change template "Monthly restore rehearsal" in the ServiceNow simulator: the
# demo cluster's rehearsal runs under standard changes made from it (README, Monthly restore rehearsal).
REHEARSAL_TEMPLATE = "5e1ea75a1b0c4d2e9f3a7b6c8d9e0f1a"

DEMO_DATA_SQL = """
create table if not exists ledger_entry (
    id bigint generated always as identity primary key,
    account text not null,
    amount numeric(12,2) not null,
    status text not null default 'posted',
    created_at timestamptz not null default now()
);
insert into ledger_entry (account, amount)
select 'ACC-' || (g % 50), round((random() * 1000)::numeric, 2) from generate_series(1, 5000) g;
"""


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def status() -> int:
    state = _state()
    if not state:
        print("local stack: not running")
        return 1
    for name in ("moto", "stunnel", "servicenow", "vault", "oidc", "airflow"):
        if name == "oidc" and not state.get(name):
            continue
        print(f"{name:8} pid {state.get(name)}: {'running' if _alive(state.get(name)) else 'stopped'}")
    for pid in state.get("airflow_components") or []:
        print(f"{'':8} pid {pid}: {'running' if _alive(pid) else 'stopped'} (Airflow component)")
    print(f"postgres data {state.get('data_dir')}: {'running' if state.get('data_dir') and _pg_running(state) else 'stopped'}")
    return 0


def _pg_running(state: dict) -> bool:
    pid_file = Path(state["data_dir"]) / "postmaster.pid"
    try:
        return _alive(int(pid_file.read_text().splitlines()[0]))
    except (FileNotFoundError, ValueError, IndexError):
        return False


def _start_oidc() -> tuple[subprocess.Popen, dict[str, str], dict[str, str]]:
    """The OIDC simulator with the demo people (oidc_sim.DEMO_USERS), its client secret and the
    people's passwords generated here and handed over in its environment, never on a command line."""
    from devstack import oidc_sim

    secret = secrets.token_urlsafe(24)
    passwords = {name: secrets.token_urlsafe(9) for name in oidc_sim.DEMO_USERS}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.oidc_sim",
            "serve",
            "--port",
            str(OIDC_PORT),
            "--redirect-uri",
            f"http://127.0.0.1:{PORT}/auth/oauth-authorized/oidc",
        ],
        env={**os.environ, "OIDC_SIM_CLIENT_SECRET": secret, "OIDC_SIM_PASSWORDS": json.dumps(passwords)},
        stdout=open(HOME / "oidc.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(OIDC_PORT, timeout=30, process=proc)
    env = oidc_sim.airflow_env(f"http://127.0.0.1:{OIDC_PORT}", oidc_sim.OidcState.client_id, secret)
    return proc, env, passwords


def up(sso: bool = False) -> int:
    state = _state()
    if state and _alive(state.get("airflow")):
        print(
            f"local stack already running: {state['url']} (user admin, password {state['password']}); audit page {state['url']}{AUDIT_PAGE}"
        )
        return 0
    started = time.monotonic()
    down(quiet=True)
    shutil.rmtree(HOME / "stack", ignore_errors=True)
    shutil.rmtree(HOME / "newcomer", ignore_errors=True)
    HOME.mkdir(parents=True, exist_ok=True)
    HOME.chmod(0o755)

    print("starting PostgreSQL 15 + pgBackRest + S3 over TLS ...", flush=True)
    # The watchdog runs every 5 minutes here so an S3 outage shows (and clears) while you watch.
    stack = DemoStack(
        HOME / "stack",
        schedules={"health": "*/5 * * * *"},
        rehearsal={"change_template": REHEARSAL_TEMPLATE, "tables": ["public.ledger_entry"]},
        pitr_mode=None,  # the product's default: rewind onto a clone first
    )
    stack.start()
    stack.psql(DEMO_DATA_SQL)
    print("starting the ServiceNow simulator ...", flush=True)
    servicenow_password = secrets.token_urlsafe(12)
    servicenow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.servicenow_sim",
            "serve",
            "--port",
            str(SERVICENOW_PORT),
            "--standard-template",
            f"{REHEARSAL_TEMPLATE}=Monthly restore rehearsal",
        ],
        env={**os.environ, "SERVICENOW_SIM_PASSWORD": servicenow_password},
        stdout=open(HOME / "servicenow.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(SERVICENOW_PORT, timeout=30, process=servicenow)
    servicenow_conn = json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": SERVICENOW_PORT,
            "schema": "http",
            "login": "rewind",
            "password": servicenow_password,
        }
    )
    print("starting the Vault simulator (the demo's repository credentials are leased from it) ...", flush=True)
    approle = (str(uuid.uuid4()), secrets.token_urlsafe(24))
    vault = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.vault_sim",
            "serve",
            "--port",
            str(VAULT_PORT),
            "--s3-url",
            stack.s3.url,
            "--ca-file",
            str(stack.s3.ca_file),
            "--cluster",
            stack.name,
            "--bucket",
            stack.s3.bucket,
        ],
        env={
            **os.environ,
            "VAULT_SIM_AWS_KEY": stack.s3.access_key,
            "VAULT_SIM_AWS_SECRET": stack.s3.secret_key,
            "VAULT_SIM_CIPHER_PASS": stack.cipher_pass,
            "VAULT_SIM_ROLE_ID": approle[0],
            "VAULT_SIM_SECRET_ID": approle[1],
        },
        stdout=open(HOME / "vault.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(VAULT_PORT, timeout=30, process=vault)
    vault_conn = vault_sim.airflow_connection(VAULT_PORT, approle=approle)
    stack.use_credentials(vault_sim.inventory_credentials(stack.name, stack.env_prefix))
    newcomer = _start_newcomer(stack)
    oidc, sso_env, people = None, {}, {}
    if sso:
        print("starting the OIDC simulator (people sign in to Airflow through it) ...", flush=True)
        oidc, sso_env, people = _start_oidc()
    print(
        "starting Airflow"
        + (" (FAB auth manager, single sign-on)" if sso else " (standalone)")
        + ": its database, the DAGs parsed, the API server up (half a minute or more) ...",
        flush=True,
    )
    airflow = AirflowStandalone(
        home=HOME / "airflow",
        port=PORT,
        env={
            "REWIND_INVENTORY": str(stack.inventory_path),
            "AIRFLOW_CONN_SERVICENOW_DEFAULT": servicenow_conn,
            "AIRFLOW_CONN_VAULT_DEFAULT": vault_conn,
            "AIRFLOW_CONN_REWIND_PG_DEMO": stack.postgres_connection(),
            "AIRFLOW_CONN_REWIND_PG_NEWCOMER": newcomer.postgres_connection(),
            # onboarding checks the newcomer's bucket posture through the amazon provider's S3Hook
            "AIRFLOW_CONN_AWS_DEFAULT": newcomer.aws_connection(),
            **newcomer.worker_env(),
            # the run links Rewind writes into changes and notes point at this stack's own port
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{PORT}",
            # Who the local admin is to ServiceNow (README "Who asked, who approved"): the
            # simulator's on-call DBA, so the CAB approver on the simulator page may approve.
            "AIRFLOW_VAR_REWIND_IDENTITY__ADMIN": json.dumps({"email": "dba.oncall@example.com", "amr": ["pwd"]}),
            **stack.worker_env(),
            **sso_env,
        },
        # with single sign-on, Airflow runs as production does: FAB's roles mapped from the IdP's groups
        auth_manager="fab" if sso else "simple",
    )
    airflow.start(pools=pools_json(load_inventory(stack.inventory_path)))
    password = airflow.password()
    STATE.write_text(
        json.dumps(
            {
                "moto": stack.s3._moto.pid,
                "stunnel": stack.s3._stunnel.pid,
                "servicenow": servicenow.pid,
                "vault": vault.pid,
                "oidc": oidc.pid if oidc else None,
                "airflow": airflow.pid,
                # with --sso (FAB) the other components run beside the API server, each in its own group
                "airflow_components": airflow.component_pids,
                "data_dir": str(stack.data_dir),
                "newcomer_moto": newcomer.s3._moto.pid,
                "newcomer_stunnel": newcomer.s3._stunnel.pid,
                "inventory": str(stack.inventory_path),
                "url": airflow.url,
                "password": password,
            },
            indent=2,
        )
    )
    STATE.chmod(0o600)
    if sso:
        login = f"""sign in with oidc (the OIDC simulator, http://127.0.0.1:{OIDC_PORT}/sim/users):
                 dba.oncall / {people["dba.oncall"]}  (group rewind-dba: DBA, may trigger the PITR)
                 ops.outsider / {people["ops.outsider"]}  (group rewind-auditors: Viewer)
                 platform.admin / {people["platform.admin"]}  (group rewind-airflow-admins: Admin)
               move someone between groups (their next sign-in shows it):
                 .venv/bin/python -m devstack.oidc_sim groups dba.oncall rewind-auditors --url http://127.0.0.1:{OIDC_PORT}
               REST only (no UI login): admin / {password}"""
    else:
        login = f"user: admin   password: {password}"
    print(
        f"""
Rewind local stack is up (in {time.monotonic() - started:.0f} s).
  Airflow UI   {airflow.url}   {login}
  Audit page   {airflow.url}{AUDIT_PAGE}   (Browse > Rewind audit in the UI; every PITR, onboarding,
               decommissioning and rehearsal run: who asked, the change, who approved, what it did; CSV)
  DAGs         rewind_backup_{{full,diff,incr}}__demo, rewind_pitr__demo, rewind_health__demo, rewind_verify__demo,
               rewind_rehearsal__demo, rewind_find_target__demo, rewind_salvage__demo, rewind_decommission__demo,
               rewind_onboard__newcomer (and the newcomer's other DAGs, which skip until it is onboarded)
  ServiceNow   http://127.0.0.1:{SERVICENOW_PORT}/  (simulator: approve or reject changes on this page, or
               .venv/bin/python -m devstack.servicenow_sim approve CHG0010001 --url http://127.0.0.1:{SERVICENOW_PORT})
  PostgreSQL   127.0.0.1:{stack.pg_port} (socket {stack.pg_home}), database postgres, table ledger_entry
  S3 over TLS  {stack.s3.url} bucket {stack.s3.bucket}, CA {stack.s3.ca_file}
  Vault        http://127.0.0.1:{VAULT_PORT}/ (simulator): every task leases its S3 keys, revoked when it ends
               (GET /sim/leases lists them)
  Inventory    {stack.inventory_path}
  Logs         {HOME}/airflow/standalone.log, {stack.pg_home}/postgresql.log
Trigger rewind_backup_full__demo in the UI to take the first full backup; then try a rewind:
trigger rewind_pitr__demo with target_type "time" and a time before your mistake, approve the
change on the simulator page, and watch the restore complete and the change close.
Rehearse a restore: trigger rewind_rehearsal__demo (after the first full backup). Its standard change
is pre-approved by the simulator's template "Monthly restore rehearsal", so nobody approves it: the
backup is restored into a scratch copy, checked, compared with the ledger and removed, and the change
and its change task close with the evidence (RTO, RPO, each check) on the simulator page.
Onboard a second cluster: "newcomer" runs without archiving (socket {newcomer.pg_home}, port
{newcomer.pg_port}), its repository a bucket made as terraform/ declares it ({newcomer.s3.url}).
Trigger rewind_onboard__newcomer with a reason, approve its change on the simulator page as the CAB
approver, and watch archiving configured, PostgreSQL restarted inside the change window, the stanza
created, the first full backup taken and verified, and the change closed; a second run says there is
nothing to do.
Simulate an S3 outage, as root: scripts/local-stack.sh s3-down (and s3-up); watch rewind_health__demo
open an incident on the ServiceNow page and resolve it once S3 is back.
Stop everything, as root: scripts/local-stack.sh down
"""
    )
    return 0


NEWCOMER_DATA_SQL = """
create table if not exists customer (id bigint primary key, name text not null);
insert into customer select g, 'customer ' || g from generate_series(1, 1000) g on conflict do nothing;
"""


def _start_newcomer(demo: DemoStack) -> DemoStack:
    """A second cluster, running for years without archiving, to onboard from the UI: its entry is in
    the shared inventory (the DAGs exist), its repository a bucket with the posture terraform/ gives
    (versioning, Object Lock, SSE-KMS, public access blocked), its S3 keys in the workers' environment."""
    print("starting a second cluster, not yet archiving (newcomer), and its repository bucket ...", flush=True)
    newcomer = DemoStack(
        HOME / "newcomer", name="newcomer", onboarded=False, s3_as_code=True, inventory_file=demo.inventory_path, pitr_mode=None
    )
    newcomer.start()
    newcomer.psql(NEWCOMER_DATA_SQL)
    return newcomer


def _kill(state: dict, name: str, grace_s: float = 30.0) -> None:
    """SIGTERM the process group a component was started in; SIGKILL what is left after grace_s
    (Airflow's scheduler can hang on shutdown, orphaned, after its standalone parent has exited)."""
    _kill_group(state.get(name), grace_s)


def _kill_group(pgid: int | None, grace_s: float = 30.0) -> None:
    import time

    if not pgid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def down(quiet: bool = False) -> int:
    """Airflow first (no new task starts), then PostgreSQL while the repository is still reachable
    (its shutdown archives the last WAL), then the simulators."""
    state = _state()
    _kill(state, "airflow")
    for pgid in state.get("airflow_components") or []:
        _kill_group(pgid)
    if state.get("inventory") and Path(state["inventory"]).exists():
        inventory = load_inventory(state["inventory"])
        for name in ("demo", "newcomer"):
            cluster = inventory.clusters.get(name)
            if cluster and postmaster_pid(cluster):
                CommandRunner(os_user=cluster.postgres.os_user).run(stop_argv(cluster), timeout=330, check=False)
    for name in ("servicenow", "vault", "oidc", "stunnel", "moto", "newcomer_stunnel", "newcomer_moto"):
        _kill(state, name)
    STATE.unlink(missing_ok=True)
    if not quiet:
        print("local stack stopped")
    return 0


def s3_down() -> int:
    """Simulate an S3 outage: stop the TLS front (moto keeps every object)."""
    state = _state()
    _kill(state, "stunnel")
    print("S3 API unreachable: archive-push fails, PostgreSQL keeps its WAL; the watchdog opens an incident")
    return 0


def s3_up() -> int:
    state = _state()
    if _alive(state.get("stunnel")):
        print("S3 API already up")
        return 0
    conf = HOME / "stack" / "s3" / "stunnel.conf"
    from devstack.s3tls import stunnel_binary

    proc = subprocess.Popen([stunnel_binary(), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state["stunnel"] = proc.pid
    STATE.write_text(json.dumps(state, indent=2))
    print("S3 API back: archiving catches up; the next watchdog run resolves the incident")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rewind-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "s3-down", "s3-up"], nargs="?", default="up")
    parser.add_argument("--sso", action="store_true", help="up: sign in through the OIDC simulator (FAB auth manager, webserver_config.py)")
    args = parser.parse_args(argv)
    if args.action == "up":
        return up(sso=args.sso)
    return {"up": up, "down": down, "status": status, "s3-down": s3_down, "s3-up": s3_up}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
