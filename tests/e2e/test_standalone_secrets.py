"""After the backup and PITR runs of this package (real task processes, repository secrets leased
from Vault by the hashicorp provider): every lease was revoked, and no secret value is in any task
log file, or any other file, under the Airflow home."""

from __future__ import annotations

import pytest

from tests.integration.test_vault import files_containing, vault_iam_users

pytestmark = pytest.mark.e2e


def test_the_runs_leased_revoked_and_logged_no_secret(standalone, demo_stack, vault):
    leases = vault.leases()
    assert len(leases) >= 6, "the backup and PITR runs should have leased credentials per task"
    assert [lease.public() for lease in leases if lease.revoked_by != "request"] == []
    assert vault_iam_users(demo_stack) == []
    logs = list((standalone.home / "logs").rglob("*.log")) + list((standalone.home / "logs").rglob("*.json"))
    assert any("revoked Vault lease" in p.read_text(errors="replace") for p in logs), "no task log mentions a revocation"
    secrets = [*vault.state.issued_values, demo_stack.cipher_pass, vault.approle[1]]
    assert files_containing([standalone.home], secrets) == []
