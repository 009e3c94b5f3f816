"""The one restore executor: restore a backup into a PostgreSQL instance and drive its recovery.

Every rewind-shaped sequence in Rewind is the same five moves on some instance: restore (a backup
set, to a target, `--delta`), start, wait until recovery paused at the target or promoted, promote,
stop. The PITR's downtime and a DBA's "move the target"/"abort" run them on the production instance
(destination = the data directory); a restore rehearsal and salvage run them on a sibling instance
Rewind made for itself (its own directory, socket and log), as Barman's recovery always recovers
into a destination and in-place is just "destination = PGDATA".

An `Instance` says where the instance is and how it is controlled; the `RestoreExecutor` moves it.
Neither records progress: the PITR's journal (rewind.pitr.journal) is that record, written by the
caller after each move it makes.

A sibling instance listens on no TCP address, only on a socket in its own directory, archives
nothing, and takes what it needs to run beside production from its command line (never from the
restored configuration files, which stay as the backup had them); its client authentication is its
own file (the OS user over the socket, as itself or as the data-check role). A data directory
without postgresql.conf (Debian keeps it in /etc) is started with an empty one from the run
directory: nothing is ever written into a sibling's data directory but what pgBackRest restores.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pitr.results import RecoveryResult
from rewind.postgres import live_timeline, log_file, postmaster_pid, run_sql, start_nowait_argv, stop_argv
from rewind.runner import CommandFailed, CommandRunner

NOT_REACHED = "recovery ended before configured recovery target was reached"
# Where siblings whose own directory has a name too long for a socket put it (and where clones and
# kept-directory readers keep their run files): short, private to the OS user.
RUN_ROOT = Path("/run/rewind-clones")
FALLBACK_RUN_ROOT = Path("/tmp/rewind-clones")
SOCKET_PATH_MAX = 107  # bytes, the kernel's limit for a Unix socket's path (sun_path less its NUL)


def run_root() -> Path:
    return RUN_ROOT if RUN_ROOT.parent.is_dir() and os.access(RUN_ROOT.parent, os.W_OK) else FALLBACK_RUN_ROOT


def socket_dir_for(run_dir: Path) -> Path:
    """The sibling's socket directory: its run directory, unless `<run_dir>/.s.PGSQL.<port>` could
    pass the socket path limit (a long cluster name, state path or run id): then a short one of its
    own under run_root(), named by the run directory."""
    if len(os.fsencode(run_dir / ".s.PGSQL.65535")) <= SOCKET_PATH_MAX:
        return run_dir
    import hashlib

    return run_root() / f"socket-{hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:24]}"


STATE_SQL = (
    "select case when pg_is_in_recovery() "
    "then 't|' || pg_get_wal_replay_pause_state() || '|' || coalesce(pg_last_wal_replay_lsn()::text, '-') "
    "else 'f|-|' || pg_current_wal_lsn()::text end"
)
# How long a start may take before the postmaster shows up at all: an exit in that time is a start
# that failed, not a recovery that ended.
START_GRACE_S = 3.0


class RecoveryError(RewindError):
    pass


class RecoveryTargetNotReached(RecoveryError):
    pass


@dataclass(frozen=True)
class RecoveryTarget:
    """What a restore brings an instance to: a backup set, then WAL to a target on a timeline.
    `action` None: pgBackRest's and PostgreSQL's default (promote at the end of the WAL)."""

    backup_set: str | None = None
    type: str = "default"  # pgBackRest's --type: default (end of WAL), immediate, time, xid, name, lsn
    target: str | None = None
    exclusive: bool = False
    timeline: str | None = None
    action: Literal["pause", "promote", "shutdown"] | None = None

    @classmethod
    def of(cls, request, plan) -> RecoveryTarget:
        """A PITR request's target (rewind.pitr.request.PitrRequest) from its plan's backup set, on the
        plan's numeric timeline."""
        return cls(
            backup_set=plan.backup_set,
            type=request.pgbackrest_type,
            target=request.pgbackrest_target,
            exclusive=request.target_exclusive,
            timeline=str(plan.timeline),
            action=None if request.target_type == "latest" else request.action,
        )


