"""Run a command as the cluster's OS user: argv only, no shell, a timeout, a clean environment,
output streamed line by line, and the whole process group killed on timeout or cancel.

PostgreSQL and pgBackRest refuse to run as root; Airflow workers often do (and CI always does),
so when the worker is root the child is started directly as the OS user (setuid/setgid with the
user's supplementary groups). A non-root worker must already be that user.

The child's environment is built from scratch: PATH, locale, HOME/USER of the OS user and the
secrets handed in by the caller (PGBACKREST_REPO1_* variables). Nothing of the worker's own
environment leaks in, and secrets never appear in argv or in a file.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rewind.errors import RewindError

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE_S = 10.0
# Members still running after their leader exited on SIGTERM are orphans that ignore it: they get
# this much longer (never more than what is left of the grace) before the whole group is SIGKILLed.
ORPHAN_GRACE_S = 1.0
# How long to wait for a process that exited or was SIGKILLed to be gone (reaped, or out of the
# group); only one stuck in the kernel takes longer.
EXIT_WAIT_S = 2.0
# Total wait for the output readers. After a kill the pipes close at once; after a normal exit they
# stay open only while a process the command left behind holds them.
READER_JOIN_S = 5.0
POLL_S = 0.05


def _group_running(pgid: int) -> bool:
    """Whether any member of process group `pgid` has not exited yet (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member that changed its user: it exists, we may just not signal it
    # killpg(pgid, 0) also succeeds when only zombies are left: they stay in the group until
    # reaped, the leader by us and orphans by the container's init, which may do it late or never.
    # /proc tells the states apart; where it cannot be read, assume the group still runs.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # exited while we looked
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ")"
        state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            return True
    return False


def _reap(proc: subprocess.Popen) -> None:
    # Bounded, not a plain wait(): when terminate() runs in a signal handler that interrupted a plain
    # proc.wait() in the same thread, Popen's waitpid lock is held and a plain wait() would deadlock.
    try:
        proc.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("process %d was not reaped within %.0fs", proc.pid, EXIT_WAIT_S)


def _group_exited_in_time(proc: subprocess.Popen, pgid: int, grace: float) -> bool:
    """Wait for every member of the SIGTERMed group to exit: up to `grace`, and at most
    ORPHAN_GRACE_S more once the leader is gone (what is left then ignores SIGTERM)."""
    deadline = time.monotonic() + grace
    leader_exited = False
    while _group_running(pgid):
        # poll() also reaps the leader, so it does not linger as a zombie while the orphans get killed.
        if not leader_exited and proc.poll() is not None:
            leader_exited = True
            deadline = min(deadline, time.monotonic() + ORPHAN_GRACE_S)
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def kill_process_group(proc: subprocess.Popen | None, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM a child started with start_new_session=True and its whole group; SIGKILL the group
    after `grace`, or soon after the leader exited if other members ignore SIGTERM; reap the leader."""
    # A leader that already exited was reaped and its pid may be reused: signal nothing.
    if proc is None or proc.poll() is not None:
        return
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        _reap(proc)
        return
    if _group_exited_in_time(proc, pgid, grace):
        _reap(proc)
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(proc)
    # SIGKILL is delivered asynchronously: wait (bounded) until the members are gone, so their
    # pipes are closed and nothing of the command runs any more when we return.
    kill_deadline = time.monotonic() + EXIT_WAIT_S
    while _group_running(pgid) and time.monotonic() < kill_deadline:
        time.sleep(POLL_S)


class CommandFailed(RewindError):
    def __init__(self, result: CommandResult):
        self.result = result
        super().__init__(f"{os.path.basename(result.argv[0])} exited with {result.returncode}: {self.reason(result.output)}")

    @staticmethod
    def reason(output: str) -> str:
        """The line that says what went wrong: the last ERROR/FATAL line (a HINT or DETAIL may
        follow it), else the last line."""
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        errors = [line for line in lines if any(mark in line for mark in ("ERROR:", "FATAL:", "PANIC:", "error:"))]
        return (errors or lines or ["no output"])[-1]


class CommandTimeout(RewindError):
    pass


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class CommandRunner:
    """Runs one command at a time for one OS user; `terminate()` is safe from a signal handler."""

    def __init__(
        self,
        *,
        os_user: str,
        secrets: Mapping[str, str] | None = None,
        line_logger: Callable[[str], None] | None = None,
        cwd: str = "/",
    ):
        self.os_user = os_user
        self._secrets = dict(secrets or {})
        self._line_logger = line_logger or log.info
        self._cwd = cwd
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def sibling(self) -> CommandRunner:
        """Another runner for the same OS user, secrets and log: to run commands side by side (each
        runner runs one command at a time, and terminates its own)."""
        return CommandRunner(os_user=self.os_user, secrets=self._secrets, line_logger=self._line_logger, cwd=self._cwd)

    def _identity(self) -> dict:
        try:
            user = pwd.getpwnam(self.os_user)
        except KeyError:
            raise RewindError(f"OS user {self.os_user!r} does not exist on this worker: fix postgres.os_user in the inventory") from None
        if os.geteuid() == user.pw_uid:
            return {}
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            raise RewindError(
                f"worker runs as {me!r} but the cluster's OS user is {self.os_user!r}: run the worker as {self.os_user!r} or root"
            )
        return {
            "user": user.pw_uid,
            "group": user.pw_gid,
            "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
        }

    def environment(self) -> dict[str, str]:
        user = pwd.getpwnam(self.os_user)
        env = {
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": user.pw_dir,
            "USER": user.pw_name,
            "LOGNAME": user.pw_name,
        }
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        env.update(self._secrets)
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        log_stdout: bool = True,
        extra_env: Mapping[str, str] | None = None,
        shown_argv: Sequence[str] | None = None,
        input_text: str | None = None,
        stdout_path: Path | None = None,
    ) -> CommandResult:
        """`shown_argv`: what the log shows instead of argv, when an item is someone's free text
        (a data check's SQL is logged by its caller, masked and bounded). `input_text`: the
        command's standard input (SQL for `psql -f -`): data of any size travels there, never in
        argv, which the kernel caps at 128 KiB an argument. `stdout_path`: the output goes to this
        file (created or truncated here), not into memory: for output of any size."""
        argv = [str(item) for item in argv]
        started = time.monotonic()
        stdout_file = open(stdout_path, "wb") if stdout_path is not None else None  # noqa: SIM115 - closed below
        try:
            proc = self._start(
                argv,
                extra_env=extra_env,
                shown_argv=shown_argv,
                stdin=subprocess.DEVNULL if input_text is None else subprocess.PIPE,
                stdout=stdout_file or subprocess.PIPE,
            )
        finally:
            if stdout_file is not None:
                stdout_file.close()  # the child holds its own copy
        stdout_lines: list[str] = []
        stderr_lines: list[str] = []
        readers = [threading.Thread(target=self._pump, args=(proc.stderr, stderr_lines, True), daemon=True)]
        if stdout_file is None:
            readers.append(threading.Thread(target=self._pump, args=(proc.stdout, stdout_lines, log_stdout), daemon=True))
        if input_text is not None:
            readers.append(threading.Thread(target=self._feed, args=(proc.stdin, input_text), daemon=True))
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.terminate()
        except BaseException:
            # Task cancelled (SIGTERM handler raised) or interrupted: never leave the child behind.
            self.terminate()
            raise
        finally:
            self._join_readers(readers)
            with self._lock:
                self._proc = None
        if timed_out:
            raise CommandTimeout(
                f"{os.path.basename(argv[0])} {argv[-1]} ran longer than {timeout:.0f}s and was stopped (process group killed)"
            )
        result = CommandResult(
            argv=argv,
            returncode=proc.returncode,
            stdout="".join(stdout_lines),
            stderr="".join(stderr_lines),
            duration_s=time.monotonic() - started,
        )
        if check and result.returncode != 0:
            raise CommandFailed(result)
        return result

    def lines(self, argv: Sequence[str], *, timeout: float, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
        """The command's standard output line by line as it prints it, never all of it in memory
        (pg_waldump prints about 58 MiB per 16 MiB segment). The process group is stopped when the
        reader stops early or `timeout` passes. The exit status is not checked: pg_waldump ends on
        an error at the end of the WAL it was given."""
        argv = [str(item) for item in argv]
        proc = self._start(argv, extra_env=extra_env, shown_argv=None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        stderr_lines: list[str] = []
        reader = threading.Thread(target=self._pump, args=(proc.stderr, stderr_lines, True), daemon=True)
        reader.start()
        timed_out = threading.Event()

        def stop_at_deadline() -> None:
            timed_out.set()
            kill_process_group(proc)

        deadline = threading.Timer(timeout, stop_at_deadline)
        deadline.daemon = True
        deadline.start()
        try:
            for line in proc.stdout:
                yield line.rstrip("\n")
            proc.wait()
        finally:
            deadline.cancel()
            kill_process_group(proc)  # the reader stopped early (or failed): nothing of it keeps running
            proc.stdout.close()
            self._join_readers([reader])
            with self._lock:
                self._proc = None
        if timed_out.is_set():
            raise CommandTimeout(f"{os.path.basename(argv[0])} ran longer than {timeout:.0f}s and was stopped (process group killed)")

    def _start(self, argv: list[str], *, extra_env, shown_argv, stdin, stdout) -> subprocess.Popen:
        """Log the command and start it as the OS user, in a clean environment, in a process group of its own."""
        identity = self._identity()
        env = self.environment()
        env.update(extra_env or {})
        self._line_logger(f"$ {' '.join(shown_argv or argv)}  (as {self.os_user})")
        with self._lock:
            self._proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self._cwd,
                start_new_session=True,  # its own process group: one killpg reaches every child
                text=True,
                errors="replace",
                **identity,
            )
            return self._proc

    @staticmethod
    def _join_readers(readers: list[threading.Thread]) -> None:
        # One deadline for all readers: a process the command left behind can hold both pipes open.
        deadline = time.monotonic() + READER_JOIN_S
        for reader in readers:
            reader.join(timeout=max(0.0, deadline - time.monotonic()))

    @staticmethod
    def _feed(stream, text: str) -> None:
        try:
            stream.write(text)
            stream.close()
        except (BrokenPipeError, OSError, ValueError):  # the command ended (or failed) before reading it all
            pass

    def _pump(self, stream, sink: list[str], echo: bool) -> None:
        for line in stream:
            sink.append(line)
            if echo:
                self._line_logger(line.rstrip("\n"))
        stream.close()

    def terminate(self, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace` seconds (see kill_process_group)."""
        kill_process_group(self._proc, grace)
