"""Engine scenarios: one playbook per feature, each asserting the exact sequence of decisions.

A `Sim` stores every decided event with an id and plays the worker; after each step it checks
that the engine's state equals a fresh fold of the whole log (the snapshot rule of dsl.md §6).
"""

from __future__ import annotations

from tests.engine.sim import Sim, decisions, load

START = "playbook.started"


def test_steps_tools_and_input_binding() -> None:
    sim = Sim(load("steps_tools"), payload={"greeting": "hi"})
    first = sim.start()
    assert decisions(first) == [
        (START, "tests/steps_tools"),
        ("step.enter", "start"),
        ("command.issued", "start"),
    ]
    started = first.events[0]
    assert started["status"] == "STARTED"
    assert started["context"]["workload"] == {
        "greeting": "hi",  # the payload replaces the whole top-level value
        "repeat": 2,
        "api": "http://127.0.0.1:8090",
    }
    assert started["context"]["pool"] == "default"
    assert all("event_id" not in e for e in first.events)
    assert all(e["meta"]["source"] == "engine" for e in first.events)

    [command] = first.commands
    assert command.tool_kind == "python"
    assert command.pool == "default"
    assert command.event_index == 2
    assert command.meta == {
        "command_id": command.command_id,
        "step": "start",
        "tool_kind": "python",
        "pool": "default",
    }
    assert command.context["args"] == {"word": "hi", "times": 2}
    assert command.context["tool_config"]["kind"] == "python"
    assert "input" not in command.context["tool_config"]
    assert command.context["deferred"] == []
    assert command.context["render_context"]["execution_id"] == "1000"
    issued = first.events[2]
    assert issued["status"] == "PENDING"
    assert issued["node_type"] == "python"
    assert issued["context"] == command.context

    sim.started(command)  # command.started drives no pass
    assert sim.last is not None and sim.last.events == [] and not sim.last.drove_pass

    second = sim.done("start", {"message": "hi hi", "count": 2})
    assert decisions(second) == [
        ("step.exit", "start"),
        ("step.enter", "fetch"),
        ("command.issued", "fetch"),
    ]
    exit_ = second.events[0]
    assert exit_["status"] == "COMPLETED"
    assert exit_["context"] == {
        "outcome": "ok",
        "event": "call.done",
        "handled": True,
        "next": ["fetch"],
    }
    assert second.events[1]["context"] == {"from": ["start"]}
    fetch = second.commands[0].context
    # `{{ start.message }}` and `{{ start.data.count }}` (the data alias) both work
    assert fetch["tool_config"]["json"] == {"text": "hi hi", "n": 2}
    assert fetch["tool_config"]["url"] == "http://127.0.0.1:8090/echo"
    # a string that mentions keychain is left to the worker
    assert fetch["tool_config"]["headers"] == {"Authorization": "Bearer {{ keychain.api.token }}"}
    assert fetch["deferred"] == ["/tool_config/headers/Authorization"]
    assert "keychain" not in fetch["render_context"]

    third = sim.done("fetch", {"status_code": 200, "headers": {}, "data": {}, "body": {}})
    assert decisions(third) == [
        ("step.exit", "fetch"),
        ("step.enter", "finish"),
        ("command.issued", "finish"),
    ]
    assert third.commands[0].tool_kind == "noop"  # an omitted tool is noop
    last = sim.done("finish", {})
    assert decisions(last) == [("step.exit", "finish"), ("playbook.completed", "tests/steps_tools")]
    assert last.status == "COMPLETED"
    assert sim.state.terminal == "COMPLETED"


def test_typed_rendering_of_the_input() -> None:
    sim = Sim(load("typed_rendering"))
    [command] = sim.start().commands
    assert command.context["args"] == {
        "limit": 25,
        "ids": [1, 2],
        "label": "1-2",
        "forced": "x007",
        "missing": None,
        "whole": {"verbose": False, "depth": 3},
        "flag": False,
        "digits": "007",
        "obj": {"k": 1},
        "pylit": {"verbose": False, "depth": 3},
        "text": "3 items",
        "x_key": 20,
    }