@dataclass(frozen=True)
class Instance:
    """One PostgreSQL instance: `cluster` is the inventory's definition with this instance's data
    directory, port, socket directory and control; `run_dir` is set for a sibling Rewind made (its
    socket, log and authentication files live there, and it runs with SIBLING_SETTINGS)."""

    cluster: Cluster
    log_path: Path | None
    run_dir: Path | None = None
    # A sibling's restore also writes archive_mode=off into the restored configuration: a copy
    # started by hand must not archive into production's repository either. Not for a directory
    # that is to become production's (it would survive the swap).
    disposable: bool = True

    @classmethod
    def production(cls, cluster: Cluster) -> Instance:
        return cls(cluster=cluster, log_path=log_file(cluster))

    @classmethod
    def sibling(cls, cluster: Cluster, *, run_dir: Path, port: int, data_dir: Path | None = None, disposable: bool = True) -> Instance:
        """Beside `cluster`: data in `data_dir` (default run_dir/data), socket and log in `run_dir`,
        controlled with pg_ctl as the cluster's OS user."""
        postgres = cluster.postgres.model_copy(
            update={
                "data_dir": str(data_dir or run_dir / "data"),
                "port": port,
                "socket_dir": str(socket_dir_for(run_dir)),
                "control": "pg_ctl",
            }
        )
        return cls(
            cluster=cluster.model_copy(update={"postgres": postgres}),
            log_path=run_dir / "postgresql.log",
            run_dir=run_dir,
            disposable=disposable,
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.cluster.postgres.data_dir)

    @property
    def socket_dir(self) -> Path:
        return Path(self.cluster.postgres.socket_dir)

    @property
    def port(self) -> int:
        return self.cluster.postgres.port

    @property
    def bin_dir(self) -> Path:
        return Path(self.cluster.postgres.bin_dir)

    @property
    def is_sibling(self) -> bool:
        return self.run_dir is not None

    def sibling_settings(self) -> dict[str, str]:
        """What a sibling runs with whatever its restored configuration says (values as pg_ctl's
        shell reads them: '' is an empty value)."""
        return {
            "listen_addresses": "''",
            "unix_socket_directories": str(self.socket_dir),
            "archive_mode": "off",
            "ssl": "off",
            "logging_collector": "off",
            "external_pid_file": "''",
            "synchronous_standby_names": "''",
            "default_transaction_read_only": "off",
            "hba_file": str(self.run_dir / "pg_hba.conf"),
            "ident_file": str(self.run_dir / "pg_ident.conf"),
        }

    def pid(self) -> int | None:
        return postmaster_pid(self.cluster)

    def log_size(self) -> int:
        """Where the log stands now: what a start logs is read from here on."""
        try:
            return self.log_path.stat().st_size if self.log_path else 0
        except FileNotFoundError:
            return 0

    def log_lines(self, since: int) -> list[str]:
        if self.log_path is None:
            return []
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(since)
                return handle.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []


