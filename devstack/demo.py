"""A real demo cluster for tests and the local stack: PostgreSQL 15 archiving with pgBackRest into
an S3 API over TLS, all on 127.0.0.1 with free ports, described by a generated inventory.

Or, for the production shape (tests/e2e_celery): PostgreSQL on a database host of its own (a network
namespace with its own address, devstack.netns), archiving into an S3 endpoint shared with other
clusters, every cluster in one inventory file, routed to its host's worker queue.

Everything runs through the product's own code: the inventory loader, the config renderer, the
CommandRunner (as the `postgres` OS user) and the pgBackRest client. Secrets (S3 keys, cipher
passphrase) are generated per stack and live only in process environments.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devstack.net import free_port
from devstack.netns import DatabaseHost
from devstack.s3tls import S3OverTLS
from rewind.credentials import CIPHER_PASS, S3_KEY, S3_KEY_SECRET
from rewind.inventory import Cluster, load_inventory
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.config import install_config
from rewind.postgres import psql_argv, start_argv, stop_argv
from rewind.runner import CommandFailed, CommandRunner


def _pg_bin() -> Path:
    """PostgreSQL 15 where installed (these machines), else the newest installed major version."""
    if os.environ.get("REWIND_PG_BIN"):
        return Path(os.environ["REWIND_PG_BIN"])
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    preferred = [p for p in installed if p.parent.parent.name == "15"]
    if not (preferred or installed):
        raise RuntimeError("PostgreSQL is not installed: run scripts/install.sh")
    return (preferred or installed)[-1].parent


PG_BIN = _pg_bin()


@dataclass
class DemoStack:
    base: Path
    name: str = "demo"
    os_user: str = "postgres"
    pg_port: int = 0
    s3: S3OverTLS | None = None
    cipher_pass: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    schedules: dict | None = None
    credentials: dict | None = None  # the inventory's credentials section; default: source env
    repo_settings: dict | None = None  # merged into the inventory's repo section (retention, ...)
    queue: str = "default"  # the Celery queue of the worker on the cluster's host
    host: DatabaseHost | None = None  # run PostgreSQL on this database host (else on 127.0.0.1)
    inventory_file: Path | None = None  # an inventory shared with other clusters (else its own)
    pitr_settings: dict | None = None  # the inventory's pitr section
    # Where a PITR builds the target state when the params do not say (the inventory's pitr.mode):
    # the tests' stacks rewind in place unless a test asks for clone; None: the product's default
    # (clone), as the local stack shows a newcomer.
    pitr_mode: str | None = "in_place"
    # False: a cluster as it is before Rewind's onboarding (no archiving, no config installed, no stanza)
    onboarded: bool = True
    alerts: dict | None = None  # the inventory's alerts section (pagers, ...); default: none, nobody is paged
    rehearsal: dict | None = None  # the inventory's rehearsal section (change_template, tables, ...); default: none
    pgbackrest_settings: dict | None = None  # merged into the inventory's pgbackrest section (io_timeout_s, ...)
    # True: the S3 bucket is created as terraform/ declares it (Object Lock GOVERNANCE, versioning,
    # SSE-KMS with a bucket key, the lifecycle, no public access); see devstack/s3tls.py
    s3_as_code: bool = False
    _owns_s3: bool = field(default=False, repr=False)

    # ---- layout ------------------------------------------------------------------------------
    @property
    def env_prefix(self) -> str:
        return f"REWIND_{self.name.upper()}_"

    @property
    def inventory_path(self) -> Path:
        return self.inventory_file or self.base / "inventory.yaml"

    @property
    def listen_address(self) -> str:
        return self.host.address if self.host else "127.0.0.1"

    @property
    def pg_home(self) -> Path:
        return self.base / "pg"

    @property
    def data_dir(self) -> Path:
        return self.pg_home / "data"

    @property
    def cluster(self) -> Cluster:
        return load_inventory(self.inventory_path).get(self.name)

    def worker_env(self) -> dict[str, str]:
        """What the Airflow worker's environment must hold for this cluster (credentials.source=env)."""
        assert self.s3 is not None
        return {
            f"{self.env_prefix}S3_KEY": self.s3.access_key,
            f"{self.env_prefix}S3_KEY_SECRET": self.s3.secret_key,
            f"{self.env_prefix}CIPHER_PASS": self.cipher_pass,
        }

    def postgres_connection(self) -> str:
        """The Airflow connection (JSON, for AIRFLOW_CONN_REWIND_PG_<NAME>) to this cluster's socket."""
        import json

        return json.dumps(
            {"conn_type": "postgres", "host": str(self.pg_home), "port": self.pg_port, "login": self.os_user, "schema": "postgres"}
        )

    def repository_secrets(self) -> dict[str, str]:
        """The stack's own static credentials (the S3 admin key), whatever source the inventory names."""
        assert self.s3 is not None
        return {S3_KEY: self.s3.access_key, S3_KEY_SECRET: self.s3.secret_key, CIPHER_PASS: self.cipher_pass}

    def runner(self, **kwargs) -> CommandRunner:
        return CommandRunner(os_user=self.os_user, secrets=self.repository_secrets(), **kwargs)

    def pgbackrest(self) -> PgBackRest:
        return PgBackRest(self.cluster, self.runner())

    def inventory(self) -> dict:
        assert self.s3 is not None
        pgb = self.base / "pgbackrest"
        return {
            "clusters": {
                self.name: {
                    "stanza": self.name,
                    "description": "Rewind demo cluster (local stack)",
                    "queue": self.queue,
                    "postgres": {
                        "version": int(PG_BIN.parent.name),
                        "bin_dir": str(PG_BIN),
                        "data_dir": str(self.data_dir),
                        "port": self.pg_port,
                        "socket_dir": str(self.pg_home),
                        "os_user": self.os_user,
                        "control": "pg_ctl",
                        "log_file": str(self.pg_home / "postgresql.log"),
                    },
                    "pgbackrest": {
                        "config_path": str(pgb / f"{self.name}.conf"),
                        "log_path": str(pgb / "log"),
                        "lock_path": str(pgb / "lock"),
                        "spool_path": str(pgb / "spool"),
                        "process_max": 2,
                        "io_timeout_s": 5,  # a stopped S3 shows as a failed archive-push within a minute
                        **(self.pgbackrest_settings or {}),
                    },
                    "repo": {
                        "bucket": self.s3.bucket,
                        "endpoint": self.s3.endpoint,
                        "region": self.s3.region,
                        "port": self.s3.tls_port,
                        "uri_style": "path",
                        "ca_file": str(self.s3.ca_file),
                        "path": f"/rewind/{self.name}",
                        "cipher_type": "aes-256-cbc",
                        **(self.repo_settings or {}),
                    },
                    "credentials": self.credentials or {"source": "env", "env_prefix": self.env_prefix},
                    "state_path": str(self.base / "rewind-state"),
                    "schedules": {"full": "0 2 * * 0", "diff": "0 2 * * 1-6", "incr": "0 * * * *", **(self.schedules or {})},
                    **(
                        {"pitr": pitr}
                        if (pitr := {**({"mode": self.pitr_mode} if self.pitr_mode else {}), **(self.pitr_settings or {})})
                        else {}
                    ),
                    **({"alerts": self.alerts} if self.alerts else {}),
                    **({"rehearsal": self.rehearsal} if self.rehearsal else {}),
                }
            }
        }

    def write_inventory(self) -> None:
        """Write this cluster's entry (into the shared inventory: the other clusters' stay). Atomic:
        a running DAG processor never reads half a file."""
        doc = self.inventory()
        if self.inventory_file and self.inventory_file.exists():
            shared = yaml.safe_load(self.inventory_file.read_text()) or {}
            shared.setdefault("clusters", {}).update(doc["clusters"])
            doc = shared
        partial = self.inventory_path.with_name(f".{self.inventory_path.name}.{os.getpid()}.tmp")
        partial.write_text(yaml.safe_dump(doc, sort_keys=False))
        partial.chmod(0o644)
        os.replace(partial, self.inventory_path)

    def use_credentials(self, credentials: dict | None) -> None:
        """Switch where the cluster's repository secrets come from (None: back to the environment).
        Every hook reads the inventory afresh, so the next task uses the new source."""
        self.credentials = credentials
        self.write_inventory()

    def use_rehearsal(self, rehearsal: dict | None) -> None:
        """Set the cluster's rehearsal section (None: back to none). The DAGs read it when they are parsed."""
        self.rehearsal = rehearsal
        self.write_inventory()

    def use_alerts(self, alerts: dict | None) -> None:
        """Set the cluster's alerts section (None: back to none). The DAGs read it when they are parsed."""
        self.alerts = alerts
        self.write_inventory()

    def use_pgbackrest_settings(self, settings: dict | None) -> None:
        """Override part of the inventory's pgbackrest section (None: back to the stack's own) and
        install the pgbackrest.conf rendered from it: every pgBackRest command, archive-push
        included, reads that file when it starts. An outage test shortens io_timeout_s while S3 is
        down: each request to the stopped endpoint is retried until io-timeout runs out (pgBackRest
        2.45 takes 4 x io-timeout for one `info`, 2.55 about 9 x), and the outage is just as real."""
        self.pgbackrest_settings = settings
        self.write_inventory()
        install_config(self.cluster, inventory_path=self.inventory_path)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> DemoStack:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the postgres user must traverse to its own directories
        self.pg_port = self.pg_port or free_port()
        if self.s3 is None:  # else an endpoint shared with other clusters, started by the caller
            self.s3 = S3OverTLS(self.base / "s3", as_code=self.s3_as_code)
            self._owns_s3 = True
            self.s3.start()
            (self.base / "s3").chmod(0o755)
        self.write_inventory()
        if self.onboarded:
            install_config(self.cluster, inventory_path=self.inventory_path)
        self._initdb()
        self.start_postgres()
        # The PITR data checks' role (README, Data checks): it must exist before the backups so that
        # it exists in every restored state.
        role = self.cluster.postgres.check_role
        self.psql(f"create role {role} login; grant pg_read_all_data to {role}")
        if self.onboarded:
            self.pgbackrest().stanza_create()
        return self

    def aws_connection(self) -> str:
        """The Airflow AWS connection (JSON, for AIRFLOW_CONN_AWS_DEFAULT) to the S3 API over TLS."""
        import json

        assert self.s3 is not None
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.s3.access_key,
                "password": self.s3.secret_key,
                "extra": {"endpoint_url": self.s3.url, "region_name": self.s3.region, "verify": str(self.s3.ca_file)},
            }
        )

    def _initdb(self) -> None:
        user = pwd.getpwnam(self.os_user)
        self.pg_home.mkdir(parents=True, exist_ok=True)
        os.chown(self.pg_home, user.pw_uid, user.pw_gid)
        self.pg_home.chmod(0o700)
        cluster = self.cluster
        runner = self.runner()
        runner.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", self.os_user, "--data-checksums"],
            timeout=120,
            log_stdout=False,
        )
        archive_command = f"{cluster.pgbackrest.bin} --config={cluster.config_path} --stanza={cluster.stanza} archive-push %p"
        settings = {
            "listen_addresses": self.listen_address,
            "port": str(self.pg_port),
            "unix_socket_directories": str(self.pg_home),
            "log_min_messages": "info",
            "shared_buffers": "32MB",
        }
        if self.onboarded:
            settings.update(
                wal_level="replica", archive_mode="on", archive_command=archive_command, archive_timeout="60", max_wal_senders="3"
            )
        lines = [f"{k} = '{v}'" for k, v in settings.items()]
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("\n".join(lines) + "\n")

    def start_postgres(self) -> None:
        if self.host is None:
            self.runner().run(start_argv(self.cluster), timeout=120, log_stdout=False)
            return
        # On its database host: in the host's network namespace, as the OS user (setpriv), with the
        # repository secrets in the environment its archive_command inherits.
        user = pwd.getpwnam(self.os_user)
        CommandRunner(os_user="root", secrets=self.repository_secrets()).run(
            self.host.argv(start_argv(self.cluster), user=self.os_user),
            timeout=120,
            log_stdout=False,
            extra_env={"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name},
            shown_argv=start_argv(self.cluster),
        )

    def stop_postgres(self, mode: str = "fast") -> None:
        self.runner().run(stop_argv(self.cluster, mode=mode), timeout=120, check=False, log_stdout=False)

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        result = self.runner(line_logger=lambda _line: None).run(
            psql_argv(self.cluster, sql, database=database), timeout=120, log_stdout=False
        )
        return result.stdout.strip()

    def make_writable(self, *, timeout: float = 60) -> list[str]:
        """Back to the state every test on this shared cluster starts from, whatever the test before
        left: no restore guard, no pgBackRest stop file, PostgreSQL running, out of recovery and
        writable. A rewind cut off midway leaves PostgreSQL stopped, paused read-only at a target, or
        a half-restored data directory; repaired here, one failing test fails alone instead of every
        later test failing for its reason. Returns what it had to do (nothing on the usual path)."""
        from rewind.guard import clear, guard_path
        from rewind.postgres import postmaster_pid

        done: list[str] = []
        cluster = self.cluster
        # A task told to stop (its run marked failed) ends its restore or backup at its next heartbeat.
        deadline = time.monotonic() + timeout
        while busy := self._repository_commands_running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"pgBackRest still busy on stanza {cluster.stanza} after {timeout:.0f}s: {busy}")
            time.sleep(0.5)
        if guard_path(cluster).exists():
            done.append(clear(cluster))
        for stop_file in Path(cluster.pgbackrest.lock_path).glob("*.stop"):
            stop_file.unlink()
            done.append(f"removed pgBackRest stop file {stop_file.name}")
        for attempt in ("as it was left", "restored"):
            if attempt == "restored":
                self._restore_latest()
                done.append("PostgreSQL would not run on the data directory it was left: restored the latest state from the repository")
            state = self._serving(timeout) if postmaster_pid(cluster) else None
            if state is None and (self.data_dir / "PG_VERSION").exists():
                try:
                    self.start_postgres()
                    # A hot standby accepts read-only connections before its recovery can fail
                    # ("recovery ended before configured recovery target was reached").
                    state = self._serving(timeout)
                    done.append("started PostgreSQL")
                except CommandFailed:
                    pass
            if state is None:
                continue
            in_recovery, read_only = state
            try:
                if read_only != "off":
                    self.psql("alter system reset default_transaction_read_only")
                    self.psql("select pg_reload_conf()")
                    done.append("reset default_transaction_read_only")
                if in_recovery == "t":
                    self.psql(f"select pg_promote(true, {int(timeout)})")
                    # pg_control names the new timeline only after a checkpoint; a backup before
                    # it is refused ("WAL timeline 2 does not match pg_control timeline 1").
                    self.psql("checkpoint")
                    done.append("promoted PostgreSQL, which was in recovery (paused at a target)")
                # a two-phase transaction a test left prepared holds its locks until ended
                for gid in filter(None, self.psql("select gid from pg_prepared_xacts").split("\n")):
                    self.psql(f"rollback prepared '{gid.replace(chr(39), chr(39) * 2)}'")
                    done.append(f"rolled back prepared transaction {gid!r}")
                self.psql("create table rewind_writable_probe (); drop table rewind_writable_probe")
                return done
            except CommandFailed:
                if postmaster_pid(cluster) is not None:
                    raise
        raise RuntimeError(f"demo cluster: PostgreSQL exits at start even after a restore of the latest state; {self._log_tail()}")

    def _serving(self, timeout: float) -> tuple[str, str] | None:
        """(in recovery, default_transaction_read_only) once PostgreSQL accepts connections; None
        when its postmaster is gone (stopped, or exited at start)."""
        from rewind.postgres import postmaster_pid

        deadline = time.monotonic() + timeout
        while True:
            try:
                in_recovery, read_only = self.psql("select pg_is_in_recovery(), current_setting('default_transaction_read_only')").split(
                    "|"
                )
                return in_recovery, read_only
            except CommandFailed as refused:
                if postmaster_pid(self.cluster) is None:
                    return None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"demo cluster not accepting connections after {timeout:.0f}s ({refused}); {self._log_tail()}"
                    ) from None
                time.sleep(0.5)

    def _log_tail(self, lines: int = 15) -> str:
        log = Path(self.cluster.postgres.pg_ctl_log())
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"
        return f"{log} ends:\n{tail}"

    def _repository_commands_running(self) -> list[str]:
        """pgBackRest restores and backups of this cluster still running (archive-push and
        archive-get come and go with PostgreSQL itself, and are not counted)."""
        config = f"--config={self.cluster.config_path}"
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv]
            if config in words and ("restore" in words or "backup" in words):
                found.append(" ".join(words)[:200])
        return found

    def _restore_latest(self) -> None:
        """The data directory anew from the repository, to the end of the archived WAL."""
        self.stop_postgres(mode="immediate")
        if self.data_dir.exists() and not (self.data_dir / "PG_VERSION").exists():
            shutil.rmtree(self.data_dir)  # a half-restore --delta would refuse ("path not empty")
        user = pwd.getpwnam(self.os_user)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.pgbackrest().restore(delta=True, restore_type="default")
        self.start_postgres()

    def stop(self) -> None:
        if self.data_dir.exists():
            self.stop_postgres(mode="immediate")
        if self.s3 is not None and self._owns_s3:
            self.s3.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
