"""Repository secrets from HashiCorp Vault, through an authenticated hvac client.

Two engines, as the credential model asks:
  - the AWS secrets engine leases short-lived S3 keys: `<aws_mount>/creds/<aws_role>` returns
    access_key, secret_key, security_token (STS roles only), lease_id and lease_duration; revoking
    the lease makes Vault delete the key in AWS at once;
  - KV v2 holds the repository cipher passphrase: `<kv_mount>/data/<kv_path>`, key cipher_pass_key.

Every Vault failure becomes a one-line CredentialsError naming Vault's address and what to fix:
sealed, permission denied, internal error, unreachable, missing secret. hvac is imported only when
a function runs, so this module costs nothing to import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rewind.errors import CredentialsError
from rewind.inventory import Cluster, VaultSettings


@dataclass(frozen=True)
class S3Lease:
    access_key: str
    secret_key: str
    security_token: str | None
    lease_id: str
    lease_duration_s: int
    renewable: bool = False  # iam_user leases are; STS (assumed_role, federation_token) ones are not

    def __repr__(self) -> str:  # never print the keys, even in a traceback
        return f"S3Lease(lease_id={self.lease_id!r}, lease_duration_s={self.lease_duration_s})"


def vault_address(client: Any) -> str:
    return getattr(client, "url", None) or getattr(getattr(client, "adapter", None), "base_uri", "") or "Vault"


@contextlib.contextmanager
def vault_errors(cluster: Cluster, what: str, address: str) -> Iterator[None]:
    """Turn hvac/requests failures into one line: which cluster, which Vault, what to fix."""
    import hvac.exceptions as hv
    import requests

    prefix = f"cluster {cluster.name!r}: Vault at {address}"
    try:
        yield
    except CredentialsError:
        raise
    except hv.VaultDown as exc:
        raise CredentialsError(f"{prefix} is sealed ({what}): unseal Vault, then re-run the task") from exc
    except hv.Forbidden as exc:
        raise CredentialsError(
            f"{prefix} denied {what} (permission denied): grant the Rewind token/AppRole a policy for it, or fix the vault connection's credentials"
        ) from exc
    except hv.InvalidPath as exc:
        raise CredentialsError(f"{prefix} has nothing at {what}: check credentials.vault in the inventory") from exc
    except hv.InvalidRequest as exc:
        raise CredentialsError(
            f"{prefix} rejected {what}: {_first_error(exc)}; check the vault connection (AppRole role_id/secret_id)"
        ) from exc
    except (hv.InternalServerError, hv.UnexpectedError, hv.BadGateway) as exc:
        raise CredentialsError(
            f"{prefix} failed {what} with an internal error ({_first_error(exc)}): check the Vault server, then re-run"
        ) from exc
    except hv.VaultError as exc:
        raise CredentialsError(f"{prefix}: {what} failed: {_first_error(exc)}") from exc
    except requests.exceptions.RequestException as exc:
        raise CredentialsError(
            f"{prefix} is unreachable ({what}: {type(exc).__name__}): check that Vault is running and the vault connection's host and port"
        ) from exc


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_cipher_pass(client: Any, cluster: Cluster, settings: VaultSettings) -> str:
    where = f"KV v2 read of {settings.kv_mount}/data/{settings.kv_path}"
    with vault_errors(cluster, where, vault_address(client)):
        response = client.secrets.kv.v2.read_secret_version(
            path=settings.kv_path, mount_point=settings.kv_mount, raise_on_deleted_version=True
        )
    value = (response.get("data") or {}).get("data", {}).get(settings.cipher_pass_key)
    if not value:
        raise CredentialsError(
            f"cluster {cluster.name!r}: Vault secret {settings.kv_mount}/{settings.kv_path} has no key "
            f"{settings.cipher_pass_key!r}: store the repository cipher passphrase there"
        )
    return str(value)


def lease_s3_keys(client: Any, cluster: Cluster, settings: VaultSettings) -> S3Lease:
    where = f"AWS credentials from {settings.aws_mount}/creds/{settings.aws_role}"
    with vault_errors(cluster, where, vault_address(client)):
        response = client.secrets.aws.generate_credentials(name=settings.aws_role, mount_point=settings.aws_mount)
    data = response.get("data") or {}
    if not data.get("access_key") or not data.get("secret_key") or not response.get("lease_id"):
        raise CredentialsError(f"cluster {cluster.name!r}: Vault returned no access_key/secret_key/lease for {where}")
    return S3Lease(
        access_key=data["access_key"],
        secret_key=data["secret_key"],
        security_token=data.get("security_token") or None,
        lease_id=response["lease_id"],
        lease_duration_s=int(response.get("lease_duration") or 0),
        renewable=bool(response.get("renewable")),
    )


def revoke_lease(client: Any, cluster: Cluster, lease_id: str) -> None:
    with vault_errors(cluster, f"revoking lease {lease_id}", vault_address(client)):
        client.sys.revoke_lease(lease_id=lease_id)


def renew_lease(client: Any, cluster: Cluster, lease_id: str) -> int:
    """Renew a lease; returns the seconds it now has left."""
    with vault_errors(cluster, f"renewing lease {lease_id}", vault_address(client)):
        response = client.sys.renew_lease(lease_id=lease_id)
    return int(response.get("lease_duration") or 0)
