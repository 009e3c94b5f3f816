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


def restart_argv(cluster: Cluster) -> list[str]:
    """Restart (fast shutdown, then start): what archive_mode and wal_level need to change."""
    if cluster.postgres.control == "systemd":
        return ["systemctl", "restart", cluster.postgres.unit_name()]
    return [
        pg_ctl(cluster),
        "restart",
        "-D",
        cluster.postgres.data_dir,
        "-m",
        "fast",
        "-l",
        cluster.postgres.pg_ctl_log(),
        "-w",
        "-t",
        "300",
    ]


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


def run_sql(runner, cluster: Cluster, sql: str, *, database: str = "postgres", timeout: float = 60) -> str:
    """One statement through psql as the OS user (a superuser) over the socket: Rewind's own
    control queries, never a user's SQL (see run_check)."""
    result = runner.run(psql_argv(cluster, sql, database=database), timeout=timeout, log_stdout=False)
    return result.stdout.strip()


def run_check(runner, cluster: Cluster, sql: str, *, database: str) -> str:
    """A user's data check: as the inventory's check role (not a superuser, pg_read_all_data only),
    in a read-only transaction, bounded by the check timeout. What the SQL may do is decided by
    the server's privileges, not by inspecting the SQL."""
    timeout_ms = cluster.postgres.check_timeout_s * 1000
    options = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
    argv = psql_argv(cluster, sql, database=database, role=cluster.postgres.check_role)
    result = runner.run(
        argv,
        timeout=cluster.postgres.check_timeout_s + 30,
        log_stdout=False,
        extra_env={"PGOPTIONS": options},
        shown_argv=[*argv[:-1], "<the data check>"],
    )
    return result.stdout.strip()


CHECK_ROLE_SQL = (
    "select rolcanlogin::text || '|' || rolsuper::text || '|' || pg_has_role(oid, 'pg_read_all_data', 'member')::text"
    " || '|' || (rolcreaterole or rolcreatedb or rolreplication or rolbypassrls)::text"
    " || '|' || (select count(*) from pg_auth_members m join pg_roles g on g.oid = m.roleid"
    " where m.member = r.oid and g.rolname <> 'pg_read_all_data')::text from pg_roles r where rolname = '{role}'"
)


def check_role_problem(runner, cluster: Cluster) -> str | None:
    """Why the check role cannot run data checks safely, or None when it can."""
    role = cluster.postgres.check_role
    row = run_sql(runner, cluster, CHECK_ROLE_SQL.format(role=role))
    if not row:
        return f"role {role!r} does not exist: create it (README, Data checks)"
    can_login, superuser, reads_all, powers, other_roles = row.split("|")
    if superuser == "true":
        return f"role {role!r} is a superuser: data checks must run without superuser rights (README, Data checks)"
    if powers == "true" or other_roles != "0":
        return f"role {role!r} has more than pg_read_all_data (createrole/createdb/replication/bypassrls or other role memberships)"
    if can_login != "true":
        return f"role {role!r} cannot log in: ALTER ROLE {role} LOGIN"
    if reads_all != "true":
        return f"role {role!r} is not a member of pg_read_all_data: GRANT pg_read_all_data TO {role}"
    return None


def psql_argv(cluster: Cluster, sql: str | None, *, database: str = "postgres", role: str | None = None) -> list[str]:
    """psql over the socket (as the OS user, or as `role`); one statement, unaligned tuples-only
    output. `sql` None: the SQL comes on standard input (`-f -`), for SQL that carries data."""
    return [
        str(Path(cluster.postgres.bin_dir) / "psql"),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        cluster.postgres.socket_dir,
        "-p",
        str(cluster.postgres.port),
        *(["-U", role] if role else []),
        "-d",
        database,
        *(["-f", "-"] if sql is None else ["-c", sql]),
    ]


def live_timeline(runner, cluster: Cluster) -> int:
    """The timeline the running cluster writes (or, in recovery, replays) WAL on."""
    if run_sql(runner, cluster, "select pg_is_in_recovery()") == "t":
        return int(run_sql(runner, cluster, "select timeline_id from pg_control_checkpoint()"))
    return int(run_sql(runner, cluster, "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)


def _control_field(runner, cluster: Cluster, field: str) -> str | None:
    result = runner.run(
        [str(Path(cluster.postgres.bin_dir) / "pg_controldata"), "-D", cluster.postgres.data_dir], timeout=30, check=False, log_stdout=False
    )
    for line in result.stdout.splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    return None


def control_timeline(runner, cluster: Cluster) -> int | None:
    """The timeline in the cluster's pg_control (running or not), None when it cannot be read."""
    found = _control_field(runner, cluster, "Latest checkpoint's TimeLineID")
    return int(found) if found else None


def control_state(runner, cluster: Cluster) -> str | None:
    """pg_control's "Database cluster state" (shut down, in production, ...), None when unreadable."""
    return _control_field(runner, cluster, "Database cluster state")


def postmaster_pid(cluster: Cluster) -> int | None:
    """The running postmaster's pid from postmaster.pid, or None when PostgreSQL is down."""
    pid_file = Path(cluster.postgres.data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None
