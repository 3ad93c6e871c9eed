"""Typed rendering, conditions, undefined, filters and the sandbox (dsl.md §5)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.render import TemplateError, evaluate_condition, find_names, render_value

CONTEXT: dict[str, Any] = {
    "page_size": 25,
    "a": 1,
    "b": 2,
    "prefix": "x",
    "d": {"k": [1, 2], "name": "é"},
    "rows": [{"big": True}, {"big": False}, {"big": True}],
    "total": 4,
    "text": "[1, 2]",
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ page_size }}", 25),
        ("  {{ page_size }}  ", 25),
        ("[{{ a }}, {{ b }}]", [1, 2]),
        ("{{ a }}-{{ b }}", "1-2"),
        ("{{ prefix ~ '007' }}", "x007"),
        ("007", "007"),  # no template syntax: never converted
        ("plain", "plain"),
        ("{{ d }}", {"k": [1, 2], "name": "é"}),
        ("{{ '' }}{{ d }}", {"k": [1, 2], "name": "é"}),  # Python literal text
        ("{{ nothing }}", None),
        ("{{ nothing.deeper.still }}", None),
        ("{{ rows | selectattr('big') | list | length }}", 2),
        ("{{ d.k | map('string') }}", ["1", "2"]),
        ("{{ a > 0 }}", True),
        ("{{ none }}", None),
        ("{{ 1.5 }}", 1.5),
        ("{{ text }}", "[1, 2]"),  # a lone expression keeps its native type
        (" {{ a }} and {{ b }} ", " 1 and 2 "),
        ("{% if a %}yes{% else %}no{% endif %}", "yes"),
        ("{% if a %}true{% endif %}", True),
        ("{{ 'null' }}x", "nullx"),
        ("{{ '' }}null", None),
        ("{{ d | tojson }}", '{"k":[1,2],"name":"é"}'),
        ("{{ nothing | tojson }}", "null"),
        ("{{ '{\"x\": 1}' | fromjson }}", {"x": 1}),
        ("{{ 'hi' | b64encode }}", "aGk="),
        ("{{ 'aGk=' | b64decode }}", "hi"),
        ("{{ d | keys | list }}", ["k", "name"]),
        ("{{ d | values | first }}", [1, 2]),
        ("{{ d | get('missing', 7) }}", 7),
        ("{{ nothing | default(3) }}", 3),
        ("{{ nothing is defined }}", False),
        ("{{ nothing | length }}", 0),
        ("{{ nothing > 3 }}", False),
        ("{{ nothing <= 3 }}", False),
        ("{% for x in nothing %}{{ x }}{% endfor %}", ""),
        (5, 5),
        (None, None),
        ({"{{ prefix }}_k": ["{{ a }}", {"n": "{{ b + 1 }}"}]}, {"x_k": [1, {"n": 3}]}),
    ],
)
def test_render_value(value: Any, expected: Any) -> None:
    assert render_value(value, CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("{{ nothing + 1 }}", ""),
        ("{{ int('x') }}", ""),
        ("{{ a | no_such_filter }}", ""),
        ("{{ a + [] }}", ""),
        ("{{ 1 / 0 }}", ""),
        ("{{ a.__class__.__mro__ }}", ""),
        ({"q": ["ok", "{{ 1 / 0 }}"]}, "/q/1"),
        ({"a/b": "{{ nothing + 1 }}"}, "/a~1b"),
    ],
)
def test_errors_raise_template_error_with_a_pointer(template: Any, path: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render_value(template, CONTEXT)
    assert caught.value.kind == "template"
    assert caught.value.path == path


def test_sandbox_refuses_unsafe_calls() -> None:
    with pytest.raises(TemplateError):
        render_value("{{ ''.__class__.__subclasses__() }}", CONTEXT)
    with pytest.raises(TemplateError):
        render_value("{{ d.__init__.__globals__ }} x", CONTEXT)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("total > 3", True),
        ("total > 30", False),
        ("{{ total > 3 }}", True),
        ("{{ nothing }}", False),
        ("{{ d }}", True),
        ("{{ [] }}", False),
        ("{{ {} }}", False),
        ("{{ 0 }}", False),
        ("{{ 'off' }}", False),
        ("{{ ' No ' }}", False),
        ("{{ 'yes' }}", True),
        ("false", False),
        ("None", False),
        ("", False),
        ("true", True),
        (True, True),
        (False, False),
        (None, False),
        (0, False),
        (1, True),
    ],
)
def test_conditions(condition: Any, expected: bool) -> None:
    assert evaluate_condition(condition, CONTEXT) is expected


def test_find_names() -> None:
    names = find_names("{{ a.b }} {% for x in items %}{{ x }}{% endfor %} {{ keychain.pg.host }}")
    assert names == {"a", "items", "keychain"}
    assert find_names("no template") == frozenset()
