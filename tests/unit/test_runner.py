import pwd
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewind.runner import CommandFailed, CommandRunner, CommandTimeout


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


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


def test_non_zero_exit_raises_with_the_last_line():
    runner = CommandRunner(os_user="postgres")
    with pytest.raises(CommandFailed, match="ls exited with 2: .*no-such-path"):
        runner.run(["/bin/ls", "/no-such-path"], timeout=10)
    assert runner.run(["/bin/ls", "/no-such-path"], timeout=10, check=False).returncode == 2


def test_timeout_kills_the_whole_process_group():
    workdir = Path(tempfile.mkdtemp(prefix="rewind-runner-"))  # pytest's tmp_path is root-only
    workdir.chmod(0o777)
    pidfile = workdir / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    runner = CommandRunner(os_user="postgres", line_logger=lambda _l: None)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran longer than 1s"):
        runner.run(["/bin/sh", "-c", script], timeout=1)
    assert time.monotonic() - started < 15
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the backgrounded grandchild survived the timeout"


def test_terminate_from_another_thread_stops_the_command():
    runner = CommandRunner(os_user="postgres", line_logger=lambda _l: None)
    timer = threading.Timer(0.5, runner.terminate)
    timer.start()
    started = time.monotonic()
    result = runner.run(["/bin/sleep", "300"], timeout=60, check=False)
    assert time.monotonic() - started < 10
    assert result.returncode == -15


def test_unknown_os_user_is_a_clear_error():
    from rewind.errors import RewindError

    with pytest.raises(RewindError, match="OS user 'no_such_user' does not exist on this worker"):
        CommandRunner(os_user="no_such_user").run(["/bin/true"], timeout=5)


def test_output_is_streamed_line_by_line_while_running():
    seen: list[tuple[float, str]] = []
    runner = CommandRunner(os_user="postgres", line_logger=lambda line: seen.append((time.monotonic(), line)))
    runner.run(["/bin/sh", "-c", "echo first; sleep 1; echo second"], timeout=10)
    stamps = {line: stamp for stamp, line in seen}
    assert stamps["second"] - stamps["first"] > 0.8
