"""task_sequence (dsl.md §8.5): a pipeline of tools run in order on this worker, each task
rendered just before it runs, with policy rules (retry, continue, break, jump, fail), task-level
`set`, and the pipeline names `_prev`, `_results`, `_task`, `_attempt` and each label."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.render import TemplateError, evaluate_condition, render_value
from workers.system.tools.base import ToolContext, ToolFailure, ToolOutcome, error_body
from workers.system.tools.dispatch import run_single

ACTIONS = frozenset({"continue", "retry", "break", "jump", "fail"})
SCOPES = ("ctx.", "iter.", "step.")
# Keys evaluated after the task ran (with its output), so never rendered before it.
LATE_KEYS = frozenset({"set", "spec", "name", "kind", "input", "args"})


def parse_tasks(tool_config: Any) -> list[tuple[str, dict[str, Any]]]:
    """[(label, config)] from `[{<label>: {kind, ...}}]` (or plain `{name?, kind, ...}`)."""
    if not isinstance(tool_config, list) or not tool_config:
        raise ToolFailure("config", "task_sequence needs a non-empty list of tasks")
    tasks: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(tool_config):
        if not isinstance(item, dict):
            raise ToolFailure("config", f"task {index} is not a mapping")
        if "kind" in item:
            label, config = str(item.get("name") or f"task_{index}"), item
        elif len(item) == 1 and isinstance(next(iter(item.values())), dict):
            label, config = next(iter(item.items()))
        else:
            raise ToolFailure("config", f"task {index} is neither {{label: tool}} nor a tool")
        if label in (t[0] for t in tasks):
            raise ToolFailure("config", f"task label {label!r} is used twice")
        if not isinstance(config.get("kind"), str):
            raise ToolFailure("config", f"task {label!r} has no kind")
        if config["kind"] == "task_sequence":
            raise ToolFailure("config", f"task {label!r}: a task_sequence cannot nest")
        tasks.append((str(label), config))
    return tasks


def retry_delay(then: Mapping[str, Any], retry_number: int, cap: float) -> float:
    """Delay before retry n (1-based): delay, delay·n or delay·2^(n-1), capped."""
    delay = float(then.get("delay", 1.0))
    backoff = str(then.get("backoff", "none")).lower()
    if backoff == "linear":
        delay *= retry_number
    elif backoff == "exponential":
        delay *= 2 ** (retry_number - 1)
    elif backoff not in ("none", "fixed", "constant"):
        raise ToolFailure("config", f"unknown retry backoff {backoff!r}")
    return max(0.0, min(delay, cap))


def match_rule(rules: Any, context: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `then` of the first matching rule (an `else` entry always matches)."""
    if rules is None:
        return None
    if not isinstance(rules, list):
        raise ToolFailure("config", "spec.policy.rules must be a list")
    for rule in rules:
        if not isinstance(rule, dict):
            raise ToolFailure("config", "a policy rule must be a mapping")
        if "else" in rule:
            otherwise = rule["else"]
            then = otherwise.get("then") if isinstance(otherwise, dict) else rule.get("then")
        elif "when" in rule:
            if not evaluate_condition(rule["when"], context):
                continue
            then = rule.get("then")
        else:
            then = rule.get("then")
        then = then if isinstance(then, dict) else {}
        do = str(then.get("do", "continue"))
        if do not in ACTIONS:
            raise ToolFailure("config", f"unknown policy action {do!r}")
        return {**then, "do": do}
    return None


@dataclass
class Pipeline:
    """The names a sequence accumulates as its tasks run."""

    base: Mapping[str, Any]  # render_context ⊕ the step's bound input
    keychain: Mapping[str, Any]
    variables: dict[str, Any] = field(default_factory=dict)  # written by `set`
    results: dict[str, Any] = field(default_factory=dict)  # label → data of its last run
    context_updates: dict[str, Any] = field(default_factory=dict)
    prev: Any = None

    def context(self, label: str, attempt: int, **extra: Any) -> dict[str, Any]:
        ctx = {**self.base, **self.results, **self.variables}
        ctx.update(
            _prev=self.prev,
            _results=dict(self.results),
            _task=label,
            _attempt=attempt,
            keychain=self.keychain,
            **extra,
        )
        return ctx

    def apply_set(self, values: Any, context: Mapping[str, Any]) -> None:
        """Every value rendered against one context, then applied (dsl.md §4.6)."""
        if not values:
            return
        if not isinstance(values, dict):
            raise ToolFailure("config", "set must be a mapping")
        rendered = render_value(values, context)
        for key, value in rendered.items():
            scope = next((s for s in SCOPES if key.startswith(s)), "")
            parts = key[len(scope) :].split(".")
            top = parts[0]
            if len(parts) == 1:
                self.variables[top] = value
            else:
                current = self.variables.get(top, self.base.get(top))
                root = copy.deepcopy(current) if isinstance(current, dict) else {}
                node = root
                for part in parts[1:-1]:
                    if not isinstance(node.get(part), dict):
                        node[part] = {}
                    node = node[part]
                node[parts[-1]] = value
                self.variables[top] = root
            if scope == "ctx.":
                self.context_updates[top] = self.variables[top]


