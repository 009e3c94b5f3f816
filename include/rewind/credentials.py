"""Repository credentials for one cluster, as the environment of the pgbackrest child process.

The values go into `PGBACKREST_REPO1_*` variables and nowhere else: not pgbackrest.conf, not argv,
not a log line. Where they come from is the inventory's `credentials.source`:

  env    the worker's own environment, under the cluster's prefix (<prefix>S3_KEY, ...);
  auto   S3 keys from the instance role (repo1-s3-key-type=auto), passphrase from the environment;
  vault  S3 keys leased from Vault's AWS engine for the length of one task, passphrase from KV v2.

Two consumers with different lifetimes:
  - `secrets()`: Rewind's own pgBackRest commands (backup, restore, info, ...), for one task;
    `release()` revokes a Vault lease when the task ends, whether it succeeded or failed, waiting
    for Vault a few seconds at most (a revocation that hangs is left to the lease's TTL);
  - `postmaster_secrets()`: what PostgreSQL itself needs for archive_command / restore_command when
    Rewind starts it with pg_ctl. It outlives the task, so never a per-task lease: S3 keys from
    `credentials.postmaster_s3_keys` (env, or the instance role), passphrase from the source.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rewind.errors import CredentialsError
from rewind.inventory import Cluster

S3_KEY = "PGBACKREST_REPO1_S3_KEY"
S3_KEY_SECRET = "PGBACKREST_REPO1_S3_KEY_SECRET"
S3_TOKEN = "PGBACKREST_REPO1_S3_TOKEN"
S3_KEY_TYPE = "PGBACKREST_REPO1_S3_KEY_TYPE"
CIPHER_PASS = "PGBACKREST_REPO1_CIPHER_PASS"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (and every line-wrapped piece of one) replaced by ***: for
    anything that leaves the task (XCom, a change or incident note), which Airflow's log masker
    does not reach."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def _from_environment(cluster: Cluster, environ: Mapping[str, str], *, s3_keys: bool, cipher: bool) -> dict[str, str]:
    prefix = cluster.credentials.env_prefix
    wanted: dict[str, tuple[str, bool]] = {}  # pgbackrest variable -> (source variable, required)
    if s3_keys:
        wanted[S3_KEY] = (f"{prefix}S3_KEY", True)
        wanted[S3_KEY_SECRET] = (f"{prefix}S3_KEY_SECRET", True)
        wanted[S3_TOKEN] = (f"{prefix}S3_TOKEN", False)
    if cipher and cluster.repo.cipher_type != "none":
        wanted[CIPHER_PASS] = (f"{prefix}CIPHER_PASS", True)
    secrets: dict[str, str] = {}
    missing = []
    for target, (source, required) in wanted.items():
        value = environ.get(source)
        if value:
            secrets[target] = value
        elif required:
            missing.append(source)
    if missing:
        raise CredentialsError(
            f"cluster {cluster.name!r}: repository credentials missing from the worker environment: "
            f"set {', '.join(missing)} (credentials.source={cluster.credentials.source})"
        )
    return secrets


def repository_secrets(cluster: Cluster, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secrets for a cluster whose source is env or auto (no lease to manage)."""
    if cluster.credentials.source == "vault":
        raise CredentialsError(f"cluster {cluster.name!r}: credentials.source is vault: use RepositoryCredentials with a Vault client")
    environ = os.environ if environ is None else environ
    return _from_environment(cluster, environ, s3_keys=cluster.credentials.source == "env", cipher=True)


