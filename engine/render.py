"""Typed Jinja rendering (dsl.md §5): the one renderer of the engine and the system pool.

- `render_value(value, context)`: mappings (keys too) and lists element by element; a string
  without `{{`/`{%` unchanged; a lone `{{ expr }}` gives the expression's native value
  (undefined → None); any other template gives its text, then the JSON/Python-literal value of
  that text when it is an object, array, number, boolean or null.
- `render_text(value, context)`: a template string rendered to text, no type conversion.
- `evaluate_condition(expr, context)`: the truth rule of §5.1 Conditions.
- `TemplateError`: any evaluation failure (kind "template"), with the JSON Pointer of the failing
  string relative to the value given to `render_value`.

Templates run in jinja2's `SandboxedEnvironment` with a chainable undefined whose ordering
comparisons are false, plus the filters of §5.3.
"""

from __future__ import annotations

import ast
import base64
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import ChainableUndefined, meta, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

__all__ = [
    "TemplateError",
    "environment",
    "evaluate_condition",
    "find_names",
    "keychain_names",
    "has_template",
    "is_falsy",
    "render_text",
    "render_value",
    "to_json_value",
]


class TemplateError(Exception):
    """A template that does not parse or raises while it renders."""

    kind = "template"

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path  # JSON Pointer of the failing string inside the rendered value

    def at(self, prefix: str) -> TemplateError:
        return TemplateError(self.message, prefix + self.path)


