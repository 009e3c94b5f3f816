"""Approval -> writable, and downtime, of a PITR through the real scheduler and triggerer, against
the same steps done by hand on the same data; rounds alternate, all in one run.

    .venv/bin/python bench/pitr_downtime.py [--rows 1000000] [--bad-rows 5000] [--rounds 3] [--poll S] [--mode clone]
        [--wal-mib 1024] [--airflow-env KEY=VALUE ...]

The stack: the demo cluster (PostgreSQL + pgBackRest + S3 over TLS) with a ledger of --rows rows,
repository keys leased from the Vault simulator per task (as in the local stack and production),
the ServiceNow simulator, and Airflow's real API server, scheduler, DAG processor and triggerer
(`airflow standalone`, LocalExecutor, task logs at INFO). Each round sets a time target, then a
bad update voids --bad-rows rows spread over the ledger. A PITR DAG round triggers
rewind_pitr__demo with that target and a data check, waits until `wait_for_approval` has deferred to the triggerer, then
approves the change in the simulator at a point spread over the poll interval (round k at
(k + 0.5)/rounds of it: the poll's phase is what a real approver hits). A by-hand round does what
a DBA would type for the same rewind: archive the current WAL and stop PostgreSQL, `pgbackrest
restore --delta` with the DAG's options (the same backup set, target, --target-action=pause and
numeric timeline), start it, wait until it is paused at the target, run the same data check as
the check role, promote. Both end with a full backup on the new timeline (not timed), so every
round starts alike.

Two figures, both from PostgreSQL's own log (log_timezone UTC):
  approval -> writable: from the approval click (for a hand round: the first command) to
      "database system is ready to accept connections" after promotion, the moment a write can
      succeed. (A paused cluster first logs "ready to accept read-only connections": not writable.)
  downtime: from "received fast shutdown request" to that same line: the time nobody could write.
The goals: approval -> writable within 5 s of the hand steps, downtime within 0.5 s of them.

--mode clone: the DAG rounds rewind onto a clone first (rewind.pitr.clone); production serves
through the restore, the replay and the checks, and the downtime is the cutover's. The by-hand
rounds stay in place: the figure is the clone cutover's downtime against an in-place restore's.

--probe: through every DAG round a probe reads a ledger row and inserts a row into production
every 50 ms (psql as the OS user, a new session each time, as an application reconnecting would);
each attempt's outcome is kept with its instant and counted against PostgreSQL's log: before the
shutdown (in clone mode: the clone's restore, replay, checks, and the DBA deciding), inside the
downtime, after. --decide-hold S: the DAG rounds ask the DBA (target_action decide) and Promote
through the REST API S seconds after the question appears, the probe running meanwhile; the hold
is left out of approval -> writable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests
import yaml
from _airflow_env import setup

DAG_ID = "rewind_pitr__demo"
VOID_CHECK = {"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}
SHUTDOWN = "received fast shutdown request"
WRITABLE = "database system is ready to accept connections"


def log_events(path: Path, offset: int) -> tuple[float | None, float | None]:
    """(epoch of the first fast shutdown request, epoch of the first 'ready to accept connections'
    after it) in PostgreSQL's log since `offset`."""
    shutdown = ready = None
    with open(path, "rb") as handle:
        handle.seek(offset)
        for line in handle.read().decode(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[2] != "UTC":
                continue
            try:
                stamp = dt.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc).timestamp()
            except ValueError:
                continue
            if shutdown is None and SHUTDOWN in line:
                shutdown = stamp
            elif shutdown is not None and ready is None and line.rstrip().endswith(WRITABLE):
                ready = stamp
    return shutdown, ready


