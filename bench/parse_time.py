"""DAG parse time with a generated 100-cluster inventory (goal: all DAG files under 2 s).

    .venv/bin/python bench/parse_time.py [--clusters 100] [--repeat 3]

Parses dags/ the way the DAG processor does (DagBag over the folder) after Airflow itself is
imported, so the figure is the cost of Rewind's files, not of importing Airflow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from _airflow_env import REPO, setup

GOAL_S = 2.0


def inventory(clusters: int) -> dict:
    return {
        "defaults": yaml.safe_load((REPO / "config" / "inventory.example.yaml").read_text())["defaults"],
        "clusters": {
            f"pg{n:03d}": {
                "queue": f"pg-host-{n:03d}",
                "postgres": {"data_dir": f"/var/lib/postgresql/15/pg{n:03d}", "port": 5432 + n % 10},
                "repo": {"path": f"/pgbackrest/pg{n:03d}"},
                "credentials": {"env_prefix": f"REWIND_PG{n:03d}_"},
            }
            for n in range(clusters)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    setup()
    path = Path(tempfile.mkdtemp()) / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory(args.clusters)))
    os.environ["REWIND_INVENTORY"] = str(path)

    from airflow.dag_processing.dagbag import DagBag  # Airflow import cost is not Rewind's

    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(REPO / "dags"), safe_mode=False)
        timings.append(time.perf_counter() - started)
        assert not bag.import_errors, bag.import_errors
    best, median = min(timings), statistics.median(timings)
    print(f"clusters: {args.clusters}   DAGs: {len(bag.dags)}   files: {len(list((REPO / 'dags').glob('*.py')))}")
    print(f"parse time all DAG files: best {best:.3f} s, median {median:.3f} s over {args.repeat} runs")
    print(f"goal {GOAL_S:.1f} s -> median/goal ratio {median / GOAL_S:.2f} ({'met' if median < GOAL_S else 'NOT met'})")


if __name__ == "__main__":
    main()
