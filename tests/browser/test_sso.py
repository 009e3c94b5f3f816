"""Single sign-on in a real browser (README "Single sign-on"): Debian's chromium, driven by
playwright, signs people in to Airflow through the OIDC simulator (authorization code with PKCE, an
RS256 id_token from its JWKS with `groups`, `email` and `amr`) with the unchanged
config/webserver_config.py, and presses the PITR's Trigger button.

  dba.oncall    group rewind-dba       -> DBA + Viewer: the Trigger button creates the run; the
                                          login recorded the identity (email, amr, idp) a run's
                                          requester is resolved from
  ops.outsider  group rewind-auditors  -> Viewer: the Trigger button is refused by the API (403)
  dba.oncall moved to rewind-auditors at the IdP -> Viewer at the next sign-in: refused too

One test on purpose (one Airflow, one browser, a few sign-ins): every screenshot is kept in the
directory printed at the start.
"""

from __future__ import annotations

import json

import pytest
import requests

from rewind_airflow.identity import identity_key

pytestmark = pytest.mark.e2e

PITR = "rewind_pitr__demo"
REASON = "browser test: the demo ledger lost rows at 02:13"


def sign_in(browser, airflow, oidc, username: str, shots, step: str):
    """A new browser (no cookies: no Airflow session, and the simulator keeps no IdP session) that
    signs in through the IdP's form and lands on the PITR's page (where the UI itself would send a
    stranger, by way of this login page)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.goto(f"{airflow.url}/auth/login/?next=/dags/{PITR}")
    page.get_by_text("Sign In with oidc").wait_for()
    assert page.locator("input[type=password]").count() == 0  # no password form: the IdP only
    shots(page, f"{step}-1-airflow-login")
    with page.expect_request(lambda r: r.url.startswith(f"{oidc.url}/authorize")) as authorize:
        page.get_by_text("Sign In with oidc").click()
    assert "code_challenge_method=S256" in authorize.value.url and "code_challenge=" in authorize.value.url
    page.fill("#username", username)
    page.fill("#password", oidc.state.users[username].password)
    shots(page, f"{step}-2-idp-login")
    page.click("#sign-in")
    page.wait_for_url(f"{airflow.url}/dags/{PITR}")
    page.get_by_role("button", name="Trigger").wait_for()
    shots(page, f"{step}-3-signed-in")
    return context, page


def press_trigger(page, shots, step: str) -> int:
    """Fill the PITR's form (a time target, a reason) and press Trigger: the API's answer's status."""
    page.get_by_role("button", name="Trigger").click()
    page.fill("#element_target", "2026-11-24 02:13:30+00")
    page.fill("#element_reason", REASON)
    shots(page, f"{step}-4-trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/api/v2/dags/{PITR}/dagRuns")) as answer:
        page.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_timeout(500)  # the toast
    shots(page, f"{step}-5-after-trigger")
    return answer.value.status


def identity(airflow, email: str) -> dict:
    response = airflow.api("GET", f"/variables/{identity_key(email)}")
    response.raise_for_status()
    return json.loads(response.json()["value"])


def runs(airflow) -> list[dict]:
    return airflow.api("GET", f"/dags/{PITR}/dagRuns").json()["dag_runs"]


def test_people_sign_in_through_the_idp_and_their_groups_decide_who_may_rewind(sso_airflow, oidc, browser, artifacts):
    airflow = sso_airflow
    airflow.wait_for_dag(PITR)

    def shots(page, name):
        page.screenshot(path=str(artifacts / f"{name}.png"))

    # Passwords: none for people (the REST service account keeps its own).
    token = requests.post(f"{airflow.url}/auth/token", json={"username": "dba.oncall@example.com", "password": "x" * 12}, timeout=30)
    assert token.status_code == 401, token.text

    # A DBA: signs in through the IdP, presses Trigger, the run exists, triggered by them.
    context, page = sign_in(browser, airflow, oidc, "dba.oncall", shots, "dba")
    assert press_trigger(page, shots, "dba") == 200
    context.close()
    [run] = runs(airflow)
    assert run["triggering_user_name"] == "dba.oncall@example.com"
    assert run["conf"]["reason"] == REASON
    record = identity(airflow, "dba.oncall@example.com")
    assert record["email"] == "dba.oncall@example.com" and record["idp"] == oidc.issuer
    assert record["amr"] == ["pwd", "mfa", "otp"] and record["mfa"] is True
    assert record["roles"] == ["DBA", "Viewer"] and record["groups"] == ["rewind-dba"]
    assert record["login_at"]

    # An auditor: signed in, sees the PITR and its button; the API refuses the trigger.
    context, page = sign_in(browser, airflow, oidc, "ops.outsider", shots, "auditor")
    assert press_trigger(page, shots, "auditor") == 403
    assert page.get_by_text("Access Denied").is_visible()
    context.close()
    assert identity(airflow, "ops.outsider@example.com")["roles"] == ["Viewer"]

    # The DBA leaves the DBA group at the IdP: their next sign-in takes the DBA role away.
    oidc.set_groups("dba.oncall", ["rewind-auditors"])
    context, page = sign_in(browser, airflow, oidc, "dba.oncall", shots, "former-dba")
    assert press_trigger(page, shots, "former-dba") == 403
    context.close()
    record = identity(airflow, "dba.oncall@example.com")
    assert record["roles"] == ["Viewer"] and record["groups"] == ["rewind-auditors"]
    assert len(runs(airflow)) == 1
