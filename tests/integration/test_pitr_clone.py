"""Clone mode (rewind.pitr.clone) on the real stack: the rewind is built and checked beside
production, which keeps serving until the cutover; the cutover swaps the directories in seconds and
keeps the pre-rewind one; a cutover killed between its two renames converges when the run is cleared."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from pathlib import Path

import pytest

from rewind.pitr.clone import clone_paths
from rewind.pitr.journal import RunJournal
from rewind.postgres import postmaster_pid, psql_argv
from rewind.retention import get_hold
from rewind.runner import CommandFailed
from tests.conftest import load_dags, run_once
from tests.integration.helpers import VOID_CHECK, assert_success, change_of, fresh_ledger, ledger, run_pitr, states, the_incident, write

pytestmark = pytest.mark.integration


class Probe:
    """Reads and writes against production every 50 ms, each attempt's outcome kept with its instant."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.failures: list[tuple[float, str]] = []
        self.successes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        runner = self.stack.runner(line_logger=lambda _line: None)
        argv = psql_argv(self.stack.cluster, "insert into clone_probe values (default) returning 1", database="postgres")
        while not self._stop.is_set():
            try:
                runner.run(argv, timeout=10, log_stdout=False)
                self.successes += 1
            except CommandFailed as exc:
                self.failures.append((time.time(), str(exc)))
            self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self.stack.psql("create table if not exists clone_probe (id bigserial primary key)")
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


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
    with Probe(demo_stack) as probe:
        run = run_pitr(pitr, target_type="time", target=target, mode="clone", validation_sql=[VOID_CHECK])
    assert_success(run)
    assert ledger(demo_stack) == (200, 0, 200)

    journal = RunJournal.load(demo_stack.cluster, run.run_id)
    steps = journal.data["steps"]
    assert steps["clone_restore_started"] < steps["clone_restored"] < steps["clone_started"] < steps["at_target"] < steps["checked"]
    assert steps["checked"] < journal.data["stop_started_at"] < steps["stopped"] < steps["swapped"] < steps["started"] < steps["promoted"]
    # production answered every query until the cutover began (the restore, the recovery and the
    # checks all ran on the clone), and was back within seconds
    cutover = epoch(journal.data["stop_started_at"])
    assert probe.successes > 20
    assert [f for f in probe.failures if f[0] < cutover] == [], probe.failures[:3]
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
    start, production's WAL archived, each stop, each rename, the hold, the start): every death is
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
    # every act of the cutover was followed by a death once: both stops, both renames, the start
    assert {death.split()[0] for death in deaths} >= {"archive", "stop", "rename", "hold", "start"}, deaths
    assert (len([d for d in deaths if d.startswith("rename")]), len([d for d in deaths if d.startswith("stop")])) == (2, 2), deaths
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