def test_next_in_every_form() -> None:
    sim = Sim(load("next_forms"))
    sim.start()
    assert decisions(sim.done("start")) == [
        ("step.exit", "start"),
        ("step.enter", "fan"),
        ("command.issued", "fan"),
    ]
    # a list of names is inclusive: both arcs taken
    assert decisions(sim.done("fan")) == [
        ("step.exit", "fan"),
        ("step.enter", "left"),
        ("command.issued", "left"),
        ("step.enter", "right"),
        ("command.issued", "right"),
    ]
    # a list of arcs is exclusive: the first true arc wins; a bare expression works as `when`;
    # `args` is an alias of the arc's `set`; untaken targets are marked not_taken
    left = sim.done("left")
    assert decisions(left) == [
        ("ctx.updated", "left"),
        ("step.exit", "left"),
        ("step.skipped", "small"),
        ("step.skipped", "fallback"),
        ("step.enter", "big"),
        ("command.issued", "big"),
    ]
    assert left.events[0]["context"]["values"] == {"size": "big"}
    assert left.events[0]["status"] == "CONTEXT"
    assert left.events[1]["context"]["next"] == ["big"]
    assert left.events[2]["context"] == {"reason": "not_taken", "by": "left"}
    # spec.next_mode: inclusive takes every true arc, in order
    right = sim.done("right")
    assert decisions(right) == [
        ("ctx.updated", "right"),
        ("step.exit", "right"),
        ("step.skipped", "r3"),
        ("step.enter", "r1"),
        ("command.issued", "r1"),
        ("step.enter", "r2"),
        ("command.issued", "r2"),
    ]
    assert right.events[1]["context"]["next"] == ["r1", "r2"]
    # the router form; `end` is a target that only ends the branch
    big = sim.done("big")
    assert decisions(big) == [
        ("ctx.updated", "big"),
        ("step.exit", "big"),
        ("step.enter", "r4"),
        ("command.issued", "r4"),
    ]
    assert big.events[0]["context"]["values"] == {"via": "call.done"}
    assert big.events[1]["context"]["next"] == ["r4"]
    sim.run_all()
    assert sim.state.terminal == "COMPLETED"
    assert sim.state.values == {"size": "big", "r2_from": "right", "via": "call.done"}
    entered = [e["node_name"] for e in sim.engine_events("step.enter")]
    assert entered == ["start", "fan", "left", "right", "big", "r1", "r2", "r4"]


def test_step_when_guard_bypasses_the_step() -> None:
    sim = Sim(load("when_guard"))
    sim.start()
    after_start = sim.done("start")
    assert decisions(after_start) == [
        ("step.exit", "start"),
        ("step.skipped", "guarded"),
        ("step.enter", "open_gate"),
        ("command.issued", "open_gate"),
        ("step.enter", "after_guard"),
        ("command.issued", "after_guard"),
    ]
    skipped = after_start.events[1]
    assert skipped["status"] == "SKIPPED"
    # arcs without `when` are taken with output.status == "skipped"; the gated one is not
    assert skipped["context"] == {"reason": "when", "by": ["start"], "next": ["after_guard"]}
    assert decisions(sim.done("open_gate")) == [("step.exit", "open_gate")]
    assert decisions(sim.done("after_guard")) == [
        ("step.exit", "after_guard"),
        ("playbook.completed", "tests/when_guard"),
    ]
    assert sim.state.steps["guarded"].outcome == "skipped"
    assert "never" not in [e["node_name"] for e in sim.engine_events("step.enter")]


def test_set_and_ctx_updated() -> None:
    sim = Sim(load("set_ctx"))
    sim.start()
    after = sim.done("start", {"total": 7})
    assert decisions(after) == [
        ("ctx.updated", "start"),
        ("step.exit", "start"),
        ("step.enter", "check"),
        ("command.issued", "check"),
    ]
    updated = after.events[0]["context"]
    call_done = next(e for e in sim.log if e["event_type"] == "call.done")
    assert updated["step"] == "start"
    assert updated["gen"] == call_done["event_id"]  # the event that finished the step
    assert updated["values"] == {
        "counter": 2,
        # nested keys create and update mappings; the whole top-level value is written
        "page": {"size": 10, "next": 7, "last": True},
        "seen_status": "ok",
        "seen_event": "call.done",
        "same_context": 1,  # every value of one set renders before any is applied
        "arc_saw": 20,  # the arc's set sees step.set's values
    }
    # later templates see set values as bare names and under ctx/workload
    assert after.commands[0].context["args"] == {
        "c": 2,
        "p": {"size": 10, "next": 7, "last": True},
        "w": 2,
        "x": 20,
    }


