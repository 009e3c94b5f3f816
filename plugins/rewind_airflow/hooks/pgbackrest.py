"""PgBackRestHook: pgBackRest for one inventory cluster, run on the worker that hosts it."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from rewind.credentials import RepositoryCredentials
from rewind.errors import CredentialsError
from rewind.inventory import Cluster, Inventory, inventory_path, load_inventory
from rewind.pgbackrest.client import PgBackRest
from rewind.restore import Instance, RestoreExecutor
from rewind.runner import CommandRunner

# Every secret value a hook of this process has handed out: what goes to ServiceNow or into an
# XCom is redacted against it (Airflow's masker covers only the task log).
_KNOWN_SECRETS: set[str] = set()


def known_secret_values() -> set[str]:
    return set(_KNOWN_SECRETS)


class PgBackRestHook(BaseHook):
    """Loads the cluster from the inventory, obtains its repository secrets, and returns a
    `PgBackRest` client whose child processes get those secrets in their environment only.

    Every secret value is registered with Airflow's secrets masker before any command runs, so a
    value echoed by accident is redacted in the task log. With credentials.source=vault the S3 keys
    are a lease for this task: `release()` (called by every cluster operator when its task ends,
    succeeded or failed) revokes it.
    """

    hook_name = "pgBackRest"

    def __init__(self, *, cluster: str, inventory_file: str | None = None) -> None:
        super().__init__()
        self.cluster_name = cluster
        self.inventory_file = Path(inventory_file) if inventory_file else inventory_path()
        self._client: PgBackRest | None = None
        self._executor: RestoreExecutor | None = None
        self._runners: list[CommandRunner] = []

    @cached_property
    def inventory(self) -> Inventory:
        return load_inventory(self.inventory_file)

    @cached_property
    def cluster(self) -> Cluster:
        return self.inventory.get(self.cluster_name)

    def _vault_client(self):
        from airflow.providers.hashicorp.hooks.vault import VaultHook

        from rewind.vault import vault_errors

        settings = self.cluster.credentials.vault
        try:
            vault_hook = VaultHook(vault_conn_id=settings.conn_id)
        except Exception as exc:  # AirflowNotFoundException, or a malformed connection
            raise CredentialsError(
                f"cluster {self.cluster.name!r}: Vault connection {settings.conn_id!r} is unusable ({exc}): define it (see README, Vault)"
            ) from exc
        with vault_errors(self.cluster, "authentication", vault_hook.vault_client.url):
            return vault_hook.get_conn()

    @cached_property
    def credentials(self) -> RepositoryCredentials:
        return RepositoryCredentials(self.cluster, vault_client=self._vault_client, log=self.log.info)

    @staticmethod
    def _masked(secrets: dict[str, str]) -> dict[str, str]:
        for name, value in secrets.items():
            mask_secret(value, name)
            _KNOWN_SECRETS.add(value)
        return secrets

    def secrets(self) -> dict[str, str]:
        """The repository secrets for this task's pgbackrest commands (a Vault lease is taken once)."""
        return self._masked(self.credentials.secrets())

    def postmaster_secrets(self) -> dict[str, str]:
        """What PostgreSQL's own archive_command/restore_command need when Rewind starts it."""
        return self._masked(self.credentials.postmaster_secrets())

    def _runner(self, secrets: dict[str, str]) -> CommandRunner:
        runner = CommandRunner(os_user=self.cluster.postgres.os_user, secrets=secrets, line_logger=self.log.info)
        self._runners.append(runner)
        return runner

    def get_conn(self) -> PgBackRest:
        if self._client is None:
            self._client = PgBackRest(self.cluster, self._runner(self.secrets()))
        return self._client

    def client_for(self, cluster: Cluster) -> PgBackRest:
        """pgBackRest with this task's secrets for another rendering of the cluster (e.g. a config in
        a temporary file, to read the repository before anything is installed)."""
        return PgBackRest(cluster, self._runner(self.secrets()))

    def os_runner(self) -> CommandRunner:
        """Commands as the cluster's OS user with no repository secret (psql, pg_ctl stop, ...)."""
        return self._runner({})

    def postmaster_runner(self) -> CommandRunner:
        """Starts PostgreSQL with what its archive_command and restore_command need."""
        return self._runner(self.postmaster_secrets())

    def restore_executor(self) -> RestoreExecutor:
        """The restore executor on the cluster itself (its data directory, as the inventory controls
        it): restore, start, wait for the target, promote, stop. One per task: its start's
        credentials are read once."""
        if self._executor is None:
            self._executor = RestoreExecutor(
                self.get_conn(),
                Instance.production(self.cluster),
                runner=self.os_runner(),
                postmaster_runner=self.postmaster_runner(),
                log=self.log.info,
            )
        return self._executor

    def release(self) -> None:
        """End of task: revoke a Vault lease if one was taken."""
        if "credentials" in self.__dict__:
            self.credentials.release()
        self._client = None
        self._executor = None

    def terminate(self) -> None:
        """Stop the running commands (whole process groups); called from on_kill."""
        for runner in self._runners:
            runner.terminate()
