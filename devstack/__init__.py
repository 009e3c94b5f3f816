"""Rewind's development and test infrastructure: the local stack and the simulators (S3 over TLS
with IAM, Vault, ServiceNow), the demo cluster, and a real Airflow in a child process.

Not part of the product: nothing under include/ or plugins/ imports it, the production image does
not contain it, and `pip install .` does not install it. scripts/install.sh installs it (editable,
`devstack/pyproject.toml`) for the tests, the benchmarks and the local stack."""
