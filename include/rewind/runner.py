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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rewind.errors import RewindError

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE_S = 10.0


def kill_process_group(proc: subprocess.Popen | None, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM a child started with start_new_session=True and its whole group; SIGKILL after `grace`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class CommandFailed(RewindError):
    def __init__(self, result: "CommandResult"):
        self.result = result
        tail = result.output.strip().splitlines()[-1:] or ["no output"]
        super().__init__(f"{os.path.basename(result.argv[0])} exited with {result.returncode}: {tail[0]}")


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
    ) -> CommandResult:
        argv = [str(item) for item in argv]
        identity = self._identity()
        env = self.environment()
        env.update(extra_env or {})
        self._line_logger(f"$ {' '.join(argv)}  (as {self.os_user})")
        started = time.monotonic()
        with self._lock:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self._cwd,
                start_new_session=True,  # its own process group: one killpg reaches every child
                text=True,
                errors="replace",
                **identity,
            )
        proc = self._proc
        stdout_lines: list[str] = []
        stderr_lines: list[str] = []
        readers = [
            threading.Thread(target=self._pump, args=(proc.stdout, stdout_lines, log_stdout), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, stderr_lines, True), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.terminate()
            for reader in readers:
                reader.join(timeout=5)
            raise CommandTimeout(
                f"{os.path.basename(argv[0])} {argv[-1]} ran longer than {timeout:.0f}s and was stopped (process group killed)"
            ) from None
        except BaseException:
            # Task cancelled (SIGTERM handler raised) or interrupted: never leave the child behind.
            self.terminate()
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5)
            with self._lock:
                self._proc = None
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

    def _pump(self, stream, sink: list[str], echo: bool) -> None:
        for line in stream:
            sink.append(line)
            if echo:
                self._line_logger(line.rstrip("\n"))
        stream.close()

    def terminate(self, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
        kill_process_group(self._proc, grace)
