"""Cancellation, finalize, idempotency (dsl.md §6.9, §6.10) and the fold's reading of events."""

from __future__ import annotations

import copy
from typing import Any

import engine
from engine import State, terminal_outcome
from tests.engine.sim import NOW, Sim, decisions, load


def _running_parent_and_child() -> tuple[Sim, Sim]:
    parent = Sim(load("cancel_parent"))
    parent.start()
    parent.done("start")
    playbook_command = parent.one("child")
    parent.started(playbook_command)
    child = Sim(
        load("playbook_child"),
        payload=playbook_command.context["args"],
        execution_id=2000,
        parent_execution_id=parent.execution_id,
    )
    child.start()
    child.done("start")
    child.started(child.one("double"))
    return parent, child


def test_cancel_with_cascade_stops_parent_and_child() -> None:
    parent, child = _running_parent_and_child()
    parent_open = [c.command_id for c in parent.open()]
    assert [c.step for c in parent.open()] == ["child", "sleeper"]

    cancelled = parent.cancel(reason="stop", cascade=True)
    assert decisions(cancelled) == [
        ("execution.cancelled", "cancel"),
        ("command.cancelled", "child"),
        ("command.cancelled", "sleeper"),
    ]
    root = cancelled.events[0]
    assert root["status"] == "CANCELLED"
    assert root["context"] == {
        "reason": "stop",
        "cascade": True,
        "cancelled_by": "api",
        "parent_cancel_id": None,
    }
    assert root["meta"]["actionable"] is True and root["meta"]["reason"] == "stop"
    assert [e["context"]["command_id"] for e in cancelled.events[1:]] == parent_open
    assert all(e["status"] == "CANCELLED" for e in cancelled.events[1:])
    assert cancelled.status == "CANCELLED"
    assert parent.state.terminal == "CANCELLED" and parent.open() == []

    # the server walks parent_execution_id and cancels each descendant the same way
    cascaded = child.cancel(reason="stop", cascade=True, parent_cancel_id=parent.execution_id)
    assert decisions(cascaded) == [
        ("execution.cancelled", "cancel"),
        ("command.cancelled", "double"),
    ]
    assert cascaded.events[0]["context"]["parent_cancel_id"] == "1000"
    assert child.state.terminal == "CANCELLED" and child.open() == []

    # late events of tools that kept running are stored and drive nothing
    sleeper = next(c for c in parent.commands.values() if c.step == "sleeper")
    late = parent.post(parent.worker_event(sleeper, "call.done", "COMPLETED", {"result": {}}))
    assert late.events == [] and not late.drove_pass
    # cancelling again is a no-op
    assert parent.cancel().events == []


def test_finalize_fails_the_execution_and_cancels_open_commands() -> None:
    parent, _ = _running_parent_and_child()
    finalized = parent.finalize(reason="Abandoned or timed out")
    assert decisions(finalized) == [
        ("playbook.failed", "tests/cancel_parent"),
        ("command.cancelled", "child"),
        ("command.cancelled", "sleeper"),
    ]
    assert finalized.events[0]["context"]["error"] == "Abandoned or timed out"
    assert finalized.status == "FAILED"
    assert parent.finalize().events == []


def test_a_repeated_terminal_has_one_effect() -> None:
    sim = Sim(load("steps_tools"))
    sim.start()
    command = sim.one("start")
    call_done = sim.worker_event(
        command, "call.done", "COMPLETED", {"result": {"status": "success", "data": {"count": 1}}}
    )
    first = sim.post(copy.deepcopy(call_done))
    assert decisions(first) == [
        ("step.exit", "start"),
        ("step.enter", "fetch"),
        ("command.issued", "fetch"),
    ]
    # a second call.done from another worker (a reclaim race), marked by append_events
    marked = copy.deepcopy(call_done)
    marked["meta"] = dict(marked["meta"], ignored="duplicate_terminal", producer_event_id="1")
    assert sim.post(marked).events == []
    # ... and one the engine must recognise by itself
    unmarked = copy.deepcopy(call_done)
    unmarked["meta"] = dict(unmarked["meta"], producer_event_id="2")
    repeat = sim.post(unmarked)
    assert repeat.events == [] and not repeat.drove_pass
    # command.completed after call.done is bookkeeping
    completed = sim.worker_event(command, "command.completed", "COMPLETED", {})
    assert sim.post(completed).events == []
    assert [e["node_name"] for e in sim.engine_events("step.enter")] == ["start", "fetch"]


def test_command_completed_alone_is_the_terminal() -> None:
    sim = Sim(load("steps_tools"))
    sim.start()
    command = sim.one("start")
    completed = sim.post(sim.worker_event(command, "command.completed", "COMPLETED", {}))
    assert decisions(completed) == [
        ("step.exit", "start"),
        ("step.enter", "fetch"),
        ("command.issued", "fetch"),
    ]
    assert sim.state.steps["start"].data is None
    # a call.done arriving after it is a later terminal: ignored
    late = sim.post(sim.worker_event(command, "call.done", "COMPLETED", {"result": {"x": 1}}))
    assert late.events == []


def test_command_cancelled_by_a_worker_is_an_error_outcome() -> None:
    sim = Sim(load("error_to_end"))
    sim.start()
    command = sim.one("start")
    decision = sim.post(
        sim.worker_event(command, "command.cancelled", "CANCELLED", {"reason": "shutdown"})
    )
    assert decisions(decision) == [
        ("step.exit", "start"),
        ("playbook.completed", "tests/error_to_end"),
    ]
    assert decision.events[0]["context"]["outcome"] == "error"


