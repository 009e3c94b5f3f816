"""Single sign-on for Rewind's Airflow: the FAB auth manager's webserver_config.py for OAuth/OpenID
Connect (README "Single sign-on"). The same file serves Okta, Entra ID
and the development stack's simulator (devstack/oidc_sim.py): everything that differs is in the
environment of the API server (and of every `airflow` command, which reads this file too).

Point Airflow at it with  AIRFLOW__FAB__CONFIG_FILE=/opt/rewind/config/webserver_config.py
(or copy it to $AIRFLOW_HOME/webserver_config.py). Airflow silently ignores a missing file and then
falls back to password logins: check that the login page offers only "Sign In with <provider>".

    REWIND_OIDC_ISSUER          the IdP's issuer; its discovery document is
                                <issuer>/.well-known/openid-configuration. https (loopback may be http)
                                  Okta:     https://<org>.okta.com/oauth2/default   (an authorization server)
                                  Entra ID: https://login.microsoftonline.com/<tenant id>/v2.0
    REWIND_OIDC_CLIENT_ID       the application (client) registered at the IdP
    REWIND_OIDC_CLIENT_SECRET   its client secret (a web application: confidential client)
    REWIND_OIDC_PROVIDER        the provider's name in the redirect URI and on the sign-in button
                                (default oidc): redirect URI https://<airflow>/auth/oauth-authorized/<name>
    REWIND_OIDC_SCOPE           default "openid email profile"; Okta's org server with its groups
                                claim: "openid email profile groups"
    REWIND_OIDC_EMAIL_CLAIM     the claim that becomes the Airflow username (default email)
    REWIND_OIDC_EMAIL_VERIFIED_CLAIM  the claim saying the IdP verified that email (default
                                email_verified); absent or false refuses the sign-in. Entra ID
                                sends none by default: add an optional claim and name it here
    REWIND_OIDC_GROUPS_CLAIM    the claim listing the person's groups (default groups; Entra ID app
                                roles: roles)
    REWIND_SSO_ROLE_MAPPING     JSON {group: [role, ...]}, default DEFAULT_ROLE_MAPPING below
    REWIND_SSO_API_USERS        comma-separated local accounts that may still get a REST token with a
                                password (the `airflow_api` connection's user); nobody else can

Nothing here falls back to a password login: a missing setting stops the API server with its name.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from flask_appbuilder.const import AUTH_OAUTH

from rewind.roles import ROLES
from rewind_airflow.sso import RewindSecurityManager

# IdP group -> Airflow roles. Everyone with a Rewind group also gets Viewer (AUTH_USER_REGISTRATION_ROLE).
DEFAULT_ROLE_MAPPING = {
    "rewind-dba": ["DBA", "Viewer"],
    "rewind-backup-operators": ["BackupOperator", "Viewer"],
    "rewind-auditors": ["Viewer"],
    "rewind-airflow-admins": ["Admin"],
}
# Airflow's built-in User and Op roles may trigger every DAG, the PITR included: never mapped.
MAPPABLE_ROLES = {"Admin", "Viewer", *ROLES}


class SsoConfigError(RuntimeError):
    pass


def _setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or not value.strip():
        raise SsoConfigError(f"config/webserver_config.py: set {name} (README 'Single sign-on'); password logins are off")
    return value.strip()


def _issuer() -> str:
    issuer = _setting("REWIND_OIDC_ISSUER").rstrip("/")
    parts = urlsplit(issuer)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise SsoConfigError(f"config/webserver_config.py: REWIND_OIDC_ISSUER {issuer!r} must be an https URL")
    return issuer


def _role_mapping() -> dict[str, list[str]]:
    raw = os.environ.get("REWIND_SSO_ROLE_MAPPING", "").strip()
    if not raw:
        return {group: list(roles) for group, roles in DEFAULT_ROLE_MAPPING.items()}
    try:
        mapping = json.loads(raw)
    except ValueError as error:
        raise SsoConfigError(f"config/webserver_config.py: REWIND_SSO_ROLE_MAPPING is not JSON: {error}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise SsoConfigError('config/webserver_config.py: REWIND_SSO_ROLE_MAPPING must be {"group": ["Role", ...], ...}')
    for group, roles in mapping.items():
        if not isinstance(roles, list) or not roles or not all(isinstance(role, str) for role in roles):
            raise SsoConfigError(f"config/webserver_config.py: REWIND_SSO_ROLE_MAPPING[{group!r}] must be a non-empty list of role names")
        unknown = sorted(set(roles) - MAPPABLE_ROLES)
        if unknown:
            raise SsoConfigError(
                f"config/webserver_config.py: REWIND_SSO_ROLE_MAPPING[{group!r}] names {unknown}: map groups to {sorted(MAPPABLE_ROLES)} only"
            )
    return mapping


ISSUER = _issuer()
PROVIDER = _setting("REWIND_OIDC_PROVIDER", "oidc")

AUTH_TYPE = AUTH_OAUTH  # the login page offers the IdP only; no password form
SECURITY_MANAGER_CLASS = RewindSecurityManager
OAUTH_PROVIDERS = [
    {
        "name": PROVIDER,
        "icon": "fa-key",
        "token_key": "access_token",  # authlib's token response (FAB's default key is OAuth 1's)
        "remote_app": {
            "client_id": _setting("REWIND_OIDC_CLIENT_ID"),
            "client_secret": _setting("REWIND_OIDC_CLIENT_SECRET"),
            # endpoints, JWKS and issuer from discovery; authlib verifies the id_token against them
            "server_metadata_url": f"{ISSUER}/.well-known/openid-configuration",
            "client_kwargs": {
                "scope": _setting("REWIND_OIDC_SCOPE", "openid email profile"),
                "code_challenge_method": "S256",  # PKCE on every authorization code
            },
        },
    }
]
# Roles come from the IdP's groups at every sign-in: removed from a group, a person loses its roles
# at their next sign-in (and a person in none of the mapped groups is refused).
AUTH_ROLES_MAPPING = _role_mapping()
AUTH_ROLES_SYNC_AT_LOGIN = True
AUTH_USER_REGISTRATION = True  # a person in a mapped group gets an account at their first sign-in
AUTH_USER_REGISTRATION_ROLE = "Viewer"

# read by RewindSecurityManager
REWIND_SSO = {
    "issuer": ISSUER,
    "email_claim": _setting("REWIND_OIDC_EMAIL_CLAIM", "email"),
    "email_verified_claim": _setting("REWIND_OIDC_EMAIL_VERIFIED_CLAIM", "email_verified"),
    "groups_claim": _setting("REWIND_OIDC_GROUPS_CLAIM", "groups"),
    "api_users": sorted({name.strip() for name in os.environ.get("REWIND_SSO_API_USERS", "").split(",") if name.strip()}),
}
