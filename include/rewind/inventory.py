"""The inventory: one YAML file describing every PostgreSQL cluster Rewind manages.

Shape (see config/inventory.example.yaml for a commented example)::

    defaults:        # deep-merged under every cluster; the cluster's own values win
      ...
    clusters:
      <name>:
        stanza, queue, postgres{...}, pgbackrest{...}, repo{...}, credentials{...},
        schedules{full, diff, incr}, alerts{..., pagers[...]}, rehearsal{...}, connections{...}

Loading validates every cluster on its own: a bad cluster is reported (file, cluster, field) and
left out, the others load. A broken file (missing, unreadable, not YAML, wrong top level) raises.

Every string that ends up in pgbackrest.conf, an argv item or a unit name is constrained here, so
no inventory value can smuggle a second config line, an extra option or a shell word anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rewind.errors import InventoryError, UnknownClusterError

INVENTORY_ENV = "REWIND_INVENTORY"
# An Airflow Variable set through the environment or a secrets backend; DAG files must not read
# the metadata database at parse time, so a Variable stored only in the metastore is not consulted.
INVENTORY_AIRFLOW_VAR_ENV = "AIRFLOW_VAR_REWIND_INVENTORY"
DEFAULT_INVENTORY_PATH = Path("/etc/rewind/inventory.yaml")

BACKUP_TYPES = ("full", "diff", "incr")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # fullmatch: "$" would let a trailing newline through
# C0 and C1 controls and Unicode's line/paragraph separators: each ends a line for someone
# (str.splitlines reads \x85 and \u2028 as line breaks), so none belongs in a path or a name.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _no_control_chars(value: str) -> str:
    if _CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters (newline, tab, NUL)")
    return value


def _identifier(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: use letters, digits, '_', '.', '-' and start with a letter or digit")
    return value


def _absolute_path(value: str) -> str:
    _no_control_chars(value)
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    if value != value.strip():
        raise ValueError(f"{value!r} must not start or end with spaces")
    return value


def _cron(value: str) -> str:
    from croniter import croniter

    _no_control_chars(value)
    if value.startswith("@"):
        if value not in {"@hourly", "@daily", "@weekly", "@monthly", "@yearly"}:
            raise ValueError(f"{value!r} is not a cron preset (@hourly, @daily, @weekly, @monthly, @yearly)")
        return value
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a valid 5-field cron expression (e.g. '0 2 * * 0')")
    return value


SafeStr = Annotated[str, AfterValidator(_no_control_chars)]
Name = Annotated[str, AfterValidator(_identifier)]
AbsPath = Annotated[str, AfterValidator(_absolute_path)]
Cron = Annotated[str, AfterValidator(_cron)]


def _unit(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,250}", value):
        raise ValueError(f"{value!r} is not a systemd unit name (e.g. postgresql@15-main)")
    return value


UnitName = Annotated[str, AfterValidator(_unit)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresSettings(_Model):
    version: int = Field(15, ge=12, le=18)
    bin_dir: AbsPath = "/usr/lib/postgresql/15/bin"
    data_dir: AbsPath
    port: int = Field(5432, ge=1, le=65535)
    socket_dir: AbsPath = "/var/run/postgresql"
    os_user: Name = "postgres"
    # How PostgreSQL is stopped, started and reloaded: systemd in production, pg_ctl where no
    # service manager owns the cluster (the local stack, tests).
    control: Literal["systemd", "pg_ctl"] = "systemd"
    systemd_unit: UnitName | None = None
    log_file: AbsPath | None = None  # pg_ctl -l; defaults to <data_dir>/../postgresql.log
    database: Name = "postgres"  # the cluster's main database: where a PITR's data checks run by default
    # PITR data checks run as this role: LOGIN, not a superuser, member of pg_read_all_data only
    # (README "Data checks"); it must exist in the restored data, so create it before the backups.
    check_role: Name = "rewind_check"
    check_timeout_s: int = Field(60, ge=1, le=3600)  # statement_timeout of each data check
    archive_timeout_s: int = Field(60, ge=0, le=86400)  # what onboarding sets: a quiet cluster's WAL reaches the repository within this

    def unit_name(self) -> str:
        return self.systemd_unit or f"postgresql@{self.version}-main"

    def pg_ctl_log(self) -> str:
        return self.log_file or str(Path(self.data_dir).parent / "postgresql.log")


class PgBackRestSettings(_Model):
    bin: AbsPath = "/usr/bin/pgbackrest"
    # One file per stanza, always passed as --config; archive_command must name the same file.
    config_path: AbsPath | None = None
    log_path: AbsPath = "/var/log/pgbackrest"
    lock_path: AbsPath = "/tmp/pgbackrest"
    spool_path: AbsPath = "/var/spool/pgbackrest"
    process_max: int = Field(2, ge=1, le=64)
    start_fast: bool = True
    archive_async: bool = False
    log_level_console: Literal["off", "error", "warn", "info", "detail", "debug"] = "info"
    io_timeout_s: int = Field(60, ge=1, le=3600)  # pgBackRest io-timeout: how long one S3 request may stall
    backup_timeout_s: int = Field(6 * 3600, ge=60)
    command_timeout_s: int = Field(600, ge=10)


class RepoSettings(_Model):
    type: Literal["s3"] = "s3"
    bucket: Name
    endpoint: Annotated[str, AfterValidator(_no_control_chars)]
    region: Name
    path: AbsPath
    port: int = Field(443, ge=1, le=65535)
    uri_style: Literal["host", "path"] = "host"
    ca_file: AbsPath | None = None
    verify_tls: bool = True
    cipher_type: Literal["none", "aes-256-cbc"] = "aes-256-cbc"
    # Retention: either a recovery window in days (time-based, recommended for production: manual
    # full backups and rewinds do not shorten it) or a count of full backups (pgBackRest's default).
    recovery_window_days: int | None = Field(None, ge=1, le=3650)
    retention_full: int = Field(4, ge=1, le=9999)
    retention_diff: int = Field(6, ge=1, le=9999)
    compress_type: Literal["none", "gz", "lz4", "zst", "bz2"] = "zst"
    compress_level: int = Field(3, ge=0, le=22)
    bundle: bool = True

    @model_validator(mode="after")
    def _one_retention(self) -> RepoSettings:
        if self.recovery_window_days is not None and "retention_full" in self.model_fields_set:
            raise ValueError("set either recovery_window_days (time-based retention) or retention_full (a count of full backups), not both")
        return self

    @field_validator("endpoint")
    @classmethod
    def _host_only(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", value):
            raise ValueError(f"{value!r} must be a host name without scheme, port or path (e.g. s3.eu-west-1.amazonaws.com)")
        return value


def _vault_path(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*", value) or ".." in value:
        raise ValueError(f"{value!r} must be a Vault path like 'rewind/prod-ledger' (letters, digits, _ . - and /)")
    return value


VaultPath = Annotated[str, AfterValidator(_vault_path)]


class VaultSettings(_Model):
    """Where a cluster's repository secrets live in Vault (credentials.source=vault)."""

    conn_id: Name = "vault_default"  # Airflow connection (hashicorp provider): URL, token or AppRole
    aws_mount: VaultPath = "aws"  # AWS secrets engine: <aws_mount>/creds/<aws_role> leases S3 keys
    aws_role: VaultPath
    kv_mount: VaultPath = "secret"  # KV v2 engine holding the cipher passphrase
    kv_path: VaultPath
    cipher_pass_key: Name = "cipher_pass"


