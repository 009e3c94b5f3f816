"""The monthly restore rehearsal: prove that a backup restores, is consistent and holds production's
rows, without touching production beyond one restore point.

    request     what a run restores to (latest, an age, a time) and why, from the form or the inventory
    production  the mark made on production: row counts and a restore point taken together, WAL archived
    site        the scratch directory on the rehearsal host: its safety, its marker, leftovers
    checks      pg_amcheck, pg_dump, pg_checksums on the copy; the archive left untouched; row counts
    change      the standard change and its change task: opened, implemented, closed with the evidence

No Airflow here: the operators in rewind_airflow.operators.rehearsal call these, one runbook step each.
"""
