import pytest

from rewind.pgbackrest.commands import PgBackRestCommands
from rewind.postgres import psql_argv, reload_argv, start_argv, stop_argv
from tests.factories import cluster


@pytest.fixture
def commands():
    return PgBackRestCommands(cluster(pgbackrest={"config_path": "/etc/pgbackrest/rewind/ledger.conf"}))


HEAD = ["/usr/bin/pgbackrest", "--config=/etc/pgbackrest/rewind/ledger.conf", "--stanza=ledger"]


def test_backup_argv_with_annotations(commands):
    argv = commands.backup("incr", annotations={"airflow_run_id": "manual__2026-11-24T02:14:00", "airflow_dag_id": "d"})
    assert argv == HEAD + [
        "--type=incr",
        "--annotation=airflow_dag_id=d",
        "--annotation=airflow_run_id=manual__2026-11-24T02:14:00",
        "backup",
    ]


def test_values_that_look_like_options_stay_one_argv_item(commands):
    argv = commands.restore(restore_type="name", target="--delete; rm -rf /", backup_set="--force")
    assert "--target=--delete; rm -rf /" in argv
    assert "--set=--force" in argv
    assert "--delete" not in argv and "--force" not in argv
    assert argv[-1] == "restore"


def test_restore_by_time_with_everything(commands):
    argv = commands.restore(
        restore_type="time",
        target="2026-11-24 02:13:30+00",
        target_exclusive=True,
        target_action="promote",
        target_timeline="current",
        backup_set="20261124-010000F",
    )
    assert argv == HEAD + [
        "--delta",
        "--set=20261124-010000F",
        "--type=time",
        "--target=2026-11-24 02:13:30+00",
        "--target-exclusive",
        "--target-action=promote",
        "--target-timeline=current",
        "restore",
    ]


def test_rehearsal_restore_elsewhere_without_archiving(commands):
    argv = commands.restore(
        restore_type="immediate", target_action="promote", pg_path="/scratch/pg", archive_mode="off", tablespace_map_all="/scratch/ts"
    )
    assert argv == HEAD + [
        "--delta",
        "--pg1-path=/scratch/pg",
        "--tablespace-map-all=/scratch/ts",
        "--type=immediate",
        "--target-action=promote",
        "--archive-mode=off",
        "restore",
    ]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.backup("weekly"),
        lambda c: c.backup("full", annotations={"bad key": "v"}),
        lambda c: c.backup("full", annotations={"k": "line1\nline2"}),
        lambda c: c.restore(restore_type="time"),
        lambda c: c.restore(restore_type="name", target="a\x00b"),
    ],
)
def test_invalid_requests_raise_before_any_argv_exists(commands, call):
    with pytest.raises(ValueError):
        call(commands)


def test_info_check_verify_expire_stanza_create(commands):
    assert commands.info() == HEAD + ["--output=json", "info"]
    assert commands.check() == HEAD + ["check"]
    assert commands.verify() == HEAD + ["verify"]
    assert commands.expire() == HEAD + ["expire"]
    assert commands.stanza_create() == HEAD + ["stanza-create"]


def test_postgres_control_argv(commands):
    cluster = commands.cluster
    assert start_argv(cluster) == ["systemctl", "start", "postgresql@15-main"]
    assert stop_argv(cluster) == ["systemctl", "stop", "postgresql@15-main"]
    assert reload_argv(cluster) == ["systemctl", "reload", "postgresql@15-main"]
    pg_ctl_cluster = cluster.model_copy(update={"postgres": cluster.postgres.model_copy(update={"control": "pg_ctl"})})
    assert stop_argv(pg_ctl_cluster, mode="immediate")[:2] == ["/usr/lib/postgresql/15/bin/pg_ctl", "stop"]
    assert "-m" in stop_argv(pg_ctl_cluster) and "fast" in stop_argv(pg_ctl_cluster)
    assert reload_argv(pg_ctl_cluster) == ["/usr/lib/postgresql/15/bin/pg_ctl", "reload", "-D", "/var/lib/postgresql/15/main"]
    with pytest.raises(ValueError):
        stop_argv(cluster, mode="now")
    assert psql_argv(cluster, "select 1")[-2:] == ["-c", "select 1"]
