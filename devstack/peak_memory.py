"""The peak memory of a command and the processes it starts, for tests and benchmarks.

ru_maxrss cannot say it: a process keeps the high-water mark of the image it was forked from (the
test runner's, hundreds of MiB) across exec. VmHWM is the exec'd image's own; the children's RSS
(psql, pg_waldump, pgbackrest) is added at each sample."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rewind.runner import kill_process_group


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_mib: float
    seconds: float


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # exited meanwhile
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`. Any of them may exit while it is read: a /proc entry that is
    gone is skipped (Path.glob raised FileNotFoundError on Python 3.11 when a process exited between
    its is_dir and its scandir)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def run_measured(argv: list[str], *, env: dict[str, str], output_dir: Path, every_s: float = 0.05) -> Measured:
    """Run `argv`, sampling its own VmHWM plus its descendants' RSS every `every_s` until it exits."""
    started = time.monotonic()
    peak_kib = 0
    with open(output_dir / "measured.out", "w+") as out, open(output_dir / "measured.err", "w+") as err:
        # its own process group: if measuring fails, nothing it started outlives the caller
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            while process.poll() is None:
                own = _status_kib(process.pid, "VmHWM")
                peak_kib = max(peak_kib, own + sum(_status_kib(child, "VmRSS") for child in _descendants(process.pid)))
                time.sleep(every_s)
        finally:
            kill_process_group(process)
        out.seek(0)
        err.seek(0)
        return Measured(process.returncode, out.read(), err.read(), peak_kib / 1024, time.monotonic() - started)
