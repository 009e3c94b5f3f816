"""Fixtures of the unit tier: nothing here needs root, a postgres OS user, a network service or a
database. Clusters keep their state under tmp_path; ServiceNow is an in-memory fake."""

from __future__ import annotations

import pytest

from rewind.inventory import Cluster
from tests.factories import local_cluster
from tests.fakes import FakeServiceNow


@pytest.fixture
def ledger(tmp_path) -> Cluster:
    """Cluster `ledger` with its durable state (guard, journals, holds) under tmp_path."""
    return local_cluster(tmp_path)


@pytest.fixture
def fake_servicenow() -> FakeServiceNow:
    return FakeServiceNow()