def test_sequential_loop_one_item_at_a_time() -> None:
    sim = Sim(load("loop_sequential"))
    first = sim.start()
    assert decisions(first) == [
        (START, "tests/loop_sequential"),
        ("step.enter", "start"),
        ("command.issued", "start"),
    ]
    enter = first.events[1]["context"]
    assert enter == {
        "from": [],
        "iterations": 3,
        "iterator": "city",
        "mode": "sequential",
        "max_in_flight": 100,
        "items": ["paris", "rome", "oslo"],
    }
    seen = []
    for index, city in enumerate(["paris", "rome", "oslo"]):
        command = sim.one("start")
        assert command.meta["iteration_index"] == index
        assert command.meta["iteration_total"] == 3
        assert command.meta["iterator_step"] == "start"
        assert command.meta["item_var"] == "city"
        args = command.context["args"]
        assert args == {
            "city": city,  # a loop's tool gets the item and its position as input
            "_index": index,
            "_total": 3,
            "name": city,
            "i": index,
            "n": 3,
            "last": index == 2,
        }
        seen.append(decisions(sim.done(command, {"upper": city.upper()})))
    assert seen[0] == [("command.issued", "start")]
    assert seen[1] == [("command.issued", "start")]
    assert seen[2] == [
        ("loop.done", "start"),
        ("ctx.updated", "start"),
        ("step.exit", "start"),
        ("step.enter", "report"),
        ("command.issued", "report"),
    ]
    loop_done = sim.engine_events("loop.done")[0]
    assert loop_done["status"] == "COMPLETED"
    assert loop_done["context"] == {"iterations": 3, "failed": 0}
    assert sim.state.values == {"visited": ["PARIS", "ROME", "OSLO"]}
    exit_ = sim.engine_events("step.exit")[0]["context"]
    assert exit_["event"] == "loop.done"
    sim.run_all()
    assert sim.state.terminal == "COMPLETED"


def test_parallel_loop_honours_max_in_flight_and_routes_failures() -> None:
    sim = Sim(load("loop_parallel"))
    first = sim.start()
    # max_in_flight is a template rendered at entry: two iterations at once
    assert decisions(first) == [
        (START, "tests/loop_parallel"),
        ("step.enter", "start"),
        ("command.issued", "start"),
        ("command.issued", "start"),
    ]
    assert first.events[1]["context"]["max_in_flight"] == 2
    assert [c.meta["iteration_index"] for c in first.commands] == [0, 1]
    zero, one = first.commands
    assert zero.context["args"] == {"item": 1, "_index": 0, "_total": 5, "x": 1}
    # an iteration's error does not stop the loop; a slot frees, the next item goes out
    assert decisions(sim.error(one)) == [("command.issued", "start")]
    assert len(sim.open("start")) == 2
    assert decisions(sim.done(zero, 1)) == [("command.issued", "start")]
    two, three = sim.open("start")
    assert decisions(sim.done(three, 16)) == [("command.issued", "start")]
    assert decisions(sim.done(two, 9)) == []  # nothing left to issue
    [four] = sim.open("start")
    assert four.meta["iteration_index"] == 4
    last = sim.done(four, 25)
    assert decisions(last) == [
        ("loop.done", "start"),
        ("step.exit", "start"),
        ("step.skipped", "save"),
        ("step.enter", "report"),
        ("command.issued", "report"),
    ]
    loop_done, exit_ = last.events[0], last.events[1]
    assert loop_done["status"] == "FAILED"
    assert loop_done["context"] == {"iterations": 5, "failed": 1}
    assert exit_["status"] == "FAILED"
    assert exit_["context"]["handled"] is True
    assert exit_["context"]["error"]["kind"] == "iterations_failed"
    assert exit_["context"]["error"]["errors"] == [{"index": 1, "message": "boom"}]
    # the loop's data is the iteration data in item order, null for the failed one
    assert last.commands[0].context["args"] == {"n": 1, "d": [1, None, 9, 16, 25]}
    sim.run_all()
    assert sim.state.terminal == "COMPLETED"


