"""pgBackRest for one cluster: argv from `commands`, execution by `CommandRunner`, failures as the
typed exceptions of `errors`."""

from __future__ import annotations

import json
import re

from rewind.inventory import Cluster
from rewind.pgbackrest.commands import BackupType, PgBackRestCommands
from rewind.pgbackrest.errors import CommandTimeoutError, PgBackRestError, VerifyFailedError, error_from_exit
from rewind.pgbackrest.info import StanzaInfo, parse_info
from rewind.runner import CommandResult, CommandRunner, CommandTimeout

MIN_VERSION = (2, 45)


class PgBackRest:
    def __init__(self, cluster: Cluster, runner: CommandRunner):
        self.cluster = cluster
        self.runner = runner
        self.commands = PgBackRestCommands(cluster)

    def run(self, argv: list[str], *, timeout: float | None = None, log_stdout: bool = True) -> CommandResult:
        command = next((item for item in argv[1:] if not item.startswith("-")), argv[-1])
        timeout = timeout or self.cluster.pgbackrest.command_timeout_s
        try:
            result = self.runner.run(argv, timeout=timeout, check=False, log_stdout=log_stdout)
        except CommandTimeout as exc:
            raise CommandTimeoutError(str(exc), code=-1, command=command) from None
        if result.returncode != 0:
            raise error_from_exit(result.returncode, result.output, command=command)
        return result

    def version(self) -> tuple[int, int]:
        out = self.run(self.commands.version(), timeout=30).stdout
        match = re.search(r"pgBackRest (\d+)\.(\d+)", out)
        if not match:
            raise PgBackRestError(f"unexpected version output {out.strip()!r}", command="version")
        return int(match.group(1)), int(match.group(2))

    def info(self) -> StanzaInfo:
        result = self.run(self.commands.info(), log_stdout=False)
        return parse_info(result.stdout, self.cluster.stanza)

    def stanza_create(self) -> CommandResult:
        return self.run(self.commands.stanza_create())

    def check(self) -> CommandResult:
        return self.run(self.commands.check())

    def stop(self) -> CommandResult:
        return self.run(self.commands.stop())

    def stanza_delete(self) -> CommandResult:
        return self.run(self.commands.stanza_delete())

    def verify(self) -> CommandResult:
        """Raises VerifyFailedError when the summary says `status: error` (the exit code is 0)."""
        result = self.run(self.commands.verify(), timeout=self.cluster.pgbackrest.backup_timeout_s)
        if re.search(r"^\s*status: error", result.output, re.MULTILINE):
            problems = [
                line.strip()
                for line in result.output.splitlines()
                if re.search(r"status: invalid|checksum invalid|missing|size invalid|other", line) and "INFO: invalid" not in line
            ]
            raise VerifyFailedError(
                "; ".join(problems[:6]) or "verify reported status: error",
                command="verify",
                output_tail="\n".join(result.output.splitlines()[-20:]),
            )
        return result

    def expire(self, **options) -> CommandResult:
        return self.run(self.commands.expire(**options))

    def repo_ls(self, path: str) -> dict[str, dict]:
        return json.loads(self.run(self.commands.repo_ls(path), log_stdout=False).stdout)

    def archive_push(self, wal_path: str) -> None:
        self.run(self.commands.archive_push(wal_path), log_stdout=False)

    def archive_get(self, wal_file: str, destination: str) -> None:
        self.run(self.commands.archive_get(wal_file, destination), log_stdout=False)

    def backup(self, backup_type: BackupType, *, annotations: dict[str, str]) -> CommandResult:
        return self.run(
            self.commands.backup(backup_type, annotations=annotations),
            timeout=self.cluster.pgbackrest.backup_timeout_s,
        )

    def annotate(self, backup_set: str, annotations: dict[str, str]) -> CommandResult:
        return self.run(self.commands.annotate(backup_set, annotations))

    def restore(self, **options) -> CommandResult:
        return self.run(self.commands.restore(**options), timeout=self.cluster.pgbackrest.backup_timeout_s)
