"""Register-time validation of playbooks (dsl.md §3): every problem, each with its location.

`validate_playbook(content)` parses the YAML text and returns `(document, problems)`: the
parsed document (None when it is not a YAML mapping) and every problem found, in document
order, each with `loc` (path of keys and indexes), `path` (its JSON Pointer), `line` (1-based
line in `content`, from the YAML node marks; for a missing key, the line of its parent) and a
stable `type`. The document is usable by `engine.model.load_playbook` only when `problems` is
empty. The 1 MiB size rule (413) is the route's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from engine import model
from engine.render import check_expression, check_syntax, has_template


@dataclass(frozen=True)
class Problem:
    loc: tuple[str | int, ...]  # path inside the document, e.g. ("workflow", 2, "tool")
    msg: str
    type: str  # stable snake_case kind of problem
    path: str  # JSON pointer of loc, e.g. "/workflow/2/tool"
    line: int | None  # 1-based line in the registered text, when known


Loc = tuple[str | int, ...]
_MAX_NODES = 2_000_000  # alias expansion budget ("billion laughs")


class _Loader(yaml.SafeLoader):
    """Safe YAML; timestamps stay strings so that the document is JSON."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def pointer(loc: Loc) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


class _Lines:
    """Map each document path to the line of its key (mapping values) or item (lists)."""

    def __init__(self, root: yaml.Node) -> None:
        self.lines: dict[Loc, int] = {(): root.start_mark.line + 1}
        self.visited = 0
        self._walk(root, (), root.start_mark.line + 1)

    def _walk(self, node: yaml.Node, loc: Loc, line: int) -> None:
        self.visited += 1
        if self.visited > _MAX_NODES:
            raise ValueError("the document expands to too many nodes")
        self.lines.setdefault(loc, line)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    self._walk(value, (*loc, key.value), key.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*loc, index), item.start_mark.line + 1)

    def line(self, loc: Loc) -> int | None:
        while loc not in self.lines and loc:
            loc = loc[:-1]
        return self.lines.get(loc)


