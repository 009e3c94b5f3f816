"""Exit-code mapping through the real runner, with a fake pgbackrest that exits as told."""

from pathlib import Path

import pytest

from rewind.pgbackrest import errors
from rewind.pgbackrest.client import PgBackRest
from rewind.runner import CommandRunner
from tests.factories import cluster, worker_user

FAKE = """#!/bin/sh
# Fake pgbackrest: prints pgBackRest-style log lines and exits with $FAKE_EXIT.
echo "P00   INFO: backup command begin 2.45: --stanza=ledger"
if [ "$FAKE_EXIT" != 0 ]; then
  echo "P00  ERROR: [$(printf %03d "$FAKE_EXIT")]: $FAKE_MESSAGE" >&2
fi
exit "$FAKE_EXIT"
"""


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory):
    fake = tmp_path_factory.mktemp("bin") / "pgbackrest"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    return fake


def client(fake_bin: Path, code: int, message: str) -> PgBackRest:
    """The real client and runner; the runner runs as the worker's own user (no switch needed)."""
    runner = CommandRunner(os_user=worker_user(), secrets={"FAKE_EXIT": str(code), "FAKE_MESSAGE": message})
    return PgBackRest(cluster(pgbackrest={"bin": str(fake_bin)}), runner)


@pytest.mark.parametrize(
    "code, exc_type, message",
    [
        (26, errors.ChecksumError, "invalid checksum"),
        (38, errors.PostgresRunningError, "unable to restore while PostgreSQL is running"),
        (50, errors.LockAcquireError, "unable to acquire lock on file '/tmp/pgbackrest/ledger-backup.lock'"),
        (55, errors.FileMissingError, "unable to open missing file 'archive.info'"),
        (56, errors.DbConnectError, "unable to connect to 'dbname=postgres port=5432'"),
        (62, errors.StopFileError, "stop file exists for stanza ledger"),
        (75, errors.BackupSetInvalidError, "the latest backup set found '20261124-010000F' is from a prior PostgreSQL version"),
        (82, errors.ArchiveTimeoutError, "WAL segment 000000010000000000000005 was not archived before the 60000ms timeout"),
        (95, errors.CryptoError, "unable to flush"),
        (103, errors.RepoInvalidError, "no valid repository"),
        (105, errors.AccessError, "HTTP 403 Forbidden"),
        (77, errors.PgBackRestError, "an error pgBackRest may add later"),
    ],
)
def test_exit_code_becomes_typed_exception_with_its_message(fake_bin, code, exc_type, message):
    with pytest.raises(exc_type) as caught:
        client(fake_bin, code, message).backup("full", annotations={})
    assert type(caught.value) is exc_type
    assert caught.value.code == code
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"pgbackrest backup failed [{code}]:")
    assert "\n" not in str(caught.value)


def test_success_returns_output(fake_bin):
    result = client(fake_bin, 0, "").backup("full", annotations={})
    assert result.returncode == 0 and "backup command begin" in result.stdout


def test_every_named_code_is_distinct():
    codes = [cls.code for cls in errors.EXIT_CODES.values()]
    assert len(codes) == len(set(codes))
    assert errors.EXIT_CODES[50] is errors.LockAcquireError