def test_noetl_worker_shapes() -> None:
    sim = Sim(load("errors"))
    sim.start()
    sim.done("start")
    charge = sim.one("charge")
    # NoETL workers send worker step.enter/step.exit: stored, never folded
    for event_type in ("step.enter", "command.heartbeat", "step.exit", "something.else"):
        informative = sim.post(sim.worker_event(charge, event_type, "RUNNING", {}))
        assert informative.events == [] and not informative.drove_pass
    assert sim.state.steps["charge"].status == "issued"
    # a tool that returned an error arrives as call.done with status error, error a string
    result = {"status": "error", "context": {"status": "error", "data": {"status_code": 402}}}
    routed = sim.post(
        sim.worker_event(
            charge, "call.done", "COMPLETED", {"result": result, "error": "payment required"}
        )
    )
    assert routed.events[0]["context"]["outcome"] == "error"
    assert routed.events[0]["context"]["error"] == {
        "kind": "error",
        "message": "payment required",
        "retryable": False,
    }
    assert routed.events[0]["context"]["next"] == ["refund"]


def test_terminal_outcome_reads_every_result_shape() -> None:
    def event(event_type: str, context: dict[str, Any]) -> dict[str, Any]:
        return {"event_type": event_type, "context": context}

    wrapped = {"status": "success", "context": {"status": "success", "data": {"a": 1}}}
    assert terminal_outcome(event("call.done", {"result": wrapped})).data == {"a": 1}
    legacy = {"status": "COMPLETED", "context": {"message": "hi", "count": 3}}
    outcome = terminal_outcome(event("call.done", {"result": legacy}))
    assert (outcome.status, outcome.data) == ("ok", {"message": "hi", "count": 3})
    reference = {"status": "COMPLETED", "reference": {"uri": "s3://x"}}
    assert terminal_outcome(event("call.done", {"result": reference})).data == reference
    assert terminal_outcome(event("call.done", {"result": {"data": [1]}})).data == [1]
    assert terminal_outcome(event("call.done", {"result": 5})).data == 5
    for status in ("error", "FAILED", "Failure", "timeout"):
        failed = terminal_outcome(event("call.done", {"result": {"status": status}}))
        assert failed.status == "error", status
    error = terminal_outcome(
        event("call.error", {"error": {"kind": "timeout", "message": "slow", "retryable": True}})
    )
    assert error.status == "error" and error.error == {
        "kind": "timeout",
        "message": "slow",
        "retryable": True,
    }
    bare = terminal_outcome(event("command.failed", {}))
    assert bare.status == "error" and bare.error is not None and bare.error["kind"] == "error"
    assert terminal_outcome(event("command.completed", {"status": "success"})).data is None


def test_events_after_the_end_drive_nothing() -> None:
    sim = Sim(load("error_to_end"))
    sim.start()
    command = sim.one("start")
    sim.error(command)
    assert sim.state.terminal == "COMPLETED"
    late = sim.post(sim.worker_event(command, "call.done", "COMPLETED", {"result": {}}))
    assert late.events == [] and not late.drove_pass


def test_a_stale_snapshot_gives_the_same_decisions() -> None:
    sim = Sim(load("loop_parallel"))
    sim.start()
    [zero, _] = sim.open("start")
    # the worker posts command.started without a pass; the cached state lags behind
    sim.started(zero)
    stale = State.from_json(sim.state.to_json())
    call_done = sim.worker_event(zero, "call.done", "COMPLETED", {"result": {"data": 1}})
    call_done["event_id"] = str(99_000_001)
    fresh = engine.fold_all(sim.log)
    kwargs: dict[str, Any] = {"ids": iter(range(1, 100)).__next__, "now": NOW}
    from_snapshot = engine.advance(sim.playbook, sim.execution, stale, [call_done], **kwargs)
    kwargs["ids"] = iter(range(1, 100)).__next__
    from_scratch = engine.advance(sim.playbook, sim.execution, fresh, [call_done], **kwargs)
    assert from_snapshot.events == from_scratch.events
    assert from_snapshot.state.to_json() == from_scratch.state.to_json()
    # folding a log twice changes nothing: events at or below the position are skipped
    again = engine.fold_all(sim.log)
    engine.fold(again, sim.log)
    assert again.to_json() == engine.fold_all(sim.log).to_json()


def test_describe_for_the_status_route() -> None:
    sim = Sim(load("set_ctx"))
    sim.start()
    sim.done("start", {"total": 7})
    view = engine.describe(sim.playbook, sim.state)
    assert view["current_step"] == "check"
    assert view["completed_steps"] == ["start"]
    assert view["variables"]["counter"] == 2
    assert view["variables"]["start"] == {"total": 7}


def test_choose_pool_first_match_wins() -> None:
    playbook = load("steps_tools")
    assert engine.choose_pool("gpu", playbook, "tests/x") == "gpu"
    assert engine.choose_pool(None, playbook, "system/maintenance") == "system"
    assert engine.choose_pool(None, playbook, "tests/x", "default") == "default"
    document = dict(playbook.document, executor={"pool": "fast"})
    assert engine.choose_pool(None, engine.load_playbook(document), "system/x") == "fast"