class CredentialSettings(_Model):
    # Where Rewind's own pgBackRest commands get the repository secrets:
    #   env:   the worker's environment holds <env_prefix>S3_KEY, ..._S3_KEY_SECRET, ..._S3_TOKEN
    #          (optional) and ..._CIPHER_PASS;
    #   auto:  S3 keys from the instance role (repo1-s3-key-type=auto), passphrase from the environment;
    #   vault: S3 keys leased per task from Vault's AWS engine (revoked when the task ends), passphrase
    #          from Vault KV v2.
    source: Literal["env", "auto", "vault"] = "env"
    env_prefix: Annotated[str, AfterValidator(_no_control_chars)] = "REWIND_"
    vault: VaultSettings | None = None
    # PostgreSQL runs pgBackRest itself (archive_command, restore_command), outside any task, so a
    # per-task lease cannot serve it. When Rewind starts PostgreSQL with pg_ctl, the postmaster gets
    # the passphrase from the source above and S3 keys from: env (as source env) or auto (instance
    # role). Default: env for source env, auto otherwise. Under systemd the unit's own environment
    # provides them (see the README).
    postmaster_s3_keys: Literal["env", "auto"] | None = None

    @field_validator("env_prefix")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.match(r"^[A-Z][A-Z0-9_]*$", value):
            raise ValueError(f"{value!r} must be an upper-case environment variable prefix like REWIND_DEMO_")
        return value

    @model_validator(mode="after")
    def _vault_settings(self) -> CredentialSettings:
        if self.source == "vault" and self.vault is None:
            raise ValueError("source is 'vault' but the vault section (aws_role, kv_path, ...) is missing")
        if self.source != "vault" and self.vault is not None:
            raise ValueError(f"a vault section is set but source is {self.source!r}: set source: vault or remove it")
        return self

    @property
    def postmaster_keys(self) -> str:
        return self.postmaster_s3_keys or ("env" if self.source == "env" else "auto")


