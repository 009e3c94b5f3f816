"""Who triggered a run, as a person: the Airflow user of the DAG run, their e-mail address and the
authentication methods the IdP asserted for the session (`amr`), then the ServiceNow user with that
address (rewind.change_control.find_person).

Where the identity comes from: with single sign-on (config/webserver_config.py) the FAB username
is the IdP's e-mail address and each login records {"email", "amr", "login_at", "idp"} in the
Airflow Variable `rewind_identity__<username>`; without it, an administrator registers that
Variable for a local user (README, "Who asked"). A username that is an e-mail address is one.
"""

from __future__ import annotations

import re

from rewind.change_control import Person, find_person
from rewind.servicenow import ServiceNowClient


def identity_key(username: str) -> str:
    return "rewind_identity__" + re.sub(r"[^a-z0-9_]", "_", username.lower())


def identity_of(username: str) -> dict | None:
    """The identity recorded for an Airflow user, or None."""
    from airflow.sdk import Variable

    try:
        value = Variable.get(identity_key(username), default=None, deserialize_json=True)
    except Exception:  # an unreadable record is no record: the caller refuses with its own message
        return None
    return value if isinstance(value, dict) else None


def requester_of(context, client: ServiceNowClient) -> Person:
    """The person who triggered this run, or RequesterUnknown (one line, nothing touched)."""
    username = getattr(context["dag_run"], "triggering_user_name", None) or ""
    record = identity_of(username) if username else None
    email = (record or {}).get("email") or (username if "@" in username else None)
    amr = tuple((record or {}).get("amr") or ())
    return find_person(client, airflow_user=username or None, email=email, amr=amr)
