"""The command runner as the worker's own user: argv, a clean environment, streamed output, and the
whole process group stopped on timeout or terminate. Starting the command as another OS user (root
running it as postgres) is in tests/integration/test_runner_as_os_user.py."""

import os
import pwd
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rewind.errors import RewindError
from rewind.runner import ORPHAN_GRACE_S, CommandFailed, CommandRunner, CommandTimeout, kill_process_group
from tests.factories import worker_user

ME = worker_user()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_runs_with_a_clean_environment(monkeypatch):
    monkeypatch.setenv("WORKER_ONLY_SECRET", "must-not-leak")
    lines: list[str] = []
    runner = CommandRunner(os_user=ME, secrets={"PGBACKREST_REPO1_CIPHER_PASS": "s3cr3t"}, line_logger=lines.append)
    result = runner.run(["/usr/bin/env"], timeout=10)
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["USER"] == ME and env["HOME"] == pwd.getpwnam(ME).pw_dir
    assert env["PGBACKREST_REPO1_CIPHER_PASS"] == "s3cr3t"
    assert "WORKER_ONLY_SECRET" not in env
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME", "TZ", "PGBACKREST_REPO1_CIPHER_PASS"}
    # the command line that is logged holds argv only, never the environment
    assert lines[0] == f"$ /usr/bin/env  (as {ME})" and not any("s3cr3t" in line for line in lines if line.startswith("$"))


def test_non_zero_exit_raises_with_the_last_line():
    runner = CommandRunner(os_user=ME)
    with pytest.raises(CommandFailed, match="ls exited with 2: .*no-such-path"):
        runner.run(["/bin/ls", "/no-such-path"], timeout=10)
    assert runner.run(["/bin/ls", "/no-such-path"], timeout=10, check=False).returncode == 2


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    runner = CommandRunner(os_user=ME, line_logger=lambda _l: None)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran longer than 1s"):
        runner.run(["/bin/sh", "-c", script], timeout=1)
    assert time.monotonic() - started < 15
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the backgrounded grandchild survived the timeout"


def test_timeout_kills_a_member_that_ignores_sigterm_once_the_leader_is_gone(tmp_path):
    # The leader (sh) dies on SIGTERM; the backgrounded member ignores it and keeps the output pipes open.
    pidfile = tmp_path / "member.pid"
    script = f"(trap '' TERM; exec sleep 300) & echo $! > {pidfile}; wait"
    runner = CommandRunner(os_user=ME, line_logger=lambda _l: None)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran longer than 2s and was stopped"):
        runner.run(["/bin/sh", "-c", script], timeout=2)
    assert time.monotonic() - started < 5
    assert not _alive(int(pidfile.read_text())), "the member that ignores SIGTERM survived the timeout"


def test_terminate_kills_a_group_that_ignores_sigterm_after_the_grace(tmp_path):
    pidfile = tmp_path / "member.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"
    runner = CommandRunner(os_user=ME, line_logger=lambda _l: None)
    timer = threading.Timer(0.5, runner.terminate, kwargs={"grace": 1})
    timer.start()
    started = time.monotonic()
    result = runner.run(["/bin/sh", "-c", script], timeout=60, check=False)
    assert time.monotonic() - started < 5
    assert result.returncode == -9
    assert not _alive(int(pidfile.read_text())), "the member that ignores SIGTERM survived SIGKILL"


def test_a_group_that_exits_on_sigterm_is_not_waited_for():
    # The member's zombie stays in the group until init reaps it, which some container inits do late or never:
    # it must not count as a member that ignores SIGTERM.
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    member = int(proc.stdout.readline())
    started = time.monotonic()
    kill_process_group(proc, grace=10)
    assert time.monotonic() - started < ORPHAN_GRACE_S
    assert proc.returncode == -15 and not _alive(member)
    proc.stdout.close()


def test_terminate_from_another_thread_stops_the_command():
    runner = CommandRunner(os_user=ME, line_logger=lambda _l: None)
    timer = threading.Timer(0.5, runner.terminate)
    timer.start()
    started = time.monotonic()
    result = runner.run(["/bin/sleep", "300"], timeout=60, check=False)
    assert time.monotonic() - started < 10
    assert result.returncode == -15


def test_unknown_os_user_is_a_clear_error():
    with pytest.raises(RewindError, match="OS user 'no_such_user' does not exist on this worker"):
        CommandRunner(os_user="no_such_user").run(["/bin/true"], timeout=5)


def test_a_worker_that_is_neither_root_nor_the_os_user_is_told_how_to_run(monkeypatch):
    # The worker's uid is the OS boundary the runner asks; nobody (65534) is not root's user.
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with pytest.raises(RewindError, match="worker runs as 'nobody' but the cluster's OS user is 'root': run the worker as 'root' or root"):
        CommandRunner(os_user="root").run(["/bin/true"], timeout=5)


def test_output_is_streamed_line_by_line_while_running():
    seen: list[tuple[float, str]] = []
    runner = CommandRunner(os_user=ME, line_logger=lambda line: seen.append((time.monotonic(), line)))
    runner.run(["/bin/sh", "-c", "echo first; sleep 1; echo second"], timeout=10)
    stamps = {line: stamp for stamp, line in seen}
    assert stamps["second"] - stamps["first"] > 0.8


def test_output_to_a_file_never_passes_through_memory(tmp_path):
    runner = CommandRunner(os_user=ME, line_logger=lambda _l: None)
    result = runner.run(["/bin/sh", "-c", "seq 1 200000; echo done >&2"], timeout=30, stdout_path=tmp_path / "out")
    assert result.stdout == "" and result.stderr == "done\n"
    assert (tmp_path / "out").read_text().splitlines()[-1] == "200000"


def test_lines_come_as_printed_and_a_reader_that_stops_early_stops_the_command(tmp_path):
    pidfile = tmp_path / "child.pid"
    runner = CommandRunner(os_user=ME, line_logger=lambda _l: None)
    lines = runner.lines(["/bin/sh", "-c", f"echo $$ > {pidfile}; seq 1 100000000"], timeout=60)
    assert [next(lines) for _ in range(3)] == ["1", "2", "3"]
    lines.close()  # the reader has what it wants: the command must not go on printing into a pipe nobody reads
    assert not _alive(int(pidfile.read_text()))
    assert list(runner.lines(["/bin/sh", "-c", "echo a; echo b; exit 3"], timeout=10)) == ["a", "b"]  # exit status not checked
    with pytest.raises(CommandTimeout, match="ran longer than 1s"):
        list(runner.lines(["/bin/sh", "-c", "echo a; sleep 300"], timeout=1))