def test_parallel_loop_all_ok_takes_the_success_arc() -> None:
    sim = Sim(load("loop_parallel"), payload={"width": 10})
    first = sim.start()
    assert len(first.commands) == 5
    for command in first.commands[:-1]:
        assert decisions(sim.done(command, command.context["args"]["x"] ** 2)) == []
    last = sim.done(first.commands[-1], 25)
    assert decisions(last) == [
        ("loop.done", "start"),
        ("step.exit", "start"),
        ("step.skipped", "report"),
        ("step.enter", "save"),
        ("command.issued", "save"),
    ]
    assert last.commands[0].context["args"] == {"squares": [1, 4, 9, 16, 25]}


def test_empty_loop_is_done_at_once() -> None:
    sim = Sim(load("loop_empty"))
    first = sim.start()
    # `in` may be a string holding a JSON array
    assert decisions(first) == [
        (START, "tests/loop_empty"),
        ("step.enter", "start"),
        ("loop.done", "start"),
        ("step.exit", "start"),
        ("step.enter", "after"),
        ("command.issued", "after"),
    ]
    assert first.events[2]["context"] == {"iterations": 0, "failed": 0}


def test_join_waits_for_every_live_inbound_step() -> None:
    sim = Sim(load("join"))
    sim.start()
    sim.done("start")
    assert decisions(sim.done("a", "A")) == [
        ("step.exit", "a"),
        ("step.enter", "a2"),
        ("command.issued", "a2"),
    ]
    # merge has a token from b, but a2 is in flight: it waits
    assert decisions(sim.done("b", "B")) == [("step.exit", "b")]
    assert sim.state.steps["merge"].tokens == ["b"]
    joined = sim.done("a2")
    assert decisions(joined) == [
        ("step.exit", "a2"),
        ("step.enter", "merge"),
        ("command.issued", "merge"),
    ]
    assert joined.events[1]["context"] == {"from": ["b", "a2"]}  # entered once, both tokens
    assert joined.commands[0].context["args"] == {"a": "A", "b": "B"}
    sim.run_all()
    assert sim.state.terminal == "COMPLETED"
    assert [e["node_name"] for e in sim.engine_events("step.enter")].count("merge") == 1


def test_join_never_waits_for_an_exclusive_loser() -> None:
    sim = Sim(load("join_exclusive"))
    sim.start()
    assert decisions(sim.done("start")) == [
        ("step.exit", "start"),
        ("step.skipped", "a"),
        ("step.enter", "b"),
        ("command.issued", "b"),
    ]
    assert decisions(sim.done("b")) == [
        ("step.exit", "b"),
        ("step.enter", "merge"),
        ("command.issued", "merge"),
    ]


def test_back_edge_paginates() -> None:
    sim = Sim(load("pagination"))
    sim.start()
    sim.done("start")
    pages = []
    for page in (1, 2, 3):
        command = sim.one("fetch_page")
        pages.append(command.context["tool_config"]["params"]["page"])
        sim.done(command, {"status_code": 200, "data": {"has_more": page < 3}})
        check = sim.done("check")
        if page < 3:
            assert decisions(check) == [
                ("ctx.updated", "check"),
                ("step.exit", "check"),
                ("step.skipped", "done"),
                ("step.enter", "fetch_page"),
                ("command.issued", "fetch_page"),
            ]
        else:
            assert decisions(check) == [
                ("ctx.updated", "check"),
                ("step.exit", "check"),
                ("step.skipped", "fetch_page"),
                ("step.enter", "done"),
                ("command.issued", "done"),
            ]
        assert check.events[0]["context"]["values"] == {"page": page + 1}
    assert pages == [1, 2, 3]
    assert sim.one("done").context["args"] == {"last": 4}
    sim.run_all()
    assert sim.state.terminal == "COMPLETED"
    assert [e["node_name"] for e in sim.engine_events("step.enter")].count("fetch_page") == 3


