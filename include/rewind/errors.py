"""Rewind's own error types. Every message is one line that names what to fix."""

from __future__ import annotations


class RewindError(Exception):
    """Base class: a failure Rewind understands and can explain in one line."""


class InventoryError(RewindError):
    """The inventory file or one cluster in it is invalid."""


class UnknownClusterError(InventoryError):
    """A cluster name that the inventory does not define."""


class ConfigDriftError(RewindError):
    """The installed pgbackrest.conf differs from what the inventory renders."""


class PreflightError(RewindError):
    """A check that runs before anything is touched failed."""


class CredentialsError(RewindError):
    """Repository credentials could not be obtained."""
