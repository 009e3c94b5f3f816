"""A probe load against a cluster: one short session every 50 ms (psql as the cluster's OS user, a
new connection each time, as an application reconnecting would), each attempt's outcome kept with
the instant it began. What the clone-mode tests and bench/pitr_downtime.py count production's
availability with: the attempts before a shutdown, inside the downtime, after."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rewind.postgres import psql_argv
from rewind.runner import CommandFailed, CommandTimeout


@dataclass
class Attempt:
    at: float  # epoch seconds when it began
    ok: bool
    error: str = ""


@dataclass
class Probe:
    stack: object  # devstack.demo.DemoStack
    sql: str
    interval_s: float = 0.05
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def _run(self) -> None:
        runner = self.stack.runner(line_logger=lambda _line: None)
        argv = psql_argv(self.stack.cluster, self.sql)
        while not self._stop.is_set():
            at = time.time()
            try:
                runner.run(argv, timeout=10, log_stdout=False)
                self.attempts.append(Attempt(at, True))
            except (CommandFailed, CommandTimeout) as exc:
                self.attempts.append(Attempt(at, False, str(exc)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def successes(self) -> int:
        return sum(attempt.ok for attempt in self.attempts)

    def failures(self, *, before: float | None = None) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok and (before is None or a.at < before)]

    def counts(self, shutdown: float, ready: float) -> dict[str, int]:
        """Attempts and failures before `shutdown`, inside [shutdown, ready), and after."""
        spans = {
            "before": [a for a in self.attempts if a.at < shutdown],
            "during": [a for a in self.attempts if shutdown <= a.at < ready],
            "after": [a for a in self.attempts if a.at >= ready],
        }
        counts = {}
        for name, attempts in spans.items():
            counts[name] = len(attempts)
            counts[f"failed_{name}"] = sum(not a.ok for a in attempts)
        return counts