class _Undefined(ChainableUndefined):
    """Chainable undefined (§5.3): prints empty, is false, iterates empty, orders as false."""

    __slots__ = ()

    def _false(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

    def __hash__(self) -> int:
        return id(type(self))


def _native_key(key: Any) -> str:
    return key if isinstance(key, str) else json.dumps(to_json_value(key))


def to_json_value(value: Any) -> Any:
    """The JSON-compatible form of a template result (undefined → None, iterables → lists)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, Mapping):
        return {_native_key(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple | set | frozenset | Iterator | Iterable):
        return [to_json_value(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


# --- filters of §5.3 -------------------------------------------------------------------------


def _tojson(value: Any, indent: int | None = None) -> str:
    separators = None if indent else (",", ":")
    return json.dumps(
        to_json_value(value), ensure_ascii=False, separators=separators, indent=indent, default=str
    )


def _fromjson(value: Any) -> Any:
    if value is None or isinstance(value, jinja2.Undefined):
        return None
    if not isinstance(value, str | bytes | bytearray):
        return value  # already parsed
    return json.loads(value)


def _b64encode(value: Any) -> str:
    data = value if isinstance(value, bytes | bytearray) else str(value).encode()
    return base64.b64encode(data).decode()


def _b64decode(value: Any) -> str:
    return base64.b64decode(str(value)).decode("utf-8", errors="replace")


def _keys(value: Any) -> list[Any]:
    return list(value.keys()) if isinstance(value, Mapping) else []


def _values(value: Any) -> list[Any]:
    return list(value.values()) if isinstance(value, Mapping) else []


def _get(value: Any, key: Any, default: Any = None) -> Any:
    if isinstance(value, Mapping):
        return value.get(key, default)
    if isinstance(value, list | tuple) and isinstance(key, int):
        return value[key] if -len(value) <= key < len(value) else default
    return default


class _Sandbox(SandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # fail loudly instead of printing an empty string
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__} is unsafe"
        )


def _build_environment() -> SandboxedEnvironment:
    env = _Sandbox(
        undefined=_Undefined,
        autoescape=False,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"],
    )
    env.filters.update(
        tojson=_tojson,
        fromjson=_fromjson,
        b64encode=_b64encode,
        b64decode=_b64decode,
        keys=_keys,
        values=_values,
        get=_get,
    )
    return env


environment = _build_environment()


# --- compiled template caches ----------------------------------------------------------------

_LONE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


def has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _lone_expression(text: str) -> str | None:
    """The expression of a string that is one `{{ expr }}` and nothing else."""
    match = _LONE.match(text)
    if match is None:
        return None
    expr = match.group("expr")
    if "{{" in expr or "}}" in expr or "{%" in expr or "%}" in expr:
        return None
    return expr


@lru_cache(maxsize=8192)
def _template(text: str) -> jinja2.Template:
    try:
        return environment.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} (line {exc.lineno})") from None


@lru_cache(maxsize=8192)
def _expression(expr: str) -> Any:
    try:
        return environment.compile_expression(expr, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"expression syntax error: {exc.message}") from None


def _fail(exc: Exception) -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(f"undefined value: {exc.message}")
    if isinstance(exc, jinja2.TemplateError):
        return TemplateError(f"{type(exc).__name__}: {exc.message}")
    return TemplateError(f"{type(exc).__name__}: {exc}")


def _eval_expression(expr: str, context: Mapping[str, Any]) -> Any:
    compiled = _expression(expr)
    try:
        return compiled(**context)
    except Exception as exc:  # any error inside a template is the template's error
        raise _fail(exc) from None


def render_text(value: str, context: Mapping[str, Any]) -> str:
    """A template string rendered to text (no type conversion)."""
    if not has_template(value):
        return value
    template = _template(value)
    try:
        return template.render(context)
    except Exception as exc:  # any error inside a template is the template's error
        raise _fail(exc) from None


_LITERAL_START = frozenset("{[-+0123456789.tfnTFN")


def _parse_literal(text: str) -> tuple[bool, Any]:
    """(True, value) when the text is a JSON or Python literal of an accepted type."""
    stripped = text.strip()
    if not stripped or stripped[0] not in _LITERAL_START:
        return False, None
    try:
        return _accepted(json.loads(stripped, parse_constant=_reject_constant))
    except (ValueError, RecursionError):
        pass
    try:
        return _accepted(ast.literal_eval(stripped))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _accepted(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, dict | list | bool | int | float):
        return True, to_json_value(value)
    return False, None


def _render_string(text: str, context: Mapping[str, Any]) -> Any:
    if not has_template(text):
        return text
    expr = _lone_expression(text)
    if expr is not None:
        return to_json_value(_eval_expression(expr, context))
    rendered = render_text(text, context)
    ok, value = _parse_literal(rendered)
    return value if ok else rendered


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Typed rendering of dsl.md §5.1; raises TemplateError with the failing string's pointer."""
    if isinstance(value, str):
        return _render_string(value, context)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key
            if isinstance(key, str) and has_template(key):
                try:
                    name = render_text(key, context)
                except TemplateError as exc:
                    raise exc.at("/" + _escape(key)) from None
            try:
                out[_native_key(name)] = render_value(item, context)
            except TemplateError as exc:
                raise exc.at("/" + _escape(str(key))) from None
        return out
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(render_value(item, context))
            except TemplateError as exc:
                raise exc.at(f"/{index}") from None
        return items
    return value


_FALSY_TEXT = frozenset({"", "false", "0", "no", "off", "none", "null", "{}", "[]"})


def is_falsy(value: Any) -> bool:
    """The condition truth rule of §5.1, applied to an evaluated value."""
    if value is None or value is False or isinstance(value, jinja2.Undefined):
        return True
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return value.strip().lower() in _FALSY_TEXT
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return len(value) == 0
    return False


def evaluate_condition(expr: Any, context: Mapping[str, Any]) -> bool:
    """A `when`: a template, or a bare expression when the string has no template syntax."""
    if isinstance(expr, str):
        if not has_template(expr):
            if expr.strip().lower() in _FALSY_TEXT:
                return False
            return not is_falsy(_eval_expression(expr, context))
        return not is_falsy(_render_string(expr, context))
    return not is_falsy(expr)


def check_syntax(text: str) -> str | None:
    """The syntax error of a template string, or None (register-time rule 13)."""
    if not has_template(text):
        return None
    try:
        environment.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"template syntax error: {exc.message} (line {exc.lineno})"
    return None


def check_expression(expr: str) -> str | None:
    """The syntax error of a bare condition expression, or None."""
    try:
        _expression(expr)
    except TemplateError as exc:
        return exc.message
    return None


@lru_cache(maxsize=8192)
def _names(text: str) -> frozenset[str]:
    try:
        ast_ = environment.parse(text)
    except jinja2.TemplateSyntaxError:
        return frozenset()
    return frozenset(meta.find_undeclared_variables(ast_))


def find_names(text: str) -> frozenset[str]:
    """The top-level names a template string references (for render_context of deferred)."""
    return _names(text) if has_template(text) else frozenset()


@lru_cache(maxsize=8192)
def _keychain_names(text: str) -> frozenset[str]:
    try:
        tree = environment.parse(text)
    except jinja2.TemplateSyntaxError:
        return frozenset()
    found = set()
    for attr in tree.find_all(nodes.Getattr):
        if isinstance(attr.node, nodes.Name) and attr.node.name == "keychain":
            found.add(attr.attr)
    for item in tree.find_all(nodes.Getitem):
        key = item.arg
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == "keychain"
            and isinstance(key, nodes.Const)
            and isinstance(key.value, str)
        ):
            found.add(key.value)
    return frozenset(found)


def keychain_names(text: str) -> frozenset[str]:
    """The keychain entries a template string uses (`keychain.<name>` or `keychain['<name>']`)."""
    return _keychain_names(text) if has_template(text) and "keychain" in text else frozenset()
