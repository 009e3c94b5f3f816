"""decide_at_target carries out the DBA's answers with typed records (rewind.pitr.results) and
leaves the run's journal and its return value in the shapes the dicts had: a refused promote, a
move, then a promote; an abort. PostgreSQL, pgBackRest, ServiceNow and Airflow's question are fakes."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from types import SimpleNamespace

import pytest

from rewind import guard
from rewind.pitr.decision import ABORT, MOVE, PROMOTE, describe_decision
from rewind.pitr.journal import RunJournal
from rewind.pitr.plan import RestorePlan
from rewind.pitr.results import CheckResult, DecisionRecord, DecisionResult, RecoveryResult
from rewind_airflow.operators import pitr_decide
from rewind_airflow.operators.pitr_decide import DecideAtTargetOperator
from tests.factories import local_cluster
from tests.unit.test_pitr_results import CHECKS, DECIDE_REQUEST, FAILED_CHECKS, PLAN

RUN = "manual__2026-11-24T02:20:00+00:00"
MOVED_PLAN = {**PLAN, "backup_set": "20261124-010000F"}


class FakeRunner:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def run(self, argv, **_kwargs):
        self.argvs.append(argv)


class FakeExecutor:
    """The restore executor (rewind.restore.RestoreExecutor) on the cluster: records the restores."""

    def __init__(self, restores: list[dict], cluster=None) -> None:
        self.restores = restores
        self.cluster = cluster
        self.instance = SimpleNamespace(pid=lambda: None)  # stopped: nothing written since the run paused it

    def stop(self, *, mode: str = "fast") -> bool:
        return False

    def restore(self, target) -> None:
        self.restores.append(
            {"backup_set": target.backup_set, "restore_type": target.type, "target": target.target, "target_timeline": target.timeline}
        )

    def start(self) -> int:
        return 123

    def wait(self, action: str, **_kwargs) -> RecoveryResult:
        assert action in ("pause", "promote"), action  # as RestoreExecutor.wait refuses anything else
        return RecoveryResult(state="paused" if action == "pause" else "promoted", replay_lsn="0/9000100", stop_record=None, timeline=None)

    def promote(self) -> int:
        return 2


@pytest.fixture
def decide(tmp_path, monkeypatch):
    cluster = local_cluster(tmp_path)
    restores: list[dict] = []
    runner = FakeRunner()
    executor = FakeExecutor(restores, cluster)
    hook = SimpleNamespace(
        cluster=cluster,
        get_conn=lambda: SimpleNamespace(),
        restore_executor=lambda: executor,
        os_runner=lambda: runner,
        postmaster_runner=lambda: runner,
        postmaster_secrets=lambda: None,
        release=lambda: None,
    )
    monkeypatch.setattr(pitr_decide, "plan_while_paused", lambda *_a, **_k: RestorePlan.model_validate(MOVED_PLAN))
    from rewind_airflow.operators import pitr as pitr_operators

    monkeypatch.setattr(pitr_operators, "run_data_checks", lambda *_a, **_k: [CheckResult.model_validate(c) for c in CHECKS])
    monkeypatch.setattr(pitr_operators, "known_secret_values", lambda: [])
    monkeypatch.setattr(guard, "held_by", lambda *_a, **_k: None)

    operator = DecideAtTargetOperator(
        task_id="decide_at_target", cluster="ledger", request=DECIDE_REQUEST.model_dump(mode="json"), response_timeout=timedelta(hours=1)
    )
    operator.__dict__["hook"] = hook  # a cached_property
    notes: list[str] = []
    asked: list[str | None] = []
    monkeypatch.setattr(operator, "gate", lambda *_a, **_k: None)
    monkeypatch.setattr(DecideAtTargetOperator, "servicenow", property(lambda _self: SimpleNamespace()))
    monkeypatch.setattr(operator, "note", lambda _journal, text: notes.append(text))
    monkeypatch.setattr(operator, "ask", lambda _context, _journal, problem=None: asked.append(problem) or "asked")

    journal = RunJournal.load(cluster, RUN, dag_id="rewind_pitr__ledger")
    journal.set(
        plan=PLAN,
        timeline_before=1,
        change="CHG0030001",
        change_sys_id="c1",
        decide_recovery={"state": "paused", "replay_lsn": "0/9000028", "stop_record": "recovery stopping", "timeline": None},
        decide_checks=FAILED_CHECKS,
    )
    journal.record("started")
    journal.record("at_target")
    return SimpleNamespace(
        operator=operator, journal=journal, cluster=cluster, notes=notes, asked=asked, restores=restores, executor=executor
    )


def answer(option: str, minute: int, question: int | None = 1, **form) -> dict:
    return {
        "chosen_options": [option],
        "params_input": {**form, **({"question": question} if question is not None else {})},
        "responded_at": dt.datetime(2026, 11, 24, 2, minute, tzinfo=dt.timezone.utc),
        "responded_by_user": {"id": "7", "name": "Dana DBA"},
    }


def reload(d) -> RunJournal:
    return RunJournal.load(d.cluster, RUN)


class Deferred(Exception):
    pass


def test_a_refused_promote_then_a_move_then_a_promote_reapproved(decide, monkeypatch):
    context = {"run_id": RUN}
    assert decide.operator.answered(context, decide.journal, answer(PROMOTE, 30)) == "asked"
    assert decide.asked == [f"{PROMOTE} refused: a data check failed at {DECIDE_REQUEST.describe()}; move the target or abort"]
    refused = reload(decide).data["decisions"]
    assert refused == [
        {
            "answer": PROMOTE,
            "by": "Dana DBA (Airflow user id 7)",
            "at": "2026-11-24T02:30:00+00:00",
            "from": DECIDE_REQUEST.describe(),
            "question": 1,
            "refused": decide.asked[0],
        }
    ]

    move = answer(MOVE, 31, new_target_type="xid", new_target="7421", new_target_exclusive=True)
    assert decide.operator.answered(context, reload(decide), move) == "asked"
    journal = reload(decide)
    moved = journal.data["decisions"][-1]
    assert set(moved) == {"answer", "by", "at", "from", "question", "to"} and moved["to"].startswith("xid 7421")
    assert journal.data["pending_decision"] is None and journal.data["plan"] == MOVED_PLAN
    assert (journal.data["request"]["target_type"], journal.data["decide_checks"]) == ("xid", CHECKS)
    assert journal.data["decide_recovery"] == {"state": "paused", "replay_lsn": "0/9000100", "stop_record": None, "timeline": None}
    assert decide.restores[-1]["backup_set"] == "20261124-010000F" and journal.at("checked")
    assert "data checks 1/1 passed" in decide.notes[-1]
    assert journal.data["question"] == 2  # a new target: a new question

    # promoting at xid 7421, which the change did not approve (it approved a time): a follow-on change first
    context = {"run_id": RUN, "ti": SimpleNamespace(dag_id="rewind_pitr__ledger", task_id="decide_at_target")}
    opened: list[dict] = []
    monkeypatch.setattr(
        pitr_decide,
        "open_change",
        lambda _client, *, correlation, model, fields: (
            opened.append({"correlation": correlation, **fields()})
            or {"number": f"CHG003000{1 + len(opened)}", "sys_id": f"c{1 + len(opened)}", "created": True}
        ),
    )
    monkeypatch.setattr(pitr_decide, "run_url", lambda _context: "http://airflow/run")
    monkeypatch.setattr(pitr_decide, "set_run_note", lambda *_a, **_k: None)
    deferred: list = []

    def defer(*, trigger, method_name, timeout):
        deferred.append((trigger, method_name))
        raise Deferred

    monkeypatch.setattr(decide.operator, "defer", defer)
    with pytest.raises(Deferred):
        decide.operator.answered(context, journal, answer(PROMOTE, 32, question=2))
    [(trigger, method)] = deferred
    assert (trigger.change_number, method) == ("CHG0030002", "execute_reapproved")
    assert opened[0]["correlation"] == opened[0]["correlation_id"] == f"rewind:rewind_pitr__ledger:{RUN}:question-2:reapproval-1"
    assert "promote ledger at xid 7421" in opened[0]["short_description"] and "Follow-on to CHG0030001" in opened[0]["description"]
    assert "re-approval asked in CHG0030002" in decide.notes[-1] and not reload(decide).at("promoted")
    # rejected: consumed, asked again, still paused; a new Promote asks a new follow-on change
    assert decide.operator._reapproved(context, {"status": "rejected", "reason": "CHG0030002 was rejected"}) == "asked"
    assert "CHG0030002 was rejected" in decide.asked[-1] and reload(decide).data["reapproval"] is None
    with pytest.raises(Deferred):
        decide.operator.answered(context, reload(decide), answer(PROMOTE, 33, question=2))
    assert [o["correlation_id"].rsplit(":", 1)[-1] for o in opened] == ["reapproval-1", "reapproval-2"]
    assert deferred[-1][0].change_number == "CHG0030003"
    gated: list[str] = []
    monkeypatch.setattr(pitr_decide, "require_gate", lambda _c, sys_id, **_k: gated.append(sys_id) or SimpleNamespace(sys_id=sys_id))
    monkeypatch.setattr(pitr_decide, "start_implementing", lambda *_a, **_k: None)
    closed: list[str] = []
    monkeypatch.setattr(pitr_decide, "close_change", lambda _c, sys_id, **_k: closed.append(sys_id))
    result = decide.operator._reapproved(context, {"status": "approved", "reason": "CHG0030003 approved"})
    assert set(result) == {"asked", "decisions", "request", "plan", "recovery", "checks", "timeline", "aborted"}
    decided = DecisionResult.model_validate(result)
    assert decided.to_xcom() == result
    assert [d.answer for d in decided.decisions] == [PROMOTE, MOVE, PROMOTE, PROMOTE] and decided.decisions[0].refused
    assert "CHG0030002 was rejected" in decided.decisions[2].refused
    assert decided.decisions[-1].reapproval == "CHG0030003" and gated == ["c3"] and closed == ["c3"]
    assert (decided.timeline, decided.aborted, decided.request.target, decided.plan.backup_set) == (2, False, "7421", "20261124-010000F")


def test_an_abort_names_the_timeline_it_goes_back_to_and_is_the_result(decide):
    result = decide.operator.answered({"run_id": RUN}, decide.journal, answer(ABORT, 33))
    assert result["aborted"] is True and result["checks"] == [] and result["timeline"] == 2
    assert result["decisions"] == [
        {
            "answer": ABORT,
            "by": "Dana DBA (Airflow user id 7)",
            "at": "2026-11-24T02:33:00+00:00",
            "from": DECIDE_REQUEST.describe(),
            "timeline_before": 1,
            "question": 1,
            "to": result["decisions"][0]["to"],
        }
    ]
    assert result["request"]["target_type"] == "latest" and result["recovery"]["state"] == "promoted"
    assert decide.restores[-1]["target_timeline"] == "1"


def test_an_answer_already_in_the_journal_is_not_carried_out_again(decide, monkeypatch):
    decide.operator.answered({"run_id": RUN}, decide.journal, answer(PROMOTE, 30))  # refused: recorded with its time
    journal = reload(decide)
    journal.set(asked_at="2026-11-24T02:29:00+00:00")
    recorded = answer(PROMOTE, 30)
    detail = {
        "response_received": True,
        "responded_at": recorded["responded_at"].isoformat().replace("+00:00", "Z"),  # as the REST API writes it
        "chosen_options": [PROMOTE],
        "params_input": {},
        "responded_by_user": {"id": "7", "name": "Dana DBA"},
    }
    asked: list[tuple] = []
    rest = SimpleNamespace(hitl_detail=lambda *where: asked.append(where) or detail)
    monkeypatch.setattr(pitr_decide, "airflow_rest_client", lambda conn_id: rest if conn_id == "airflow_api" else None)
    context = {"run_id": RUN, "ti": SimpleNamespace(dag_id="rewind_pitr__ledger", task_id="decide_at_target")}
    assert decide.operator.unread_answer(context, journal) is None
    assert asked == [("rewind_pitr__ledger", RUN, "decide_at_target")]
    later = recorded["responded_at"] + timedelta(minutes=1)
    detail["responded_at"] = later.isoformat()
    unread = decide.operator.unread_answer(context, journal)
    assert unread["responded_at"] == later and unread["responded_by_user"] == {"id": "7", "name": "Dana DBA"}
    monkeypatch.setattr(pitr_decide, "airflow_rest_client", lambda conn_id: None)  # no REST connection: ask again
    assert decide.operator.unread_answer(context, journal) is None


def test_an_answer_the_change_refused_is_consumed_and_never_carried_out_by_a_later_try(decide, monkeypatch):
    """Issue: a Promote the gate refused stayed pending, and a later retry executed it."""
    from rewind.change_control import ChangeNotUsable

    decide.journal.record("checked")
    decide.journal.set(decide_checks=CHECKS)
    promoted: list[int] = []
    monkeypatch.setattr(decide.executor, "promote", lambda: promoted.append(1) or 2)
    monkeypatch.setattr(
        decide.operator,
        "gate",
        lambda *_a, **_k: (_ for _ in ()).throw(ChangeNotUsable("promote refused: CHG0030001 is outside its window")),
    )
    assert decide.operator.answered({"run_id": RUN}, decide.journal, answer(PROMOTE, 40)) == "asked"
    journal = reload(decide)
    assert journal.data["pending_decision"] is None and not promoted
    assert journal.data["decisions"][-1]["refused"] == "promote refused: CHG0030001 is outside its window"
    assert decide.asked[-1] == "promote refused: CHG0030001 is outside its window"
    # the change is fixed; a later try (a retry, a clear) asks again instead of promoting
    monkeypatch.setattr(decide.operator, "gate", lambda *_a, **_k: None)
    monkeypatch.setattr(pitr_decide, "airflow_rest_client", lambda _conn_id: None)
    ti = SimpleNamespace(dag_id="rewind_pitr__ledger", task_id="decide_at_target", xcom_pull=lambda **_k: None)
    assert decide.operator.execute_on_cluster({"run_id": RUN, "ti": ti}) == "asked"
    assert not promoted and not reload(decide).at("promoted")


@pytest.mark.parametrize(
    "server, refused",
    [
        ("false 0/9000028", "is no longer in recovery: it was promoted outside this run"),
        ("true 0/9400000", "has replayed past where this run paused it (0/9400000, paused at 0/9000028)"),
        ("true <where the run paused it>", None),
    ],
    ids=["promoted by hand", "resumed by hand", "still paused"],
)
def test_a_move_or_abort_never_restores_over_a_cluster_changed_outside_the_run(decide, monkeypatch, server, refused):
    import itertools

    # running when checked and when stopped, gone after the stop
    pids = itertools.cycle([4242, 4242, None])
    decide.executor.instance = SimpleNamespace(pid=lambda: next(pids))
    paused_at = lambda: reload(decide).data["decide_recovery"]["replay_lsn"]  # noqa: E731
    monkeypatch.setattr(pitr_decide, "run_sql", lambda *_a, **_k: server.replace("<where the run paused it>", paused_at()))
    for option, form in ((MOVE, {"new_target_type": "xid", "new_target": "7421", "new_target_exclusive": True}), (ABORT, {})):
        if refused is None:
            decide.operator.answered({"run_id": RUN}, reload(decide), answer(option, 41, reload(decide).data.get("question", 1), **form))
            continue
        with pytest.raises(pitr_decide.PitrStepFinal, match=f"{option} refused: ledger {refused}".replace("(", r"\(").replace(")", r"\)")):
            decide.operator.answered({"run_id": RUN}, reload(decide), answer(option, 41, **form))
        assert not decide.restores and reload(decide).data["pending_decision"] is None
        assert "Nothing was stopped or restored" in decide.notes[-1]
    if refused is None:
        assert len(decide.restores) == 2


def test_no_answer_within_the_timeout_fails_once_and_leaves_the_cluster_paused(decide):
    with pytest.raises(pitr_decide.PitrStepFinal) as failed:
        decide.operator._complete(
            {"run_id": RUN, "ti": SimpleNamespace(dag_id="rewind_pitr__ledger", task_id="decide_at_target")},
            {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"},
        )
    message = str(failed.value)
    assert message.startswith("no DBA answered within 1 h: ledger stays paused read-only at")
    assert "clear decide_at_target (it asks again)" in message and "nothing was promoted, moved or restored" in message
    assert not decide.restores and decide.notes[-1].endswith("nothing was promoted, moved or restored")
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(failed.value, AirflowFailException)  # not retried: a retry would only wait another timeout


@pytest.mark.parametrize(
    "given, refused",
    [
        (1, "question: this answer was given to question 1; the cluster is now at question 2, paused at xid 7421"),
        (None, "question: None is not a question number; this is question 2"),
        ("two", "question: 'two' is not a question number"),
    ],
    ids=["an earlier question", "no question", "not a number"],
)
def test_an_answer_to_another_question_is_refused_consumed_and_touches_nothing(decide, given, refused):
    """Issue: a Promote from a page left open at the first target applied to a target moved since."""
    move = answer(MOVE, 31, new_target_type="xid", new_target="7421", new_target_exclusive=True)
    decide.operator.answered({"run_id": RUN}, decide.journal, move)
    restores = len(decide.restores)
    assert decide.operator.answered({"run_id": RUN}, reload(decide), answer(ABORT, 33, question=given)) == "asked"
    assert decide.asked[-1].startswith(refused) and len(decide.restores) == restores
    journal = reload(decide)
    assert journal.data["pending_decision"] is None and journal.data["decisions"][-1]["refused"].startswith(refused)


def test_a_move_within_the_approved_window_promotes_without_reapproval(decide, monkeypatch):
    decide.operator.request = DECIDE_REQUEST.model_copy(update={"approved_window_s": 60}).model_dump(mode="json")
    monkeypatch.setattr(decide.operator, "ask_reapproval", lambda *_a, **_k: pytest.fail("asked for a re-approval inside the window"))
    move = answer(MOVE, 31, new_target_type="time", new_target="2026-11-24 02:14:00+00", new_target_exclusive=False)
    decide.operator.answered({"run_id": RUN}, decide.journal, move)
    result = decide.operator.answered({"run_id": RUN}, reload(decide), answer(PROMOTE, 32, question=2))
    assert result["timeline"] == 2 and reload(decide).at("promoted")


def test_on_a_clone_a_move_restores_the_clone_only_a_promote_cuts_over_and_an_abort_removes_the_clone(decide, monkeypatch, tmp_path):
    """Clone mode before the cutover: what is paused at the target is the clone; production serves."""
    journal = decide.journal
    journal.data["steps"].pop("started")  # the clone was started, not production
    journal.set(mode="clone", clone_port=54999)
    journal.record("clone_started")
    clone_restores: list[dict] = []
    clone = FakeExecutor(clone_restores, decide.cluster)
    monkeypatch.setattr(decide.operator, "clone_executor", lambda _context, _journal: clone)
    production_promoted: list[int] = []
    monkeypatch.setattr(decide.executor, "promote", lambda: production_promoted.append(1) or 3)
    context = {"run_id": RUN}

    move = answer(MOVE, 31, new_target_type="xid", new_target="7421", new_target_exclusive=True)
    assert decide.operator.answered(context, reload(decide), move) == "asked"
    assert not decide.restores and [r["restore_type"] for r in clone_restores] == ["xid"]  # production not touched
    journal = reload(decide)
    assert journal.data["clone_recovery"]["replay_lsn"] == "0/9000100" and journal.data["clone_checks"] == CHECKS
    assert "the clone of ledger is paused again, read-only (production serving)" in decide.notes[-1]

    cut_over: list[str] = []
    monkeypatch.setattr(decide.operator, "cutover", lambda _context, j: cut_over.append(j.data["clone_recovery"]["replay_lsn"]))
    journal.set(reapproved=[journal.data["request"]])  # the moved target approved
    result = decide.operator.answered(context, journal, answer(PROMOTE, 32, question=2))
    assert cut_over == ["0/9000100"] and production_promoted == [1] and result["timeline"] == 3

    # an abort on another run's clone: the clone is stopped and removed, production never stopped
    removed: list = []
    monkeypatch.setattr(pitr_decide, "remove_clone", lambda paths: removed.append(paths.clone_dir.name))
    journal = reload(decide)
    journal.data["steps"].pop("promoted")  # as if that promote had not happened: the clone paused again
    journal.set(decisions=[], question=1, request=None)
    result = decide.operator.answered(context, reload(decide), answer(ABORT, 33))
    assert result["aborted"] is True and removed and ".rewind-clone-" in removed[0]
    [abort] = result["decisions"]
    assert abort["on_clone"] is True and "to" not in abort and production_promoted == [1]
    assert describe_decision(DecisionRecord.model_validate(abort)).endswith(
        "the clone removed; production, never stopped, serves on timeline 1 as before"
    )
    assert reload(decide).data["clone_removed"]