def test_workbook_tools_are_resolved() -> None:
    sim = Sim(load("workbook"))
    [command] = sim.start().commands
    assert command.tool_kind == "python"
    assert command.context["tool_config"] == {
        "kind": "python",
        "code": "result = greeting + ' ' + who",
    }
    # the step's input is merged over the entry's own input
    assert command.context["args"] == {"greeting": "hello", "who": "world"}
    [pipeline] = sim.done(command, "hello world").commands
    assert pipeline.tool_kind == "task_sequence"
    assert pipeline.context["tool_config"] == [
        {
            "label_one": {
                "kind": "python",
                "code": "result = greeting + ' ' + who",
                "input": {"greeting": "hello", "who": "{{ start }}"},
            }
        },
        {
            "greet": {
                "kind": "python",
                "code": "result = greeting + ' ' + who",
                "input": {"greeting": "hello", "who": "nobody"},
            }
        },
    ]
    # the worker renders pipeline tasks; it gets the names they reference
    assert pipeline.context["render_context"]["start"] == "hello world"
    assert pipeline.context["deferred"] == []


def test_pipeline_and_policy_tools() -> None:
    sim = Sim(load("pipeline"))
    [command] = sim.start().commands
    assert command.tool_kind == "task_sequence"
    labels = [next(iter(task)) for task in command.context["tool_config"]]
    assert labels == ["fetch", "keep"]
    assert command.context["args"] == {"limit": 10}
    render_context = command.context["render_context"]
    assert render_context["api"] == "http://127.0.0.1:8090"
    assert render_context["page"] == 1
    assert render_context["limit"] == 10
    data = {
        "fetch": {"status_code": 200, "data": {"items": []}},
        "keep": {"kept": [1, 2]},
        "_context_updates": {"last_page": 1},
    }
    after = sim.done(command, data)
    assert decisions(after) == [
        ("ctx.updated", "start"),
        ("step.exit", "start"),
        ("step.enter", "single"),
        ("command.issued", "single"),
    ]
    # _context_updates are persisted with step.set; `start.kept` is the merged task data
    assert after.events[0]["context"]["values"] == {"last_page": 1, "kept_count": 2}
    [single] = after.commands
    # a single tool with policy rules goes as a one-task sequence labelled with the step
    assert single.tool_kind == "task_sequence"
    assert [next(iter(task)) for task in single.context["tool_config"]] == ["single"]
    final = sim.done(single, {"single": {"v": 5}})
    # ... and its data is unwrapped back to the task's data
    assert final.commands[0].context["args"] == {"v": 5, "last": 1, "k": 2}


def test_playbook_tool_starts_a_child_with_its_parent_id() -> None:
    parent = Sim(load("playbook_parent"))
    [command] = parent.start().commands
    assert command.tool_kind == "playbook"
    assert command.context["tool_config"] == {
        "kind": "playbook",
        "path": "tests/playbook_child",
        "result_step": "double",
    }
    assert command.context["args"] == {"n": 3}
    # the worker posts execute with parent_execution_id; the server starts the child
    child = Sim(
        load("playbook_child"),
        payload=command.context["args"],
        execution_id=2000,
        parent_execution_id=parent.execution_id,
    )
    first = child.start()
    assert first.events[0]["context"]["parent_execution_id"] == "1000"
    assert first.events[0]["context"]["workload"] == {"n": 3}
    assert all(e["parent_execution_id"] == "1000" for e in first.events)
    child.done("start")
    assert child.one("double").context["args"] == {"n": 3}
    child.done("double", 6)
    assert child.state.terminal == "COMPLETED"
    # the parent sees an ordinary command
    after = parent.done(command, {"execution_id": "2000", "status": "COMPLETED", "data": 6})
    assert decisions(after) == [
        ("step.exit", "start"),
        ("step.enter", "use"),
        ("command.issued", "use"),
    ]
    assert after.commands[0].context["args"] == {"v": 6, "child": "2000"}


def test_handled_error_completes() -> None:
    sim = Sim(load("errors"))
    sim.start()
    sim.done("start")
    payment_required = {"kind": "http_status", "message": "HTTP 402", "retryable": False}
    routed = sim.error("charge", payment_required, data={"status_code": 402, "headers": {}})
    # an arc without `when` is a success path; the 402 arc handles the error
    assert decisions(routed) == [
        ("step.exit", "charge"),
        ("step.skipped", "receipt"),
        ("step.enter", "refund"),
        ("command.issued", "refund"),
    ]
    exit_ = routed.events[0]
    assert exit_["status"] == "FAILED"
    assert exit_["context"]["outcome"] == "error"
    assert exit_["context"]["event"] == "call.error"
    assert exit_["context"]["handled"] is True
    assert exit_["context"]["next"] == ["refund"]
    sim.done("side")
    last = sim.done("refund")
    assert decisions(last) == [("step.exit", "refund"), ("playbook.completed", "tests/errors")]