class _Checker:
    def __init__(self, document: dict[str, Any], lines: _Lines) -> None:
        self.doc = document
        self.lines = lines
        self.problems: list[Problem] = []
        self.step_names: list[str] = []

    def add(self, loc: Loc, msg: str, kind: str) -> None:
        self.problems.append(Problem(tuple(loc), msg, kind, pointer(loc), self.lines.line(loc)))

    # --- helpers ------------------------------------------------------------------------

    def mapping(self, value: Any, loc: Loc, *, required: bool = False) -> bool:
        if value is None and not required:
            return False
        if not isinstance(value, dict):
            self.add(loc, "must be a mapping", "type_error")
            return False
        return True

    def string_keys(self, value: dict[Any, Any], loc: Loc) -> None:
        for key in value:
            if not isinstance(key, str):
                self.add((*loc, str(key)), "keys must be strings", "type_error")

    def when(self, value: Any, loc: Loc) -> None:
        if value is None:
            return
        if isinstance(value, bool):
            return
        if not isinstance(value, str):
            self.add(loc, "must be a string or a boolean", "type_error")
            return
        if not has_template(value) and value.strip():
            error = check_expression(value)
            if error:
                self.add(loc, error, "template_syntax")

    def set_block(self, value: Any, loc: Loc) -> None:
        if value is None:
            return
        if self.mapping(value, loc):
            self.string_keys(value, loc)

    # --- rules ----------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        doc = self.doc
        self.top_level(doc)
        self.metadata(doc.get("metadata"))
        if "workload" in doc and doc["workload"] is not None:
            self.mapping(doc["workload"], ("workload",))
        self.named_list(doc.get("keychain"), ("keychain",))
        workbook = self.workbook(doc.get("workbook"))
        self.workflow(doc.get("workflow"), workbook)
        self.executor(doc.get("executor"))
        self.templates(doc, ())
        self.json_compatible(doc, ())
        # document order: by line, stable for problems of one line
        return sorted(self.problems, key=lambda p: p.line if p.line is not None else 1 << 30)

    def top_level(self, doc: dict[str, Any]) -> None:
        version = doc.get("apiVersion")
        if version is None:
            self.add(("apiVersion",), "required", "missing")
        elif version not in model.API_VERSIONS:
            self.add(
                ("apiVersion",), f"must be one of {', '.join(model.API_VERSIONS)}", "value_error"
            )
        kind = doc.get("kind")
        if kind is None:
            self.add(("kind",), "required", "missing")
        elif not isinstance(kind, str) or kind.lower() not in ("playbook", "agent"):
            # an agent is a playbook registered under another kind (api.md §6.2)
            self.add(("kind",), "must be 'Playbook' (or 'Agent')", "value_error")
        for key in doc:
            if key not in model.TOP_LEVEL_KEYS:
                allowed = ", ".join(model.TOP_LEVEL_KEYS)
                self.add((str(key),), f"unknown top-level key (allowed: {allowed})", "unknown_key")

    def metadata(self, meta: Any) -> None:
        loc: Loc = ("metadata",)
        if meta is None:
            self.add(loc, "required", "missing")
            return
        if not self.mapping(meta, loc, required=True):
            return
        name = meta.get("name")
        if name is None:
            self.add((*loc, "name"), "required", "missing")
        elif not isinstance(name, str) or not name.strip():
            self.add((*loc, "name"), "must be a non-empty string", "type_error")
        path = meta.get("path")
        if path is None and isinstance(name, str) and name.strip():
            path, where = name, (*loc, "name")
        else:
            where = (*loc, "path")
        if path is not None:
            problem = catalog_path_problem(path)
            if problem:
                self.add(where, problem, "value_error")

    def named_list(self, value: Any, loc: Loc) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        if value is None:
            return entries
        if not isinstance(value, list):
            self.add(loc, "must be a list", "type_error")
            return entries
        for index, entry in enumerate(value):
            where = (*loc, index)
            if not self.mapping(entry, where, required=True):
                continue
            name = entry.get("name")
            if name is None:
                self.add((*where, "name"), "required", "missing")
            elif not isinstance(name, str) or not name:
                self.add((*where, "name"), "must be a non-empty string", "type_error")
            elif name in entries:
                self.add((*where, "name"), f"duplicate name '{name}'", "duplicate")
            else:
                entries[name] = entry
        return entries

    def workbook(self, value: Any) -> dict[str, Any]:
        entries = self.named_list(value, ("workbook",))
        for index, entry in enumerate(value if isinstance(value, list) else ()):
            if not isinstance(entry, dict):
                continue
            loc: Loc = ("workbook", index, "tool")
            tool = entry.get("tool")
            if tool is None:
                self.add(loc, "required", "missing")
            elif not isinstance(tool, dict):
                self.add(loc, "a workbook entry's tool is a single tool mapping", "type_error")
            elif tool.get("kind") == "workbook":
                self.add(
                    (*loc, "kind"), "a workbook entry cannot be a workbook tool", "value_error"
                )
            else:
                self.tool_config(tool, loc, {})
        return entries

    def workflow(self, value: Any, workbook: dict[str, Any]) -> None:
        loc: Loc = ("workflow",)
        if value is None:
            self.add(loc, "required", "missing")
            return
        if not isinstance(value, list) or not value:
            self.add(loc, "must be a non-empty list of steps", "type_error")
            return
        seen: set[str] = set()
        for index, step in enumerate(value):
            if not isinstance(step, dict):
                self.add((*loc, index), "a step must be a mapping", "type_error")
                continue
            name = step.get("step")
            where = (*loc, index, "step")
            if name is None:
                self.add(where, "required", "missing")
            elif not isinstance(name, str) or not model.STEP_NAME.match(name):
                self.add(where, "must match [A-Za-z0-9_][A-Za-z0-9_-]{0,127}", "value_error")
            elif model.is_reserved(name):
                self.add(where, f"'{name}' is a reserved name", "reserved_name")
            elif name in seen:
                self.add(where, f"duplicate step name '{name}'", "duplicate")
            else:
                seen.add(name)
        self.step_names = [s["step"] for s in value if isinstance(s, dict) and "step" in s]
        self.entry_step(seen)
        for index, step in enumerate(value):
            if isinstance(step, dict):
                self.step(step, (*loc, index), seen, workbook)

    def entry_step(self, names: set[str]) -> None:
        executor = self.doc.get("executor")
        spec = executor.get("spec") if isinstance(executor, dict) else None
        entry = spec.get("entry_step") if isinstance(spec, dict) else None
        if entry is not None:
            if entry not in names:
                self.add(
                    ("executor", "spec", "entry_step"),
                    f"{self.unknown(entry)}",
                    "unknown_step",
                )
        elif "start" not in names:
            self.add(("workflow",), "no entry step: add a step named 'start'", "missing")

    def unknown(self, name: Any) -> str:
        names = ", ".join(dict.fromkeys(map(str, self.step_names)))
        return f"unknown step '{name}' (steps: {names})"

    def step(self, step: dict[str, Any], loc: Loc, names: set[str], workbook: dict) -> None:
        for key in step:
            if key == "case":
                self.add(
                    (*loc, "case"),
                    "'case' is not supported: use step.when and next.arcs[].when",
                    "not_supported",
                )
            elif key not in model.STEP_KEYS:
                allowed = ", ".join(model.STEP_KEYS)
                self.add((*loc, str(key)), f"unknown step key (allowed: {allowed})", "unknown_key")
        if "desc" in step and step["desc"] is not None and not isinstance(step["desc"], str):
            self.add((*loc, "desc"), "must be a string", "type_error")
        self.when(step.get("when"), (*loc, "when"))
        for key in ("input", "args"):
            if step.get(key) is not None and self.mapping(step[key], (*loc, key)):
                self.string_keys(step[key], (*loc, key))
        self.set_block(step.get("set"), (*loc, "set"))
        spec = step.get("spec")
        next_mode = None
        if spec is not None and self.mapping(spec, (*loc, "spec")):
            next_mode = spec.get("next_mode")
            if next_mode is not None and next_mode not in ("exclusive", "inclusive"):
                self.add(
                    (*loc, "spec", "next_mode"), "must be exclusive or inclusive", "value_error"
                )
        self.tool(step.get("tool"), (*loc, "tool"), workbook)
        if "loop" in step:
            self.loop(step["loop"], (*loc, "loop"))
        if step.get("next") is not None:
            self.next(step["next"], (*loc, "next"), names)

    def tool(self, tool: Any, loc: Loc, workbook: dict[str, Any]) -> None:
        if tool is None:
            return
        if isinstance(tool, dict):
            self.tool_config(tool, loc, workbook)
            return
        if not isinstance(tool, list) or not tool:
            self.add(loc, "must be a tool mapping or a non-empty list of tools", "type_error")
            return
        labels: set[str] = set()
        for index, item in enumerate(tool):
            where = (*loc, index)
            if not isinstance(item, dict):
                self.add(where, "a task must be a mapping", "type_error")
                continue
            if "kind" not in item and len(item) == 1:
                label, config = next(iter(item.items()))
                where = (*where, label)
                if not isinstance(config, dict):
                    self.add(where, "a task must be a mapping with a kind", "type_error")
                    continue
            else:
                label, config = item.get("name", f"task_{index}"), item
                if "name" in item and (not isinstance(label, str) or not label):
                    self.add((*where, "name"), "must be a non-empty string", "type_error")
                    continue
            if label in labels:
                self.add(where, f"duplicate task name '{label}'", "duplicate")
            labels.add(str(label))
            self.tool_config(config, where, workbook)

    def tool_config(self, tool: dict[str, Any], loc: Loc, workbook: dict[str, Any]) -> None:
        kind = tool.get("kind")
        if kind is None:
            self.add((*loc, "kind"), "required", "missing")
            return
        if not isinstance(kind, str) or kind not in model.KNOWN_KINDS:
            self.add((*loc, "kind"), f"unknown tool kind '{kind}'", "unknown_kind")
            return
        for key in ("input", "args"):
            if tool.get(key) is not None and self.mapping(tool[key], (*loc, key)):
                self.string_keys(tool[key], (*loc, key))
        if kind == "workbook":
            name = tool.get("name")
            if name is None:
                self.add((*loc, "name"), "required", "missing")
            elif name not in workbook:
                names = ", ".join(workbook) or "none"
                self.add(
                    (*loc, "name"),
                    f"unknown workbook entry '{name}' (entries: {names})",
                    "unknown_workbook",
                )
            return
        self.tool_fields(kind, tool, loc)
        spec = tool.get("spec")
        if spec is not None and self.mapping(spec, (*loc, "spec")):
            policy = spec.get("policy")
            if policy is not None and self.mapping(policy, (*loc, "spec", "policy")):
                rules = policy.get("rules")
                if rules is not None and not isinstance(rules, list):
                    self.add((*loc, "spec", "policy", "rules"), "must be a list", "type_error")
                for index, rule in enumerate(rules if isinstance(rules, list) else ()):
                    self.rule(rule, (*loc, "spec", "policy", "rules", index))
        self.set_block(tool.get("set"), (*loc, "set"))

    def rule(self, rule: Any, loc: Loc) -> None:
        if not self.mapping(rule, loc, required=True):
            return
        if "else" in rule:
            body = rule["else"]
            if self.mapping(body, (*loc, "else"), required=True):
                self.then(body.get("then"), (*loc, "else", "then"))
            return
        if "when" not in rule:
            self.add((*loc, "when"), "required (or use an else entry)", "missing")
        self.when(rule.get("when"), (*loc, "when"))
        self.then(rule.get("then"), (*loc, "then"))

    def then(self, then: Any, loc: Loc) -> None:
        if then is None:
            self.add(loc, "required", "missing")
            return
        if not self.mapping(then, loc, required=True):
            return
        action = then.get("do")
        if action not in ("continue", "retry", "break", "jump", "fail"):
            self.add((*loc, "do"), "must be continue, retry, break, jump or fail", "value_error")
        if action == "jump" and not then.get("to"):
            self.add((*loc, "to"), "required for do: jump", "missing")
        self.set_block(then.get("set"), (*loc, "set"))

    def tool_fields(self, kind: str, tool: dict[str, Any], loc: Loc) -> None:
        def need(*keys: str) -> None:
            if not any(tool.get(k) is not None for k in keys):
                self.add(
                    (*loc, keys[0]),
                    "required" if len(keys) == 1 else f"one of {', '.join(keys)} is required",
                    "missing",
                )

        if kind == "python":
            script = tool.get("script")
            has_script = isinstance(script, dict) and isinstance(script.get("source"), dict)
            if tool.get("code") is None and not has_script:
                self.add((*loc, "code"), "required (or script.source.code)", "missing")
            elif tool.get("code") is not None and not isinstance(tool["code"], str):
                self.add((*loc, "code"), "must be a string", "type_error")
            for key in ("libs", "env"):
                if tool.get(key) is not None:
                    self.mapping(tool[key], (*loc, key))
        elif kind == "http":
            need("url")
            bodies = [k for k in ("json", "body", "form") if tool.get(k) is not None]
            if len(bodies) > 1:
                self.add((*loc, bodies[1]), "at most one of json, body, form", "value_error")
            for key in ("headers", "params"):
                if tool.get(key) is not None and not isinstance(tool[key], dict | str):
                    self.add((*loc, key), "must be a mapping", "type_error")
            if tool.get("form") is not None and not isinstance(tool["form"], dict | str):
                self.add((*loc, "form"), "must be a mapping", "type_error")
        elif kind == "postgres":
            need("auth")
            need("command", "query")
            inline = [k for k in _PG_INLINE if k in tool]
            for key in inline:
                self.add(
                    (*loc, key),
                    "inline connection fields are not accepted: use auth with a credential",
                    "value_error",
                )
            params = tool.get("params")
            if params is not None and not isinstance(params, list | str):
                self.add((*loc, "params"), "must be a list", "type_error")
        elif kind == "duckdb":
            need("query", "command")
        elif kind == "playbook":
            need("path", "catalog_id")

    def loop(self, loop: Any, loc: Loc) -> None:
        if not self.mapping(loop, loc, required=True):
            return
        if "in" not in loop or loop.get("in") is None:
            self.add((*loc, "in"), "required", "missing")
        elif not isinstance(loop["in"], str | list):
            self.add((*loc, "in"), "must be a template or a list", "type_error")
        iterator = loop.get("iterator")
        if iterator is None:
            self.add((*loc, "iterator"), "required", "missing")
        elif not isinstance(iterator, str) or not model.IDENTIFIER.match(iterator):
            self.add((*loc, "iterator"), "must be an identifier", "value_error")
        elif model.is_reserved(iterator):
            self.add((*loc, "iterator"), f"'{iterator}' is a reserved name", "reserved_name")
        if "cursor" in loop:
            self.add((*loc, "cursor"), "loop.cursor is not supported yet", "not_supported")
        for key in loop:
            if key not in ("in", "iterator", "spec", "cursor"):
                self.add(
                    (*loc, str(key)),
                    "unknown loop key (allowed: in, iterator, spec)",
                    "unknown_key",
                )
        spec = loop.get("spec")
        if spec is None or not self.mapping(spec, (*loc, "spec")):
            return
        mode = spec.get("mode")
        if mode == "cursor":
            self.add((*loc, "spec", "mode"), "mode cursor is not supported yet", "not_supported")
        elif mode is not None and mode not in ("sequential", "parallel"):
            self.add((*loc, "spec", "mode"), "must be sequential or parallel", "value_error")
        limit = spec.get("max_in_flight")
        if limit is None:
            return
        if isinstance(limit, bool) or not (
            (isinstance(limit, int) and limit >= 1)
            or (isinstance(limit, str) and has_template(limit))
        ):
            self.add(
                (*loc, "spec", "max_in_flight"),
                "must be an integer >= 1 or a template",
                "value_error",
            )

    def next(self, value: Any, loc: Loc, names: set[str]) -> None:
        if isinstance(value, str):
            self.target(value, loc, names)
        elif isinstance(value, list):
            self.arcs(value, loc, names)
        elif isinstance(value, dict):
            for key in value:
                if key not in ("spec", "arcs"):
                    self.add(
                        (*loc, str(key)), "unknown key (a router has spec and arcs)", "unknown_key"
                    )
            spec = value.get("spec")
            if spec is not None and self.mapping(spec, (*loc, "spec")):
                mode = spec.get("mode")
                if mode is not None and mode not in ("exclusive", "inclusive"):
                    self.add(
                        (*loc, "spec", "mode"), "must be exclusive or inclusive", "value_error"
                    )
                on_no_match = spec.get("on_no_match")
                if on_no_match is not None and on_no_match not in ("complete", "quiet"):
                    self.add(
                        (*loc, "spec", "on_no_match"), "must be complete or quiet", "value_error"
                    )
            arcs = value.get("arcs")
            if arcs is None:
                self.add((*loc, "arcs"), "required", "missing")
            elif not isinstance(arcs, list):
                self.add((*loc, "arcs"), "must be a list", "type_error")
            else:
                self.arcs(arcs, (*loc, "arcs"), names)
        else:
            self.add(loc, "must be a step name, a list, or a router {spec, arcs}", "type_error")

    def arcs(self, arcs: list[Any], loc: Loc, names: set[str]) -> None:
        for index, arc in enumerate(arcs):
            where = (*loc, index)
            if isinstance(arc, str):
                self.target(arc, where, names)
                continue
            if not isinstance(arc, dict):
                self.add(where, "an arc is a step name or {step, when?, set?}", "type_error")
                continue
            for key in arc:
                if key not in ("step", "when", "set", "args"):
                    self.add(
                        (*where, str(key)),
                        "unknown arc key (allowed: step, when, set)",
                        "unknown_key",
                    )
            if arc.get("step") is None:
                self.add((*where, "step"), "required", "missing")
            else:
                self.target(arc["step"], (*where, "step"), names)
            self.when(arc.get("when"), (*where, "when"))
            for key in ("set", "args"):
                self.set_block(arc.get(key), (*where, key))

    def target(self, name: Any, loc: Loc, names: set[str]) -> None:
        if not isinstance(name, str):
            self.add(loc, "must be a step name", "type_error")
        elif name not in names and name != model.END:
            self.add(loc, self.unknown(name), "unknown_step")

    def executor(self, value: Any) -> None:
        loc: Loc = ("executor",)
        if value is None or not self.mapping(value, loc):
            return
        pool = value.get("pool")
        if pool is not None and (not isinstance(pool, str) or not model.POOL_NAME.match(pool)):
            self.add((*loc, "pool"), "must match ^[a-z0-9][a-z0-9_-]{0,63}$", "value_error")
        spec = value.get("spec")
        if spec is not None and self.mapping(spec, (*loc, "spec")):
            entry = spec.get("entry_step")
            if entry is not None and not isinstance(entry, str):
                self.add((*loc, "spec", "entry_step"), "must be a step name", "type_error")

    def templates(self, value: Any, loc: Loc) -> None:
        """Rule 13: every template string parses (syntax only)."""
        if isinstance(value, str):
            error = check_syntax(value)
            if error:
                self.add(loc, error, "template_syntax")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and has_template(key):
                    error = check_syntax(key)
                    if error:
                        self.add((*loc, key), f"key: {error}", "template_syntax")
                self.templates(item, (*loc, str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.templates(item, (*loc, index))

    def json_compatible(self, value: Any, loc: Loc) -> None:
        if value is None or isinstance(value, str | bool | int):
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                self.add(loc, "numbers must be finite", "value_error")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str | int | float | bool) and key is not None:
                    self.add(loc, "mapping keys must be scalars", "type_error")
                self.json_compatible(item, (*loc, str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.json_compatible(item, (*loc, index))
        else:
            self.add(loc, f"a {type(value).__name__} value cannot be stored as JSON", "type_error")


_PG_INLINE = [
    "host",
    "port",
    "user",
    "password",
    "database",
    "dsn",
    "db_host",
    "db_port",
    "db_user",
    "db_password",
    "db_name",
    "connection_string",
]


def catalog_path_problem(path: Any) -> str | None:
    """Why a catalog path is refused (dsl.md §3 rule 3), or None."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if len(path) > 512:
        return "must be at most 512 characters"
    segments = path.split("/")
    for segment in segments:
        if not model.PATH_SEGMENT.match(segment) or segment in (".", ".."):
            return "must be segments of [A-Za-z0-9_.-]+ separated by '/' (not '.' or '..')"
    if segments[-1] == "ui_schema":
        return "the last segment cannot be 'ui_schema'"
    return None


def validate_playbook(content: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse and validate; returns the parsed document (None when unparseable) and problems."""
    try:
        loader = _Loader(content)
        try:
            node = loader.get_single_node()
            document = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [Problem((), f"not valid YAML: {exc}", "yaml_error", "", line)]
    except (ValueError, TypeError, RecursionError) as exc:
        return None, [Problem((), f"not valid YAML: {exc}", "yaml_error", "", None)]
    if node is None or not isinstance(document, dict):
        return None, [Problem((), "a playbook is a YAML mapping", "type_error", "", 1)]
    try:
        lines = _Lines(node)
    except (ValueError, RecursionError) as exc:
        return None, [Problem((), str(exc), "value_error", "", None)]
    problems = _Checker(document, lines).run()
    if not problems:
        try:
            model.load_playbook(document)
        except model.PlaybookError as exc:  # a gap between the rules and the loader
            problems.append(Problem((), str(exc), "value_error", "", 1))
    return document, problems
