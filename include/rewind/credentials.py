"""Repository credentials for one cluster, as the environment of the pgbackrest child process.

The values go into `PGBACKREST_REPO1_*` variables and nowhere else: not pgbackrest.conf, not argv,
not a log line. Sources: `env` (the worker's own environment, under the cluster's prefix) and
`auto` (S3 keys from the instance role via repo1-s3-key-type=auto; only the cipher passphrase from
the environment). Vault-leased credentials are a further source (issue 5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rewind.errors import CredentialsError
from rewind.inventory import Cluster


def repository_secrets(cluster: Cluster, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    prefix = cluster.credentials.env_prefix
    wanted: dict[str, tuple[str, bool]] = {}  # pgbackrest variable -> (source variable, required)
    if cluster.credentials.source == "env":
        wanted["PGBACKREST_REPO1_S3_KEY"] = (f"{prefix}S3_KEY", True)
        wanted["PGBACKREST_REPO1_S3_KEY_SECRET"] = (f"{prefix}S3_KEY_SECRET", True)
        wanted["PGBACKREST_REPO1_S3_TOKEN"] = (f"{prefix}S3_TOKEN", False)
    if cluster.repo.cipher_type != "none":
        wanted["PGBACKREST_REPO1_CIPHER_PASS"] = (f"{prefix}CIPHER_PASS", True)

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
