"""Surfaces invalid inventory clusters in the Airflow UI's import errors, one line per cluster.

The workflow files skip a cluster that fails validation so that the other clusters keep their DAGs;
this file is what makes the skipped cluster impossible to miss: it fails to import with the file,
cluster and field of every error. It defines no DAG.
"""

from __future__ import annotations

from rewind.errors import InventoryError
from rewind.inventory import load_inventory

inventory = load_inventory()
if inventory.errors:
    raise InventoryError(f"{len(inventory.errors)} cluster(s) skipped, their DAGs are missing:\n" + "\n".join(inventory.errors.values()))