async def _run_task(
    ctx: ToolContext, pipe: Pipeline, label: str, raw: dict[str, Any], attempt: int
) -> ToolOutcome:
    """Render one task against the running context and run it."""
    started = time.monotonic()
    try:
        context = pipe.context(label, attempt)
        bound = {**(raw.get("args") or {}), **(raw.get("input") or {})}
        task_input = {**ctx.args, **render_value(bound, context)}
        context.update(task_input)
        context.update(input=task_input, args=task_input)
        early = {k: v for k, v in raw.items() if k not in LATE_KEYS}
        config = {"kind": raw["kind"], **render_value(early, context)}
    except TemplateError as exc:
        path = f"/{label}{exc.path}"
        outcome = ToolOutcome.failed(error_body("template", exc.message, path=path))
        outcome.duration_ms = int((time.monotonic() - started) * 1000)
        return outcome
    sub = ToolContext(
        kind=raw["kind"],
        config=config,
        args=task_input,
        render_context=ctx.render_context,
        execution_id=ctx.execution_id,
        step=ctx.step,
        services=ctx.services,
        secrets=ctx.secrets,
        keychain=ctx.keychain,
    )
    return await run_single(sub)


async def run(ctx: ToolContext) -> ToolOutcome:
    tasks = parse_tasks(ctx.config.get("tasks"))
    index_of = {label: i for i, (label, _) in enumerate(tasks)}
    pipe = Pipeline(base={**ctx.render_context, **ctx.args}, keychain=ctx.keychain)
    settings = ctx.settings
    runs, i, attempt = 0, 0, 1
    failure: dict[str, Any] | None = None
    while i < len(tasks):
        runs += 1
        if runs > settings.task_sequence_max_iterations:
            failure = error_body(
                "error",
                f"task_sequence ran more than {settings.task_sequence_max_iterations} tasks",
                task=tasks[i][0],
            )
            break
        label, raw = tasks[i]
        outcome = await _run_task(ctx, pipe, label, raw, attempt)
        pipe.results[label] = outcome.data
        if outcome.ok:
            pipe.prev = outcome.data
        output = outcome.output(attempt=attempt, duration_ms=outcome.duration_ms)
        context = pipe.context(label, attempt, output=output)
        try:
            pipe.apply_set(raw.get("set"), context)
            then = match_rule(((raw.get("spec") or {}).get("policy") or {}).get("rules"), context)
            if then is not None:
                pipe.apply_set(then.get("set"), pipe.context(label, attempt, output=output))
        except (TemplateError, ToolFailure) as exc:
            failure = _policy_error(exc, label)
            break
        do = then["do"] if then else ("continue" if outcome.ok else "fail")
        if do == "continue":
            i, attempt = i + 1, 1
        elif do == "break":
            break
        elif do == "fail":
            failure = dict(outcome.error or {}) or error_body(
                "error", f"policy rule triggered fail for task '{label}'"
            )
            failure["task"] = label
            break
        elif do == "retry":
            assert then is not None
            if attempt >= int(then.get("attempts", 3)):
                failure = dict(outcome.error or {}) or error_body(
                    "error", f"task '{label}' retried {attempt} times without success"
                )
                failure["task"] = label
                break
            try:
                delay = retry_delay(then, attempt, settings.task_retry_max_delay_seconds)
            except ToolFailure as exc:
                failure = _policy_error(exc, label)
                break
            await asyncio.sleep(delay)
            attempt += 1
        else:  # jump
            assert then is not None
            target = then.get("to")
            if target == "previous":
                target_index = max(i - 1, 0)
            elif target in index_of:
                target_index = index_of[target]
            else:
                failure = error_body(
                    "config", f"jump from task '{label}' to unknown task {target!r}"
                )
                failure["task"] = label
                break
            i, attempt = target_index, 1
    data: dict[str, Any] = dict(pipe.results)
    if pipe.context_updates:
        data["_context_updates"] = pipe.context_updates
    if failure is not None:
        return ToolOutcome.failed(failure, data=data)
    return ToolOutcome(status="ok", data=data)


def _policy_error(exc: TemplateError | ToolFailure, label: str) -> dict[str, Any]:
    if isinstance(exc, TemplateError):
        return error_body("template", exc.message, path=exc.path, task=label)
    return {**exc.error, "task": label}
