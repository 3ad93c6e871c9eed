"""Where the project's non-Python files live (sql/, migrations/, system/, examples/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = ROOT / "migrations"
SYSTEM_PLAYBOOKS_DIR = ROOT / "system"
EXAMPLES_DIR = ROOT / "examples"
