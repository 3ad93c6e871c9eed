"""Register-time validation of playbooks (dsl.md §3): every problem, each with its location.

Placeholder until the engine issue lands: parses YAML and checks only the top-level shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    loc: tuple[str | int, ...]  # path inside the document, e.g. ("workflow", 2, "tool")
    msg: str
    type: str  # stable snake_case kind of problem
    path: str  # JSON pointer of loc, e.g. "/workflow/2/tool"
    line: int | None  # 1-based line in the registered text, when known


def validate_playbook(content: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse and validate; returns the parsed document (None when unparseable) and problems."""
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [Problem((), f"not valid YAML: {exc}", "yaml_error", "", line)]
    if not isinstance(document, dict):
        return None, [Problem((), "a playbook is a mapping", "type_error", "", 1)]
    return document, []
