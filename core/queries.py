"""Named queries: blocks of a `.sql` file under sql/queries/, loaded into a dict at import.

A block starts with a line `-- name: <identifier>` and runs to the next such line; comment
lines at the end of a block belong to the next query and are dropped. Comments inside a
block must not contain a percent sign: psycopg reads placeholders in comments too.
Queries take named parameters (`%(execution_id)s`); a literal percent sign is `%%`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from core.paths import SQL_DIR

QUERIES_DIR = SQL_DIR / "queries"
_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


class QueryFileError(ValueError):
    """A queries file with a duplicate or empty block."""


def parse_queries(text: str, source: str = "<text>") -> dict[str, str]:
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def close() -> None:
        if name is None:
            return
        # comment lines at the end of a block introduce the next query: not part of this one
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
            lines.pop()
        body = "\n".join(lines).strip()
        if not body:
            raise QueryFileError(f"{source}: query {name!r} is empty")
        queries[name] = body

    for line in text.splitlines():
        match = _NAME.match(line.strip())
        if match:
            close()
            name, lines = match.group(1), []
            if name in queries:
                raise QueryFileError(f"{source}: query {name!r} is defined twice")
        elif name is not None:
            lines.append(line)
    close()
    return queries


def load_queries(name: str) -> Mapping[str, str]:
    """The named queries of sql/queries/<name>.sql, read-only."""
    path = QUERIES_DIR / f"{name}.sql"
    return MappingProxyType(parse_queries(path.read_text(), str(path)))
