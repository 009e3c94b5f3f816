"""PgBackRestHook: pgBackRest for one inventory cluster, run on the worker that hosts it."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from rewind.credentials import repository_secrets
from rewind.inventory import Cluster, Inventory, inventory_path, load_inventory
from rewind.pgbackrest.client import PgBackRest
from rewind.runner import CommandRunner


class PgBackRestHook(BaseHook):
    """Loads the cluster from the inventory, obtains its repository secrets, and returns a
    `PgBackRest` client whose child processes get those secrets in their environment only.

    Every secret value is registered with Airflow's secrets masker before any command runs, so a
    value echoed by accident is redacted in the task log.
    """

    hook_name = "pgBackRest"

    def __init__(self, *, cluster: str, inventory_file: str | None = None) -> None:
        super().__init__()
        self.cluster_name = cluster
        self.inventory_file = Path(inventory_file) if inventory_file else inventory_path()
        self._client: PgBackRest | None = None

    @cached_property
    def inventory(self) -> Inventory:
        return load_inventory(self.inventory_file)

    @cached_property
    def cluster(self) -> Cluster:
        return self.inventory.get(self.cluster_name)

    def secrets(self) -> dict[str, str]:
        secrets = repository_secrets(self.cluster)
        for name, value in secrets.items():
            mask_secret(value, name)
        return secrets

    def get_conn(self) -> PgBackRest:
        if self._client is None:
            runner = CommandRunner(
                os_user=self.cluster.postgres.os_user,
                secrets=self.secrets(),
                line_logger=self.log.info,
            )
            self._client = PgBackRest(self.cluster, runner)
        return self._client

    def terminate(self) -> None:
        """Stop the running pgbackrest (whole process group); called from on_kill."""
        if self._client is not None:
            self._client.runner.terminate()
