"""Rewind's Airflow extensions (hooks, operators, sensors, triggers, notifiers).

Installed as a package (`pip install -e .`) so that schedulers, triggerers and every Celery worker
import the same classes; the plugins/ folder is also on Airflow's sys.path for plain deployments.
"""
