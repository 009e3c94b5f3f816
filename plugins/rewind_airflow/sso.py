"""The FAB security manager of Rewind's single sign-on (config/webserver_config.py sets it as
SECURITY_MANAGER_CLASS; README "Single sign-on"). It runs in the API server, which has the
metadata database.

On every sign-in through the identity provider:
- the person is the verified id_token (authlib checked its signature against the IdP's JWKS, its
  issuer, audience, expiry and nonce; the code was redeemed with PKCE): username = email, lower-cased;
  groups from the configured claim (from userinfo when the id_token leaves it out);
- nobody in none of the mapped groups signs in, and an existing account of such a person loses
  every role; everybody else gets exactly the roles their groups map to (AUTH_ROLES_SYNC_AT_LOGIN);
- an email already recorded for another IdP subject is refused (an address handed to a new person,
  or an IdP account that set someone else's address): an Admin deletes the old
  identity Variable (rewind_airflow.identity.identity_key) first;
- the local REST service accounts (`REWIND_SSO_API_USERS`) cannot be signed into through the IdP;
- the Variable rewind_airflow.identity.identity_key(username) is written (rewind.sso.login_record),
  which rewind_airflow.identity.requester_of reads when the person triggers a run.

And there is no password login for people: a password is accepted (POST /auth/token, the only
place left that takes one) for the REST service accounts only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from airflow.providers.fab.auth_manager.security_manager.override import FabAirflowSecurityManagerOverride
from flask import current_app

from rewind.sso import IdentityError, login_record, oidc_userinfo
from rewind_airflow.identity import identity_key

log = logging.getLogger(__name__)

CONFIG_KEY = "REWIND_SSO"  # set by webserver_config.py: {"issuer", "email_claim", "groups_claim", "api_users"}


class RewindSecurityManager(FabAirflowSecurityManagerOverride):
    @property
    def rewind_sso(self) -> dict[str, Any]:
        return current_app.config[CONFIG_KEY]

    # ---- the IdP's answer -> the person ---------------------------------------------------------------
    def get_oauth_user_info(self, provider: str, resp: dict[str, Any]) -> dict[str, Any]:
        settings = self.rewind_sso
        claims = resp.get("userinfo")  # the id_token's claims, verified by authlib; absent without one
        if not claims:
            raise IdentityError(f"{provider}: the IdP's answer holds no verified id_token (is 'openid' in REWIND_OIDC_SCOPE?)")
        claims = dict(claims)
        groups_claim = settings["groups_claim"]
        if groups_claim not in claims:
            extra = self.oauth_remotes[provider].userinfo(token=resp)
            if extra.get("sub") == claims.get("sub") and groups_claim in extra:
                claims[groups_claim] = extra[groups_claim]
        return oidc_userinfo(
            claims,
            issuer=settings["issuer"],
            email_claim=settings["email_claim"],
            groups_claim=groups_claim,
            verified_claim=settings.get("email_verified_claim", "email_verified"),
        )

    def auth_user_oauth(self, userinfo, rotate_session_id=True):
        username = userinfo.get("username")
        if not username or username in self.rewind_sso["api_users"]:
            log.warning("SSO sign-in refused: %r is a local service account or empty", username)
            return None
        previous = self._identity(username)
        if previous and (previous.get("idp"), previous.get("sub")) != (userinfo["idp"], userinfo["sub"]):
            log.warning(
                "SSO sign-in refused: %s is recorded for subject %s at %s, this login is subject %s at %s; "
                "an Admin deletes the Variable %s if the address really changed hands",
                username,
                previous.get("sub"),
                previous.get("idp"),
                userinfo["sub"],
                userinfo["idp"],
                identity_key(username),
            )
            return None
        mapped = sorted(group for group in userinfo.get("role_keys", []) if group in self.auth_roles_mapping)
        if not self.get_roles_from_keys(mapped):
            existing = self.find_user(username=username)
            if existing is not None and existing.roles:
                existing.roles = []
                self.update_user(existing)
                self._forget_cached_user(existing)
            log.warning(
                "SSO sign-in refused: %s is in none of the groups AUTH_ROLES_MAPPING maps (%s)", username, sorted(self.auth_roles_mapping)
            )
            return None
        user = super().auth_user_oauth(userinfo, rotate_session_id=rotate_session_id)
        if user is None:
            return None
        self._forget_cached_user(user)
        record = login_record(userinfo, mapped_groups=mapped, roles=[role.name for role in user.roles], now=time.time())
        self._record_identity(username, record)
        log.info("SSO sign-in: %s (roles %s, amr %s, idp %s)", username, record["roles"], record["amr"], record["idp"])
        return user

    # ---- passwords: the REST service accounts only -------------------------------------------------------
    def auth_user_db(self, username, password, rotate_session_id=True):
        if username not in self.rewind_sso["api_users"]:
            log.warning("password login refused for %r: with SSO only REWIND_SSO_API_USERS sign in with a password", username)
            return None
        return super().auth_user_db(username, password, rotate_session_id=rotate_session_id)

    # ---- the identity record ---------------------------------------------------------------------------
    def _identity(self, username: str) -> dict | None:
        """The recorded identity, read from the metadata database (where _record_identity writes it)
        in FAB's session: Variable.get would open and close the same scoped session mid-login."""
        from airflow.models import Variable
        from sqlalchemy import select

        found = self.session.scalar(select(Variable).where(Variable.key == identity_key(username)).limit(1))
        try:
            value = json.loads(found.val) if found is not None else None
        except (TypeError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _record_identity(self, username: str, record: dict) -> None:
        from airflow.models import Variable

        # In FAB's own session (the login's), committed with it: a separate session would close
        # the scoped session the login is still using.
        Variable.set(
            identity_key(username),
            record,
            description=f"Rewind SSO: the last sign-in of {username} through the identity provider (written at every sign-in)",
            serialize_json=True,
            session=self.session,
        )
        self.session.commit()

    @staticmethod
    def _forget_cached_user(user) -> None:
        """The API server caches each token's user with its roles for [fab] cache_ttl seconds: the
        roles this login synced count from now on in this process (other API server workers
        within cache_ttl)."""
        from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

        FabAuthManager.cache.pop(user.id, None)
