"""The peak memory of a command and the processes it starts, for tests and benchmarks.

ru_maxrss cannot say it: a process keeps the high-water mark of the image it was forked from (the
test runner's, hundreds of MiB) across exec. VmHWM is the exec'd image's own; the children's RSS
(psql, pg_waldump, pgbackrest) is added at each sample."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


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
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def run_measured(argv: list[str], *, env: dict[str, str], output_dir: Path, every_s: float = 0.05) -> Measured:
    """Run `argv`, sampling its own VmHWM plus its descendants' RSS every `every_s` until it exits."""
    started = time.monotonic()
    peak_kib = 0
    with open(output_dir / "measured.out", "w+") as out, open(output_dir / "measured.err", "w+") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        while process.poll() is None:
            own = _status_kib(process.pid, "VmHWM")
            peak_kib = max(peak_kib, own + sum(_status_kib(child, "VmRSS") for child in _descendants(process.pid)))
            time.sleep(every_s)
        out.seek(0)
        err.seek(0)
        return Measured(process.returncode, out.read(), err.read(), peak_kib / 1024, time.monotonic() - started)
