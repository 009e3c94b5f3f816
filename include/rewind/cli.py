"""`rewind`: the operator's command line for what happens outside a DAG run.

rewind conf render  --cluster NAME     print the pgbackrest.conf the inventory renders
rewind conf diff    --cluster NAME     show drift against the installed file (exit 1 if any)
rewind conf install --cluster NAME     install it (atomic, owned by the OS user, mode 0640)
rewind guard show|clear --cluster NAME show or clear a PITR restore guard (blocks backups)
rewind holds --cluster NAME            the PITR retention holds and the backups they keep
rewind find-target --cluster NAME --from TIME [--to TIME] [--table T ...] [--timeline N] [--json]
                                       the transactions of a window in the archived WAL, and the
                                       PITR params that stop just before each (run on the host)
rewind salvage --cluster NAME --directory DIR [--bad-xid N ...] [--timeline N] [--json]
                                       after a rewind: the legitimate work it discarded, as CSV
                                       and a guarded SQL script in DIR (run on the host)
rewind metrics --cluster NAME [--format json|prometheus]   backup metrics from `pgbackrest info`
rewind pools                            Airflow pools JSON for `airflow pools import`
rewind check                            validate the inventory; exit 1 listing every error
rewind roles [--apply]                  Airflow roles DBA and BackupOperator (FAB): print the
                                        `airflow roles` commands, or run them and check the result
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from rewind import guard as restore_guard
from rewind import retention
from rewind.errors import RewindError
from rewind.inventory import inventory_path, load_inventory
from rewind.pgbackrest.config import config_drift, install_config, render_config
from rewind.roles import ALL_ROLES, role_commands, undeclared_global_permissions


def pools_json(inventory) -> dict:
    return {
        cluster.pool: {
            "slots": 1,
            "description": f"Rewind: one repository-writing task at a time for stanza {cluster.stanza}",
            "include_deferred": False,
        }
        for cluster in inventory.clusters.values()
    }


def _vault_client_from_environment():
    """Outside Airflow, Vault is reached the way the vault CLI does: VAULT_ADDR and VAULT_TOKEN
    (or VAULT_ROLE_ID + VAULT_SECRET_ID for AppRole), VAULT_CACERT for a private CA."""
    import os

    import hvac

    client = hvac.Client(url=os.environ.get("VAULT_ADDR"), verify=os.environ.get("VAULT_CACERT", True))
    if not client.token and os.environ.get("VAULT_ROLE_ID"):
        client.auth.approle.login(role_id=os.environ["VAULT_ROLE_ID"], secret_id=os.environ.get("VAULT_SECRET_ID", ""))
    return client


def _repository_info(cluster):
    """`pgbackrest info` with the cluster's credentials (released at once)."""
    from rewind.credentials import RepositoryCredentials
    from rewind.pgbackrest.client import PgBackRest
    from rewind.runner import CommandRunner

    credentials = RepositoryCredentials(cluster, vault_client=_vault_client_from_environment)
    try:
        runner = CommandRunner(os_user=cluster.postgres.os_user, secrets=credentials.secrets(), line_logger=lambda _line: None)
        return PgBackRest(cluster, runner).info(), runner
    finally:
        credentials.release()


def show_holds(cluster) -> str:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    holds = retention.all_holds(cluster)
    if not holds:
        return f"no retention holds for cluster {cluster.name}\n"
    lines = [f"{'active' if h.active(now) else 'ended '}  {h.describe()}; pre-rewind timeline {h.timeline}" for h in holds]
    try:
        info, _runner = _repository_info(cluster)
    except RewindError as exc:
        lines.append(f"(repository not read, held backups not listed: {exc})")
    else:
        for run_id, labels in retention.held_backups(cluster, info, now).items():
            lines.append(f"held for {run_id}: {', '.join(labels) or 'none retained'}")
    return "\n".join(lines) + "\n"


def clear_guard(cluster) -> str:
    """Remove the guard; a failed rewind's hold starts its last period now (the DBA has looked)."""
    try:
        current = restore_guard.read_guard(cluster)
    except RewindError:  # damaged: clearing it is exactly what the message tells the DBA to do
        current = None
    message = restore_guard.clear(cluster)
    if current is not None and current.phase == restore_guard.FAILED:
        for run_id in (current.run_id, *current.predecessors):
            retention.end_hold(cluster, run_id, keep_days=cluster.pitr.hold_days)
    return message


