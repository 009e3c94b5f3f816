"""PostgreSQL control commands for a cluster, per the inventory's `postgres.control`.

systemd: `systemctl start|stop|reload <unit>` (the worker must be allowed to, e.g. by polkit or a
sudoers rule for the unit). pg_ctl: run as the cluster's OS user against the data directory; the
repository secrets travel in its environment so that archive_command (pgbackrest archive-push,
started by the postmaster) inherits them.
"""

from __future__ import annotations

from pathlib import Path

from rewind.inventory import Cluster


def pg_ctl(cluster: Cluster) -> str:
    return str(Path(cluster.postgres.bin_dir) / "pg_ctl")


def start_argv(cluster: Cluster) -> list[str]:
    if cluster.postgres.control == "systemd":
        return ["systemctl", "start", cluster.postgres.unit_name()]
    return [pg_ctl(cluster), "start", "-D", cluster.postgres.data_dir, "-l", cluster.postgres.pg_ctl_log(), "-w", "-t", "300"]


def stop_argv(cluster: Cluster, *, mode: str = "fast") -> list[str]:
    if mode not in ("smart", "fast", "immediate"):
        raise ValueError(f"stop mode must be smart, fast or immediate, not {mode!r}")
    if cluster.postgres.control == "systemd":
        return ["systemctl", "stop", cluster.postgres.unit_name()]
    return [pg_ctl(cluster), "stop", "-D", cluster.postgres.data_dir, "-m", mode, "-w", "-t", "300"]


def reload_argv(cluster: Cluster) -> list[str]:
    """Reload configuration (e.g. after archive_command changes during onboarding)."""
    if cluster.postgres.control == "systemd":
        return ["systemctl", "reload", cluster.postgres.unit_name()]
    return [pg_ctl(cluster), "reload", "-D", cluster.postgres.data_dir]


def start_nowait_argv(cluster: Cluster) -> list[str]:
    """Start without waiting for connections: a server doing archive recovery may take far longer
    than any fixed wait; Rewind watches recovery itself."""
    if cluster.postgres.control == "systemd":
        return ["systemctl", "start", "--no-block", cluster.postgres.unit_name()]
    return [pg_ctl(cluster), "start", "-D", cluster.postgres.data_dir, "-l", cluster.postgres.pg_ctl_log(), "-W"]


def log_file(cluster: Cluster) -> Path | None:
    """Where PostgreSQL's server log is read from (pg_ctl -l file, or postgres.log_file)."""
    if cluster.postgres.log_file:
        return Path(cluster.postgres.log_file)
    return Path(cluster.postgres.pg_ctl_log()) if cluster.postgres.control == "pg_ctl" else None


def run_sql(runner, cluster: Cluster, sql: str, *, read_only: bool = False, database: str = "postgres", timeout: float = 60) -> str:
    """One statement through psql as the OS user over the socket; read_only is enforced by the
    server (default_transaction_read_only), not by inspecting the SQL."""
    extra_env = {"PGOPTIONS": "-c default_transaction_read_only=on -c statement_timeout=300000"} if read_only else None
    result = runner.run(psql_argv(cluster, sql, database=database), timeout=timeout, log_stdout=False, extra_env=extra_env)
    return result.stdout.strip()


def psql_argv(cluster: Cluster, sql: str, *, database: str = "postgres") -> list[str]:
    """psql as the OS user over the socket; one statement, unaligned tuples-only output."""
    return [
        str(Path(cluster.postgres.bin_dir) / "psql"),
        "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", cluster.postgres.socket_dir,
        "-p", str(cluster.postgres.port),
        "-d", database,
        "-c", sql,
    ]


def postmaster_pid(cluster: Cluster) -> int | None:
    """The running postmaster's pid from postmaster.pid, or None when PostgreSQL is down."""
    pid_file = Path(cluster.postgres.data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None