class Schedules(_Model):
    full: Cron = "0 2 * * 0"
    diff: Cron = "0 2 * * 1-6"
    incr: Cron = "0 * * * *"
    health: Cron = "15 * * * *"
    verify: Cron = "30 3 * * *"  # besides after every backup


_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_SLACK_CHANNEL_RE = re.compile(r"#[a-z0-9][a-z0-9._-]{0,79}|[CG][A-Z0-9]{8,20}")

# The pager type each optional pager field belongs to; channel and to are required for theirs.
_PAGER_FIELD_TYPE = {"channel": "slack", "to": "smtp", "severity": "pagerduty"}
_PAGER_REQUIRED = {"channel", "to"}


def _email(value: str) -> str:
    if len(value) > 254 or not _EMAIL_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an e-mail address (like oncall@example.com)")
    return value


def _slack_channel(value: str) -> str:
    if not _SLACK_CHANNEL_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Slack channel: '#name' (lower case) or a channel ID like C0123456789")
    return value


EmailAddress = Annotated[str, AfterValidator(_email)]
SlackChannel = Annotated[str, AfterValidator(_slack_channel)]


class Pager(_Model):
    """Who is paged when an incident opens and told when it resolves, through an Airflow provider's
    notifier and the Airflow connection `conn_id` (which holds the secret: routing key, token, login)."""

    type: Literal["pagerduty", "slack", "slack_webhook", "smtp"]
    conn_id: Name
    channel: SlackChannel | None = Field(None, validate_default=True)  # slack (Web API): where to post
    to: list[EmailAddress] | None = Field(None, validate_default=True)  # smtp: one address or a list
    severity: Literal["critical", "error", "warning", "info"] | None = Field(None, validate_default=True)  # pagerduty; default critical

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("channel", "to", "severity")
    @classmethod
    def _for_its_type(cls, value, info):
        kind = info.data.get("type")
        if kind is None:  # the type itself is wrong: that is the error to report
            return value
        owner = _PAGER_FIELD_TYPE[info.field_name]
        if value is None and kind == owner and info.field_name in _PAGER_REQUIRED:
            raise ValueError(f"required for type {kind}")
        if value is not None and kind != owner:
            raise ValueError(f"only for type {owner}, not {kind}")
        if info.field_name == "to" and value == []:
            raise ValueError("name at least one address")
        return value


class Alerts(_Model):
    max_backup_age_hours: float = Field(26.0, gt=0)
    stale_archive_factor: float = Field(3.0, gt=0)  # x archive_timeout before waiting WAL is an alert
    impact: int = Field(2, ge=1, le=3)
    urgency: int = Field(2, ge=1, le=3)
    # Paged when an incident opens (not for its repeats), told when it resolves. A cluster's own list
    # replaces the one in `defaults` (lists are not merged); empty: nobody is paged.
    pagers: list[Pager] = Field(default_factory=list)


