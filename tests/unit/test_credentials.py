import pytest

from rewind.credentials import repository_secrets
from rewind.errors import CredentialsError
from tests.factories import cluster as make_cluster


def cluster(source="env", cipher="aes-256-cbc"):
    return make_cluster(repo={"cipher_type": cipher}, credentials={"source": source, "env_prefix": "REWIND_LEDGER_"})


def test_env_source_maps_to_pgbackrest_variables():
    environ = {"REWIND_LEDGER_S3_KEY": "AK", "REWIND_LEDGER_S3_KEY_SECRET": "SK", "REWIND_LEDGER_CIPHER_PASS": "CP", "OTHER": "x"}
    assert repository_secrets(cluster(), environ) == {
        "PGBACKREST_REPO1_S3_KEY": "AK",
        "PGBACKREST_REPO1_S3_KEY_SECRET": "SK",
        "PGBACKREST_REPO1_CIPHER_PASS": "CP",
    }
    environ["REWIND_LEDGER_S3_TOKEN"] = "TOK"
    assert repository_secrets(cluster(), environ)["PGBACKREST_REPO1_S3_TOKEN"] == "TOK"


def test_missing_variables_are_named():
    with pytest.raises(CredentialsError, match="set REWIND_LEDGER_S3_KEY_SECRET, REWIND_LEDGER_CIPHER_PASS"):
        repository_secrets(cluster(), {"REWIND_LEDGER_S3_KEY": "AK"})


def test_auto_source_needs_only_the_cipher_passphrase():
    assert repository_secrets(cluster("auto"), {"REWIND_LEDGER_CIPHER_PASS": "CP"}) == {"PGBACKREST_REPO1_CIPHER_PASS": "CP"}
    assert repository_secrets(cluster("auto", "none"), {}) == {}
