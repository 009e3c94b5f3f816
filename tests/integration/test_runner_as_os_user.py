"""The command runner on a root worker: each command starts as the cluster's OS user (postgres), with
only that user's identity and the secrets handed in, and a timeout still stops the whole process
group that user's command started. Needs root and a postgres OS user; the runner's logic as the
worker's own user is in tests/unit/test_runner.py."""

import pwd
import tempfile
import time
from pathlib import Path

import pytest

from rewind.runner import CommandRunner, CommandTimeout
from tests.unit.test_runner import _alive

pytestmark = pytest.mark.integration


def _shared_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="rewind-runner-"))  # pytest's tmp_path is root-only
    workdir.chmod(0o777)
    return workdir


def test_runs_as_the_os_user_with_a_clean_environment(monkeypatch):
    monkeypatch.setenv("WORKER_ONLY_SECRET", "must-not-leak")
    lines: list[str] = []
    runner = CommandRunner(os_user="postgres", secrets={"PGBACKREST_REPO1_CIPHER_PASS": "s3cr3t"}, line_logger=lines.append)
    result = runner.run(["/usr/bin/env"], timeout=10)
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["USER"] == "postgres" and env["HOME"] == pwd.getpwnam("postgres").pw_dir
    assert env["PGBACKREST_REPO1_CIPHER_PASS"] == "s3cr3t"
    assert "WORKER_ONLY_SECRET" not in env
    assert runner.run(["/usr/bin/id", "-un"], timeout=10).stdout.strip() == "postgres"
    # the command line that is logged holds argv only, never the environment
    assert lines[0].startswith("$ /usr/bin/env") and not any("s3cr3t" in line for line in lines if line.startswith("$"))


def test_timeout_kills_the_whole_process_group_of_the_os_user():
    pidfile = _shared_workdir() / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    runner = CommandRunner(os_user="postgres", line_logger=lambda _l: None)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran longer than 1s"):
        runner.run(["/bin/sh", "-c", script], timeout=1)
    assert time.monotonic() - started < 15
    grandchild = int(pidfile.read_text())
    assert pidfile.owner() == "postgres"  # the group that was killed was the OS user's
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the backgrounded grandchild survived the timeout"
