"""Clone mode (rewind.pitr.clone) on the real stack: the rewind is built and checked beside
production, which keeps serving until the cutover; the cutover swaps the directories in seconds and
keeps the pre-rewind one; a cutover killed between its two renames converges when the run is cleared."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from devstack.probe import Probe
from rewind.pitr.clone import clone_paths
from rewind.pitr.journal import RunJournal
from rewind.postgres import postmaster_pid
from rewind.retention import get_hold
from tests.conftest import load_dags, run_once
from tests.integration.helpers import VOID_CHECK, assert_success, change_of, fresh_ledger, ledger, run_pitr, states, the_incident, write

pytestmark = pytest.mark.integration


def epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def the_ledger_incident(stack) -> str:
    fresh_ledger(stack)
    write(stack, 1, 200)
    stack.pgbackrest().backup("full", annotations={"airflow_run_id": "clone-base"})
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    time.sleep(1.2)
    the_incident(stack)  # every row void, then 50 more rows posted
    assert ledger(stack) == (250, 200, 10_050)
    return target


def test_a_clone_mode_rewind_keeps_production_serving_until_a_cutover_of_seconds(demo_stack, pitr, servicenow, approve_all, capfd):
    target = the_ledger_incident(demo_stack)
    data_dir = Path(demo_stack.cluster.postgres.data_dir)
    inode_before = data_dir.stat().st_ino
    demo_stack.psql("create table if not exists clone_probe (id bigserial primary key)")
    with Probe(demo_stack, "insert into clone_probe values (default) returning 1") as probe:
        run = run_pitr(pitr, target_type="time", target=target, mode="clone", validation_sql=[VOID_CHECK])
    assert_success(run)
    assert ledger(demo_stack) == (200, 0, 200)

    journal = RunJournal.load(demo_stack.cluster, run.run_id)
    steps = journal.data["steps"]
    assert steps["clone_restore_started"] < steps["clone_restored"] < steps["clone_started"] < steps["at_target"] < steps["checked"]
    assert steps["checked"] < journal.data["stop_started_at"] < steps["stopped"] < steps["clone_promoted"] < steps["swapped"]
    assert steps["swapped"] < steps["started"] < steps["promoted"]
    # production answered every query until the cutover began (the restore, the recovery and the
    # checks all ran on the clone), and was back within seconds
    cutover = epoch(journal.data["stop_started_at"])
    assert probe.successes > 20
    assert probe.failures(before=cutover) == [], probe.failures()[:3]
    downtime = epoch(steps["promoted"]) - cutover
    assert downtime < 15, downtime

    # the pre-rewind directory is kept, stopped, holding the abandoned branch; the clone is gone
    paths = clone_paths(demo_stack.cluster, run.run_id)
    assert data_dir.stat().st_ino != inode_before and paths.pre_rewind_dir.stat().st_ino == inode_before
    assert not paths.clone_dir.exists() and not (paths.pre_rewind_dir / "postmaster.pid").exists()
    assert get_hold(demo_stack.cluster, run.run_id).kept_dir == str(paths.pre_rewind_dir)  # released with the hold
    # nothing clone-only was written into the directory that is production's now
    assert demo_stack.psql("show archive_mode") == "on" and demo_stack.psql("show listen_addresses") != ""
    assert "archive_mode = 'off'" not in (data_dir / "postgresql.auto.conf").read_text()  # what --archive-mode=off writes
    change = change_of(servicenow, run)
    assert (change["state"], change["close_code"]) == ("3", "successful")
    assert (
        "production was never stopped" not in change["close_notes"]
        and "Timings: clone restore (production serving)" in change["close_notes"]
    )
    assert change["implementation_plan"].startswith("1. Restore the backup into a clone beside the data directory")  # what was approved

    # Undo, under its own change: the kept directory swapped back in, in seconds, recovered to its
    # timeline's end and promoted onto a new timeline; what was written since the rewind is kept in
    # turn, in the directory the undo put aside
    rewound_timeline = int(demo_stack.psql("select timeline_id from pg_control_checkpoint()"))
    left = get_hold(demo_stack.cluster, run.run_id).timeline
    demo_stack.psql("insert into ledger_entry values (99999, 1, 'written after the rewind')")
    undo = run_pitr(pitr, target_type="latest", target_timeline=str(left), mode="undo")
    assert_success(undo)
    assert ledger(demo_stack) == (250, 200, 10_050)  # every row the cluster had before the rewind, nothing else
    assert int(demo_stack.psql("select timeline_id from pg_control_checkpoint()")) > rewound_timeline
    assert not (data_dir / "recovery.signal").exists() and demo_stack.psql("show archive_mode") == "on"
    steps = RunJournal.load(demo_stack.cluster, undo.run_id).data["steps"]
    assert epoch(steps["promoted"]) - epoch(steps["stopped"]) < 15
    undone = clone_paths(demo_stack.cluster, undo.run_id).pre_rewind_dir
    assert not paths.pre_rewind_dir.exists() and undone.is_dir()  # the rewound branch, kept by the undo's hold
    assert get_hold(demo_stack.cluster, undo.run_id).kept_dir == str(undone)
    assert f"swapped back into production by undo run {undo.run_id}" in get_hold(demo_stack.cluster, run.run_id).released
    closed = change_of(servicenow, undo)
    assert (
        closed["close_code"] == "successful"
        and f"Undo: the directory a clone-mode rewind kept, {paths.pre_rewind_dir}, swapped back" in (closed["close_notes"])
    )
    # offered before the approval and again at the close: the writes the undo sets aside, and how to salvage them
    offered = f"rewind_salvage__demo with timeline {rewound_timeline} offers them"
    assert offered in closed["implementation_plan"] and offered in closed["close_notes"], closed["implementation_plan"]

    # What the undo set aside (the row written after the rewind) is salvage's: the timeline the
    # undo left, read from the directory the undo kept, as SQL that puts it back
    salvage = run_once(load_dags("rewind_salvage.py")["rewind_salvage__demo"], run_conf={"timeline": str(rewound_timeline)})
    assert_success(salvage)
    [salvaged] = [ti for ti in salvage.get_task_instances() if ti.task_id == "salvage"]
    result = salvaged.xcom_pull(task_ids="salvage", key="return_value")
    assert (result["old_timeline"], result["kept_dir"]) == (rewound_timeline, str(undone)), result
    assert result["tables"]["public.ledger_entry"] == {"inserted": 1, "updated": 0, "deleted": 0, "review": []}, result
    assert demo_stack.psql("select count(*) from ledger_entry where id = 99999") == "0"
    demo_stack.psql((Path(result["directory"]) / "salvage.postgres.sql").read_text())
    assert demo_stack.psql("select status from ledger_entry where id = 99999") == "written after the rewind"
    assert ledger(demo_stack) == (251, 200, 99_999)

    # A DBA who needs the disk releases the kept directory before its hold ends: the name typed out
    release = load_dags("rewind_release_kept.py")["rewind_release_kept__demo"]
    form = {"pitr_run_id": undo.run_id, "reason": "the WAL volume needs the space"}
    paths = clone_paths(demo_stack.cluster, undo.run_id)
    capfd.readouterr()
    refused = run_once(release, run_conf={**form, "confirm": "data"})
    assert states(refused)["release_kept_directory"] == "failed" and paths.pre_rewind_dir.is_dir()
    assert f"param confirm: type the directory's name, {paths.pre_rewind_dir.name}, to release it" in "".join(capfd.readouterr())
    assert_success(run_once(release, run_conf={**form, "confirm": paths.pre_rewind_dir.name}))
    hold = get_hold(demo_stack.cluster, undo.run_id)
    assert not paths.pre_rewind_dir.exists() and hold.kept_dir is None and hold.released.endswith("the WAL volume needs the space")
    assert hold.ends_at  # the hold itself goes on: the old branch's backups and WAL stay held


class WorkerKilled(Exception):
    """What a worker killed right after an act leaves: the act done, nothing after it."""


def test_a_cutover_killed_after_any_of_its_acts_converges_on_the_tasks_own_retries(demo_stack, pitr, approve_all, monkeypatch):
    """The worker dies right after each act of the downtime task on the cluster in turn (the clone's
    start, production's WAL archived, each stop, the clone's promotion, each rename, the hold, the
    start, the promotion step): every death is
    followed by the task's own retry (as Airflow retries a task whose worker died; no delay here),
    which goes on from the journal. At every death one data directory is in place, or the
    unambiguous half-swap is (production's aside, the clone beside it); in the end the rewound
    cluster is promoted with exactly the target's rows, in the same run."""
    import os
    import types

    import rewind.pitr.clone as clone_module
    from rewind.restore import RestoreExecutor
    from rewind_airflow.operators import pitr as pitr_operators
    from tests.conftest import quick_dag_test_loop
    from tests.integration.helpers import FORM_DEFAULTS

    target = the_ledger_incident(demo_stack)
    data_dir = Path(demo_stack.cluster.postgres.data_dir)
    before = set(data_dir.parent.iterdir())
    deaths: list[str] = []
    broken: list[str] = []  # the directory invariant, checked at each death (an assert there would only fail the try)

    def killing(name, act, where=lambda *_args: ""):
        """The act, then the worker dies, the first time this act happens at this place."""

        def wrapped(*args, **kwargs):
            result = act(*args, **kwargs)
            point = f"{name} {where(*args)}".strip()
            if point not in deaths:
                deaths.append(point)
                new = {path.name for path in set(data_dir.parent.iterdir()) - before}
                data = data_dir.exists()
                clone = any(".rewind-clone-" in name for name in new)
                pre = any(".pre-rewind-" in name for name in new)
                if not ((data and not (clone and pre)) or (not data and clone and pre)):
                    broken.append(f"after {point}: data {data}, clone {clone}, pre-rewind {pre}")
                raise WorkerKilled(f"worker killed right after {point}")
            return result

        return wrapped

    of_instance = lambda executor, *_args: executor.instance.data_dir.name  # noqa: E731
    monkeypatch.setattr(pitr_operators, "archive_current_wal", killing("archive WAL", pitr_operators.archive_current_wal))
    monkeypatch.setattr(pitr_operators, "archive_left_behind", killing("archive left behind", pitr_operators.archive_left_behind))
    monkeypatch.setattr(pitr_operators, "set_hold_kept_dir", killing("hold", pitr_operators.set_hold_kept_dir))
    clone_os = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    clone_os.rename = killing("rename", os.rename, lambda source, *_args: Path(source).name)  # the swap's renames only
    monkeypatch.setattr(clone_module, "os", clone_os)
    monkeypatch.setattr(RestoreExecutor, "stop", killing("stop", RestoreExecutor.stop, of_instance))
    monkeypatch.setattr(RestoreExecutor, "start", killing("start", RestoreExecutor.start, of_instance))
    monkeypatch.setattr(RestoreExecutor, "promote", killing("promote", RestoreExecutor.promote, of_instance))
    for task in pitr.tasks:
        monkeypatch.setattr(task, "retries", 0)
    downtime = pitr.get_task("stop_restore_promote")
    monkeypatch.setattr(downtime, "retries", 20)
    monkeypatch.setattr(downtime, "retry_delay", dt.timedelta(0))
    conf = {"target_type": "time", "target": target, "mode": "clone", "validation_sql": [VOID_CHECK]}
    with quick_dag_test_loop():
        run = pitr.test(run_conf={**FORM_DEFAULTS, **conf})
    assert_success(run)
    assert broken == [], broken
    # every act of the cutover was followed by a death once: both stops, the clone's promotion, both
    # renames, the start, production's promotion step
    assert {death.split()[0] for death in deaths} >= {"archive", "stop", "promote", "rename", "hold", "start"}, deaths
    assert (len([d for d in deaths if d.startswith("rename")]), len([d for d in deaths if d.startswith("stop")])) == (2, 2), deaths
    assert len([d for d in deaths if d.startswith("promote")]) == 2, deaths
    assert ledger(demo_stack) == (200, 0, 200)
    paths = clone_paths(demo_stack.cluster, run.run_id)
    assert not paths.clone_dir.exists() and paths.pre_rewind_dir.is_dir()
    shutil.rmtree(paths.pre_rewind_dir)


def test_s3_gone_during_the_clone_restore_leaves_production_serving_and_removes_the_clone(demo_stack, pitr, approve_all):
    """The repository becomes unreachable the moment the clone's restore begins: the step fails with
    one line, the clone is removed, production never stopped and still holds every row, and the
    restore guard is released (nothing blocks its backups)."""
    from rewind.guard import read_guard

    target = the_ledger_incident(demo_stack)
    logical = dt.datetime.now(dt.timezone.utc)
    run_id = f"manual__{logical.isoformat()}"
    journal_path = RunJournal(demo_stack.cluster, run_id, {}).path
    pid = postmaster_pid(demo_stack.cluster)

    def s3_down_once_the_clone_restore_begins():
        deadline = time.monotonic() + 120
        while not (journal_path.exists() and "clone_restore_started" in journal_path.read_text()):
            if time.monotonic() > deadline:
                raise AssertionError("the clone's restore never began")
            time.sleep(0.002)
        demo_stack.s3.stop_tls()
        demo_stack.use_pgbackrest_settings({"io_timeout_s": 1})

    outage: dict = {}

    def watch() -> None:
        try:
            s3_down_once_the_clone_restore_begins()
        except BaseException as exc:
            outage["error"] = exc

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = run_pitr(
            pitr, target_type="time", target=target, mode="clone", validation_sql=[VOID_CHECK], logical_date=logical, run_after=logical
        )
    finally:
        watcher.join(timeout=130)
        demo_stack.use_pgbackrest_settings(None)
        demo_stack.s3.start_tls()
    assert "error" not in outage, outage
    assert run.run_id == run_id and states(run)["stop_restore_promote"] == "failed", states(run)
    assert postmaster_pid(demo_stack.cluster) == pid and ledger(demo_stack) == (250, 200, 10_050)
    paths = clone_paths(demo_stack.cluster, run_id)
    assert not paths.clone_dir.exists() and not paths.pre_rewind_dir.exists()
    journal = RunJournal.load(demo_stack.cluster, run_id)
    assert journal.at("clone_restore_started") and not journal.at("stopped")
    assert "production was never stopped" in journal.describe()
    assert read_guard(demo_stack.cluster) is None


@pytest.fixture
def small_disk(airflow_db, servicenow):
    """A cluster of its own whose data directory's file system is small (a 640 MiB tmpfs mounted on
    its PostgreSQL home), production's reserve 10% of it, and its PITR DAG."""
    from devstack.demo import DemoStack
    from tests.integration.conftest import pitr_dag

    base = Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp"))
    home = base / "pg"
    home.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640m,mode=0755", "tmpfs", str(home)], check=True, timeout=30)
    stack = DemoStack(base, name="smalldisk", pitr_settings={"clone_free_reserve_pct": 10})
    saved = dict(os.environ)
    servicenow.state.auto_approve = True
    try:
        stack.start()
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_REWIND_PG_SMALLDISK"] = stack.postgres_connection()
        os.environ.update(stack.worker_env())
        yield stack, pitr_dag("smalldisk")
    finally:
        servicenow.state.auto_approve = False
        os.environ.clear()
        os.environ.update(saved)
        stack.stop()
        subprocess.run(["umount", str(home)], check=False, timeout=30)
        stack.remove()


def test_a_disk_filling_during_the_clone_restore_stops_it_removes_the_clone_and_leaves_production_its_room(small_disk, capfd):
    """Something fills the data directory's file system the moment the clone's restore begins: the
    restore is stopped (production's reserve reached, or the disk full), the clone removed, the step
    fails at once with one line naming the file system and the reserve; production never stopped,
    holds every row and still takes writes."""
    stack, dag = small_disk
    stack.psql("create table bulk (id bigint primary key, payload text)")
    stack.psql("insert into bulk select g, repeat(md5(g::text), 30) from generate_series(1, 80000) g")  # ~80 MiB
    target = the_ledger_incident(stack)
    logical = dt.datetime.now(dt.timezone.utc)
    run_id = f"manual__{logical.isoformat()}"
    paths = clone_paths(stack.cluster, run_id)
    reserve = shutil.disk_usage(paths.data_dir.parent).total // 10
    pid = postmaster_pid(stack.cluster)
    filler = paths.data_dir.parent / "runaway.log"

    def fill_once_the_clone_restore_begins() -> None:
        deadline = time.monotonic() + 120
        while not paths.clone_dir.exists():
            if time.monotonic() > deadline:
                raise AssertionError("the clone's restore never began")
            time.sleep(0.002)
        # leaves half the reserve free (production's WAL segments are recycled, not grown); the
        # restore writes meanwhile, so what is free is measured again until the allocation fits
        with open(filler, "wb") as runaway:
            for _attempt in range(50):
                try:
                    os.posix_fallocate(runaway.fileno(), 0, max(shutil.disk_usage(paths.data_dir.parent).free - reserve // 2, 1))
                    return
                except OSError:
                    continue
        raise AssertionError("could not fill the file system")

    filled: dict = {}

    def fill() -> None:
        try:
            fill_once_the_clone_restore_begins()
        except BaseException as exc:
            filled["error"] = exc

    filling = threading.Thread(target=fill, daemon=True)
    filling.start()
    capfd.readouterr()
    try:
        run = run_pitr(
            dag, target_type="time", target=target, mode="clone", validation_sql=[VOID_CHECK], logical_date=logical, run_after=logical
        )
    finally:
        filling.join(timeout=130)
    out = "".join(capfd.readouterr())
    assert "error" not in filled, filled
    assert run.run_id == run_id and states(run)["stop_restore_promote"] == "failed", states(run)
    assert re.search(
        rf"clone mode: the file system of {re.escape(str(paths.data_dir))} (fell to [0-9.]+ GiB free|ran out of space) while the "
        r"clone restored, under the [0-9.]+ GiB kept for production \(pitr.clone_free_reserve_pct\): the restore was stopped and "
        r"the clone removed, production was not touched; free space and trigger again, or use mode in_place",
        out,
    ), out[-3000:]
    assert not paths.clone_dir.exists() and not paths.pre_rewind_dir.exists()
    assert postmaster_pid(stack.cluster) == pid and ledger(stack) == (250, 200, 10_050)
    write(stack, 20_001, 10)  # production still takes writes, on the room it kept
    assert ledger(stack) == (260, 200, 20_010)
    filler.unlink()


def test_a_clone_that_cannot_reach_its_target_is_kept_and_named_and_production_never_stops(demo_stack, pitr, approve_all, capfd):
    """The WAL after the backup is unreadable in the repository (its objects overwritten behind
    pgBackRest's back): preflight and the re-plan see every segment listed, and the clone's recovery
    runs out before the target. The step fails with one line naming the clone kept for inspection
    (wait_for_target is a final step: no retry can change it); production never stopped and holds
    every row."""
    from rewind.pitr.recovery import archive_current_wal

    target = the_ledger_incident(demo_stack)
    runner = demo_stack.runner(line_logger=lambda _line: None)
    archive_current_wal(runner, demo_stack.cluster, log=lambda _m: None)  # the incident's segment in the repository too
    stop = demo_stack.pgbackrest().info().latest().archive.stop
    s3, bucket = demo_stack.s3.client("s3"), demo_stack.s3.bucket
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="rewind/demo/archive/demo/").get("Contents", [])
    after = [
        o["Key"]
        for o in listed
        if re.fullmatch(r"[0-9A-F]{24}", o["Key"].rsplit("/", 1)[-1][:24]) and o["Key"].rsplit("/", 1)[-1][:24] > stop
    ]
    assert after, (stop, [o["Key"] for o in listed][-5:])
    saved = {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in after}
    pid = postmaster_pid(demo_stack.cluster)
    capfd.readouterr()
    try:
        for key in after:
            s3.put_object(Bucket=bucket, Key=key, Body=b"\0" * len(saved[key]))
        run = run_pitr(pitr, target_type="time", target=target, mode="clone", validation_sql=[VOID_CHECK])
    finally:
        for key, body in saved.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    out = "".join(capfd.readouterr())
    assert states(run)["stop_restore_promote"] == "failed", states(run)
    paths = clone_paths(demo_stack.cluster, run.run_id)
    assert f"production was not touched; the clone is kept for inspection in {paths.clone_dir}" in out, out[-3000:]
    assert postmaster_pid(demo_stack.cluster) == pid and ledger(demo_stack) == (250, 200, 10_050)
    assert (paths.clone_dir / "PG_VERSION").is_file() and not paths.pre_rewind_dir.exists()  # kept, as named
    assert not RunJournal.load(demo_stack.cluster, run.run_id).at("stopped")
    shutil.rmtree(paths.clone_dir)
    shutil.rmtree(paths.run_dir, ignore_errors=True)
