"""Restore a backup into a scratch directory and start it beside the real cluster.

Used by restore rehearsals and by tests that prove a backup gives the data back. The scratch
cluster restores with --archive-mode=off (it must never archive into the production repository),
listens on no TCP address, only on a socket in its own directory, and is stopped and removed
afterwards.

What it takes from the restored configuration is overridden where the copy could reach beyond its
directory or hang: archiving, TLS certificates, an external pid file, synchronous standbys it will
never have, the logging collector (its log is the one `start` names), a read-only default; its
client authentication is its own file (the OS user over the socket, nothing else). A data directory
without postgresql.conf (Debian keeps it in /etc) gets an empty one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rewind.errors import RewindError
from rewind.pgbackrest.client import PgBackRest
from rewind.postgres import psql_argv
from rewind.runner import CommandFailed, CommandRunner

NOT_REACHED = "recovery ended before configured recovery target was reached"


class ScratchError(RewindError):
    pass


def free_port() -> int:
    """A port no TCP listener on this host uses (a scratch copy listens on its socket only; the
    number names the socket file, and a free one keeps a person's `psql -p` from reaching the wrong server)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ScratchCluster:
    pgbackrest: PgBackRest
    directory: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgresql.log"

    @property
    def bin_dir(self) -> Path:
        return Path(self.pgbackrest.cluster.postgres.bin_dir)

    @property
    def cluster(self):
        """The same cluster definition, pointed at the scratch data directory, port and socket."""
        cluster = self.pgbackrest.cluster
        postgres = cluster.postgres.model_copy(
            update={"data_dir": str(self.data_dir), "port": self.port, "socket_dir": str(self.directory), "control": "pg_ctl"}
        )
        return cluster.model_copy(update={"postgres": postgres})

    def restore(
        self,
        *,
        backup_set: str | None = None,
        restore_type: str = "immediate",
        target: str | None = None,
        target_exclusive: bool = False,
        target_timeline: str | None = None,
        target_action: str = "promote",
    ) -> None:
        user = pwd.getpwnam(self.pgbackrest.cluster.postgres.os_user)
        if self.data_dir.exists() and not any((self.data_dir / name).exists() for name in ("PG_VERSION", "backup.manifest")):
            # A restore killed before it wrote either: --delta cannot confirm the directory is a data
            # directory and refuses ("path not empty", error 40), so a retry would never converge. It
            # and its tablespaces are this scratch's own, holding nothing but that half-restore.
            shutil.rmtree(self.data_dir)
            shutil.rmtree(self.directory / "tablespaces", ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chown(self.directory, user.pw_uid, user.pw_gid)
        self.directory.chmod(0o700)
        # Tablespaces too go under the scratch directory: restored where the backup says, they
        # would land in production's own tablespace directories (and --delta would rewrite them).
        tablespaces = self.directory / "tablespaces"
        tablespaces.mkdir(exist_ok=True)
        os.chown(tablespaces, user.pw_uid, user.pw_gid)
        tablespaces.chmod(0o700)
        self.pgbackrest.restore(
            pg_path=str(self.data_dir),
            tablespace_map_all=str(tablespaces),
            backup_set=backup_set,
            restore_type=restore_type,
            target=target,
            target_exclusive=target_exclusive,
            target_timeline=target_timeline,
            target_action=target_action,
            archive_mode="off",
            delta=True,
        )

    def settings(self) -> dict[str, str]:
        """What the copy runs with whatever the restored configuration says (values as pg_ctl's
        shell reads them: '' is an empty value)."""
        return {
            "listen_addresses": "''",
            "unix_socket_directories": str(self.directory),
            "archive_mode": "off",
            "ssl": "off",
            "logging_collector": "off",
            "external_pid_file": "''",
            "synchronous_standby_names": "''",
            "default_transaction_read_only": "off",
            "hba_file": str(self.directory / "pg_hba.conf"),
            "ident_file": str(self.directory / "pg_ident.conf"),
        }

    def _write_own_config(self) -> None:
        user = pwd.getpwnam(self.pgbackrest.cluster.postgres.os_user)
        files = {
            self.directory / "pg_hba.conf": "# the scratch copy: its OS user over its own socket, nobody else\nlocal all all peer\n",
            self.directory / "pg_ident.conf": "",
        }
        if not (self.data_dir / "postgresql.conf").exists():
            files[self.data_dir / "postgresql.conf"] = "# the production cluster keeps its configuration outside the data directory\n"
        for path, text in files.items():
            path.write_text(text)
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(0o600)

    def start(self, *, runner: CommandRunner | None = None, wait: bool = True, recovery: dict[str, str] | None = None) -> None:
        """Start the copy (`runner`: with what its restore_command needs, default the pgBackRest
        client's). wait=False returns at once: recovery may take far longer than any fixed wait.
        `recovery`: recovery settings for this start only (a restart still in recovery goes on to
        a new target; the restored configuration is left as it is)."""
        self._write_own_config()
        settings = {**self.settings(), **(recovery or {})}
        options = f"-p {self.port} " + " ".join(f"-c {name}={value}" for name, value in settings.items())
        waiting = ["-w", "-t", "300"] if wait else ["-W"]
        (runner or self.pgbackrest.runner).run(
            [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path), *waiting, "-o", options],
            timeout=330,
            log_stdout=False,
        )

    def is_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return False
        return Path(f"/proc/{pid}").exists()

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_until_promoted(self, *, timeout_s: float, poll_s: float = 0.25, log: Callable[[str], None] = print) -> None:
        """Until recovery has ended and the copy answers queries as a primary (its restore target
        action is promote). Fails at once when PostgreSQL exits or says the target was not reached."""
        self._wait_for("select not pg_is_in_recovery()", "finish recovery", timeout_s=timeout_s, poll_s=poll_s, log=log)

    def wait_until_paused(self, *, timeout_s: float, poll_s: float = 0.25, log: Callable[[str], None] = print) -> None:
        """Until replay has paused at the recovery target (its target action is pause)."""
        self._wait_for(
            "select pg_is_in_recovery() and pg_is_wal_replay_paused()", "pause at its target", timeout_s=timeout_s, poll_s=poll_s, log=log
        )

    def _wait_for(self, sql: str, what: str, *, timeout_s: float, poll_s: float, log: Callable[[str], None]) -> None:
        """Until `sql` answers true; fails at once when PostgreSQL exits or says the target was not reached."""
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        last = ""
        while True:
            lines = self.log_lines()
            if any(NOT_REACHED in line for line in lines):
                raise ScratchError(f"the scratch copy reported '{NOT_REACHED}': the target is beyond the archived WAL")
            if not self.is_running() and time.monotonic() - started > 3:
                fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
                raise ScratchError(f"the scratch copy exited during recovery: {fatal[-1].strip() if fatal else f'see {self.log_path}'}")
            try:
                if self.psql(sql, timeout=30) == "t":
                    return
                note = "in recovery"
            except CommandFailed as exc:  # starting up, or between two states
                note = str(exc)
            if note != last:
                log(f"waiting for the scratch copy: {note}")
                last = note
            if time.monotonic() > deadline:
                raise ScratchError(f"the scratch copy did not {what} within {timeout_s:.0f}s: see {self.log_path}")
            time.sleep(poll_s)

    def copy_out(self, sql: str, path: Path, *, database: str = "postgres", timeout: float = 3600) -> None:
        """The query's rows (psql unaligned, one per line) into `path`, never all in memory: psql
        fetches them through a cursor (FETCH_COUNT), and its output goes straight to the file."""
        argv = psql_argv(self.cluster, None, database=database)
        sql = "\\set FETCH_COUNT 10000\n" + sql
        self.pgbackrest.runner.run(argv, timeout=timeout, log_stdout=False, input_text=sql, stdout_path=path)

    def psql(self, sql: str, *, database: str = "postgres", timeout: float = 120) -> str:
        """The SQL on psql's standard input: it may carry data of any size (never argv)."""
        argv = psql_argv(self.cluster, None, database=database)
        return self.pgbackrest.runner.run(argv, timeout=timeout, log_stdout=False, input_text=sql).stdout.strip("\n")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self.pgbackrest.runner.run(
                [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "300"],
                timeout=330,
                check=False,
                log_stdout=False,
            )
        if self.is_running():
            raise ScratchError(f"the scratch copy in {self.data_dir} is still running after pg_ctl stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