class LeaseRenewer(threading.Thread):
    """Keeps a lease alive while the task runs (a full backup can outlast the lease's TTL): renews
    it when two thirds of its remaining time have passed, as Vault Agent does. A failed renewal is
    logged and retried sooner; Vault's max_ttl still bounds the lease."""

    RETRY_S = 10.0

    def __init__(self, renew: Callable[[], int], lease_duration_s: int, log: Callable[[str], None]) -> None:
        super().__init__(name="rewind-lease-renewer", daemon=True)
        self._renew, self._remaining, self._log = renew, lease_duration_s, log
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(max(1.0, self._remaining * 2 / 3)):
            try:
                self._remaining = self._renew()
            except CredentialsError as exc:
                self._log(f"WARNING: {exc}; retrying in {self.RETRY_S:.0f}s")
                self._remaining = self.RETRY_S * 1.5

    def stop(self, wait_s: float = 30) -> None:
        """Stop renewing; a renewal under way is waited for at most `wait_s` (the thread is a daemon)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=wait_s)


class RepositoryCredentials:
    """One task's repository secrets for one cluster, from the inventory's source.

    `vault_client` is called (once, lazily) for an authenticated hvac client; the Airflow hook passes
    the hashicorp provider's VaultHook, the CLI a client from VAULT_ADDR/VAULT_TOKEN.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        environ: Mapping[str, str] | None = None,
        vault_client: Callable[[], Any] | None = None,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.cluster = cluster
        self.environ = os.environ if environ is None else environ
        self._vault_client_factory = vault_client
        self._vault_client: Any = None
        self._secrets: dict[str, str] | None = None
        self._cipher_pass: str | None = None
        self.lease = None  # rewind.vault.S3Lease while one is held
        self._lease_ends = 0.0  # time.monotonic() when the held lease runs out unless renewed
        self._renewer: LeaseRenewer | None = None
        self.log = log

    @property
    def source(self) -> str:
        return self.cluster.credentials.source

    def _vault(self) -> Any:
        if self._vault_client is None:
            if self._vault_client_factory is None:
                raise CredentialsError(f"cluster {self.cluster.name!r}: credentials.source is vault but no Vault client is configured")
            self._vault_client = self._vault_client_factory()
        return self._vault_client

    def _vault_cipher_pass(self) -> str | None:
        from rewind.vault import read_cipher_pass

        if self.cluster.repo.cipher_type == "none":
            return None
        if self._cipher_pass is None:
            self._cipher_pass = read_cipher_pass(self._vault(), self.cluster, self.cluster.credentials.vault)
        return self._cipher_pass

    def secrets(self) -> dict[str, str]:
        """The environment for Rewind's own pgbackrest commands (leases S3 keys once per instance)."""
        if self._secrets is not None:
            return dict(self._secrets)
        if self.source != "vault":
            self._secrets = repository_secrets(self.cluster, self.environ)
            return dict(self._secrets)
        from rewind.vault import lease_s3_keys, renew_lease

        cipher_pass = self._vault_cipher_pass()  # read first: a failure here leaves no lease behind
        self.lease = lease = lease_s3_keys(self._vault(), self.cluster, self.cluster.credentials.vault)
        self._lease_ends = time.monotonic() + lease.lease_duration_s
        self.log(f"leased S3 credentials from Vault: lease {lease.lease_id}, {lease.lease_duration_s}s")

        def renew() -> int:
            remaining = renew_lease(self._vault(), self.cluster, lease.lease_id)
            self._lease_ends = time.monotonic() + remaining
            return remaining

        if lease.renewable and lease.lease_duration_s > 0:
            self._renewer = LeaseRenewer(renew, lease.lease_duration_s, self.log)
            self._renewer.start()
        secrets = {S3_KEY: lease.access_key, S3_KEY_SECRET: lease.secret_key}
        if lease.security_token:
            secrets[S3_TOKEN] = lease.security_token
        if cipher_pass:
            secrets[CIPHER_PASS] = cipher_pass
        self._secrets = secrets
        return dict(secrets)

    def postmaster_secrets(self) -> dict[str, str]:
        """The environment PostgreSQL gets when Rewind starts it (archive_command, restore_command)."""
        keys = self.cluster.credentials.postmaster_keys
        secrets = _from_environment(self.cluster, self.environ, s3_keys=keys == "env", cipher=self.source != "vault")
        if keys == "auto":
            secrets[S3_KEY_TYPE] = "auto"
        if self.source == "vault":
            cipher_pass = self._vault_cipher_pass()
            if cipher_pass:
                secrets[CIPHER_PASS] = cipher_pass
        return secrets

    # How long the end of a task waits for Vault to revoke its lease. Revoking makes Vault delete
    # the key in AWS (IAM), so a slow or hung AWS/S3 makes the revocation hang with it; the task's
    # outcome must not wait for that. What is not revoked in time ends with the lease's TTL.
    REVOKE_WAIT_S = 5.0

    def release(self, *, wait_s: float | None = None) -> None:
        """Revoke the S3 lease, if one is held, waiting for Vault at most `wait_s` (REVOKE_WAIT_S).
        A revocation that fails, or is still under way when the wait ends (it goes on in the
        background while this process lives), is logged, not raised: the task's own outcome stands,
        and Vault revokes the lease itself when its TTL runs out, which also ends the key."""
        wait_s = self.REVOKE_WAIT_S if wait_s is None else wait_s
        lease, self.lease, self._secrets = self.lease, None, None
        if self._renewer is not None:
            self._renewer.stop(wait_s)
            self._renewer = None
        if lease is None:
            return
        from rewind.vault import revoke_lease

        outcome: dict[str, BaseException] = {}

        def revoke() -> None:
            try:
                revoke_lease(self._vault(), self.cluster, lease.lease_id)
            except BaseException as exc:  # reported below, never lost in the thread
                outcome["error"] = exc

        revoker = threading.Thread(target=revoke, name="rewind-lease-revoke", daemon=True)
        revoker.start()
        revoker.join(wait_s)
        ttl = f"the lease expires by itself within {max(0, round(self._lease_ends - time.monotonic()))}s (its TTL)"
        if revoker.is_alive():
            self.log(
                f"WARNING: revoking Vault lease {lease.lease_id} did not finish within {wait_s:g}s (Vault, or the AWS IAM/S3 "
                f"behind it, is slow or unreachable); not waiting longer: {ttl}"
            )
        elif "error" in outcome:
            self.log(f"WARNING: {outcome['error']}; {ttl}")
        else:
            self.log(f"revoked Vault lease {lease.lease_id}")
