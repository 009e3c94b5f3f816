"""Rewind's Airflow assets: one definition, used by the producing and the consuming DAGs."""

from __future__ import annotations

from airflow.sdk import Asset

from rewind.inventory import Cluster


def backup_asset(cluster: Cluster) -> Asset:
    """Updated after every successful backup of the stanza; the verify DAG is scheduled on it.

    The URI is where the stanza's backups live, which is unique per cluster (the inventory refuses
    two clusters writing one stanza into one repository); the stanza name alone is not.
    """
    repo = cluster.repo
    return Asset(name=f"rewind_backup__{cluster.name}", uri=f"s3://{repo.bucket}{repo.path}/backup/{cluster.stanza}", group="rewind")