@dataclass
class RestoreExecutor:
    """restore, start, wait (paused or promoted), promote, stop: on one instance.

    `pgbackrest`: the client whose repository the restore reads (rewind.pgbackrest.client.PgBackRest).
    `runner`: psql and pg_ctl stop as the OS user; `postmaster_runner`: the start, with what the
    postmaster's restore_command and archive_command need in its environment."""

    pgbackrest: object
    instance: Instance
    runner: CommandRunner
    postmaster_runner: CommandRunner
    log: Callable[[str], None] = print
    _started_at: float = field(default=0.0, init=False)
    _started_wall: float = field(default=0.0, init=False)  # the same instant, for journalctl --since

    @property
    def cluster(self) -> Cluster:
        return self.instance.cluster

    # ---- restore ----------------------------------------------------------------------------------
    def restore(self, target: RecoveryTarget) -> None:
        """`pgbackrest restore --delta` of the target into the instance's data directory; a retry
        converges. A sibling's tablespaces are mapped under its run directory (restored where the
        backup says, they would land in production's own tablespace directories)."""
        instance = self.instance
        options: dict = {}
        if instance.is_sibling:
            self._prepare_sibling_directories()
            options = {"pg_path": str(instance.data_dir), "tablespace_map_all": str(instance.run_dir / "tablespaces")}
            if instance.disposable:
                options["archive_mode"] = "off"
        self.pgbackrest.restore(
            restore_type=target.type,
            target=target.target,
            target_exclusive=target.exclusive,
            target_action=target.action,
            target_timeline=target.timeline,
            backup_set=target.backup_set,
            delta=True,
            **options,
        )

    def _prepare_sibling_directories(self) -> None:
        instance = self.instance
        user = pwd.getpwnam(self.cluster.postgres.os_user)
        data_dir, run_dir = instance.data_dir, instance.run_dir
        if data_dir.exists() and not any((data_dir / name).exists() for name in ("PG_VERSION", "backup.manifest")):
            # A restore killed before it wrote either: --delta cannot confirm the directory is a data
            # directory and refuses ("path not empty", error 40), so a retry would never converge. It
            # and its tablespaces are this sibling's own, holding nothing but that half-restore.
            shutil.rmtree(data_dir)
            shutil.rmtree(run_dir / "tablespaces", ignore_errors=True)
        for directory in (run_dir, run_dir / "tablespaces"):
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, user.pw_uid, user.pw_gid)
            directory.chmod(0o700)

    # ---- start ------------------------------------------------------------------------------------
    def start(self, *, recovery: Mapping[str, str] | None = None, wait_ready: bool = False) -> int:
        """Start the instance and return where its log stood before (recovery's lines are read from
        there). Without `wait_ready` it returns at once: recovery may take far longer than any fixed
        wait, and `wait` watches it. `recovery`: recovery settings for this start only, on the
        command line (a sibling only: a restart still in recovery goes on to a new target)."""
        instance = self.instance
        offset = instance.log_size()
        self._started_at, self._started_wall = time.monotonic(), time.time()
        if not instance.is_sibling:
            if recovery:
                raise ValueError("recovery settings on the command line are for a sibling instance only")
            self.postmaster_runner.run(start_nowait_argv(self.cluster), timeout=120)
            return offset
        settings = {**self._write_sibling_config(), **instance.sibling_settings(), **(recovery or {})}
        options = f"-p {instance.port} " + " ".join(f"-c {name}={value}" for name, value in settings.items())
        waiting = ["-w", "-t", "300"] if wait_ready else ["-W"]
        pg_ctl = str(instance.bin_dir / "pg_ctl")
        self.postmaster_runner.run(
            [pg_ctl, "start", "-D", str(instance.data_dir), "-l", str(instance.log_path), *waiting, "-o", options],
            timeout=330,
            log_stdout=False,
        )
        return offset

    def _write_sibling_config(self) -> dict[str, str]:
        """A sibling's own files, in its run directory (never in its data directory): client
        authentication for its OS user, as itself and as the data-check role (checks run on a
        clone as on production); an empty postgresql.conf when the data directory has none
        (production keeps it outside, e.g. Debian's /etc). Returns the settings that name them."""
        user = pwd.getpwnam(self.cluster.postgres.os_user)
        run_dir, data_dir = self.instance.run_dir, self.instance.data_dir
        if self.instance.socket_dir != run_dir:
            self.instance.socket_dir.mkdir(parents=True, exist_ok=True)
            os.chown(self.instance.socket_dir, user.pw_uid, user.pw_gid)
            self.instance.socket_dir.chmod(0o700)
        role = self.cluster.postgres.check_role
        files = {
            run_dir / "pg_hba.conf": (
                "# a copy Rewind runs beside production: reached over its own socket, by its OS user only\n"
                f"local all {user.pw_name} peer\nlocal all {role} peer map=rewind\n"
            ),
            run_dir / "pg_ident.conf": f"rewind {user.pw_name} {role}\n",
        }
        settings = {}
        if not (data_dir / "postgresql.conf").exists():
            files[run_dir / "postgresql.conf"] = "# what this copy runs with is on its command line\n"
            settings["config_file"] = str(run_dir / "postgresql.conf")
        for path, text in files.items():
            path.write_text(text)
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(0o600)
        return settings

    # ---- wait -------------------------------------------------------------------------------------
    def wait(self, action: str, *, since_offset: int, timeout_s: float, poll_s: float = 0.1) -> RecoveryResult:
        """Until recovery stopped at the target and paused (`action` pause) or ended promoted
        (promote). Fails at once when PostgreSQL says the target was not reached, or exits."""
        if action not in ("pause", "promote"):
            raise ValueError(f"wait for pause or promote, not {action!r}")
        instance = self.instance
        deadline = time.monotonic() + timeout_s
        started = self._started_at or time.monotonic()
        last_note = ""
        while True:
            lines = instance.log_lines(since_offset)
            if any(NOT_REACHED in line for line in lines):
                raise RecoveryTargetNotReached(
                    f"PostgreSQL reported '{NOT_REACHED}': the target is beyond the archived WAL; the instance in "
                    f"{instance.data_dir} is stopped, not promoted"
                )
            if instance.pid() is None and time.monotonic() - started > START_GRACE_S:
                if instance.log_path is None:  # a systemd unit without a log file: its journal says why it exited
                    lines = self.unit_journal_lines()
                    if any(NOT_REACHED in line for line in lines):
                        raise RecoveryTargetNotReached(
                            f"PostgreSQL reported '{NOT_REACHED}' (journal of {self.cluster.postgres.unit_name()}): the target is "
                            f"beyond the archived WAL; the instance in {instance.data_dir} is stopped, not promoted"
                        )
                fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
                where = f"see {instance.log_path}" if instance.log_path else "see its log"
                raise RecoveryError(f"PostgreSQL of {instance.data_dir} exited during recovery: {fatal[-1].strip() if fatal else where}")
            # One statement; any failure while PostgreSQL changes state (starting up, promoting
            # between two calls: "recovery is not in progress") means: look again.
            try:
                state = run_sql(self.runner, self.cluster, STATE_SQL, timeout=30)
            except CommandFailed as exc:
                note = str(exc)
                if note != last_note:
                    self.log(f"waiting for PostgreSQL: {note}")
                    last_note = note
                state = None
            if state is not None:
                in_recovery, pause, lsn = state.split("|")
                stop_record = next((line.split("LOG:", 1)[-1].strip() for line in lines if "recovery stopping" in line), None)
                if action == "promote" and in_recovery == "f":
                    return RecoveryResult(
                        state="promoted", replay_lsn=lsn, stop_record=stop_record, timeline=live_timeline(self.runner, self.cluster)
                    )
                if action == "pause" and in_recovery == "t" and pause == "paused":
                    return RecoveryResult(state="paused", replay_lsn=lsn, stop_record=stop_record, timeline=None)
            if time.monotonic() > deadline:
                raise RecoveryError(f"recovery did not reach the target within {timeout_s:.0f}s: check PostgreSQL's log")
            time.sleep(poll_s)

    def unit_journal_lines(self) -> list[str]:
        """What the cluster's systemd unit logged since this start (`journalctl -u`, as the user that
        starts it: reading the journal needs root or the systemd-journal group); none when there is
        no unit or no journal."""
        if self.cluster.postgres.control != "systemd":
            return []
        # a retry's executor did not start it: the unit's last lines, which end with that start's exit
        since = ["--since", f"@{int(self._started_wall) - 1}"] if self._started_wall else ["-n", "200"]
        argv = ["journalctl", "-u", self.cluster.postgres.unit_name(), *since, "-o", "cat", "--no-pager"]
        try:
            result = self.postmaster_runner.run(argv, timeout=30, check=False, log_stdout=False)
        except (OSError, CommandFailed):
            return []
        return result.stdout.splitlines()

    # ---- promote ----------------------------------------------------------------------------------
    def promote(self, *, timeout_s: int = 300) -> int:
        """Promote if still in recovery, then CHECKPOINT: PostgreSQL only requests the end-of-recovery
        checkpoint, and until it completes pg_control still names the old timeline, which pgBackRest
        rejects for the new timeline's full backup ("WAL timeline does not match pg_control").
        Returns the new timeline."""
        runner, cluster = self.runner, self.cluster
        if run_sql(runner, cluster, "select pg_is_in_recovery()") == "t":
            if run_sql(runner, cluster, f"select pg_promote(true, {int(timeout_s)})", timeout=timeout_s + 30) != "t":
                raise RecoveryError(f"pg_promote did not finish within {timeout_s}s")
        run_sql(runner, cluster, "checkpoint", timeout=timeout_s)
        timeline = live_timeline(runner, cluster)
        control = int(run_sql(runner, cluster, "select timeline_id from pg_control_checkpoint()"))
        if control != timeline:
            raise RecoveryError(f"pg_control is on timeline {control} after a checkpoint, WAL on {timeline}")
        return timeline

    # ---- stop -------------------------------------------------------------------------------------
    def stop(self, *, mode: str = "fast") -> bool:
        """Stop the instance if it runs (a fast shutdown: a checkpoint, then down); True when it was
        running. Raises when it is still running afterwards."""
        if self.instance.pid() is None:
            return False
        self.runner.run(stop_argv(self.cluster, mode=mode), timeout=330, check=not self.instance.is_sibling, log_stdout=False)
        if self.instance.pid() is not None:
            raise RecoveryError(f"PostgreSQL of {self.instance.data_dir} is still running after stop")
        return True
