"""Rewind's own error types. Every message is one line that names what to fix."""

from __future__ import annotations


class RewindError(Exception):
    """Base class: a failure Rewind understands and can explain in one line."""

    # False for refusals that are the product working as designed (a typo in the form, a rejected
    # change, a second trigger, a re-run of a finished rewind): the run fails with its message, and
    # no incident is opened nobody needs to act on.
    opens_incident: bool = True
    # False for refusals waiting cannot change (a target before the oldest backup, an unknown xid or
    # restore point, a typo in the form): the task fails at once with its one line, no retry. A
    # transient failure (S3 unreachable, a lock held) keeps the task's retries.
    retryable: bool = True


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
