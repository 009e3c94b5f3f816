"""A typed model of `pgbackrest info --output=json` (checked against 2.45 and 2.55 output)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# status.code values
STATUS_OK = 0
STATUS_MISSING_STANZA_PATH = 1
STATUS_NO_BACKUP = 2
STATUS_MISSING_STANZA_DATA = 3
STATUS_MIXED = 4
STATUS_DB_MISMATCH = 5
STATUS_BACKUP_MISSING = 6
STATUS_OTHER = 99


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Range(_Model):
    start: str | None = None
    stop: str | None = None


class Timestamps(_Model):
    start: int
    stop: int


class RepoSize(_Model):
    size: int | None = None
    delta: int | None = None


class BackupSizes(_Model):
    size: int | None = None
    delta: int | None = None
    repository: RepoSize = RepoSize()


class DatabaseRef(_Model):
    id: int
    repo_key: int = Field(1, alias="repo-key")


class Backup(_Model):
    label: str
    type: Literal["full", "diff", "incr"]
    prior: str | None = None
    reference: list[str] | None = None
    timestamp: Timestamps
    lsn: Range = Range()
    archive: Range = Range()
    annotation: dict[str, str] | None = None
    error: bool = False
    info: BackupSizes = BackupSizes()
    database: DatabaseRef | None = None

    @property
    def started_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp.start, dt.timezone.utc)

    @property
    def stopped_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp.stop, dt.timezone.utc)

    @property
    def annotations(self) -> dict[str, str]:
        return self.annotation or {}

    @property
    def timeline(self) -> int:
        """Timeline of the backup's first WAL segment (first 8 hex digits of its name)."""
        return int(self.archive.start[:8], 16) if self.archive.start else 0


class ArchiveRange(_Model):
    id: str  # "<pg version>-<db id>", e.g. "15-1"
    min: str | None = None
    max: str | None = None
    database: DatabaseRef | None = None


class BackupLock(_Model):
    held: bool = False


class Locks(_Model):
    backup: BackupLock = BackupLock()


class Status(_Model):
    code: int
    message: str
    lock: Locks = Locks()


class Db(_Model):
    id: int
    system_id: int = Field(alias="system-id")
    version: str


class StanzaInfo(_Model):
    name: str
    status: Status
    cipher: str | None = None
    backup: list[Backup] = []
    archive: list[ArchiveRange] = []
    db: list[Db] = []

    @property
    def ok(self) -> bool:
        return self.status.code == STATUS_OK

    @property
    def backups(self) -> list[Backup]:
        return sorted(self.backup, key=lambda b: (b.timestamp.stop, b.label))

    @property
    def backup_lock_held(self) -> bool:
        return self.status.lock.backup.held

    def latest(self, backup_type: str | None = None, *, include_errors: bool = False) -> Backup | None:
        for candidate in reversed(self.backups):
            if (backup_type is None or candidate.type == backup_type) and (include_errors or not candidate.error):
                return candidate
        return None

    def find_annotated(self, key: str, value: str) -> Backup | None:
        for candidate in reversed(self.backups):
            if candidate.annotations.get(key) == value:
                return candidate
        return None

    def get(self, label: str) -> Backup | None:
        return next((b for b in self.backup if b.label == label), None)

    def current_archive(self) -> ArchiveRange | None:
        """The archive range of the current database id (the highest)."""
        return max(self.archive, key=lambda a: a.database.id if a.database else 0, default=None)


def parse_info(text: str, stanza: str) -> StanzaInfo:
    """Parse `info --output=json` and return the named stanza."""
    data = json.loads(text)
    for entry in data:
        if entry.get("name") == stanza:
            return StanzaInfo.model_validate(entry)
    raise ValueError(f"pgbackrest info has no stanza {stanza!r}")
