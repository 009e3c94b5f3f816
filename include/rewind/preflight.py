"""Checks that run before a workflow touches anything. Each raises PreflightError with one line
naming what to fix; each is cheap and read-only."""

from __future__ import annotations

import socket
from pathlib import Path

from rewind.errors import PreflightError
from rewind.inventory import Cluster
from rewind.pgbackrest.client import MIN_VERSION, PgBackRest
from rewind.pgbackrest.config import require_no_drift
from rewind.pgbackrest.info import (
    STATUS_MISSING_STANZA_DATA,
    STATUS_MISSING_STANZA_PATH,
    STATUS_NO_BACKUP,
    StanzaInfo,
)
from rewind.runner import CommandRunner


def check_ca_file(cluster: Cluster, runner: CommandRunner) -> None:
    """The CA file exists and is readable by the OS user pgBackRest runs as."""
    ca_file = cluster.repo.ca_file
    if not ca_file:
        return
    if not Path(ca_file).is_file():
        raise PreflightError(f"cluster {cluster.name!r}: repo.ca_file {ca_file} does not exist")
    result = runner.run(["/usr/bin/test", "-r", ca_file], timeout=10, check=False, log_stdout=False)
    if result.returncode != 0:
        raise PreflightError(
            f"cluster {cluster.name!r}: repo.ca_file {ca_file} is not readable by OS user {cluster.postgres.os_user!r}: fix its permissions"
        )


def check_s3_reachable(cluster: Cluster, *, timeout: float = 5.0) -> None:
    host, port = cluster.repo.endpoint, cluster.repo.port
    if cluster.repo.uri_style == "host":
        host = f"{cluster.repo.bucket}.{host}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PreflightError(
            f"cluster {cluster.name!r}: S3 endpoint {host}:{port} is unreachable ({reason}): check repo.endpoint/repo.port and the network"
        ) from None


def check_version(pgbackrest: PgBackRest) -> tuple[int, int]:
    version = pgbackrest.version()
    if version < MIN_VERSION:
        raise PreflightError(f"pgBackRest {version[0]}.{version[1]} is too old: Rewind needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer")
    return version


def require_stanza_ok(cluster: Cluster, info: StanzaInfo, *, allow_no_backup: bool) -> None:
    code = info.status.code
    if info.ok or (allow_no_backup and code == STATUS_NO_BACKUP):
        return
    if code in (STATUS_MISSING_STANZA_PATH, STATUS_MISSING_STANZA_DATA):
        raise PreflightError(
            f"cluster {cluster.name!r}: stanza {cluster.stanza!r} does not exist in s3://{cluster.repo.bucket}{cluster.repo.path}: "
            "create it with the onboarding DAG (pgbackrest stanza-create)"
        )
    raise PreflightError(f"cluster {cluster.name!r}: stanza {cluster.stanza!r} status is not ok: [{code}] {info.status.message}")


def run_repository_preflight(
    cluster: Cluster, *, inventory_path: Path | str, pgbackrest: PgBackRest, allow_no_backup: bool = True
) -> StanzaInfo:
    """Config matches the inventory, CA readable, S3 reachable, pgBackRest recent, stanza ok.

    Returns the stanza info read last, for the caller to log or use.
    """
    require_no_drift(cluster, inventory_path=inventory_path)
    check_ca_file(cluster, pgbackrest.runner)
    check_s3_reachable(cluster)
    check_version(pgbackrest)
    info = pgbackrest.info()
    require_stanza_ok(cluster, info, allow_no_backup=allow_no_backup)
    return info
