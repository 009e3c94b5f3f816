"""A PostgreSQL cluster of its own as Airflow's metadata database (what the production shape uses
instead of SQLite): initdb and pg_ctl as the `postgres` OS user, listening on an address this
machine owns, with password authentication for the `airflow` role over TCP.

Durability is off (fsync, synchronous_commit, full_page_writes): it holds one test run's state and
is thrown away with it; the Airflow processes' many small commits then cost nothing on a 2-CPU box.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from devstack.demo import PG_BIN
from devstack.net import free_port, wait_for_port
from rewind.runner import CommandRunner


@dataclass
class MetadataDatabase:
    base: Path
    host: str = "127.0.0.1"
    port: int = 0
    os_user: str = "postgres"
    user: str = "airflow"
    database: str = "airflow"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def sqlalchemy_url(self) -> str:
        """[database] sql_alchemy_conn (psycopg2, as docker-compose.yaml uses)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def celery_result_backend(self) -> str:
        """[celery] result_backend: Celery's own table in the same database."""
        return f"db+postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def _runner(self) -> CommandRunner:
        return CommandRunner(os_user=self.os_user, line_logger=lambda _line: None)

    def start(self) -> MetadataDatabase:
        owner = pwd.getpwnam(self.os_user)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self.base.chmod(0o700)
        self.port = self.port or free_port()
        runner = self._runner()
        runner.run([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", self.os_user], timeout=120, log_stdout=False)
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.base),
            "max_connections": "200",
            "shared_buffers": "64MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("".join(f"{k} = '{v}'\n" for k, v in settings.items()))
        # The OS user over the socket; the airflow role over TCP with its password, nobody else.
        (self.data_dir / "pg_hba.conf").write_text(
            f"local all {self.os_user} trust\nhost {self.database} {self.user} 0.0.0.0/0 scram-sha-256\n"
        )
        runner.run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base / "postgresql.log"), "-w", "-t", "60", "start"],
            timeout=90,
            log_stdout=False,
        )
        wait_for_port(self.port, timeout=30, host=self.host)
        # The password reaches psql through its environment (\getenv), never argv or a file.
        self._psql(
            "\\getenv pw REWIND_METADB_PASSWORD\n"
            f"create role {self.user} login password :'pw';\n"
            f"create database {self.database} owner {self.user};\n"
        )
        return self

    def _psql(self, script: str) -> None:
        path = self.base / "setup.sql"
        path.write_text(script)
        path.chmod(0o644)
        argv = [str(PG_BIN / "psql"), "-h", str(self.base), "-p", str(self.port), "-U", self.os_user, "-d", "postgres"]
        self._runner().run(
            [*argv, "-v", "ON_ERROR_STOP=1", "-f", str(path)],
            timeout=60,
            log_stdout=False,
            extra_env={"REWIND_METADB_PASSWORD": self.password},
        )
        path.unlink()

    def query(self, sql: str, *params: object) -> list[tuple]:
        """Read Airflow's own record directly (what a test watches while the API server is down)."""
        with (
            psycopg2.connect(
                host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.database, connect_timeout=10
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        connection.close()
        return rows

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._runner().run(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                timeout=60,
                check=False,
                log_stdout=False,
            )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