def test_unhandled_error_drains_then_fails_naming_the_step() -> None:
    sim = Sim(load("errors"))
    sim.start()
    sim.done("start")
    outage = {"kind": "http_status", "message": "HTTP 500", "retryable": True}
    failed = sim.error("charge", outage, data={"status_code": 500, "headers": {}})
    # no arc taken: unhandled; `side` is still running, so nothing ends yet
    assert decisions(failed) == [
        ("step.exit", "charge"),
        ("step.skipped", "receipt"),
        ("step.skipped", "refund"),
    ]
    assert failed.events[0]["context"]["handled"] is False
    assert failed.events[0]["context"]["next"] == []
    assert failed.status is None
    last = sim.done("side")
    assert decisions(last) == [("step.exit", "side"), ("playbook.failed", "tests/errors")]
    failure = last.events[1]
    assert failure["status"] == "FAILED"
    assert failure["context"] == {
        "error": "Failed steps: charge",
        "failed_steps": ["charge"],
        "errors": {"charge": "HTTP 500"},
    }
    assert failure["error"] == "Failed steps: charge"
    assert last.status == "FAILED"
    assert "receipt" not in [e["node_name"] for e in sim.engine_events("step.enter")]


def test_error_routed_to_end_is_handled() -> None:
    sim = Sim(load("error_to_end"))
    sim.start()
    last = sim.error("start")
    assert decisions(last) == [
        ("step.exit", "start"),
        ("playbook.completed", "tests/error_to_end"),
    ]
    assert last.events[0]["context"]["handled"] is True


def test_evaluation_error_fails_the_step_and_drains() -> None:
    sim = Sim(load("evaluation_error"))
    sim.start()
    after = sim.done("start")
    # slow is issued first (workflow order); bad_input's input cannot render
    assert decisions(after) == [
        ("step.exit", "start"),
        ("step.enter", "slow"),
        ("command.issued", "slow"),
        ("step.enter", "bad_input"),
        ("step.exit", "bad_input"),
    ]
    error_exit = after.events[4]
    assert error_exit["status"] == "FAILED"
    assert error_exit["context"]["handled"] is False
    error = error_exit["context"]["error"]
    assert error["kind"] == "evaluation"
    assert error["path"] == "/workflow/2/tool/input/v"
    assert "missing_thing" in error["message"] or "undefined" in error["message"]
    # draining: slow finishes, its arc is not followed, then the failure is written
    last = sim.done("slow")
    assert decisions(last) == [
        ("step.exit", "slow"),
        ("playbook.failed", "tests/evaluation_error"),
    ]
    assert last.events[1]["context"]["failed_steps"] == ["bad_input"]
    assert "never" not in [e["node_name"] for e in sim.engine_events("step.enter")]


def test_loop_items_that_are_not_a_list_are_an_evaluation_error() -> None:
    sim = Sim(load("loop_empty"), payload={"rows": "not json"})
    first = sim.start()
    assert decisions(first) == [
        (START, "tests/loop_empty"),
        ("step.exit", "start"),
        ("playbook.failed", "tests/loop_empty"),
    ]
    assert first.events[1]["context"]["error"]["path"] == "/workflow/0/loop/in"
    assert first.status == "FAILED"


def test_a_target_in_flight_drops_its_token() -> None:
    sim = Sim(load("inflight_drop"))
    sim.start()
    sim.done("start")
    first = sim.done("poll")
    assert decisions(first) == [
        ("ctx.updated", "poll"),
        ("step.exit", "poll"),
        ("step.enter", "poll"),
        ("command.issued", "poll"),
        ("step.enter", "work"),
        ("command.issued", "work"),
    ]
    assert first.events[1]["context"]["next"] == ["work", "poll"]
    # poll routes to work again while work runs: the token is dropped, work is not re-entered
    second = sim.done("poll")
    assert decisions(second) == [
        ("ctx.updated", "poll"),
        ("step.exit", "poll"),
        ("step.skipped", "poll"),  # the untaken back-edge, informational
    ]
    assert second.events[1]["context"]["next"] == ["work"]
    assert sim.state.steps["work"].tokens == []
    assert decisions(sim.done("work")) == [
        ("step.exit", "work"),
        ("playbook.completed", "tests/inflight_drop"),
    ]


