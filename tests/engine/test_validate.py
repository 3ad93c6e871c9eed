"""Register-time validation (dsl.md §3): every problem listed, with its pointer and line."""

from __future__ import annotations

import pytest

from engine import load_playbook, validate_playbook
from tests.engine.sim import PLAYBOOKS

VALID = sorted(p.stem for p in PLAYBOOKS.glob("*.yaml") if p.stem != "malformed")


@pytest.mark.parametrize("name", VALID)
def test_every_test_playbook_is_valid(name: str) -> None:
    document, problems = validate_playbook((PLAYBOOKS / f"{name}.yaml").read_text())
    assert problems == []
    assert document is not None
    load_playbook(document)


def test_a_malformed_playbook_is_refused_with_every_problem() -> None:
    document, problems = validate_playbook((PLAYBOOKS / "malformed.yaml").read_text())
    assert document is not None
    found = [(p.path, p.type, p.line) for p in problems]
    assert found == [
        ("/apiVersion", "value_error", 1),
        ("/metadata/name", "missing", 3),  # a missing key: the line of its parent
        ("/metadata/path", "value_error", 4),
        ("/extra_key", "unknown_key", 5),
        ("/workload", "type_error", 6),
        ("/keychain/1/name", "duplicate", 9),
        ("/workbook/0/tool/kind", "value_error", 12),
        ("/executor/pool", "value_error", 14),
        ("/workflow", "missing", 15),
        ("/workflow/0/case", "not_supported", 17),
        ("/workflow/0/when", "type_error", 18),
        ("/workflow/0/tool/kind", "unknown_kind", 19),
        ("/workflow/0/next", "unknown_step", 20),
        ("/workflow/1/step", "duplicate", 21),
        ("/workflow/1/tool/1", "duplicate", 24),
        ("/workflow/1/tool/1/url", "missing", 24),
        ("/workflow/1/loop/iterator", "reserved_name", 27),
        ("/workflow/1/loop/cursor", "not_supported", 28),
        ("/workflow/1/loop/spec/mode", "not_supported", 29),
        ("/workflow/1/loop/spec/max_in_flight", "value_error", 29),
        ("/workflow/2/tool/name", "unknown_workbook", 31),
        ("/workflow/2/set", "type_error", 32),
        ("/workflow/2/next/spec/mode", "value_error", 34),
        ("/workflow/2/next/arcs/0/colour", "unknown_key", 36),
        ("/workflow/2/next/arcs/0/when", "template_syntax", 36),
        ("/workflow/2/next/arcs/1/step", "missing", 37),
        ("/workflow/2/next/arcs/1/when", "template_syntax", 37),
        ("/workflow/3/step", "reserved_name", 38),
        ("/workflow/3/tool/auth", "missing", 39),
        ("/workflow/3/tool/host", "value_error", 39),
        ("/workflow/3/input/v", "template_syntax", 40),
        ("/workflow/4/step", "missing", 41),
    ]
    by_path = {p.path: p for p in problems}
    assert by_path["/workflow/0/next"].msg == (
        "unknown step 'nowhere' (steps: begin, end_game, if)"
    )
    assert by_path["/workflow/0/case"].msg.endswith("use step.when and next.arcs[].when")
    assert by_path["/workflow/1/loop/iterator"].loc == ("workflow", 1, "loop", "iterator")


ORDER_TOTALS = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: order_totals
  path: examples/order_totals
workload:
  shop_url: http://127.0.0.1:8090
  floor: 10
  pg: pg_analytics
workflow:
  - step: start
    tool: {kind: http, url: "{{ shop_url }}/orders", params: {status: open}}
    next: score
  - step: score
    loop:
      in: "{{ start.data.orders }}"
      spec: {mode: parallel, max_in_flight: 4}
    tool:
      kind: python
      input: {order: "{{ order }}", floor: "{{ floor }}"}
      code: |
        result = {"id": order["id"]}
    next:
      spec: {mode: exclusive}
      arcs:
        - step: sav
          when: "{{ event.name == 'loop.done' and output.status == 'ok' }}"
        - step: report
          when: "{{ output.status == 'error' }}"
  - step: save
    tool: {kind: postgres, auth: "{{ pg }}", command: "select 1"}
  - step: report
"""


def test_the_spec_example() -> None:
    _, problems = validate_playbook(ORDER_TOTALS)
    assert [(p.loc, p.path, p.line, p.msg, p.type) for p in problems] == [
        (
            ("workflow", 1, "loop", "iterator"),
            "/workflow/1/loop/iterator",
            15,
            "required",
            "missing",
        ),
        (
            ("workflow", 1, "next", "arcs", 0, "step"),
            "/workflow/1/next/arcs/0/step",
            26,
            "unknown step 'sav' (steps: start, score, save, report)",
            "unknown_step",
        ),
    ]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("a: [unclosed", "yaml_error"),
        ("- just\n- a list\n", "type_error"),
        ("", "type_error"),
    ],
)
def test_unparseable_documents(text: str, kind: str) -> None:
    document, problems = validate_playbook(text)
    assert document is None
    assert [p.type for p in problems] == [kind]
    assert problems[0].path == ""


def test_forms_that_are_accepted() -> None:
    text = """\
apiVersion: noetl.io/v10
kind: Playbook
metadata: {name: forms, labels: {team: data}, exposed_in_ui: true}
vars: anything
keychain: [{name: api, kind: oauth2}]
executor: {pool: gpu-pool_1, profile: x, spec: {entry_step: first, final_step: z}}
workflow:
  - step: first
    desc: the entry step
    when: true
    spec: {next_mode: inclusive, timeout: 3, on_error: x}
    tool: {kind: snowflake, query: "select 1"}
    next: [{step: my-step, args: {a: 1}}, {step: end}]
  - step: my-step
    loop: {in: [1, 2], iterator: item, spec: {max_in_flight: "{{ 2 }}"}}
    tool:
      - {fetch: {kind: http, url: "http://x/{{ item }}"}}
      - kind: python
        code: "result = 1"
        spec: {policy: {rules: [{else: {then: {do: continue}}}]}}
    next: {spec: {on_no_match: quiet}, arcs: [end]}
  - step: end
"""
    document, problems = validate_playbook(text)
    assert problems == []
    playbook = load_playbook(document or {})
    assert playbook.entry_step == "first"
    assert playbook.path == "forms"  # defaults to the name
    assert playbook.pool == "gpu-pool_1"
    assert playbook.steps["first"].next.mode == "inclusive"
    assert [a.step for a in playbook.steps["first"].next.arcs] == ["my-step", "end"]
    assert playbook.inbound["end"] == frozenset({"first", "my-step"})
    tool = playbook.steps["my-step"].tool
    assert tool.kind == "task_sequence"
    assert [label for label, _ in tool.tasks] == ["fetch", "task_1"]


def test_timestamps_stay_strings() -> None:
    text = (
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: t}\n"
        "workload: {day: 2026-01-01}\nworkflow: [{step: start}]\n"
    )
    document, problems = validate_playbook(text)
    assert problems == []
    assert document is not None and document["workload"] == {"day": "2026-01-01"}