class PitrSettings(_Model):
    # How long after a PITR's change closes its pre-rewind history (backups and WAL of the abandoned
    # timeline, and the recovery window it had) is still kept from expiry (rewind.retention).
    hold_days: float = Field(14.0, ge=0, le=3650)
    # How often the triggerer asks ServiceNow whether a waiting change was approved: one small GET
    # (one record, a few fields) per waiting change per poll; half of it is the mean wait after the click.
    approval_poll_s: float = Field(2.0, ge=1, le=3600)
    approval_timeout_h: float = Field(24.0, gt=0, le=24 * 30)  # then the change is cancelled
    # target_action decide: how long the question waits for a DBA; then the task fails and the cluster
    # stays paused, read-only, at the target (the failure is noted on the change and pages).
    decision_timeout_h: float = Field(8.0, gt=0, le=24 * 7)
    # Where a rewind builds the target state (rewind.pitr.clone): clone (default) restores beside
    # production while it serves, checks the clone, then cuts over in seconds; preflight refuses it,
    # naming in_place, where the host lacks the room (the backup's size plus the WAL to replay,
    # beside the data directory) or the cluster has tablespaces. in_place stops PostgreSQL and
    # restores over its data directory: for such hosts, and for target latest.
    mode: Literal["in_place", "clone"] = "clone"
    # Clone mode: the share of the data directory's file system the clone may never take, left to
    # production (its WAL, temporary files, growth). Preflight counts it; while the clone restores,
    # a file system that falls below it (the estimate was short, or something else is filling it)
    # stops the restore and removes the clone before production can run out of space.
    clone_free_reserve_pct: float = Field(5.0, ge=0, le=50)


class ChangeControl(_Model):
    # The ServiceNow group whose members approve this cluster's changes. A change is acted on only
    # when approved by a member of it who is not the person who asked for it.
    approval_group: SafeStr = "Database CAB"


_SYS_ID_RE = re.compile(r"[0-9a-f]{32}")
_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
_TABLE_RE = re.compile(rf"({_SQL_NAME})\.({_SQL_NAME})")
# pg_ctl hands its -o options and the data directory to /bin/sh: a scratch path is kept to a
# shell-inert alphabet, so no inventory value can become a shell word there.
_SCRATCH_PATH_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")


