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


def status_argv(cluster: Cluster) -> list[str]:
    return [pg_ctl(cluster), "status", "-D", cluster.postgres.data_dir]


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
