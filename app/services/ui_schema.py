"""The ui_schema of a catalog entry (api.md §6.4): form fields inferred from `workload`.

A best-effort hint that never fails the request: field kinds follow the default values, and
`# ui:` comment directives on the lines of the immediate children of the top-level
`workload:` add secrets, enums, credential globs and descriptions.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from app.services.catalog import to_json_value
from app.services.catalog_cache import CatalogEntry
from core.timefmt import rfc3339, utcnow

_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([^\s"'#][^:#]*?))\s*:(?:\s|$)""")
_DIRECTIVE = re.compile(r"#\s*ui:([A-Za-z_][A-Za-z0-9_-]*)(?:=(.*?))?(?=\s+#|\s*$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _comment_start(line: str) -> int:
    """Index of the `#` that starts the line's comment, quotes respected; -1 if none."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or line[i - 1] in " :[{,-"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return -1


def parse_value(raw: str | None) -> Any:
    if raw is None:
        return True
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_unquote(item.strip()) for item in inner.split(",")] if inner else []
    return _unquote(text)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def directives(content: str) -> dict[str, dict[str, Any]]:
    """`{child key: {directive: value}}` from the lines under the top-level `workload:`."""
    found: dict[str, dict[str, Any]] = {}
    lines = content.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"^workload\s*:(\s|$)", line)), None
    )
    if start is None:
        return found
    child_indent: int | None = None
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = _indent(line)
        if indent == 0:
            break  # back at the top level: the workload block has ended
        if child_indent is None:
            child_indent = indent
        if indent != child_indent:
            continue
        match = _KEY.match(line)
        hash_at = _comment_start(line)
        if not match or hash_at < 0:
            continue
        name = next(g for g in match.groups() if g is not None).strip()
        for directive, value in _DIRECTIVE.findall(line[hash_at:]):
            found.setdefault(name, {})[directive] = parse_value(value if value != "" else None)
    return found


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


def _field(name: str, value: Any, hints: dict[str, Any]) -> dict[str, Any]:
    kind = _kind(value)
    field: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "default": value,
        "description": None,
        "secret": False,
        "credential_glob": None,
        "options": None,
        "children": [_field(str(k), v, {}) for k, v in value.items()] if kind == "object" else None,
    }
    if "secret" in hints:
        field["secret"] = hints["secret"] is True or str(hints["secret"]).lower() in (
            "true",
            "1",
            "yes",
            "on",
        )
    if "enum" in hints:
        options = hints["enum"]
        field["kind"] = "enum"
        field["options"] = options if isinstance(options, list) else [str(options)]
        field["children"] = None
    if "credential" in hints and isinstance(hints["credential"], str):
        field["credential_glob"] = hints["credential"]
    if "description" in hints:
        text = hints["description"]
        if isinstance(text, list):
            text = ", ".join(text)
        field["description"] = text if isinstance(text, str) else None
    return field


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def ui_schema(entry: CatalogEntry) -> dict[str, Any]:
    document: Any = None
    try:
        document = to_json_value(yaml.safe_load(entry.content or ""))
    except (yaml.YAMLError, ValueError, RecursionError):
        document = None
    document = document if isinstance(document, dict) else {}
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    workload = document.get("workload")
    fields: list[dict[str, Any]] = []
    if isinstance(workload, dict):
        hints = directives(entry.content or "")
        try:
            fields = [_field(str(k), v, hints.get(str(k), {})) for k, v in workload.items()]
        except RecursionError:
            fields = []  # a hint, never a failure
    return {
        "path": entry.path,
        "version": entry.version,
        "kind": entry.kind.lower(),
        "title": _text(metadata.get("name")),
        "description_markdown": _text(metadata.get("description")),
        "exposed_in_ui": str(metadata.get("exposed_in_ui")).strip().lower()
        in ("true", "1", "yes", "on"),
        "fields": fields,
        "generated_at": rfc3339(utcnow()),
    }