def test_a_join_waits_for_a_branch_about_to_start() -> None:
    sim = Sim(load("join_pending_branch"))
    sim.start()
    # slow is a join (start, quick); quick holds a token and can still reach it
    assert decisions(sim.done("start")) == [
        ("step.exit", "start"),
        ("step.enter", "quick"),
        ("command.issued", "quick"),
    ]
    entered = sim.done("quick")
    assert decisions(entered) == [
        ("step.exit", "quick"),
        ("step.enter", "slow"),
        ("command.issued", "slow"),
    ]
    assert entered.events[1]["context"] == {"from": ["start", "quick"]}
    sim.run_all()
    assert sim.state.terminal == "COMPLETED"


def test_an_iteration_that_cannot_render_fails_the_loop_after_the_others_finish() -> None:
    sim = Sim(load("loop_evaluation_error"))
    first = sim.start()
    assert decisions(first) == [
        (START, "tests/loop_evaluation_error"),
        ("step.enter", "start"),
        ("command.issued", "start"),
        ("step.exit", "start"),
    ]
    assert first.events[3]["context"]["error"]["kind"] == "evaluation"
    assert first.events[3]["context"]["error"]["path"] == "/workflow/0/tool/input/q"
    assert first.status is None  # iteration 0 is still running
    last = sim.done(sim.one("start"), 10)
    assert decisions(last) == [("playbook.failed", "tests/loop_evaluation_error")]
    assert last.events[0]["context"]["failed_steps"] == ["start"]
    assert "never" not in [e["node_name"] for e in sim.engine_events("step.enter")]


def test_keychain_strings_are_deferred_and_unsupported_kinds_fail_the_step() -> None:
    sim = Sim(load("keychain"))
    [command] = sim.start().commands
    context = command.context
    assert context["deferred"] == ["/args/secret", "/tool_config/headers/Authorization"]
    assert context["args"] == {"secret": "{{ keychain['api'].password }}", "q": 1}
    assert context["tool_config"]["params"] == {"q": 1}
    assert context["tool_config"]["headers"] == {
        "Authorization": "{{ scheme }} {{ keychain.api.token }}"
    }
    # the worker renders the deferred strings against render_context + the keychain
    assert context["render_context"]["scheme"] == "Bearer"
    assert "keychain" not in context["render_context"]
    failed = sim.done(command, {"status_code": 200})
    assert decisions(failed) == [
        ("step.exit", "start"),
        ("step.enter", "oauth"),
        ("step.exit", "oauth"),
        ("playbook.failed", "tests/keychain"),
    ]
    error = failed.events[2]["context"]["error"]
    assert error == {
        "kind": "evaluation",
        "path": "/workflow/1/tool/headers/Authorization",
        "message": "keychain kind 'oauth2' is not supported yet",
    }


def test_a_cycle_of_skipped_steps_is_an_evaluation_error() -> None:
    sim = Sim(load("skip_cycle"))
    sim.start()
    last = sim.done("start")
    assert decisions(last) == [
        ("step.exit", "start"),
        ("step.skipped", "a"),
        ("step.skipped", "b"),
        ("step.exit", "a"),
        ("playbook.failed", "tests/skip_cycle"),
    ]
    assert last.events[3]["context"]["error"]["kind"] == "evaluation"


def test_draining_stops_a_loop_and_fails_once_nothing_runs() -> None:
    sim = Sim(load("drain_loop"))
    sim.start()
    sim.done("start")
    first = sim.one("each")
    assert first.meta["iteration_index"] == 0
    failed = sim.error("bad", {"kind": "exit_code", "message": "exit 2", "exit_code": 2})
    assert decisions(failed) == [("step.exit", "bad")]
    # the running iteration finishes; no new iteration starts; the execution fails
    last = sim.done(first, 1)
    assert decisions(last) == [("playbook.failed", "tests/drain_loop")]
    assert last.events[0]["context"]["failed_steps"] == ["bad"]
    assert len([c for c in sim.commands.values() if c.step == "each"]) == 1
