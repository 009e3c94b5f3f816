"""The auditors' page: every PITR, rehearsal, onboarding and decommissioning run in one table,
with CSV export (rows: rewind.audit; the page: app.py; its registration with Airflow: plugin.py)."""
