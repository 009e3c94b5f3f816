"""Vault client logic (rewind.vault, RepositoryCredentials) against the Vault simulator over HTTP,
and the inventory's credentials.vault validation."""

from __future__ import annotations

import hvac
import pytest

from devstack.net import free_port
from devstack.vault_sim import VaultSimulator, VaultState
from rewind.credentials import CIPHER_PASS, RepositoryCredentials
from rewind.errors import CredentialsError
from rewind.vault import read_cipher_pass
from tests.factories import cluster_doc, inventory
from tests.fakes import stop_soon

VAULT = {"source": "vault", "vault": {"aws_role": "rewind-ledger", "kv_path": "rewind/ledger"}}


@pytest.fixture
def cluster():
    return inventory({"ledger": cluster_doc(credentials=VAULT)}).get("ledger")


@pytest.fixture
def vault():
    state = VaultState()
    state.put_kv("secret", "rewind/ledger", {"cipher_pass": "correct horse battery staple"})
    state.add_policy("rewind", ["secret/data/rewind/ledger"])
    simulator = VaultSimulator(state).start()
    yield simulator
    stop_soon(simulator)


def client(vault, token=None) -> hvac.Client:
    return hvac.Client(url=vault.url, token=token or vault.state.root_token)


def test_the_passphrase_comes_from_kv_v2(vault, cluster):
    assert read_cipher_pass(client(vault), cluster, cluster.credentials.vault) == "correct horse battery staple"


def test_postmaster_gets_the_passphrase_and_the_instance_role_by_default(vault, cluster):
    credentials = RepositoryCredentials(cluster, environ={}, vault_client=lambda: client(vault))
    assert credentials.postmaster_secrets() == {
        "PGBACKREST_REPO1_S3_KEY_TYPE": "auto",
        CIPHER_PASS: "correct horse battery staple",
    }


@pytest.mark.parametrize(
    "mode, message",
    [
        ("sealed", "Vault at http://127.0.0.1:{port} is sealed (KV v2 read of secret/data/rewind/ledger): unseal Vault"),
        ("forbidden", "denied KV v2 read of secret/data/rewind/ledger (permission denied)"),
        ("error", "failed KV v2 read of secret/data/rewind/ledger with an internal error (internal error)"),
    ],
)
def test_each_vault_failure_is_one_line_naming_vault_and_the_fix(vault, cluster, mode, message):
    vault.set_mode(mode)
    with pytest.raises(CredentialsError) as raised:
        read_cipher_pass(client(vault), cluster, cluster.credentials.vault)
    text = str(raised.value)
    assert text.startswith("cluster 'ledger': ") and "\n" not in text
    assert message.format(port=vault.port) in text


def test_a_token_without_the_policy_is_denied(vault, cluster):
    token = vault.state.create_token(["nothing"])
    with pytest.raises(CredentialsError, match="permission denied"):
        read_cipher_pass(client(vault, token), cluster, cluster.credentials.vault)


def test_a_missing_key_names_where_to_store_it(vault, cluster):
    vault.state.put_kv("secret", "rewind/ledger", {"other": "x"})
    with pytest.raises(CredentialsError, match="has no key 'cipher_pass': store the repository cipher passphrase there"):
        read_cipher_pass(client(vault), cluster, cluster.credentials.vault)


def test_vault_down_is_unreachable(cluster):
    down = hvac.Client(url=f"http://127.0.0.1:{free_port()}", token="x")
    with pytest.raises(CredentialsError, match=r"is unreachable \(KV v2 read .*: ConnectionError\): check that Vault is running"):
        read_cipher_pass(down, cluster, cluster.credentials.vault)


def test_no_lease_no_revocation(vault, cluster):
    credentials = RepositoryCredentials(cluster, environ={}, vault_client=lambda: client(vault))
    credentials.release()  # nothing leased: nothing to do, no error
    assert vault.state.requests == []


@pytest.mark.parametrize(
    "credentials, message",
    [
        ({"source": "vault"}, "field credentials: source is 'vault' but the vault section (aws_role, kv_path, ...) is missing"),
        ({"source": "env", "vault": VAULT["vault"]}, "a vault section is set but source is 'env'"),
        (
            {"source": "vault", "vault": {"aws_role": "../sys", "kv_path": "x"}},
            "field credentials.vault.aws_role: '../sys' must be a Vault path",
        ),
        ({"source": "vault", "vault": {"aws_role": "r", "kv_path": "a/b?x=1"}}, "must be a Vault path"),
    ],
)
def test_inventory_vault_settings_are_validated(credentials, message):
    loaded = inventory({"ledger": cluster_doc(credentials=credentials)})
    assert message in loaded.errors["ledger"]
