"""argv for every pgBackRest command Rewind runs.

Every option travels as one argv item `--name=value`: a value can never be parsed as a second
option, even one starting with `--`, and no shell ever sees it. Option names come from this module
only, never from user input. Values are checked for control characters (pgBackRest would read a
newline-separated value from its own config, never from argv, but a log line must stay one line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rewind.inventory import Cluster

BackupType = Literal["full", "diff", "incr"]
RestoreType = Literal["default", "immediate", "time", "xid", "name", "lsn", "standby", "preserve", "none"]

_OPTION_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_ANNOTATION_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BACKUP_LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")


def _annotations(annotations: dict[str, str]) -> list[str]:
    options = []
    for key, value in sorted(annotations.items()):
        if not _ANNOTATION_KEY.match(key):
            raise ValueError(f"annotation key {key!r} must match {_ANNOTATION_KEY.pattern}")
        options.append(_option("annotation", f"{key}={value}"))
    return options


def _option(name: str, value: str | int | bool | None = None) -> str:
    if not _OPTION_NAME.match(name):
        raise ValueError(f"invalid pgBackRest option name {name!r}")
    if value is None or value is True:
        return f"--{name}"
    if value is False:
        return f"--no-{name}"
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError(f"--{name} value must not contain control characters")
    return f"--{name}={text}"


@dataclass(frozen=True)
class PgBackRestCommands:
    """Builds argv lists for one cluster's stanza with its rendered --config."""

    cluster: Cluster

    def _argv(self, command: str, *options: str, stanza: bool = True, args: tuple[str, ...] = ()) -> list[str]:
        """[bin, --config, --stanza, options..., command, args...]. `args` are the command's
        positional arguments (a repository path, a WAL file name), built by this module only."""
        for arg in args:
            if arg.startswith("-") or any(ord(ch) < 32 for ch in arg):
                raise ValueError(f"{command} argument {arg!r} must not start with '-' or hold control characters")
        argv = [self.cluster.pgbackrest.bin, _option("config", self.cluster.config_path)]
        if stanza:
            argv.append(_option("stanza", self.cluster.stanza))
        argv.extend(options)
        argv.append(command)
        argv.extend(args)
        return argv

    def version(self) -> list[str]:
        return [self.cluster.pgbackrest.bin, "version"]

    def stanza_create(self) -> list[str]:
        return self._argv("stanza-create")

    def check(self) -> list[str]:
        return self._argv("check")

    def stop(self) -> list[str]:
        """No further pgBackRest command of this stanza on this host (decommission)."""
        return self._argv("stop")

    def stanza_delete(self) -> list[str]:
        """Remove the stanza and everything of it from the repository; --force because PostgreSQL may
        still run (a decommissioned cluster is kept until its owners drop it)."""
        return self._argv("stanza-delete", _option("force"))

    def info(self, *, backup_set: str | None = None) -> list[str]:
        options = [_option("output", "json")]
        if backup_set:
            options.append(_option("set", backup_set))
        return self._argv("info", *options)

    def verify(self) -> list[str]:
        return self._argv("verify")

    def repo_ls(self, path: str) -> list[str]:
        """Every file under a repository path (JSON: name -> {type, size, time})."""
        return self._argv("repo-ls", _option("output", "json"), _option("recurse"), args=(path,))

    def archive_push(self, wal_path: str) -> list[str]:
        """Archive one WAL file of pg_wal (what archive_command does, by hand: a stopped cluster's
        segments it never archived)."""
        return self._argv("archive-push", args=(wal_path,))

    def archive_get(self, wal_file: str, destination: str) -> list[str]:
        """Fetch one archived WAL segment or timeline history file (decrypted) into `destination`."""
        return self._argv("archive-get", args=(wal_file, destination))

    def expire(
        self,
        *,
        retention_full: int | None = None,
        retention_full_type: Literal["count", "time"] | None = None,
        retention_diff: int | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Retention; an explicit retention_full(_type) overrides the configured one for this run
        (how Rewind keeps backups a PITR hold needs, see rewind.retention)."""
        options = []
        if retention_full_type:
            options.append(_option("repo1-retention-full-type", retention_full_type))
        if retention_full is not None:
            options.append(_option("repo1-retention-full", int(retention_full)))
        if retention_diff is not None:
            options.append(_option("repo1-retention-diff", int(retention_diff)))
        if dry_run:  # what would go is read from the INFO lines, whatever the configured console level
            options += [_option("dry-run"), _option("log-level-console", "info")]
        return self._argv("expire", *options)

    def backup(self, backup_type: BackupType, *, annotations: dict[str, str] | None = None) -> list[str]:
        if backup_type not in ("full", "diff", "incr"):
            raise ValueError(f"backup type must be full, diff or incr, not {backup_type!r}")
        return self._argv("backup", _option("type", backup_type), *_annotations(annotations or {}))

    def annotate(self, backup_set: str, annotations: dict[str, str]) -> list[str]:
        """Add or replace annotations of an existing backup (pgBackRest >= 2.37; takes the stanza's
        backup lock, like backup and expire)."""
        if not _BACKUP_LABEL.match(backup_set):
            raise ValueError(f"backup set {backup_set!r} is not a backup label")
        if not annotations:
            raise ValueError("annotate needs at least one annotation")
        return self._argv("annotate", _option("set", backup_set), *_annotations(annotations))

    def restore(
        self,
        *,
        restore_type: RestoreType = "default",
        target: str | None = None,
        target_exclusive: bool = False,
        target_action: Literal["pause", "promote", "shutdown"] | None = None,
        target_timeline: str | None = None,
        backup_set: str | None = None,
        delta: bool = True,
        pg_path: str | None = None,
        archive_mode: Literal["preserve", "off"] | None = None,
        tablespace_map_all: str | None = None,
    ) -> list[str]:
        """tablespace_map_all: every tablespace restored under this directory instead of where the
        backed-up cluster had it (a restore elsewhere must never write into the original's)."""
        options: list[str] = []
        if delta:
            options.append(_option("delta"))
        if pg_path:
            options.append(_option("pg1-path", pg_path))
        if tablespace_map_all:
            options.append(_option("tablespace-map-all", tablespace_map_all))
        if backup_set:
            options.append(_option("set", backup_set))
        if restore_type != "default":
            options.append(_option("type", restore_type))
        if restore_type in ("time", "xid", "name", "lsn"):
            if not target:
                raise ValueError(f"restore type {restore_type} needs a target")
            options.append(_option("target", target))
            if target_exclusive:
                options.append(_option("target-exclusive"))
        if target_action and restore_type not in ("default", "none", "standby", "preserve"):
            options.append(_option("target-action", target_action))
        if target_timeline:
            options.append(_option("target-timeline", target_timeline))
        if archive_mode:
            options.append(_option("archive-mode", archive_mode))
        return self._argv("restore", *options)