def find_target(cluster, args) -> str:
    """The finder outside Airflow: same reading, same report (credentials from the environment)."""
    import datetime as dt

    from rewind.credentials import RepositoryCredentials
    from rewind.finder import Window, find_transactions
    from rewind.pgbackrest.client import PgBackRest
    from rewind.pitr.recovery import archive_current_wal
    from rewind.runner import CommandRunner

    window = Window.parse(args.start, args.end, now=dt.datetime.now(dt.timezone.utc))  # bad input: before anything
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else (lambda _line: None)
    credentials = RepositoryCredentials(cluster, vault_client=_vault_client_from_environment)
    try:
        runner = CommandRunner(os_user=cluster.postgres.os_user, secrets=credentials.secrets(), line_logger=lambda _line: None)
        if not args.no_wal_switch:
            archive_current_wal(runner, cluster, log=log)
        result = find_transactions(
            PgBackRest(cluster, runner),
            runner,
            window=window,
            tables=args.table,
            timeline=args.timeline,
            max_segments=args.max_segments,
            log=log,
        )
    finally:
        credentials.release()
    return json.dumps(result.as_dict(limit=10_000), indent=1) + "\n" if args.json else result.text() + "\n"


def salvage_discarded(cluster, args) -> str:
    """Salvage outside Airflow: the same code as the salvage DAG's task (credentials from the environment)."""
    from rewind.credentials import RepositoryCredentials
    from rewind.pgbackrest.client import PgBackRest
    from rewind.runner import CommandRunner
    from rewind.salvage import salvage

    directory = Path(args.directory)
    if directory.exists() and any(directory.iterdir()):  # bad input: before anything is read
        raise RewindError(f"--directory {directory}: not empty; name a new or empty directory for the salvage files")
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else (lambda _line: None)
    credentials = RepositoryCredentials(cluster, vault_client=_vault_client_from_environment)
    try:
        runner = CommandRunner(os_user=cluster.postgres.os_user, secrets=credentials.secrets(), line_logger=lambda _line: None)
        result = salvage(
            PgBackRest(cluster, runner),
            runner,
            directory=directory,
            bad_xids=args.bad_xid,
            old_timeline=args.timeline,
            from_repository=args.from_repository,
            log=log,
        )
    finally:
        credentials.release()
    return json.dumps(result.as_dict(), indent=1) + "\n" if args.json else result.summary() + "\n"


def cluster_metrics(cluster, fmt: str) -> str:
    import datetime as dt

    from rewind.health import ARCHIVER_SQL, check_archiving, check_backup_age, check_stanza, parse_archiver_row
    from rewind.metrics import as_json, as_prometheus
    from rewind.postgres import postmaster_pid, run_sql

    info, runner = _repository_info(cluster)
    now = dt.datetime.now(dt.timezone.utc)
    values = {**check_stanza(info).metrics, **check_backup_age(info, now=now).metrics}
    values["repo.size_bytes"] = sum(b.info.repository.size or 0 for b in info.backup)
    held = retention.held_backups(cluster, info, now)
    values["holds.active"] = len(held)
    values["holds.held_backups"] = len({label for labels in held.values() for label in labels})
    if postmaster_pid(cluster):  # archiver figures need the live cluster
        archiver = parse_archiver_row(run_sql(runner, cluster, ARCHIVER_SQL).split("|"))
        values.update(check_archiving(archiver, previous_failed_count=None).metrics)
    return (as_json if fmt == "json" else as_prometheus)(cluster.name, cluster.stanza, values)


