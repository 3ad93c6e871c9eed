"""task_sequence (dsl.md §8.5): the policy rules, task-level set, and the pipeline names.

Tasks here are python and noop, so each rule is observed through the data it leaves."""

from __future__ import annotations

from typing import Any

import pytest

from core.settings import Settings
from tests.system.helpers import command, with_settings
from workers.system.run import ToolOutcome, ToolServices, run_tool
from workers.system.tools.base import ToolFailure
from workers.system.tools.task_sequence import match_rule, parse_tasks, retry_delay


def py(code: str, rules: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"kind": "python", "code": code, **extra}
    if rules is not None:
        task["spec"] = {"policy": {"rules": rules}}
    return task


async def seq(services: ToolServices, *tasks: dict[str, Any], **kw: Any) -> ToolOutcome:
    return await run_tool(command(list(tasks), **kw), services)


async def test_tasks_see_prev_results_and_labels(services: ToolServices) -> None:
    out = await seq(
        services,
        {"one": py("result = {'n': base + 1}")},
        {
            "two": py(
                "result = {'n': prev_n * 10, 'from_results': r}",
                input={"prev_n": "{{ _prev.n }}", "r": "{{ _results.one.n }}"},
            )
        },
        {"three": {"kind": "noop"}},
        {
            "four": py(
                "result = {'label': x, 'task': t}", input={"x": "{{ two.n }}", "t": "{{ _task }}"}
            )
        },
        args={"base": 1},
    )
    assert out.status == "ok", out.error
    assert out.data == {
        "one": {"n": 2},
        "two": {"n": 20, "from_results": 2},
        "three": {},
        "four": {"label": 20, "task": "four"},
    }


async def test_plain_task_mappings_get_default_labels(services: ToolServices) -> None:
    out = await seq(services, {"kind": "noop"}, {"name": "named", "kind": "noop"})
    assert out.data == {"task_0": {}, "named": {}}


async def test_task_set_and_then_set(services: ToolServices) -> None:
    out = await seq(
        services,
        {
            "a": py(
                "result = {'v': 5}",
                set={
                    "ctx.total": "{{ output.data.v }}",
                    "local": "{{ output.v * 2 }}",
                    "ctx.page.next": 2,
                },
                rules=[{"else": {"then": {"do": "continue", "set": {"ctx.seen": "{{ local }}"}}}}],
            )
        },
        {
            "b": py(
                "result = [total, local, page]",
                input={"total": "{{ total }}", "local": "{{ local }}", "page": "{{ page }}"},
            )
        },
        render_context={"page": {"size": 10}},
    )
    assert out.status == "ok", out.error
    assert out.data["b"] == [5, 10, {"size": 10, "next": 2}]
    # Only ctx.-prefixed keys go back to the engine, as whole top-level values.
    assert out.data["_context_updates"] == {"total": 5, "page": {"size": 10, "next": 2}, "seen": 10}


async def test_break_stops_ok(services: ToolServices) -> None:
    out = await seq(
        services,
        {
            "a": py(
                "result = 1", rules=[{"when": "{{ output.data == 1 }}", "then": {"do": "break"}}]
            )
        },
        {"b": py("result = 2")},
    )
    assert (out.status, out.data) == ("ok", {"a": 1})


async def test_fail_rule_on_success_names_the_task(services: ToolServices) -> None:
    out = await seq(
        services,
        {
            "a": py(
                "result = {'rows': 0}", rules=[{"when": "output.rows == 0", "then": {"do": "fail"}}]
            )
        },
    )
    assert out.status == "error" and out.error is not None
    assert out.error["message"] == "policy rule triggered fail for task 'a'"
    assert out.error["task"] == "a"
    assert out.data == {"a": {"rows": 0}}


async def test_unmatched_error_fails_and_unmatched_ok_continues(services: ToolServices) -> None:
    out = await seq(
        services, {"a": py("result = 1")}, {"b": py("raise KeyError('k')")}, {"c": py("result = 3")}
    )
    assert out.status == "error" and out.error is not None
    assert (out.error["kind"], out.error["type"], out.error["task"]) == (
        "exception",
        "KeyError",
        "b",
    )
    assert set(out.data) == {"a", "b"}


async def test_continue_past_an_error(services: ToolServices) -> None:
    out = await seq(
        services,
        {
            "a": py(
                "raise ValueError('x')",
                rules=[{"when": "{{ output.status == 'error' }}", "then": {"do": "continue"}}],
            )
        },
        {"b": py("result = repr(p)", input={"p": "{{ _prev }}"})},
    )
    assert out.status == "ok"
    assert out.data == {"a": None, "b": "None"}  # _prev is the last *successful* data


async def test_retry_counts_attempts(services: ToolServices) -> None:
    rules = [{"when": "{{ _attempt < 3 }}", "then": {"do": "retry", "attempts": 5, "delay": 0}}]
    out = await seq(services, {"a": py("result = n", input={"n": "{{ _attempt }}"}, rules=rules)})
    assert out.data == {"a": 3}


