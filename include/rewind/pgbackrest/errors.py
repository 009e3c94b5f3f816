"""pgBackRest exit codes as typed exceptions.

pgBackRest exits with the code of the error that stopped it (src/build/error/error.yaml; the codes
used here are identical in 2.45 and 2.55). Callers catch the type, not the number: a lock held
means "someone else is working on this stanza", a crypto error means "wrong passphrase", and so on.
"""

from __future__ import annotations

import re

from rewind.errors import RewindError


class PgBackRestError(RewindError):
    code: int = 0
    hint: str = ""

    def __init__(self, message: str, *, code: int | None = None, command: str = "", output_tail: str = ""):
        self.code = code if code is not None else type(self).code
        self.command = command
        self.output_tail = output_tail
        hint = f" ({self.hint})" if self.hint else ""
        super().__init__(f"pgbackrest {command} failed [{self.code}]: {message}{hint}".replace("  ", " "))


class ChecksumError(PgBackRestError):
    code, hint = 26, "a file in the repository or data directory failed its checksum"


class ConfigError(PgBackRestError):
    code, hint = 27, "pgbackrest.conf is invalid: check `rewind conf diff`"


class OptionInvalidError(PgBackRestError):
    code, hint = 31, "an option is not valid for this command or pgBackRest version"


class OptionInvalidValueError(PgBackRestError):
    code, hint = 32, "an option has an invalid value"


class OptionRequiredError(PgBackRestError):
    code, hint = 37, "a required option is missing (credentials or cipher passphrase not in the environment?)"


class PostgresRunningError(PgBackRestError):
    code, hint = 38, "PostgreSQL is running: stop it before a restore"


class PathNotEmptyError(PgBackRestError):
    code, hint = 40, "the target path is not empty: use --delta or an empty directory"


class ArchiveMismatchError(PgBackRestError):
    code, hint = 44, "the repository belongs to another database system"


class ArchiveDuplicateError(PgBackRestError):
    code, hint = 45, "this WAL segment was already archived with different content"


class HostConnectError(PgBackRestError):
    code, hint = 49, "could not connect to a host"


class LockAcquireError(PgBackRestError):
    code, hint = 50, "another pgBackRest process holds the stanza lock"


class FileMissingError(PgBackRestError):
    code, hint = 55, "a file is missing (stanza not created? run stanza-create during onboarding)"


class DbConnectError(PgBackRestError):
    code, hint = 56, "cannot connect to PostgreSQL: is it running on the configured port and socket?"


class DbMismatchError(PgBackRestError):
    code, hint = 58, "the database does not match the stanza (system id or version changed)"


class StopFileError(PgBackRestError):
    code, hint = 62, "`pgbackrest stop` was run for this stanza: run `pgbackrest start` when intended"


class TermError(PgBackRestError):
    code, hint = 63, "pgBackRest was terminated by a signal"


class BackupSetInvalidError(PgBackRestError):
    code, hint = 75, "the requested backup set is not valid for this target"


class ArchiveTimeoutError(PgBackRestError):
    code, hint = 82, "WAL was not archived in time: check archive_command and pg_stat_archiver"


class ArchiveDisabledError(PgBackRestError):
    code, hint = 87, "archiving is disabled (archive_mode=off or a stop file)"


class CryptoError(PgBackRestError):
    code, hint = 95, "decryption failed: wrong cipher passphrase or cipher type"


class ServiceError(PgBackRestError):
    code, hint = 101, "the storage service returned an error (S3 5xx?)"


class RepoInvalidError(PgBackRestError):
    code, hint = 103, "no valid repository: check the S3 settings and that the stanza exists"


class CommandError(PgBackRestError):
    code, hint = 104, "the command finished with errors (see the log above)"


class AccessError(PgBackRestError):
    code, hint = 105, "access denied: check the S3 credentials and bucket policy"


class VerifyFailedError(PgBackRestError):
    """`pgbackrest verify` found invalid or missing files. It exits 0 regardless (2.45): Rewind
    reads its summary instead of trusting the exit code."""

    code, hint = 0, "files failed verification: checksum, size, missing or unreadable (see the verify summary)"


class CommandTimeoutError(PgBackRestError):
    """Rewind stopped pgBackRest because it ran longer than its timeout (not a pgBackRest code)."""


EXIT_CODES: dict[int, type[PgBackRestError]] = {
    cls.code: cls for cls in PgBackRestError.__subclasses__() if cls.code and cls not in (CommandTimeoutError, VerifyFailedError)
}

_ERROR_LINE = re.compile(r"(?:ERROR|ASSERT): \[(\d+)\]: (.*)")


def error_from_exit(returncode: int, output: str, *, command: str) -> PgBackRestError:
    """The typed exception for a non-zero pgBackRest exit, carrying its own error line."""
    message = ""
    for line in output.splitlines():
        match = _ERROR_LINE.search(line)
        if match:
            message = match.group(2).strip()  # keep the last error line: it is the one that ended the run
    if not message:
        lines = [line for line in output.splitlines() if line.strip()]
        message = lines[-1].strip() if lines else "no output"
    cls = EXIT_CODES.get(returncode, PgBackRestError)
    tail = "\n".join(output.splitlines()[-20:])
    return cls(message, code=returncode, command=command, output_tail=tail)
