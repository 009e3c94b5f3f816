"""Single sign-on's claims, as plain Python (no Airflow, no FAB): who an OpenID Connect login is,
and what it records (README "Single sign-on").

With config/webserver_config.py (FAB auth manager, OAuth/OIDC) a person's Airflow username is the
e-mail address their identity provider asserted, lower-cased; every sign-in through the IdP writes
the Airflow Variable rewind_airflow.identity.identity_key(username) (JSON), replacing the previous
one, which rewind_airflow.identity.requester_of reads when that person triggers a run:

    {"username": "dana@example.com",         the Airflow username (= email)
     "email": "dana@example.com",            the IdP's email claim
     "name": "Dana Smith",                   the IdP's name claim ("" when absent)
     "idp": "https://acme.okta.com/oauth2/default",   the id_token's issuer
     "sub": "00u1abcd...",                   the person's subject at that issuer (never reused by it)
     "amr": ["pwd", "mfa", "otp"],           the id_token's amr claim, or null when the IdP sent none
     "mfa": true,                            "mfa" in amr; null when the IdP asserted no amr
     "acr": null,                            the id_token's acr claim, or null
     "auth_time": "2026-11-24T02:10:05Z",    when the person authenticated at the IdP, or null
     "login_at": "2026-11-24T02:10:06Z",     when Airflow accepted the login
     "groups": ["rewind-dba"],               the person's groups that AUTH_ROLES_MAPPING knows
     "roles": ["DBA", "Viewer"]}             the Airflow roles this login gave

It is the person's LAST sign-in: a second browser session signed in later replaces it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any


class IdentityError(Exception):
    """An IdP's answer that cannot name a person: the sign-in is refused with this message."""


def _utc(seconds: Any) -> str | None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strings(value: Any) -> list[str] | None:
    """A claim that should be a list of strings (amr, groups): a single string counts as one item."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise IdentityError(f"claim is neither a string nor a list of strings: {value!r}")


def oidc_userinfo(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    email_claim: str = "email",
    groups_claim: str = "groups",
    verified_claim: str = "email_verified",
) -> dict[str, Any]:
    """FAB's userinfo from the verified id_token claims (plus userinfo's, for the groups): the username
    is the email, lower-cased; `role_keys` are the groups (AUTH_ROLES_MAPPING's keys). Refuses a
    token from another issuer, without a subject or an email, or whose email the IdP says is not
    verified."""
    iss = str(claims.get("iss") or "").rstrip("/")
    if iss != issuer.rstrip("/"):
        raise IdentityError(f"id_token issuer {iss!r} is not the configured issuer {issuer!r}")
    if not claims.get("sub"):
        raise IdentityError("id_token has no subject (sub)")
    email = claims.get(email_claim)
    if not isinstance(email, str) or "@" not in email or email != email.strip():
        raise IdentityError(f"id_token claim {email_claim!r} is not an email address: {email!r}")
    # The username is the email: only an address the IdP vouches for names a person. Absent is
    # not verified (an IdP that lets people type any address sends none).
    verified = claims.get(verified_claim)
    if not (verified is True or (isinstance(verified, str) and verified.strip().lower() == "true")):
        raise IdentityError(
            f"the IdP does not say the email {email} is verified (claim {verified_claim!r} is {verified!r}): "
            "sign-in refused; the IdP must send it true (REWIND_OIDC_EMAIL_VERIFIED_CLAIM names another claim)"
        )
    try:
        groups = _strings(claims.get(groups_claim)) or []
    except IdentityError as error:
        raise IdentityError(f"id_token claim {groups_claim!r}: {error}") from None
    name = claims.get("name") if isinstance(claims.get("name"), str) else ""
    given, family = claims.get("given_name"), claims.get("family_name")
    if not isinstance(given, str) or not isinstance(family, str):
        given, _, family = name.partition(" ")
    return {
        "username": email.lower(),
        "email": email.lower(),
        "first_name": given,
        "last_name": family,
        "role_keys": groups,
        "name": name,
        "sub": str(claims["sub"]),
        "idp": iss,
        "amr": claims.get("amr"),
        "acr": claims.get("acr"),
        "auth_time": claims.get("auth_time"),
    }


def login_record(userinfo: Mapping[str, Any], *, mapped_groups: Iterable[str], roles: Iterable[str], now: float) -> dict[str, Any]:
    """The Variable's value for one accepted sign-in (from oidc_userinfo's result)."""
    try:
        amr = _strings(userinfo.get("amr"))
    except IdentityError:
        amr = None
    return {
        "username": userinfo["username"],
        "email": userinfo["email"],
        "name": userinfo.get("name") or "",
        "idp": userinfo["idp"],
        "sub": userinfo["sub"],
        "amr": amr,
        "mfa": None if amr is None else "mfa" in amr,
        "acr": userinfo.get("acr") if isinstance(userinfo.get("acr"), str) else None,
        "auth_time": _utc(userinfo.get("auth_time")),
        "login_at": _utc(now),
        "groups": sorted(set(mapped_groups)),
        "roles": sorted(set(roles)),
    }
