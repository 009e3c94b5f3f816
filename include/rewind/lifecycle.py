"""A cluster's life under Rewind besides its backups and rewinds: onboarding (archiving enabled into
the repository) and decommissioning (archiving stopped, the repository kept or deleted).

Everything here is read-only or says exactly what it would change: the operators do the changing,
after the change request is approved, and the restart only inside its window.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rewind.errors import PreflightError, RewindError
from rewind.inventory import Cluster
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.config import config_drift, render_config
from rewind.pgbackrest.info import STATUS_MISSING_STANZA_DATA, STATUS_MISSING_STANZA_PATH
from rewind.postgres import run_sql

ARCHIVE_SETTINGS = ("archive_mode", "archive_command", "archive_library", "wal_level", "archive_timeout", "max_wal_senders")
MIN_WAL_SENDERS = 3


class OnboardingRefused(PreflightError):
    """Bad input for onboarding: nothing was touched."""

    opens_incident = False


def archive_command(cluster: Cluster) -> str:
    """What PostgreSQL runs for each WAL segment: pgbackrest with the cluster's own rendered config."""
    return f"{cluster.pgbackrest.bin} --config={cluster.config_path} --stanza={cluster.stanza} archive-push %p"


def restore_command(cluster: Cluster) -> str:
    """What recovery runs for each WAL segment it needs, as pgBackRest's restore writes it."""
    return f'{cluster.pgbackrest.bin} --config={cluster.config_path} --stanza={cluster.stanza} archive-get %f "%p"'


@dataclass(frozen=True)
class Setting:
    value: str
    context: str  # pg_settings.context: postmaster settings need a restart


def read_settings(runner, cluster: Cluster) -> dict[str, Setting]:
    names = ", ".join(f"'{name}'" for name in ARCHIVE_SETTINGS)
    rows = run_sql(runner, cluster, f"select name || '|' || setting || '|' || context from pg_settings where name in ({names})")
    settings = {}
    for row in rows.splitlines():
        name, value, context = row.split("|", 2)
        settings[name] = Setting(value, context)
    return settings


def wanted_settings(cluster: Cluster, current: dict[str, Setting]) -> dict[str, str]:
    wal_level = current.get("wal_level", Setting("replica", "postmaster")).value
    senders = int(current.get("max_wal_senders", Setting("0", "postmaster")).value or 0)
    return {
        "archive_mode": "on",
        "archive_command": archive_command(cluster),
        "wal_level": wal_level if wal_level == "logical" else "replica",  # logical is a superset: keep it
        "archive_timeout": str(cluster.postgres.archive_timeout_s),
        "max_wal_senders": str(max(senders, MIN_WAL_SENDERS)),
    }


@dataclass
class OnboardingPlan:
    install_config: bool = False
    stanza_create: bool = False
    settings: dict[str, str] = field(default_factory=dict)  # name -> value to ALTER SYSTEM SET
    restart: bool = False
    first_full_backup: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.install_config or self.stanza_create or self.settings or self.restart or self.first_full_backup)

    def describe(self) -> str:
        if self.nothing_to_do:
            return "already onboarded: config installed, archiving into the repository, stanza ok, a full backup exists; nothing to change"
        steps = []
        if self.install_config:
            steps.append("install pgbackrest.conf")
        if self.stanza_create:
            steps.append("stanza-create")
        if self.settings:
            steps.append("ALTER SYSTEM " + ", ".join(f"{k} = '{v}'" for k, v in sorted(self.settings.items())))
        steps.append("restart PostgreSQL (inside the change window)" if self.restart else "reload PostgreSQL")
        if self.first_full_backup:
            steps.append("pgbackrest check, first full backup, verify")
        return "; ".join(steps)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "nothing_to_do": self.nothing_to_do, "describe": self.describe()}


