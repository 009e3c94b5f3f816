"""The auditors' page in a real browser (Debian's chromium driven by playwright), on the real API
server with the FAB auth manager: an auditor (Viewer) signs in, sees the completed PITR with who
asked, why, the change (linked to ServiceNow), who approved it and when, the target, the backup
used, the downtime, the data checks, the new backup and the outcome; downloads the same rows as CSV;
and can change nothing. An admin finds it in the Airflow UI's Browse menu. A screenshot is kept.

(Named test_standalone_audit_page so that it runs after test_standalone_access, which expects no
PITR run yet, and before test_standalone_pitr, which clears the completed run afterwards.)"""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from rewind.audit import COLUMNS

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"  # Debian's (scripts/install.sh); playwright's own download is not used
LABEL = re.compile(r"^\d{8}-\d{6}F$")


def test_an_auditor_reads_the_audit_page_and_its_csv_and_changes_nothing(completed_pitr, standalone, servicenow, capsys):
    pitr = completed_pitr
    assert pitr.run["state"] == "success", pitr.states
    number = pitr.change["number"]
    page_url = f"{standalone.url}/rewind-audit/"

    # Not signed in: the page sends the browser to Airflow's login, the CSV is refused.
    anonymous = requests.get(page_url, allow_redirects=False, timeout=30)
    assert anonymous.status_code == 303 and "/login" in anonymous.headers["location"], anonymous.text
    assert requests.get(f"{page_url}audit.csv", timeout=30).status_code == 401

    auditor = standalone.rest_as("auditor")
    token = auditor.token()
    bearer = {"Authorization": f"Bearer {token}"}
    # Read-only: nothing but GET exists, and the auditor still cannot trigger anything.
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert requests.request(method, page_url, headers=bearer, timeout=30).status_code == 405
        assert requests.request(method, f"{page_url}audit.csv", headers=bearer, timeout=30).status_code == 405
    refused = auditor.api("POST", f"/dags/{pitr.dag_id}/dagRuns", json={"logical_date": None, "conf": pitr.conf})
    assert refused.status_code == 403, refused.text

    artifacts = Path(tempfile.mkdtemp(prefix="rewind-audit-page-"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1800, "height": 900})
            context.add_cookies([{"name": "_token", "value": token, "url": standalone.url}])
            page = context.new_page()
            page.goto(page_url)
            assert page.locator("h1").inner_text() == "Rewind audit"
            assert "as seen by auditor" in page.locator(".meta").inner_text()
            assert page.locator("#audit thead th").all_inner_texts() == [title for _, title in COLUMNS]
            assert page.locator("form, button, input, textarea, select").count() == 0

            row = page.locator(f'#audit tbody tr[data-run-id="{pitr.run_id}"]')
            assert row.count() == 1
            cells = {name: row.locator(f"td.{name}").inner_text().strip() for name, _ in COLUMNS}
            assert cells["workflow"] == "PITR" and cells["cluster"] == "demo"
            assert cells["requested_by"].startswith("DBA On-Call <dba.oncall@example.com> (Airflow user admin;"), cells
            assert cells["reason"] == pitr.conf["reason"]
            assert cells["change_number"] == number
            assert cells["approved_by"] == "CAB Approver <cab.approver@example.com>"
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cells["approved_at"]), cells
            assert cells["target"].startswith(f"time {pitr.conf['target'][:19]}"), cells
            assert LABEL.match(cells["backup_used"]) and LABEL.match(cells["new_backup"]), cells
            assert cells["new_backup"] != cells["backup_used"]
            assert re.fullmatch(r"(\d+m )?\d+s \(stop to promoted\)", cells["downtime"]), cells
            assert cells["data_checks"].startswith("1/1 passed: select count(*) from ledger_entry where status = 'void' = 0"), cells
            outcome = cells["outcome"].splitlines()
            assert outcome[0] == "success" and outcome[1].startswith("rewound: promoted at ") and f"change {number} closed" in outcome[1], (
                cells
            )

            change_link = row.locator("td.change_number a")
            assert change_link.get_attribute("href") == (
                f"http://127.0.0.1:{servicenow.port}/nav_to.do?uri=change_request.do?sysparm_query=number={number}"
            )
            run_link = row.locator("td.run_id a").get_attribute("href")
            assert run_link.startswith(f"/dags/{pitr.dag_id}/runs/")
            page.screenshot(path=str(artifacts / "audit-page.png"), full_page=True)

            # The CSV export: the same rows, the change's link included.
            with page.expect_download() as download:
                page.click("#csv")
            exported = artifacts / download.value.suggested_filename
            download.value.save_as(exported)
            with open(exported, newline="", encoding="utf-8") as handle:
                records = list(csv.DictReader(handle))
            [record] = [r for r in records if r["Run"] == pitr.run_id]
            assert [record[title] for name, title in COLUMNS] == [cells[name] for name, _ in COLUMNS]
            assert record["Change link"] == change_link.get_attribute("href")
            assert len(records) == page.locator("#audit tbody tr[data-run-id]").count()

            # Inside the Airflow UI: Browse > Rewind audit shows the page (the menu lists plugins'
            # views only to roles that may read plugins, Admin and Op; a Viewer opens /rewind-audit/).
            admin = browser.new_context(viewport={"width": 1800, "height": 900})
            admin.add_cookies([{"name": "_token", "value": standalone.rest.token(), "url": standalone.url}])
            ui = admin.new_page()
            ui.goto(f"{standalone.url}/plugin/rewind-audit")
            framed = ui.frame_locator("iframe").locator(f'#audit tbody tr[data-run-id="{pitr.run_id}"] td.change_number')
            assert framed.inner_text(timeout=60_000).strip() == number
            ui.screenshot(path=str(artifacts / "audit-page-in-airflow-ui.png"), full_page=True)
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\naudit page screenshots and CSV: {artifacts}")
