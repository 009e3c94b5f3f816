"""Restore a backup into a scratch directory and start it beside the real cluster.

Used by restore rehearsals, salvage and tests that prove a backup gives the data back. A scratch
cluster is the restore executor (rewind.restore) on a sibling instance: restored with
--archive-mode=off (it must never archive into the production repository), listening on no TCP
address, only on a socket in its own directory, with what it takes from the restored configuration
overridden on its command line where the copy could reach beyond its directory or hang
(Instance.sibling_settings); stopped and removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path

from rewind.errors import RewindError
from rewind.pgbackrest.client import PgBackRest
from rewind.postgres import psql_argv
from rewind.restore import Instance, RecoveryError, RecoveryTarget, RestoreExecutor
from rewind.runner import CommandFailed, CommandRunner


class ScratchError(RewindError):
    pass


def free_port() -> int:
    """A port no TCP listener on this host uses (a scratch copy listens on its socket only; the
    number names the socket file, and a free one keeps a person's `psql -p` from reaching the wrong server)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ScratchCluster:
    """A sibling instance in `directory` (data in directory/data), on `port`, driven by the restore
    executor with the pgBackRest client's runner (its restore_command needs the repository's secrets)."""

    def __init__(
        self,
        pgbackrest: PgBackRest,
        directory: Path,
        port: int,
        *,
        postmaster_runner: CommandRunner | None = None,
        log: Callable[[str], None] = print,
        data_dir: Path | None = None,
    ) -> None:
        """`postmaster_runner`: what starts it, with what its restore_command needs (default the
        pgBackRest client's runner). `data_dir`: an existing directory outside `directory` to run
        on instead of a restore (KeptDirectoryReader); never removed here."""
        self.pgbackrest = pgbackrest
        self.directory = Path(directory)
        self.port = port
        self.instance = Instance.sibling(
            pgbackrest.cluster, run_dir=self.directory, port=port, data_dir=data_dir, disposable=data_dir is None
        )
        self.executor = RestoreExecutor(
            pgbackrest, self.instance, runner=pgbackrest.runner, postmaster_runner=postmaster_runner or pgbackrest.runner, log=log
        )
        self._log_offset = 0

    @property
    def data_dir(self) -> Path:
        return self.instance.data_dir

    @property
    def log_path(self) -> Path:
        return self.instance.log_path

    @property
    def socket_dir(self) -> Path:
        """Where its socket is (`psql -h`): its directory, or a short one when that name is too long."""
        return self.instance.socket_dir

    @property
    def bin_dir(self) -> Path:
        return self.instance.bin_dir

    @property
    def cluster(self):
        """The same cluster definition, pointed at the scratch data directory, port and socket."""
        return self.instance.cluster

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
        target = RecoveryTarget(
            backup_set=backup_set,
            type=restore_type,
            target=target,
            exclusive=target_exclusive,
            timeline=target_timeline,
            action=target_action,
        )
        self.executor.restore(target)

    def start(self, *, wait: bool = True, recovery: dict[str, str] | None = None) -> None:
        """Start the copy. wait=False returns at once: recovery may take far longer than any fixed
        wait. `recovery`: recovery settings for this start only (a restart still in recovery goes
        on to a new target; the restored configuration is left as it is)."""
        self._log_offset = self.executor.start(recovery=recovery, wait_ready=wait)

    def wait_until_promoted(self, *, timeout_s: float, poll_s: float = 0.25, log: Callable[[str], None] | None = None) -> None:
        """Until recovery has ended and the copy answers queries as a primary (its restore target
        action is promote). Fails at once when PostgreSQL exits or says the target was not reached."""
        self._wait("promote", timeout_s=timeout_s, poll_s=poll_s, log=log)

    def wait_until_paused(self, *, timeout_s: float, poll_s: float = 0.25, log: Callable[[str], None] | None = None) -> None:
        """Until replay has paused at the recovery target (its target action is pause)."""
        self._wait("pause", timeout_s=timeout_s, poll_s=poll_s, log=log)

    def _wait(self, action: str, *, timeout_s: float, poll_s: float, log: Callable[[str], None] | None) -> None:
        if log is not None:
            self.executor.log = log
        try:
            self.executor.wait(action, since_offset=self._log_offset, timeout_s=timeout_s, poll_s=poll_s)
        except RecoveryError as exc:
            raise ScratchError(f"the scratch copy: {exc}") from None

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
        try:
            self.executor.stop()
        except RecoveryError as exc:
            raise ScratchError(f"the scratch copy: {exc}") from None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)  # its own only when the directory's name was too long for a socket


class KeptDirectoryReader(ScratchCluster):
    """A pre-rewind directory (clone mode's cutover keeps production's old one, stopped) read where it
    is: started as a hot standby with nothing to fetch and nowhere to go (no restore_command, no
    primary, no recovery target, the current timeline), on a private socket with archiving off. A
    standby writes no WAL: the directory stays the old timeline's last state, usable for undo.
    Its standby.signal is removed again when it stops."""

    # whatever recovery settings an earlier restore left in its postgresql.auto.conf do not apply
    READ_ONLY_RECOVERY = {
        "restore_command": "''",
        "primary_conninfo": "''",
        "recovery_target": "''",
        "recovery_target_time": "''",
        "recovery_target_xid": "''",
        "recovery_target_lsn": "''",
        "recovery_target_name": "''",
        "recovery_target_timeline": "current",
        "hot_standby": "on",
        "autovacuum": "off",
    }

    def start(self, *, wait: bool = True, recovery: dict[str, str] | None = None) -> None:
        if recovery:
            raise ValueError("a kept directory is only read: it goes to no recovery target")
        self.directory.mkdir(parents=True, exist_ok=True)  # its socket, log and authentication files
        os.chown(self.directory, pwd.getpwnam(self.cluster.postgres.os_user).pw_uid, -1)
        self.directory.chmod(0o700)
        signal = self.data_dir / "standby.signal"
        user = pwd.getpwnam(self.cluster.postgres.os_user)
        signal.touch()
        os.chown(signal, user.pw_uid, user.pw_gid)
        try:
            self._log_offset = self.executor.start(recovery=self.READ_ONLY_RECOVERY, wait_ready=True)
        except CommandFailed as exc:
            logged = self.instance.log_lines(0)[-5:] if self.log_path else []
            raise ScratchError(f"{self.data_dir} did not start as a standby: {exc}; its log: {' | '.join(logged)}") from None

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.instance.pid() is None:
                (self.data_dir / "standby.signal").unlink(missing_ok=True)

    def remove(self) -> None:
        """Stops it and removes its socket directory; the kept directory itself stays."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