def parse_ts(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


IDENTITY = '{"email": "dba.oncall@example.com", "amr": ["pwd", "otp"], "idp": "bench"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bad-rows", type=int, default=5000, help="rows the bad update after each target voids, spread over the ledger")
    parser.add_argument("--poll", type=float, default=None, help="inventory pitr.approval_poll_s (default: the product's default)")
    parser.add_argument("--airflow-env", action="append", default=[], help="extra Airflow setting for every component, KEY=VALUE")
    parser.add_argument("--mode", choices=["in_place", "clone"], default="in_place", help="the DAG rounds' PITR mode")
    parser.add_argument("--wal-mib", type=int, default=0, help="WAL written between each round's backup and its target (replayed)")
    parser.add_argument("--probe", action="store_true", help="reads and writes against production through every DAG round")
    parser.add_argument("--decide-hold", type=float, default=0, help="target_action decide: Promote this many seconds after asked")
    args = parser.parse_args()
    home = setup()

    from devstack.airflow import AirflowStandalone
    from devstack.demo import DemoStack
    from devstack.net import free_port
    from devstack.probe import Probe
    from devstack.servicenow_sim import ServiceNowSimulator
    from devstack.vault_sim import VaultSimulator, VaultState, configure_cluster, inventory_credentials
    from rewind.cli import pools_json
    from rewind.inventory import PitrSettings, load_inventory
    from rewind.pitr.recovery import archive_current_wal, run_data_checks
    from rewind.pitr.request import DataCheck
    from rewind.postgres import control_timeline, start_nowait_argv, stop_argv
    from rewind.restore import Instance, RestoreExecutor
    from rewind.servicenow import Auth, ServiceNowClient

    extra_env = dict(item.split("=", 1) for item in args.airflow_env)
    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    sim = ServiceNowSimulator().start()
    vault = airflow = None
    try:
        vault_state = VaultState(iam=stack.s3.client("iam"))
        policy = configure_cluster(vault_state, cluster="demo", bucket=stack.s3.bucket, cipher_pass=stack.cipher_pass)
        vault = VaultSimulator(vault_state).start()
        approle = vault_state.add_approle([policy])
        stack.use_credentials(inventory_credentials("demo", stack.env_prefix))
        inventory = yaml.safe_load(stack.inventory_path.read_text())
        if args.poll is not None:
            inventory["clusters"]["demo"]["pitr"] = {"approval_poll_s": args.poll}
            stack.inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        cluster = stack.cluster
        poll = cluster.pitr.approval_poll_s

        stack.psql("alter system set log_timezone = 'UTC'")
        stack.psql("select pg_reload_conf()")
        stack.psql(
            "create table ledger_entry (id bigint primary key, account int not null, amount numeric(12, 2) not null, "
            "status text not null, posted_at timestamptz not null default now())"
        )
        stack.psql(
            f"insert into ledger_entry select g, g % 5000, (g % 100000) / 100.0, 'posted', now() from generate_series(1, {args.rows}) g"
        )
        stack.psql("vacuum analyze ledger_entry")
        if args.wal_mib:  # 100k rows of 1 kB, rewritten in place: WAL without growing the database much
            stack.psql("create table wal_filler (id int primary key, pad text) with (fillfactor = 50)")
            stack.psql("insert into wal_filler select g, repeat(md5(g::text), 32) from generate_series(1, 100000) g")
        stack.psql("create table bench_probe (id bigserial primary key, at timestamptz not null default now())")
        size = stack.psql("select pg_size_pretty(pg_database_size('postgres'))")
        pgbackrest = stack.pgbackrest()  # the stack's own key: a DBA at a terminal
        pgbackrest.backup("full", annotations={})

        airflow = AirflowStandalone(
            home=home / "standalone",
            port=free_port(),
            env={
                "REWIND_INVENTORY": str(stack.inventory_path),
                "AIRFLOW_CONN_SERVICENOW_DEFAULT": sim.airflow_connection(),
                "AIRFLOW_CONN_VAULT_DEFAULT": vault.airflow_connection(approle=approle),
                **stack.worker_env(),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",  # as deployed: the task logs are the audit trail
                # who triggers: the REST user is the simulator's on-call DBA (single sign-on's record, MFA);
                # the CAB member approves (separation of duties)
                **{f"AIRFLOW_VAR_REWIND_IDENTITY__{user}": IDENTITY for user in ("ADMIN", "DBA")},
                **extra_env,
            },
            paused_at_creation=True,
        )
        airflow.start(pools=pools_json(load_inventory(stack.inventory_path)))
        rest_api = airflow.api

        def api_patiently(method: str, path: str, **kwargs):
            """A GET the API server did not answer in time (a loaded machine) is asked again."""
            for attempt in range(6):
                try:
                    return rest_api(method, path, **kwargs)
                except requests.exceptions.RequestException:
                    if method != "GET" or attempt == 5:
                        raise
                    time.sleep(2)

        airflow.api = api_patiently
        airflow.wait_for_dag(DAG_ID)
        sn = ServiceNowClient(sim.url, Auth("basic", sim.state.username, sim.state.password))
        log_path = Path(cluster.postgres.log_file)

        def replay_load() -> None:
            """--wal-mib of WAL between the round's backup and its target: what recovery replays."""
            if not args.wal_mib:
                return
            start = stack.psql("select pg_current_wal_lsn()")
            while int(stack.psql(f"select (pg_current_wal_lsn() - '{start}'::pg_lsn)::bigint")) < args.wal_mib * 2**20:
                stack.psql("update wal_filler set pad = md5(pad) || substr(pad, 33)")
                stack.psql("checkpoint")  # full-page images again: WAL as a busy day writes it

        def make_target(round_: int) -> str:
            """A target between the ledger as it was and a bad update of --bad-rows rows spread over it."""
            replay_load()
            time.sleep(1.1)
            target = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")
            time.sleep(1.1)
            every = max(1, args.rows // args.bad_rows)
            stack.psql(f"update ledger_entry set status = 'void' where id % {every} = {round_ % every}")
            return target

        def answer_promote(run_id: str) -> float:
            """Once the question is asked: hold --decide-hold s (the DBA comparing), then Promote. Returns the hold."""
            path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/decide_at_target/-1/hitlDetails"
            deadline = time.monotonic() + 1200
            while airflow.api("GET", path).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"decide_at_target never asked: {airflow.task_states(DAG_ID, run_id)}")
                time.sleep(0.25)
            asked = time.monotonic()
            time.sleep(args.decide_hold)
            form = {"new_target_type": "time", "new_target": "", "new_target_exclusive": False, "question": 1}
            answered = airflow.api("PATCH", path, json={"chosen_options": ["Promote"], "params_input": form})
            if answered.status_code != 200:
                raise RuntimeError(f"Promote refused: {answered.status_code} {answered.text[:500]}")
            return time.monotonic() - asked

        def dag_round(k: int) -> dict:
            target = make_target(k)
            offset = Instance.production(cluster).log_size()
            conf = {
                "target_type": "time",
                "target": target,
                "validation_sql": [VOID_CHECK],
                "reason": f"bench round {k}: bad update",
                "mode": args.mode,
                **({"target_action": "decide"} if args.decide_hold else {}),
            }
            probe = (
                Probe(stack, "select status from ledger_entry where id = 1; insert into bench_probe default values") if args.probe else None
            )
            if probe:
                probe.__enter__()
            try:
                result = dag_round_probed(k, target, offset, conf)
            finally:
                if probe:
                    probe.__exit__()
            if probe:
                result["probe"] = probe.counts(result["shutdown"], result["ready"])
            return result

        def dag_round_probed(k: int, target: str, offset: int, conf: dict) -> dict:
            response = airflow.trigger(DAG_ID, conf=conf)
            response.raise_for_status()
            run_id = response.json()["dag_run_id"]
            deadline = time.monotonic() + 300
            while airflow.task_states(DAG_ID, run_id).get("wait_for_approval") != "deferred":
                if time.monotonic() > deadline or airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"] == "failed":
                    raise RuntimeError(f"wait_for_approval never deferred: {airflow.task_states(DAG_ID, run_id)}")
                time.sleep(0.5)
            [change] = sn.query("change_request", f"correlation_id=rewind:{DAG_ID}:{run_id}")
            time.sleep(1 + poll * (k + 0.5) / args.rounds)  # the approver's moment, spread over the poll
            approved_at = time.time()
            sim.approve(change["number"])
            held = answer_promote(run_id) if args.decide_hold else 0.0
            run = airflow.wait_for_run(DAG_ID, run_id, timeout=1200)
            if run["state"] != "success":
                raise RuntimeError(f"PITR run {run_id} {run['state']}: {airflow.task_states(DAG_ID, run_id)}")
            shutdown, ready = log_events(log_path, offset)
            window = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/stop_restore_promote/xcomEntries/return_value")
            timings = window.json().get("value", {}).get("timings_s", {}) if window.ok else {}
            tis = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            steps = sorted(
                ((ti["task_id"], parse_ts(ti["start_date"]), parse_ts(ti["end_date"])) for ti in tis if ti["start_date"]),
                key=lambda step: step[1],
            )
            # the DBA's hold is not the product's time: approval -> writable leaves it out
            return {"approved": approved_at + held, "held": held, "shutdown": shutdown, "ready": ready, "steps": steps, "timings": timings}

        def hand_round(k: int) -> dict:
            target = make_target(k)
            label = pgbackrest.info().latest().label  # known before anything is typed, as preflight knows it
            timeline = control_timeline(runner, cluster)
            offset = Instance.production(cluster).log_size()
            started = time.time()
            marks = [("archive_wal", time.monotonic())]
            archive_current_wal(runner, cluster, log=lambda _m: None)
            marks.append(("stop", time.monotonic()))
            runner.run(stop_argv(cluster, mode="fast"), timeout=330)
            marks.append(("restore", time.monotonic()))
            pgbackrest.restore(
                restore_type="time",
                target=target,
                target_exclusive=False,
                target_action="pause",
                target_timeline=str(timeline),
                backup_set=label,
                delta=True,
            )
            marks.append(("start", time.monotonic()))
            runner.run(start_nowait_argv(cluster), timeout=120)
            marks.append(("wait_for_target", time.monotonic()))
            by_hand = RestoreExecutor(
                pgbackrest, Instance.production(cluster), runner=runner, postmaster_runner=runner, log=lambda _m: None
            )
            by_hand.wait("pause", since_offset=offset, timeout_s=900)
            marks.append(("checks", time.monotonic()))
            run_data_checks(runner, cluster, [DataCheck(**VOID_CHECK)], database="postgres", log=lambda _m: None)
            marks.append(("promote", time.monotonic()))
            by_hand.promote()
            marks.append(("", time.monotonic()))
            shutdown, ready = log_events(log_path, offset)
            pgbackrest.backup("full", annotations={})  # what the DAG does next; not timed
            steps = {name: round(marks[i + 1][1] - at, 2) for i, (name, at) in enumerate(marks[:-1])}
            return {"approved": started, "shutdown": shutdown, "ready": ready, "steps": [], "timings": steps}

        runner = stack.runner(line_logger=lambda _line: None)
        results: dict[str, list[dict]] = {"dag": [], "hand": []}
        print(
            f"ledger {args.rows} rows (database {size}); {args.rounds} rounds; approval poll {poll:g} s "
            f"(product default {PitrSettings().approval_poll_s:g} s); DAG mode {args.mode}; WAL before each target {args.wal_mib} MiB; pgBackRest {'.'.join(map(str, pgbackrest.version()))}; "
            f"Airflow settings: {json.dumps(extra_env) if extra_env else 'defaults'}",
            flush=True,
        )
        for k in range(args.rounds):
            order = ("dag", "hand") if k % 2 == 0 else ("hand", "dag")
            for kind in order:
                result = dag_round(k) if kind == "dag" else hand_round(k)
                results[kind].append(result)
                a2w, down = result["ready"] - result["approved"], result["ready"] - result["shutdown"]
                line = f"round {k + 1} {kind:4}: approval -> writable {a2w:6.2f} s   downtime {down:5.2f} s"
                if result["steps"]:
                    base = result["approved"]
                    line += "   | " + ", ".join(
                        f"{task} {start - base:+.1f}..{end - base:+.1f}"
                        for task, start, end in result["steps"]
                        if end and end >= base - 1 and task not in ("full_backup_new_timeline", "release_restore_guard", "close_change")
                    )
                if result.get("timings"):
                    line += "   | steps " + ", ".join(f"{step} {seconds:.2f}" for step, seconds in result["timings"].items())
                if result.get("held"):
                    line += f"   | the DBA decided after {result['held']:.1f} s (left out)"
                if result.get("probe"):
                    c = result["probe"]
                    line += (
                        f"   | probe: {c['before']} before the shutdown, {c['failed_before']} failed; {c['during']} in the downtime, "
                        f"{c['failed_during']} failed; {c['after']} after, {c['failed_after']} failed"
                    )
                print(line, flush=True)

        def figures(kind: str, key: str) -> list[float]:
            return [r["ready"] - r[key] for r in results[kind]]

        print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
        for title, key, goal in (("approval -> writable", "approved", 5.0), ("downtime", "shutdown", 0.5)):
            dag_values, hand_values = figures("dag", key), figures("hand", key)
            dag_m, hand_m = statistics.median(dag_values), statistics.median(hand_values)
            print(
                f"{title}: DAG median {dag_m:.2f} s {[round(v, 2) for v in dag_values]}; by hand median {hand_m:.2f} s "
                f"{[round(v, 2) for v in hand_values]}; DAG - hand {dag_m - hand_m:+.2f} s (goal <= {goal:g} s); "
                f"ratio DAG/hand {dag_m / hand_m:.2f}",
                flush=True,
            )
        if args.probe:
            probes = [r["probe"] for r in results["dag"]]
            print(
                f"production availability through the DAG rounds ({args.mode}"
                f"{f', the DBA deciding for {args.decide_hold:g} s' if args.decide_hold else ''}): "
                f"{sum(c['before'] for c in probes)} probe queries before the shutdown, {sum(c['failed_before'] for c in probes)} failed; "
                f"{sum(c['failed_during'] for c in probes)} of {sum(c['during'] for c in probes)} failed inside the downtime; "
                f"{sum(c['failed_after'] for c in probes)} of {sum(c['after'] for c in probes)} failed after",
                flush=True,
            )
    finally:
        if airflow is not None:
            airflow.stop()
        if vault is not None:
            vault.stop()
        sim.stop()
        stack.remove()


if __name__ == "__main__":
    main()
