"""Hermetic Airflow environment for benchmarks; import before anything imports airflow."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.airflow import REPO, hermetic_env  # noqa: F401 (REPO is used by the benchmarks)


def setup(migrate: bool = False) -> Path:
    home = Path(tempfile.mkdtemp(prefix="rewind-bench-airflow-"))
    os.environ.update({**hermetic_env(home), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    if migrate:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return home
