"""The playbook engine: pure (a playbook and one execution's events in, decisions out; no I/O).

See docs/engine.md. The public surface:

- `validate_playbook(content)` → `(document, problems)` (register time, dsl.md §3);
- `load_playbook(document)` → `Playbook` (normalised; cache it per catalog_id);
- `start(...)`, `advance(...)`, `cancel(...)`, `finalize(...)` → `Decision`;
- `State` (the fold, JSON-serialisable), `fold`, `fold_all`, `terminal_outcome`, `describe`;
- `render_value`, `evaluate_condition`, `TemplateError` (engine.render, also used by workers).
"""

from engine.context import ExecutionRef
from engine.evaluate import (
    Command,
    Decision,
    Limits,
    advance,
    cancel,
    describe,
    finalize,
    fold_all,
    start,
)
from engine.model import Playbook, PlaybookError, choose_pool, load_playbook
from engine.render import TemplateError, evaluate_condition, render_value
from engine.state import State, fold, terminal_outcome
from engine.validate import Problem, validate_playbook

__all__ = [
    "Command",
    "Decision",
    "ExecutionRef",
    "Limits",
    "Playbook",
    "PlaybookError",
    "Problem",
    "State",
    "TemplateError",
    "advance",
    "cancel",
    "choose_pool",
    "describe",
    "evaluate_condition",
    "finalize",
    "fold",
    "fold_all",
    "load_playbook",
    "render_value",
    "start",
    "terminal_outcome",
    "validate_playbook",
]