def bucket_posture_problems(s3, bucket: str) -> list[str]:
    """What the repository bucket lacks (a boto3 S3 client: the amazon provider's S3Hook gives one)."""
    from botocore.exceptions import ClientError

    def ask(call, **kwargs):
        try:
            return call(Bucket=bucket, **kwargs)
        except ClientError as exc:
            return {"_error": exc.response.get("Error", {}).get("Code", str(exc))}

    problems = []
    if ask(s3.get_bucket_versioning).get("Status") != "Enabled":
        problems.append("versioning is not enabled")
    lock = ask(s3.get_object_lock_configuration)
    if lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        problems.append("Object Lock is not enabled")
    if not ask(s3.get_bucket_encryption).get("ServerSideEncryptionConfiguration", {}).get("Rules"):
        problems.append("default encryption is not configured")
    block = ask(s3.get_public_access_block).get("PublicAccessBlockConfiguration", {})
    missing = [k for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets") if not block.get(k)]
    if missing:
        problems.append(f"public access is not blocked ({', '.join(missing)} off)")
    return problems


def archiving_elsewhere(cluster: Cluster, current: dict[str, Setting]) -> str | None:
    """The setting through which something other than Rewind archives (or would archive) this
    cluster's WAL: an archive_library, or an archive_command that is not Rewind's own."""
    command = current.get("archive_command", Setting("", "sighup")).value
    library = current.get("archive_library", Setting("", "sighup")).value
    if library:
        return f"archive_library = '{library}'"
    if command and command not in ("(disabled)", archive_command(cluster)):
        return f"archive_command = '{command}'"
    return None


def refuse_if_archiving_elsewhere(cluster: Cluster, current: dict[str, Setting]) -> None:
    """Onboarding, at its plan and again at the moment it configures (inside the change window):
    never take over archiving another tool does."""
    elsewhere = archiving_elsewhere(cluster, current)
    if elsewhere and current.get("archive_mode", Setting("off", "postmaster")).value in ("on", "always"):
        raise OnboardingRefused(
            f"cluster {cluster.name!r} already archives elsewhere ({elsewhere}): stop that archiving first, then onboard"
        )


def system_identifier(runner, cluster: Cluster) -> int:
    return int(run_sql(runner, cluster, "select system_identifier from pg_control_system()"))


def stanza_owner(pgbackrest_for: Callable[[Cluster], PgBackRest], cluster: Cluster, inventory_path: Path | str) -> int | None:
    """The database system id the stanza in the repository belongs to (None: no stanza yet). Reads
    the repository with a rendered config in a temporary file, so nothing is installed yet."""
    with tempfile.TemporaryDirectory(prefix="rewind-onboard-") as tmp:
        config = Path(tmp) / "pgbackrest.conf"
        config.write_text(render_config(cluster, inventory_path=inventory_path))
        config.chmod(0o644)
        Path(tmp).chmod(0o755)
        probe = cluster.model_copy(update={"pgbackrest": cluster.pgbackrest.model_copy(update={"config_path": str(config)})})
        info = pgbackrest_for(probe).info()
    if info.status.code in (STATUS_MISSING_STANZA_PATH, STATUS_MISSING_STANZA_DATA) or not info.db:
        return None
    return info.db[-1].system_id


def plan_onboarding(
    cluster: Cluster,
    *,
    runner,
    pgbackrest_for: Callable[[Cluster], PgBackRest],
    inventory_path: Path | str,
    bucket_problems: list[str],
) -> OnboardingPlan:
    """What onboarding would change, or a one-line refusal naming what to fix (nothing touched)."""
    where = f"s3://{cluster.repo.bucket}{cluster.repo.path}"
    if bucket_problems:
        raise OnboardingRefused(
            f"cluster {cluster.name!r}: repository bucket {cluster.repo.bucket}: {'; '.join(bucket_problems)}: fix the bucket (terraform/)"
        )
    current = read_settings(runner, cluster)
    refuse_if_archiving_elsewhere(cluster, current)
    owner = stanza_owner(pgbackrest_for, cluster, inventory_path)
    system_id = system_identifier(runner, cluster)
    if owner is not None and owner != system_id:
        raise OnboardingRefused(
            f"stanza {cluster.stanza!r} in {where} belongs to database system {owner}, this cluster is {system_id}: "
            "choose another stanza or repository path in the inventory"
        )
    plan = OnboardingPlan()
    plan.install_config = config_drift(cluster, inventory_path=inventory_path).drifted
    plan.stanza_create = owner is None
    wanted = wanted_settings(cluster, current)
    plan.settings = {name: value for name, value in wanted.items() if current.get(name, Setting("", "")).value != value}
    plan.restart = any(current.get(name, Setting("", "postmaster")).context == "postmaster" for name in plan.settings)
    if owner is None:
        plan.first_full_backup = True
    else:
        info = pgbackrest_for(cluster).info() if not plan.install_config else None
        plan.first_full_backup = info is None or info.latest("full") is None
    return plan


def alter_system_sql(settings: dict[str, str]) -> list[str]:
    """One ALTER SYSTEM per setting (it cannot run inside a multi-statement transaction)."""
    return [f"alter system set {name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in sorted(settings.items())]


# ---- decommissioning -------------------------------------------------------------------------------
class DecommissionRefused(PreflightError):
    opens_incident = False


def check_decommission_request(cluster: Cluster, *, confirm_stanza: str, reason: str) -> None:
    if confirm_stanza != cluster.stanza:
        raise DecommissionRefused(
            f"param confirm_stanza: type the stanza's name, {cluster.stanza!r}, to decommission cluster {cluster.name!r} (got {confirm_stanza!r})"
        )
    if len(reason.strip()) < 10:
        raise DecommissionRefused("param reason: say why the cluster is decommissioned (at least 10 characters)")


def refuse_unless_rewind_archives(cluster: Cluster, current: dict[str, Setting]) -> None:
    """Decommissioning turns off archiving only where it is Rewind's own: at validate, and again at
    the moment it stops archiving. Someone else's archive_command is never cleared."""
    elsewhere = archiving_elsewhere(cluster, current)
    if elsewhere:
        raise DecommissionRefused(
            f"cluster {cluster.name!r} is archived by something other than Rewind ({elsewhere}; Rewind's is "
            f"'{archive_command(cluster)}'): archiving was left as it is; find who owns it, then decommission"
        )


def refuse_if_held(cluster: Cluster, holds: list) -> None:
    """stanza-delete honours the PITR holds expire honours: a rewind's pre-rewind history is kept."""
    if holds:
        raise DecommissionRefused(
            f"param delete_repository: stanza {cluster.stanza!r} is held from deletion by {'; '.join(h.describe() for h in holds)}: "
            "keep the repository (delete_repository false), or decommission again when the hold has ended"
        )


def archiving_off_settings() -> dict[str, str]:
    return {"archive_mode": "off", "archive_command": ""}


def onboarded_path(cluster: Cluster) -> Path:
    return Path(cluster.state_dir) / "onboarded.json"


def mark_onboarded(cluster: Cluster, *, run_id: str, change: str | None, how: str) -> None:
    """From now on a missing config, stanza or archiving is a failure that pages, not a cluster
    still waiting for its onboarding."""
    import datetime as dt

    from rewind.state import state_dir, write_json

    state_dir(cluster)
    write_json(
        onboarded_path(cluster),
        {"run_id": run_id, "change": change, "how": how, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    )


def onboarding_record(cluster: Cluster) -> dict | None:
    from rewind.state import read_json

    return read_json(onboarded_path(cluster), what="onboarding record", fix="remove the file; the next backup writes it again")


def awaiting_onboarding(cluster: Cluster) -> bool:
    """Never onboarded through Rewind: no onboarding record (written by the onboarding DAG, or by
    any backup that succeeded) and no pgbackrest.conf installed. Its routine work has nothing to
    work on yet; one that was onboarded and lost its config is a failure."""
    return onboarding_record(cluster) is None and not Path(cluster.config_path).exists()


def decommissioned_path(cluster: Cluster) -> Path:
    return Path(cluster.state_dir) / "decommissioned.json"


def mark_decommissioned(cluster: Cluster, *, run_id: str, change: str | None, repository: str) -> None:
    """Routine work of the cluster skips from now on instead of failing against a stopped stanza."""
    import datetime as dt

    from rewind.state import state_dir, write_json

    state_dir(cluster)
    write_json(
        decommissioned_path(cluster),
        {
            "run_id": run_id,
            "change": change,
            "repository": repository,
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def decommissioned(cluster: Cluster) -> dict | None:
    from rewind.state import read_json

    return read_json(decommissioned_path(cluster), what="decommission record", fix="remove the cluster from the inventory, or the file")


class LifecycleError(RewindError):
    pass