def _sys_id(value: str) -> str:
    if not _SYS_ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a ServiceNow sys_id (32 lower-case hex digits, the standard change template's sys_id)")
    return value


def _table(value: str) -> str:
    if not _TABLE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a table name: schema.table as the catalog spells it (e.g. public.ledger_entry)")
    return value


def _scratch_path(value: str) -> str:
    _absolute_path(value)
    if not _SCRATCH_PATH_RE.fullmatch(value) or any(part in (".", "..") for part in value.split("/")) or value.count("/") < 2:
        raise ValueError(f"{value!r} must be an absolute path at least two levels deep, of letters, digits, '_', '.', '-' only")
    return value


class RehearsalSettings(_Model):
    """The monthly restore rehearsal (README, Monthly restore rehearsal): a backup restored into a
    scratch directory on the rehearsal host, checked, compared with production, and removed."""

    # When it runs: in force where change_template is set (it may sit in `defaults`); without a
    # template the DAG is not scheduled, and a run by hand is refused before anything is touched.
    schedule: Cron = "0 4 1 * *"
    # The standard change template every rehearsal's change is created from (pre-approved).
    change_template: Annotated[str, AfterValidator(_sys_id)] | None = None
    queue: Name | None = None  # the rehearsal host's worker queue; default: the cluster's own queue
    scratch_path: Annotated[str, AfterValidator(_scratch_path)] | None = None  # default <state_dir>/rehearsal
    port: int | None = Field(None, ge=1024, le=65535)  # the scratch's socket port; default: a free one
    # What is restored: latest (a restore point the rehearsal makes on production: row counts are
    # compared exactly) or an age like 1h (that long before the run: counts are reported).
    target: Annotated[str, AfterValidator(_no_control_chars)] = "latest"
    database: Name | None = None  # where the declared tables live; default postgres.database
    tables: list[Annotated[str, AfterValidator(_table)]] = Field(default_factory=list, max_length=100)
    check_timeout_s: int = Field(3600, ge=10)  # each of pg_amcheck, pg_dump (per database), pg_checksums
    recovery_timeout_s: int = Field(6 * 3600, ge=60)  # from the restore's end until the copy answers queries

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if value != "latest" and not re.fullmatch(r"[1-9][0-9]{0,4}[mhd]", value):
            raise ValueError(f"{value!r} is neither 'latest' nor an age like 1h, 90m or 2d")
        return value


class Connections(_Model):
    postgres: Name | None = None  # Airflow connection id used for SQL checks
    servicenow: Name = "servicenow_default"
    # AWS connection (amazon provider) that may read the repository bucket's settings (versioning,
    # Object Lock, encryption, public access block): onboarding checks the bucket's posture with it.
    aws: Name = "aws_default"


class Cluster(_Model):
    name: Name
    stanza: Name
    queue: Name = "default"
    description: SafeStr = ""
    postgres: PostgresSettings
    pgbackrest: PgBackRestSettings = PgBackRestSettings()
    repo: RepoSettings
    credentials: CredentialSettings = CredentialSettings()
    schedules: Schedules = Schedules()
    alerts: Alerts = Alerts()
    pitr: PitrSettings = PitrSettings()
    change_control: ChangeControl = ChangeControl()
    rehearsal: RehearsalSettings = RehearsalSettings()
    connections: Connections = Connections()
    # Rewind's own durable state on the database host: the restore guard, each PITR run's journal,
    # retention holds, the watchdog's memory. Must survive reboots (not /tmp).
    state_path: AbsPath | None = None

    @property
    def state_dir(self) -> str:
        return self.state_path or f"/var/lib/rewind/{self.name}"

    @property
    def config_path(self) -> str:
        return self.pgbackrest.config_path or f"/etc/pgbackrest/rewind/{self.stanza}.conf"

    @property
    def pool(self) -> str:
        """The one-slot Airflow pool that serialises every repository-writing task of the stanza."""
        return f"rewind_{self.stanza}"

    @property
    def rehearsal_queue(self) -> str:
        return self.rehearsal.queue or self.queue

    @property
    def rehearsal_path(self) -> str:
        return self.rehearsal.scratch_path or f"{self.state_dir}/rehearsal"

    @property
    def rehearsal_database(self) -> str:
        return self.rehearsal.database or self.postgres.database

    @property
    def postgres_conn_id(self) -> str:
        return self.connections.postgres or f"rewind_pg_{self.name}"


@dataclass
class Inventory:
    path: Path
    clusters: dict[str, Cluster] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Cluster:
        if name in self.clusters:
            return self.clusters[name]
        if name in self.errors:
            raise InventoryError(self.errors[name])
        known = ", ".join(sorted(self.clusters)) or "none"
        raise UnknownClusterError(f"inventory {self.path}: no cluster named {name!r} (known: {known})")


def inventory_path() -> Path:
    """Where the inventory lives: $REWIND_INVENTORY, else the Airflow Variable rewind_inventory."""
    for var in (INVENTORY_ENV, INVENTORY_AIRFLOW_VAR_ENV):
        value = os.environ.get(var)
        if value:
            return Path(value)
    return DEFAULT_INVENTORY_PATH


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_error(path: Path, cluster: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(cluster)"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"inventory {path}: cluster {cluster!r}: field {loc}: {msg}{more}"


def parse_inventory(text: str, path: Path) -> Inventory:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InventoryError(f"inventory {path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), dict):
        raise InventoryError(f"inventory {path}: top level must be a mapping with a 'clusters' mapping")
    unknown = set(data) - {"defaults", "clusters"}
    if unknown:
        raise InventoryError(f"inventory {path}: unknown top-level key(s) {sorted(unknown)}: only 'defaults' and 'clusters'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(f"inventory {path}: 'defaults' must be a mapping")

    inventory = Inventory(path=path)
    for name, raw in data["clusters"].items():
        name = str(name)
        if not isinstance(raw, dict):
            inventory.errors[name] = f"inventory {path}: cluster {name!r}: must be a mapping"
            continue
        merged = _deep_merge(defaults, raw)
        merged.setdefault("stanza", name)
        try:
            inventory.clusters[name] = Cluster.model_validate({**merged, "name": name})
        except ValidationError as exc:
            inventory.errors[name] = _format_error(path, name, exc)

    # Two clusters writing one stanza into one repository would destroy each other's backups.
    seen: dict[tuple[str, str, str], str] = {}
    for name, cluster in list(inventory.clusters.items()):
        key = (cluster.repo.bucket, cluster.repo.path, cluster.stanza)
        if key in seen:
            other = seen[key]
            msg = (
                f"inventory {path}: cluster {name!r}: field stanza: {cluster.stanza!r} in "
                f"s3://{key[0]}{key[1]} is already used by cluster {other!r}"
            )
            inventory.errors[name] = msg
            del inventory.clusters[name]
        else:
            seen[key] = name
    return inventory


def load_inventory(path: Path | str | None = None) -> Inventory:
    path = Path(path) if path else inventory_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InventoryError(
            f"inventory {path}: file not found: set ${INVENTORY_ENV} or create it (see config/inventory.example.yaml)"
        ) from None
    except OSError as exc:
        raise InventoryError(f"inventory {path}: cannot read: {exc.strerror}") from None
    return parse_inventory(text, path)