def roles_command(*, apply: bool) -> int:
    """Rewind's roles as `airflow roles` commands (definitions: include/rewind/roles.py).
    Printed, or with apply run with this environment's Airflow configuration and then checked: exit 1
    naming each global permission a role holds beyond those, with the command that removes it."""
    if not apply:
        for argv in role_commands():
            print(shlex.join(argv))
        return 0
    airflow = shutil.which("airflow")
    if airflow is None:
        print("rewind: `airflow` is not on PATH: run `rewind roles --apply` where Airflow is installed", file=sys.stderr)
        return 2
    try:
        for argv in role_commands(airflow):
            subprocess.run(argv, check=True, timeout=300)
        with tempfile.TemporaryDirectory(prefix="rewind-roles-") as tmp:
            exported = Path(tmp) / "roles.json"
            subprocess.run([airflow, "roles", "export", str(exported)], check=True, timeout=300, stdout=subprocess.DEVNULL)
            extra = undeclared_global_permissions(json.loads(exported.read_text()))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"rewind: {shlex.join(exc.cmd)} failed: {exc}", file=sys.stderr)
        return 2
    for role, resource, action in extra:
        remove = shlex.join(["airflow", "roles", "del-perms", role, "--resource", resource, "--action", action])
        print(f"rewind: role {role} holds {action} on {resource!r}, which Rewind does not grant: {remove}", file=sys.stderr)
    if extra:
        return 1
    print(f"roles {', '.join(ALL_ROLES)}: global permissions as Rewind defines them")
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    # As SystemExit, so the `finally` blocks run: a salvage or a rehearsal killed from outside
    # stops and removes its scratch cluster instead of leaving a postmaster behind.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            return _main(argv)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="rewind", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", help="inventory file (default: $REWIND_INVENTORY or /etc/rewind/inventory.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("conf", help="pgbackrest.conf rendering, drift and installation")
    conf.add_argument("action", choices=["render", "diff", "install"])
    conf.add_argument("--cluster", required=True)
    guard = sub.add_parser("guard", help="the restore guard a PITR raises (backups wait while it is up)")
    guard.add_argument("action", choices=["show", "clear"])
    guard.add_argument("--cluster", required=True)
    holds = sub.add_parser("holds", help="PITR retention holds: what expire keeps for the pre-rewind history")
    holds.add_argument("--cluster", required=True)
    export = sub.add_parser("metrics", help="backup metrics of one cluster (run on its host, credentials in the environment)")
    export.add_argument("--cluster", required=True)
    export.add_argument("--format", choices=["json", "prometheus"], default="prometheus")
    finder = sub.add_parser("find-target", help="transactions of a time window in the archived WAL, with the PITR params before each")
    finder.add_argument("--cluster", required=True)
    finder.add_argument("--from", dest="start", required=True, help="window start, with time zone: '2026-11-24 02:00:00+00'")
    finder.add_argument("--to", dest="end", help="window end, with time zone (default: now)")
    finder.add_argument("--table", action="append", default=[], help="only transactions touching this table (repeatable)")
    finder.add_argument("--timeline", type=int, help="read this timeline's history (default: the cluster's current timeline)")
    finder.add_argument("--max-segments", type=int, default=256, help="archived WAL segments read at most (default 256)")
    finder.add_argument("--no-wal-switch", action="store_true", help="do not switch WAL first (only what is archived already is read)")
    finder.add_argument("--json", action="store_true", help="the result as JSON (as the DAG's XCom)")
    finder.add_argument("--verbose", action="store_true", help="progress on stderr")
    salvage = sub.add_parser("salvage", help="after a rewind: the legitimate work it discarded, as CSV and a guarded SQL script")
    salvage.add_argument("--cluster", required=True)
    salvage.add_argument(
        "--directory", required=True, help="a new or empty directory for the files (and the scratch cluster, removed after)"
    )
    salvage.add_argument(
        "--bad-xid", type=int, action="append", default=[], help="a transaction not to salvage (repeatable; the finder names it)"
    )
    salvage.add_argument("--timeline", type=int, help="the discarded timeline (default: the one the current timeline branched from)")
    salvage.add_argument(
        "--from-repository",
        action="store_true",
        help="replay the old timeline's end from the repository even where a clone-mode rewind kept its directory",
    )
    salvage.add_argument("--json", action="store_true", help="the result as JSON (as the DAG's XCom)")
    salvage.add_argument("--verbose", action="store_true", help="progress on stderr")
    sub.add_parser("pools", help="print Airflow pools JSON")
    sub.add_parser("check", help="validate the inventory")
    roles = sub.add_parser("roles", help="Airflow roles DBA and BackupOperator: print the `airflow roles` commands that create them")
    roles.add_argument(
        "--apply", action="store_true", help="run them (as the Airflow user, with Airflow's configuration) and check the result"
    )
    args = parser.parse_args(argv)
    if args.command == "roles":  # needs no inventory
        return roles_command(apply=args.apply)

    try:
        path = args.inventory or inventory_path()
        inventory = load_inventory(path)
        if args.command == "check":
            for error in inventory.errors.values():
                print(error, file=sys.stderr)
            print(f"{len(inventory.clusters)} cluster(s) valid, {len(inventory.errors)} invalid")
            return 1 if inventory.errors else 0
        if args.command == "pools":
            print(json.dumps(pools_json(inventory), indent=2, sort_keys=True))
            return 0
        cluster = inventory.get(args.cluster)
        if args.command == "metrics":
            print(cluster_metrics(cluster, args.format), end="")
            return 0
        if args.command == "guard":
            if args.action == "clear":
                print(clear_guard(cluster))
                return 0
            current = restore_guard.read_guard(cluster)
            print(json.dumps(dataclasses.asdict(current), indent=1) if current else f"no restore guard for cluster {cluster.name}")
            return 0
        if args.command == "holds":
            sys.stdout.write(show_holds(cluster))
            return 0
        if args.command == "find-target":
            sys.stdout.write(find_target(cluster, args))
            return 0
        if args.command == "salvage":
            sys.stdout.write(salvage_discarded(cluster, args))
            return 0
        if args.action == "render":
            sys.stdout.write(render_config(cluster, inventory_path=path))
            return 0
        if args.action == "diff":
            drift = config_drift(cluster, inventory_path=path)
            if drift.drifted:
                sys.stdout.write(drift.diff() or f"{drift.path} does not exist\n")
                return 1
            print(f"{drift.path} matches the inventory")
            return 0
        changed = install_config(cluster, inventory_path=path)
        print(f"{cluster.config_path} {'installed' if changed else 'already up to date'}")
        return 0
    except RewindError as exc:
        print(f"rewind: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
