"""Debian's redis-server as the Celery broker, in a child process on an address this machine owns
(127.0.0.1, or the database hosts' bridge address, devstack.netns). Nothing is persisted: a broker
restarted empty is what the tests want."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.net import free_port, wait_for_port
from rewind.runner import kill_process_group


@dataclass
class RedisServer:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The Celery broker URL (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed: run scripts/install.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        conf = self.workdir / "redis.conf"
        conf.write_text(
            f"bind {self.host}\n"
            f"port {self.port}\n"
            "protected-mode no\n"  # bound to one address this run created; Celery connects without a password
            "daemonize no\n"
            'save ""\n'
            "appendonly no\n"
            f"dir {self.workdir}\n"
            f"logfile {self.workdir / 'redis.log'}\n"
        )
        self._proc = subprocess.Popen(
            [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=str(self.workdir)
        )
        wait_for_port(self.port, timeout=30, host=self.host, process=self._proc)
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def stop(self) -> None:
        kill_process_group(self._proc)
        self._proc = None
