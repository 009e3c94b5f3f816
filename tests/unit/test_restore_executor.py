"""The one restore executor (rewind.restore): what it restores, where a sibling lives, and how it
reads recovery's outcome. PostgreSQL and pgBackRest are fakes here; the real stack drives it in
tests/integration (the PITR, decide, the rehearsal and salvage all go through it)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from rewind.pitr.plan import RestorePlan
from rewind.pitr.request import parse_request
from rewind.restore import NOT_REACHED, Instance, RecoveryError, RecoveryTarget, RecoveryTargetNotReached, RestoreExecutor
from rewind.runner import CommandResult
from tests.factories import local_cluster
from tests.unit.test_pitr_results import PLAN


class ScriptedRunner:
    """psql answers from a script, one per call; every argv kept."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.argvs: list[list[str]] = []

    def run(self, argv, **_kwargs) -> CommandResult:
        self.argvs.append([str(a) for a in argv])
        answer = self.answers.pop(0) if self.answers else ""
        return CommandResult(argv=list(argv), returncode=0, stdout=answer + "\n", stderr="", duration_s=0.0)


class RecordingPgBackRest:
    def __init__(self) -> None:
        self.restores: list[dict] = []

    def restore(self, **options) -> None:
        self.restores.append(options)


def test_a_pitr_request_restores_its_plans_backup_on_the_plans_numeric_timeline():
    request = parse_request({"target_type": "time", "target": "2026-11-24 02:13:30+00", "reason": "ledger voided"})
    target = RecoveryTarget.of(request, RestorePlan.model_validate(PLAN))
    assert (target.backup_set, target.type, target.timeline, target.action) == (PLAN["backup_set"], "time", str(PLAN["timeline"]), "pause")
    assert target.target.startswith("2026-11-24 02:13:30")
    latest = RecoveryTarget.of(parse_request({"target_type": "latest", "reason": "abort the rewind"}), RestorePlan.model_validate(PLAN))
    assert latest.action is None  # PostgreSQL's default at the end of the WAL


def test_production_restores_into_its_data_directory_as_pgbackrest_conf_says(tmp_path):
    cluster = local_cluster(tmp_path)
    pgbackrest = RecordingPgBackRest()
    executor = RestoreExecutor(pgbackrest, Instance.production(cluster), runner=ScriptedRunner([]), postmaster_runner=ScriptedRunner([]))
    executor.restore(RecoveryTarget(backup_set="20261124-010000F", type="xid", target="812", exclusive=True, timeline="2", action="pause"))
    [options] = pgbackrest.restores
    assert "pg_path" not in options and "tablespace_map_all" not in options and "archive_mode" not in options
    assert options["delta"] and options["target_exclusive"] and options["target_timeline"] == "2"


@pytest.mark.parametrize("disposable", [True, False])
def test_a_sibling_restores_beside_with_its_own_tablespaces_and_archives_nothing(tmp_path, disposable):
    cluster = local_cluster(tmp_path)
    run_dir = tmp_path / "sibling"
    instance = Instance.sibling(cluster, run_dir=run_dir, port=54999, disposable=disposable)
    assert (instance.data_dir, instance.port, instance.cluster.postgres.socket_dir) == (run_dir / "data", 54999, str(run_dir))
    assert instance.cluster.postgres.control == "pg_ctl" and cluster.postgres.data_dir != str(instance.data_dir)
    pgbackrest = RecordingPgBackRest()
    RestoreExecutor(pgbackrest, instance, runner=ScriptedRunner([]), postmaster_runner=ScriptedRunner([])).restore(RecoveryTarget())
    [options] = pgbackrest.restores
    assert options["pg_path"] == str(run_dir / "data") and options["tablespace_map_all"] == str(run_dir / "tablespaces")
    # written into the restored configuration only for a copy that is thrown away: a directory that
    # is to become production's must not carry archive_mode=off through the swap
    assert options.get("archive_mode") == ("off" if disposable else None)
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    settings = instance.sibling_settings()
    assert (
        settings["listen_addresses"] == "''" and settings["archive_mode"] == "off" and settings["unix_socket_directories"] == str(run_dir)
    )