async def test_retry_on_success_exhausted(services: ToolServices) -> None:
    rules = [
        {"when": "{{ output.data == 'empty' }}", "then": {"do": "retry", "attempts": 2, "delay": 0}}
    ]
    out = await seq(services, {"a": py("result = 'empty'", rules=rules)})
    assert out.error is not None and out.error["task"] == "a"
    assert "retried 2 times" in out.error["message"]


async def test_jump_to_label_and_previous(services: ToolServices) -> None:
    out = await seq(
        services,
        {
            "count": py(
                "result = n + 1",
                input={"n": "{{ counter | default(0) }}"},
                set={"counter": "{{ output.data }}"},
            )
        },
        {
            "check": {
                "kind": "noop",
                "spec": {
                    "policy": {
                        "rules": [
                            {"when": "{{ counter < 3 }}", "then": {"do": "jump", "to": "previous"}},
                            {"else": {"then": {"do": "jump", "to": "done"}}},
                        ]
                    }
                },
            }
        },
        {"skipped": py("result = 'never'")},
        {"done": py("result = c", input={"c": "{{ counter }}"})},
    )
    assert out.status == "ok", out.error
    assert out.data == {"count": 3, "check": {}, "done": 3}


async def test_jump_to_an_unknown_label(services: ToolServices) -> None:
    out = await seq(
        services,
        {
            "a": {
                "kind": "noop",
                "spec": {
                    "policy": {"rules": [{"else": {"then": {"do": "jump", "to": "nowhere"}}}]}
                },
            }
        },
    )
    assert out.error is not None and out.error["kind"] == "config" and out.error["task"] == "a"


async def test_endless_jumps_hit_the_iteration_cap(services: ToolServices) -> None:
    capped = with_settings(services, task_sequence_max_iterations=5)
    out = await seq(
        capped,
        {
            "a": {
                "kind": "noop",
                "spec": {"policy": {"rules": [{"else": {"then": {"do": "jump", "to": "a"}}}]}},
            }
        },
    )
    assert out.error is not None and "more than 5" in out.error["message"]


async def test_template_error_in_a_task_is_its_error_outcome(services: ToolServices) -> None:
    out = await seq(services, {"a": py("result = 1", input={"bad": "{{ 1 + none_such }}"})})
    assert out.error is not None
    assert (out.error["kind"], out.error["task"]) == ("template", "a")


async def test_keychain_in_a_task(services: ToolServices, http_server: Any) -> None:
    out = await seq(
        services,
        {
            "call": {
                "kind": "http",
                "url": f"{http_server.url}/echo",
                "headers": {"Authorization": "Bearer {{ keychain['api-bearer'].token }}"},
            }
        },
    )
    assert out.data["call"]["data"]["headers"]["authorization"] == "Bearer ***"


async def test_a_single_task_that_is_not_a_tool(services: ToolServices) -> None:
    out = await seq(services, {"a": {"kind": "duckdb", "query": "select 1"}})
    assert out.error is not None and out.error["kind"] == "not_supported"


def test_parse_tasks_refuses_bad_shapes() -> None:
    with pytest.raises(ToolFailure):
        parse_tasks([])
    with pytest.raises(ToolFailure):
        parse_tasks([{"a": {"kind": "noop"}}, {"a": {"kind": "noop"}}])
    with pytest.raises(ToolFailure):
        parse_tasks([{"a": {"no": "kind"}}])
    with pytest.raises(ToolFailure):
        parse_tasks([{"a": {"kind": "task_sequence"}}])


def test_retry_delays() -> None:
    cap = Settings().task_retry_max_delay_seconds
    assert [retry_delay({"delay": 0.5}, n, cap) for n in (1, 2, 3)] == [0.5, 0.5, 0.5]
    assert [retry_delay({"delay": 0.5, "backoff": "linear"}, n, cap) for n in (1, 2, 3)] == [
        0.5,
        1.0,
        1.5,
    ]
    assert [
        retry_delay({"delay": 0.5, "backoff": "exponential"}, n, cap) for n in (1, 2, 3, 4)
    ] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay({"delay": 10, "backoff": "exponential"}, 20, 300.0) == 300.0
    assert retry_delay({}, 1, cap) == 1.0
    with pytest.raises(ToolFailure):
        retry_delay({"backoff": "random"}, 1, cap)


def test_match_rule() -> None:
    rules = [
        {"when": "{{ output.status == 'error' }}", "then": {"do": "retry"}},
        {"when": "x > 3", "then": {"do": "break"}},
        {"else": {"then": {"do": "continue", "set": {"k": 1}}}},
    ]
    assert match_rule(rules, {"output": {"status": "error"}, "x": 9}) == {"do": "retry"}
    assert match_rule(rules, {"output": {"status": "ok"}, "x": 9}) == {"do": "break"}
    assert match_rule(rules, {"output": {"status": "ok"}, "x": 1}) == {
        "do": "continue",
        "set": {"k": 1},
    }
    assert match_rule(None, {}) is None
    assert match_rule([{"when": "false", "then": {"do": "fail"}}], {}) is None
    with pytest.raises(ToolFailure):
        match_rule([{"then": {"do": "explode"}}], {})
