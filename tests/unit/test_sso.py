"""Single sign-on without a browser: who an id_token names (rewind.sso), what a login records, and
config/webserver_config.py's refusals (README "Single sign-on"). The browser test signs real people
in: tests/browser/test_sso.py."""

from __future__ import annotations

import importlib.util

import pytest

from rewind.sso import IdentityError, login_record, oidc_userinfo
from rewind_airflow.identity import identity_key

ISSUER = "https://acme.okta.com/oauth2/default"
CLAIMS = {
    "iss": ISSUER,
    "sub": "00u1abcd",
    "email": "Dana.Smith@Example.com",
    "email_verified": True,
    "name": "Dana Smith",
    "groups": ["rewind-dba", "everyone"],
    "amr": ["pwd", "mfa", "otp"],
    "auth_time": 1795832405,
}


def test_the_username_is_the_email_lower_cased_and_the_groups_are_the_role_keys():
    info = oidc_userinfo(CLAIMS, issuer=ISSUER + "/")
    assert (info["username"], info["email"], info["first_name"], info["last_name"]) == (
        "dana.smith@example.com",
        "dana.smith@example.com",
        "Dana",
        "Smith",
    )
    assert info["role_keys"] == ["rewind-dba", "everyone"] and info["amr"] == ["pwd", "mfa", "otp"]
    # the Variable requester_of reads for this person (main's key: lower case, other characters as _)
    assert identity_key(info["username"]) == "rewind_identity__dana_smith_example_com"


def test_entra_id_app_roles_as_the_groups_claim_and_a_single_string():
    info = oidc_userinfo({**CLAIMS, "roles": "rewind-dba"}, issuer=ISSUER, groups_claim="roles")
    assert info["role_keys"] == ["rewind-dba"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"iss": "https://evil.example"}, "is not the configured issuer"),
        ({"sub": ""}, "no subject"),
        ({"email": None}, "is not an email address"),
        ({"email": "dana"}, "is not an email address"),
        ({"email": " dana@example.com"}, "is not an email address"),
        ({"email_verified": False}, r"does not say the email Dana.Smith@Example.com is verified \(claim 'email_verified' is False\)"),
        ({"email_verified": None}, "does not say the email .* is verified"),  # absent
        ({"email_verified": "false"}, "does not say the email .* is verified"),
        ({"email_verified": "yes please"}, "does not say the email .* is verified"),
        ({"groups": [1, 2]}, "'groups'"),
    ],
)
def test_a_token_that_cannot_name_a_person_is_refused_with_one_line(change, message):
    claims = {k: v for k, v in {**CLAIMS, **change}.items() if v is not None or k != "email_verified"}
    with pytest.raises(IdentityError, match=message):
        oidc_userinfo(claims, issuer=ISSUER)


def test_an_idp_whose_verified_claim_has_another_name_is_read_by_that_name():
    claims = {k: v for k, v in CLAIMS.items() if k != "email_verified"}
    assert oidc_userinfo({**claims, "xms_edov": "true"}, issuer=ISSUER, verified_claim="xms_edov")["email"] == "dana.smith@example.com"


def test_the_login_record_holds_email_amr_idp_and_login_time():
    info = oidc_userinfo(CLAIMS, issuer=ISSUER)
    record = login_record(info, mapped_groups=["rewind-dba"], roles=["Viewer", "DBA"], now=1795832406)
    assert record == {
        "username": "dana.smith@example.com",
        "email": "dana.smith@example.com",
        "name": "Dana Smith",
        "idp": ISSUER,
        "sub": "00u1abcd",
        "amr": ["pwd", "mfa", "otp"],
        "mfa": True,
        "acr": None,
        "auth_time": "2026-11-28T02:20:05Z",
        "login_at": "2026-11-28T02:20:06Z",
        "groups": ["rewind-dba"],
        "roles": ["DBA", "Viewer"],
    }


def test_no_amr_from_the_idp_is_recorded_as_unknown_not_as_no_mfa():
    info = oidc_userinfo({k: v for k, v in CLAIMS.items() if k != "amr"}, issuer=ISSUER)
    record = login_record(info, mapped_groups=[], roles=["Viewer"], now=0)
    assert record["amr"] is None and record["mfa"] is None


# --- config/webserver_config.py ------------------------------------------------------------------

CONFIG = importlib.util.find_spec("rewind").submodule_search_locations[0] + "/../../config/webserver_config.py"
ENV = {
    "REWIND_OIDC_ISSUER": ISSUER,
    "REWIND_OIDC_CLIENT_ID": "0oa-rewind",
    "REWIND_OIDC_CLIENT_SECRET": "s3cret",
}


def load_config(monkeypatch, **env):
    for name in [*ENV, "REWIND_SSO_ROLE_MAPPING", "REWIND_SSO_API_USERS", "REWIND_OIDC_SCOPE"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**ENV, **env}.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("rewind_webserver_config_under_test", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_is_oauth_only_with_pkce_and_roles_synced_at_every_login(monkeypatch):
    from flask_appbuilder.const import AUTH_OAUTH

    config = load_config(monkeypatch, REWIND_SSO_API_USERS="airflow-api, admin")
    assert config.AUTH_TYPE == AUTH_OAUTH and config.AUTH_ROLES_SYNC_AT_LOGIN is True
    [provider] = config.OAUTH_PROVIDERS
    remote = provider["remote_app"]
    assert remote["server_metadata_url"] == f"{ISSUER}/.well-known/openid-configuration"
    assert remote["client_kwargs"]["code_challenge_method"] == "S256"
    assert config.AUTH_ROLES_MAPPING["rewind-dba"] == ["DBA", "Viewer"]
    assert config.REWIND_SSO["api_users"] == ["admin", "airflow-api"]


@pytest.mark.parametrize(
    "env,message",
    [
        ({"REWIND_OIDC_CLIENT_SECRET": None}, "set REWIND_OIDC_CLIENT_SECRET"),
        ({"REWIND_OIDC_ISSUER": "http://idp.example.com"}, "must be an https URL"),
        ({"REWIND_SSO_ROLE_MAPPING": '{"everyone": ["Op"]}'}, r"names \['Op'\]"),
        ({"REWIND_SSO_ROLE_MAPPING": "{"}, "is not JSON"),
    ],
)
def test_a_bad_setting_stops_the_api_server_naming_it(monkeypatch, env, message):
    with pytest.raises(RuntimeError, match=message):
        load_config(monkeypatch, **env)


def test_the_local_stacks_servicenow_page_names_each_changes_requester():
    """The local stack with --sso: a DBA signs in through the IdP, triggers a PITR, and the change on
    the simulator's page names them (what README "Single sign-on" tells people to look for)."""
    from devstack.servicenow_sim import SimState, _page

    state = SimState()
    dba = state.user("dba.oncall")
    state.create_change("normal", {"short_description": "Rewind PITR: restore demo", "requested_by": dba["sys_id"]})
    assert "<td>DBA On-Call &lt;dba.oncall@example.com&gt;</td>" in _page(state)
