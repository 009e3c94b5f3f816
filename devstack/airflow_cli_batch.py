"""Run several `airflow ...` CLI commands in one Python process, each parsed and dispatched by
Airflow's own CLI (airflow.__main__ does the same for one), in order, stopping at the first that fails.

Why: every `airflow` process spends ~5 s importing Airflow and its providers before it does
anything. A stack with FAB users ran one `airflow users create` per user and one `airflow users
add-role` per further role (six processes, ~30 s, for tests/e2e's four people); here they cost one
import. The commands and what they write are the same; a password travels in the JSON on stdin,
never on a command line (readable in /proc by anyone on the machine).

    python -m devstack.airflow_cli_batch < commands.json    # [["users", "create", ...], ...]

Imports Airflow: run it as a child process with the stack's environment (devstack.airflow does).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    commands = json.load(sys.stdin)
    from airflow import configuration  # first, as airflow.__main__ imports it (import cycles)
    from airflow.cli import cli_parser

    configuration.write_default_airflow_configuration_if_needed()
    parser = cli_parser.get_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