def test_a_half_restored_sibling_directory_is_cleared_so_a_retry_converges(tmp_path):
    instance = Instance.sibling(local_cluster(tmp_path), run_dir=tmp_path / "sibling", port=54999)
    (instance.data_dir / "base").mkdir(parents=True)  # killed before PG_VERSION or backup.manifest
    RestoreExecutor(RecordingPgBackRest(), instance, runner=ScriptedRunner([]), postmaster_runner=ScriptedRunner([])).restore(
        RecoveryTarget()
    )
    assert not instance.data_dir.exists()


def running(instance: Instance) -> None:
    """A postmaster.pid naming a live process (this one)."""
    instance.data_dir.mkdir(parents=True, exist_ok=True)
    (instance.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n")


def test_wait_reads_only_what_this_start_logged(tmp_path):
    """A sibling restarted to a later stop (salvage) keeps one log: a 'not reached' of an earlier
    start is not this start's."""
    instance = Instance.sibling(local_cluster(tmp_path), run_dir=tmp_path / "sibling", port=54999)
    running(instance)
    instance.log_path.write_text(f"LOG:  an earlier start\nFATAL:  {NOT_REACHED}\n")
    offset = instance.log_size()
    with open(instance.log_path, "a") as log:
        log.write("LOG:  recovery stopping before commit of transaction 812, time 2026-11-24 02:14:00+00\n")
    runner = ScriptedRunner(["t|paused|0/9000100"])
    result = RestoreExecutor(RecordingPgBackRest(), instance, runner=runner, postmaster_runner=runner).wait(
        "pause", since_offset=offset, timeout_s=5
    )
    assert (result.state, result.replay_lsn) == ("paused", "0/9000100")
    assert result.stop_record.startswith("recovery stopping before commit of transaction 812")
    with pytest.raises(RecoveryTargetNotReached):
        RestoreExecutor(RecordingPgBackRest(), instance, runner=runner, postmaster_runner=runner).wait("pause", since_offset=0, timeout_s=5)


def test_wait_fails_at_once_when_the_instance_exits(tmp_path):
    instance = Instance.sibling(local_cluster(tmp_path), run_dir=tmp_path / "sibling", port=54999)
    instance.data_dir.mkdir(parents=True)
    instance.log_path.write_text("FATAL:  could not locate required checkpoint record\n")
    executor = RestoreExecutor(RecordingPgBackRest(), instance, runner=ScriptedRunner([]), postmaster_runner=ScriptedRunner([]))
    executor._started_at = 1.0  # started long ago: no grace left
    with pytest.raises(RecoveryError, match="exited during recovery: FATAL:  could not locate required checkpoint record"):
        executor.wait("promote", since_offset=0, timeout_s=5)


def test_a_sibling_starts_with_its_settings_on_the_command_line_and_production_through_its_control(tmp_path):
    cluster = local_cluster(tmp_path)
    sibling = Instance.sibling(cluster, run_dir=tmp_path / "sibling", port=54999)
    sibling.data_dir.mkdir(parents=True)
    starter = ScriptedRunner([])
    RestoreExecutor(RecordingPgBackRest(), sibling, runner=ScriptedRunner([]), postmaster_runner=starter).start(
        recovery={"recovery_target_lsn": "'0/9000100'"}
    )
    [argv] = starter.argvs
    options = argv[argv.index("-o") + 1]
    assert "-c listen_addresses=''" in options and "-c archive_mode=off" in options and "-c recovery_target_lsn='0/9000100'" in options
    # nothing written into its data directory: the configuration it lacks comes from its run directory
    assert list(sibling.data_dir.iterdir()) == []
    assert f"-c config_file={sibling.run_dir}/postgresql.conf" in options
    assert "local all rewind_check peer map=rewind" in (sibling.run_dir / "pg_hba.conf").read_text()
    production = RestoreExecutor(
        RecordingPgBackRest(), Instance.production(cluster), runner=ScriptedRunner([]), postmaster_runner=(started := ScriptedRunner([]))
    )
    production.start()
    assert started.argvs[0][-1] == "-W" or "--no-block" in started.argvs[0]
    with pytest.raises(ValueError, match="sibling instance only"):
        production.start(recovery={"recovery_target_lsn": "'0/1'"})


def test_stop_of_an_instance_that_is_down_does_nothing(tmp_path):
    runner = ScriptedRunner([])
    executor = RestoreExecutor(
        SimpleNamespace(), Instance.production(local_cluster(tmp_path)), runner=runner, postmaster_runner=ScriptedRunner([])
    )
    assert executor.stop() is False and runner.argvs == []


@pytest.mark.parametrize(
    "journal, raised, message",
    [
        (f"LOG:  starting point-in-time recovery\nFATAL:  {NOT_REACHED}\n", RecoveryTargetNotReached, r"\(journal of postgresql@15-main\)"),
        ("FATAL:  could not locate required checkpoint record\n", RecoveryError, "exited during recovery: FATAL:  could not locate"),
    ],
)
def test_a_systemd_unit_without_a_log_file_is_read_from_its_journal_when_recovery_exits(tmp_path, journal, raised, message):
    """control systemd, no postgres.log_file (the inventory's default): PostgreSQL's own lines are
    in the unit's journal. Recovery that ended before the target is named as such, not as a bare exit."""
    import time as clock

    cluster = local_cluster(tmp_path, postgres={"control": "systemd"})
    instance = Instance.production(cluster)
    assert instance.log_path is None
    journald = ScriptedRunner([journal])
    executor = RestoreExecutor(RecordingPgBackRest(), instance, runner=ScriptedRunner([]), postmaster_runner=journald)
    executor._started_at, executor._started_wall = 1.0, clock.time()  # started, exited, no grace left
    with pytest.raises(raised, match=message):
        executor.wait("pause", since_offset=0, timeout_s=5)
    [argv] = journald.argvs
    assert argv[:3] == ["journalctl", "-u", "postgresql@15-main"] and argv[3] == "--since" and argv[-3:] == ["-o", "cat", "--no-pager"]


def test_a_sibling_whose_directory_is_too_long_for_a_socket_gets_a_short_socket_directory(tmp_path):
    """A long cluster name, state path or run id: `<dir>/.s.PGSQL.<port>` over 107 bytes, which
    PostgreSQL cannot bind. The socket goes to a short directory of its own, named by the run
    directory (so a later task finds it again), made at the start; psql and pg_dump follow it."""
    import shutil

    from rewind.restore import socket_dir_for

    cluster = local_cluster(tmp_path)
    short = tmp_path / "sibling"
    assert socket_dir_for(short) == short and Instance.sibling(cluster, run_dir=short, port=54999).socket_dir == short
    long_dir = tmp_path / ("salvage-of-a-cluster-with-a-long-name-" + "x" * 40) / "manual__2026-12-04T02_13_30.000000_00_00" / "pg"
    sibling = Instance.sibling(cluster, run_dir=long_dir, port=54999)
    socket = sibling.socket_dir / ".s.PGSQL.65535"
    assert len(os.fsencode(long_dir / ".s.PGSQL.65535")) > 107 >= len(os.fsencode(socket))
    assert sibling.socket_dir == socket_dir_for(long_dir) != long_dir  # the same for every task that names the directory
    assert sibling.cluster.postgres.socket_dir == str(sibling.socket_dir)  # what psql -h uses
    sibling.data_dir.mkdir(parents=True)
    sibling.run_dir.mkdir(parents=True, exist_ok=True)
    starter = ScriptedRunner([])
    try:
        RestoreExecutor(RecordingPgBackRest(), sibling, runner=ScriptedRunner([]), postmaster_runner=starter).start()
        [argv] = starter.argvs
        assert f"-c unix_socket_directories={sibling.socket_dir}" in argv[argv.index("-o") + 1]
        assert sibling.socket_dir.is_dir() and oct(sibling.socket_dir.stat().st_mode & 0o777) == "0o700"
    finally:
        shutil.rmtree(sibling.socket_dir, ignore_errors=True)
