"""Restore a backup into a scratch directory and start it beside the real cluster.

Used by restore rehearsals and by tests that prove a backup gives the data back. The scratch
cluster restores with --archive-mode=off (it must never archive into the production repository),
listens only on its own port and socket directory, and is stopped and removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from rewind.pgbackrest.client import PgBackRest
from rewind.postgres import psql_argv


@dataclass
class ScratchCluster:
    pgbackrest: PgBackRest
    directory: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def _cluster(self):
        # The same cluster definition, pointed at the scratch data directory, port and socket.
        cluster = self.pgbackrest.cluster
        postgres = cluster.postgres.model_copy(
            update={"data_dir": str(self.data_dir), "port": self.port, "socket_dir": str(self.directory)}
        )
        return cluster.model_copy(update={"postgres": postgres})

    def restore(
        self,
        *,
        backup_set: str | None = None,
        restore_type: str = "immediate",
        target: str | None = None,
        target_timeline: str | None = None,
    ) -> None:
        user = pwd.getpwnam(self.pgbackrest.cluster.postgres.os_user)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chown(self.directory, user.pw_uid, user.pw_gid)
        self.directory.chmod(0o700)
        self.pgbackrest.restore(
            pg_path=str(self.data_dir),
            backup_set=backup_set,
            restore_type=restore_type,
            target=target,
            target_timeline=target_timeline,
            target_action="promote",
            archive_mode="off",
            delta=True,
        )

    def start(self) -> None:
        postgres = self.pgbackrest.cluster.postgres
        options = f"-p {self.port} -c unix_socket_directories={self.directory} -c listen_addresses='' -c archive_mode=off"
        self.pgbackrest.runner.run(
            [
                str(Path(postgres.bin_dir) / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.directory / "postgresql.log"),
                "-w",
                "-t",
                "300",
                "-o",
                options,
            ],
            timeout=330,
            log_stdout=False,
        )

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        return self.pgbackrest.runner.run(psql_argv(self._cluster(), sql, database=database), timeout=120, log_stdout=False).stdout.strip()

    def stop(self) -> None:
        postgres = self.pgbackrest.cluster.postgres
        if (self.data_dir / "postmaster.pid").exists():
            self.pgbackrest.runner.run(
                [str(Path(postgres.bin_dir) / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
                timeout=120,
                check=False,
                log_stdout=False,
            )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
